"""Read chosen samples of one tar shard by byte range, never touching the others' bytes.

Runs of samples that are adjacent on disk and read in that order are fetched with one
positioned read and sliced; a lone sample is read member by member. The kernel's read-ahead
is switched off for the file (``POSIX_FADV_RANDOM``), since it would read pruned bytes, and
instead the next kept runs are announced with ``POSIX_FADV_WILLNEED`` so the disk works
ahead on exactly the bytes that will be used.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from ..errors import IndexMismatchError
from ..tarindex import BLOCK, ShardIndex

__all__ = ["ShardFile", "read_runs", "plan_runs"]

_HAS_FADVISE = hasattr(os, "posix_fadvise")


def plan_runs(index: ShardIndex, order: np.ndarray, max_run_bytes: int) -> list[tuple[int, int]]:
    """Group ``order`` into runs of samples that are contiguous on disk.

    Args:
        index: The shard's index.
        order: Sample positions in the order they will be yielded.
        max_run_bytes: Upper bound on one coalesced read.

    Returns:
        ``(first, last_exclusive)`` positions into ``order`` for each run.
    """
    n = len(order)
    if n == 0:
        return []
    starts = index.start[order]
    ends = index.end[order]
    # A new run begins where a sample does not start where the previous one ended.
    breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
    bounds = np.concatenate([[0], breaks, [n]])
    runs: list[tuple[int, int]] = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        first = a
        while first < b:
            limit = starts[first] + max_run_bytes
            last = first + 1 + int(np.searchsorted(ends[first + 1 : b], limit, side="right"))
            runs.append((first, last))
            first = last
    return runs


class ShardFile:
    """An open shard checked against its index.

    Args:
        path: Shard path.
        index: The shard's index.
        fadvise: Use ``posix_fadvise`` to disable read-ahead and prefetch kept ranges.

    Raises:
        IndexMismatchError: The file's size or a member header disagrees with the index.
    """

    def __init__(self, path: str, index: ShardIndex, fadvise: bool = True) -> None:
        self.path = path
        self.index = index
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise IndexMismatchError(f"{path}: shard file is missing") from None
        size = os.fstat(self.fd).st_size
        if size != index.shard_bytes:
            os.close(self.fd)
            raise IndexMismatchError(
                f"{path}: shard is {size} bytes but its index describes {index.shard_bytes}; the shard was "
                "rewritten or replaced after indexing (re-run `streamprune index`)"
            )
        self.fadvise = fadvise and _HAS_FADVISE
        if self.fadvise:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)

    def check_sample(self, i: int) -> None:
        """Check that the tar header before sample ``i``'s first member matches the index.

        Raises:
            IndexMismatchError: Naming the shard, sample and what differs.
        """
        ext, offset, size = self.index.members[i][0]
        header = os.pread(self.fd, BLOCK, offset - BLOCK)
        key = self.index.keys[i]
        ok = len(header) == BLOCK and sum(header[:148]) + sum(header[156:]) + 256 == _octal(header[148:156])
        stored_size = _octal(header[124:136]) if ok else -1
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        expected = f"{key}.{ext}"
        if not ok or stored_size != size or not (expected == name or (len(name) == 100 and expected.startswith(name))):
            raise IndexMismatchError(
                f"{self.path}: sample {key!r} (#{i}) does not match the index (header names {name!r} with "
                f"{stored_size} bytes, index says {expected!r} with {size}); the shard was rewritten after indexing"
            )

    def prefetch(self, start: int, end: int) -> None:
        """Ask the kernel to start reading ``[start, end)`` in the background."""
        if self.fadvise and end > start:
            os.posix_fadvise(self.fd, start, end - start, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        """Close the file descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "ShardFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _octal(field: bytes) -> int:
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return -1


def read_runs(
    shard: ShardFile,
    order: np.ndarray,
    url: str,
    max_run_bytes: int = 1 << 20,
    prefetch_bytes: int = 16 << 20,
) -> Iterator[dict]:
    """Yield webdataset sample dicts for ``order`` (positions in the shard), in that order.

    Args:
        shard: The open shard.
        order: Sample positions to read, in yield order.
        url: Value for each sample's ``__url__``.
        max_run_bytes: Largest single coalesced read.
        prefetch_bytes: How far ahead (in kept bytes) to announce reads to the kernel.

    Yields:
        ``{"__key__": key, "__url__": url, ext: bytes, ...}``.
    """
    index = shard.index
    runs = plan_runs(index, order, max_run_bytes)
    starts = index.start
    ends = index.end
    keys = index.keys
    members = index.members
    fd = shard.fd
    pread = os.pread
    announced = 0  # runs[:announced] have been announced to the kernel
    announced_end_bytes = 0
    consumed_bytes = 0
    for r, (a, b) in enumerate(runs):
        if shard.fadvise:
            while announced < len(runs) and announced_end_bytes - consumed_bytes < prefetch_bytes:
                pa, pb = runs[announced]
                lo, hi = int(starts[order[pa]]), int(ends[order[pb - 1]])
                shard.prefetch(lo, hi)
                announced_end_bytes += hi - lo
                announced += 1
        first = int(order[a])
        lo = int(starts[first])
        hi = int(ends[order[b - 1]])
        consumed_bytes += hi - lo
        if b - a == 1:
            sample = {"__key__": keys[first], "__url__": url}
            for ext, offset, size in members[first]:
                sample[ext] = pread(fd, size, offset)
            yield sample
            continue
        buf = pread(fd, hi - lo, lo)
        view = memoryview(buf)
        for pos in order[a:b].tolist():
            sample = {"__key__": keys[pos], "__url__": url}
            for ext, offset, size in members[pos]:
                sample[ext] = bytes(view[offset - lo : offset - lo + size])
            yield sample
