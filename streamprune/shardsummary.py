"""What the manifest needs from one shard, and the duplicate-key check over key hashes.

A per-shard pass (``index``, ``shard``) returns a :class:`ShardSummary`: the shard's counts,
sizes, digests and label counts, a few dozen bytes whatever the shard holds. Everything that
grows with the samples stays on disk beside the index sidecar: the index itself, and a
*key-hash* file (``<index stem>.keyhash.npy``: the 8-byte hash of every key, sorted). The
driver never holds a shard's index, let alone every key of the dataset.

:func:`find_duplicate_key` finds a key that occurs twice with the key-hash files alone: the
64-bit hash space is cut into ranges of at most ``chunk`` hashes in all, and for each range
every shard's slice (a binary search in its sorted file, memory-mapped) is gathered and sorted;
equal neighbours are candidates. A candidate is confirmed by loading the (two) shards'
indexes and comparing the keys themselves, so a hash collision (likely somewhere past 10^9
keys) is never reported as a duplicate. Memory is ``O(chunk + shards)``, not ``O(N)``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .atomic import atomic_open, file_sha256
from .engine import make_engine
from .indexfile import companion_path
from .shardindex import ShardIndex

__all__ = [
    "KEYHASH_SUFFIX",
    "ClassCounts",
    "ShardSummary",
    "find_duplicate_key",
    "key_hashes",
    "keyhash_path",
    "summarize_index",
    "write_keyhashes",
]

#: Suffix of a shard's key-hash file, replacing the index sidecar's ``.json``.
KEYHASH_SUFFIX = ".keyhash.npy"
#: Hashes gathered and sorted at once by :func:`find_duplicate_key` (about 16 bytes each at the peak: 256 MB).
DEFAULT_CHUNK = 1 << 24
#: Shards whose key-hash files one merge task of :func:`find_duplicate_key` merges.
DEFAULT_GROUP = 128


@dataclass
class ShardSummary:
    """One shard as a per-shard pass reports it to the driver: what the manifest records.

    Attributes:
        shard: Shard name as the manifest records it.
        index: Index sidecar name as the manifest records it.
        samples: Samples in the shard.
        shard_bytes: Size of the shard file.
        sha256: The shard file's digest (``""`` when not computed).
        index_sha256: The index sidecar's digest.
        companion_sha256: The index companion's digest (``""`` without one).
        label_counts: Samples per label id ``0..max label`` (``int64``; empty when unlabelled;
            ``None`` once folded into a :class:`ClassCounts` total).
        unlabelled: Samples with label ``-1``.
        first_unlabelled: Key of the first unlabelled sample, for error messages, else ``None``.
        keyhash: Path of the shard's sorted key-hash file.
        max_label: The largest label in the shard (``-1`` when none).
    """

    shard: str
    index: str
    samples: int
    shard_bytes: int
    sha256: str
    index_sha256: str
    companion_sha256: str
    label_counts: np.ndarray | None = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    unlabelled: int = 0
    first_unlabelled: str | None = None
    keyhash: str = ""
    max_label: int = -1

    def __len__(self) -> int:
        return self.samples


class ClassCounts:
    """Class counts added up as summaries arrive, each summary's own counts then dropped.

    A shard's label counts are ``classes x 8`` bytes (8 KB for 1000 classes): held for every
    shard, they would grow with shards x classes. Folded as each task finishes
    (``on_result``), the driver holds one total.
    """

    def __init__(self) -> None:
        self.total = np.zeros(0, dtype=np.int64)

    def fold(self, summary: ShardSummary) -> ShardSummary:
        """Add ``summary``'s label counts to the total and drop them from it (``label_counts = None``)."""
        counts = summary.label_counts
        if counts is not None:
            if len(counts) > len(self.total):
                self.total = np.concatenate([self.total, np.zeros(len(counts) - len(self.total), dtype=np.int64)])
            self.total[: len(counts)] += counts
            summary.label_counts = None
        return summary


def key_hashes(keys: Sequence[str]) -> np.ndarray:
    """The 8-byte hash of each key (BLAKE2b, little-endian ``uint64``), in the keys' order.

    Args:
        keys: Sample keys.

    Returns:
        ``uint64[len(keys)]``.
    """
    blob = b"".join(hashlib.blake2b(k.encode("utf-8", "surrogatepass"), digest_size=8).digest() for k in keys)
    return np.frombuffer(blob, dtype="<u8").astype(np.uint64)


def keyhash_path(index_path: str | os.PathLike) -> str:
    """The key-hash file beside an index sidecar (``x.index.json`` -> ``x.index.keyhash.npy``)."""
    path = os.fspath(index_path)
    return (path[: -len(".json")] if path.endswith(".json") else path) + KEYHASH_SUFFIX


def write_keyhashes(hashes: np.ndarray, path: str | os.PathLike) -> str:
    """Save key hashes sorted, atomically, as a ``.npy`` file (memory-mapped by the duplicate check).

    Args:
        hashes: ``uint64`` key hashes in any order.
        path: Destination.

    Returns:
        The path written.
    """
    path = os.fspath(path)
    with atomic_open(path, "wb", fsync=False) as fh:
        np.save(fh, np.sort(np.asarray(hashes, dtype=np.uint64)))
    return path


def summarize_index(index: ShardIndex, index_path: str | os.PathLike, shard_name: str, index_name: str) -> ShardSummary:
    """Summarise a shard whose index is saved at ``index_path``; write its key-hash file beside it.

    Runs where the index was made (an engine task), so only the summary travels to the driver.

    Args:
        index: The shard's index (its ``sha256`` set when checksums are used).
        index_path: Where the index sidecar is saved.
        shard_name: The shard's name in the manifest.
        index_name: The index sidecar's name in the manifest.

    Returns:
        The summary.
    """
    index_path = os.fspath(index_path)
    labels = np.asarray(index.labels, dtype=np.int64)
    labelled = labels[labels >= 0]
    unlabelled = int(len(labels) - len(labelled))
    first = index.keys[int(np.argmax(labels < 0))] if unlabelled else None
    counts = np.bincount(labelled).astype(np.int64) if len(labelled) else np.zeros(0, dtype=np.int64)
    companion = companion_path(index_path)
    return ShardSummary(
        shard=shard_name,
        index=index_name,
        samples=len(index),
        shard_bytes=int(index.shard_bytes),
        sha256=index.sha256,
        index_sha256=file_sha256(index_path),
        companion_sha256=file_sha256(companion) if os.path.exists(companion) else "",
        label_counts=counts,
        unlabelled=unlabelled,
        first_unlabelled=first,
        keyhash=write_keyhashes(key_hashes(index.keys), keyhash_path(index_path)),
        max_label=len(counts) - 1,
    )


def _bucket_bits(total: int, chunk: int) -> int:
    """Top hash bits that cut ``total`` uniformly spread hashes into ranges of about ``chunk`` at most."""
    bits = 0
    while bits < 32 and total >> bits > chunk:
        bits += 1
    return bits


def _slices(files: Sequence[str | None], bits: int, bucket: int):
    """Each file's sorted hashes in hash range ``bucket`` (of ``2**bits``): ``(file number, array)``, one open at a time."""
    lo = np.uint64(bucket << (64 - bits)) if bits else np.uint64(0)
    last = bucket == (1 << bits) - 1
    for k, path in enumerate(files):
        if path is None:
            continue
        hashes = np.load(path, mmap_mode="r")
        i0 = int(np.searchsorted(hashes, lo, side="left")) if bits else 0
        i1 = len(hashes) if last else int(np.searchsorted(hashes, lo + (np.uint64(1) << np.uint64(64 - bits)), side="left"))
        if i1 > i0:
            yield k, np.array(hashes[i0:i1])
        del hashes  # unmapped before the next file is opened


def _merge_group(state: Any, job: tuple[list[str], str]) -> str:
    """One engine task of the duplicate check: the sorted hashes of a group of shards, merged into one file."""
    paths, out = job
    merged = np.concatenate([np.load(p) for p in paths]) if paths else np.zeros(0, dtype=np.uint64)
    merged.sort()
    return write_keyhashes(merged, out)


def find_duplicate_key(
    summaries: Sequence[ShardSummary],
    index_of: Callable[[int], ShardIndex],
    chunk: int = DEFAULT_CHUNK,
    group: int = DEFAULT_GROUP,
    engine: Any = None,
) -> tuple[str, str, str] | None:
    """A key that occurs twice in the shards, found from their key-hash files.

    First the shards' files are merged ``group`` at a time into sorted group files (engine
    tasks; memory ``group x samples per shard x 16`` bytes each), so the second phase opens
    ``shards / group`` files per hash range rather than every shard's. Then, for each hash
    range, the groups' slices are gathered and sorted (about 16 bytes per hash in the range, at
    most ``chunk`` hashes: memory constant in N); equal neighbours are candidates, whose shards
    are found by scanning that range of the candidate groups' shards (only when there are
    any), and confirmed against the keys.

    Args:
        summaries: The shards, in manifest order (their ``keyhash`` files written).
        index_of: Loads shard ``k``'s index (only to confirm a candidate: twice per hash match).
        chunk: Hashes gathered and sorted at once.
        group: Shards merged into one group file.
        engine: Where the merge tasks run (``None``: this process).

    Returns:
        ``(key, first shard, second shard)`` in manifest order (the same shard twice for a key
        repeated within one shard), or ``None`` when every key is distinct.
    """
    total = sum(s.samples for s in summaries)
    bits = _bucket_bits(total, max(1, int(chunk)))
    members = [[k for k in range(g, min(g + group, len(summaries))) if summaries[k].samples]
               for g in range(0, len(summaries), max(1, int(group)))]
    work = tempfile.mkdtemp(prefix=".keyhash-merge-", dir=os.path.dirname(os.path.abspath(summaries[0].keyhash)) if summaries else None)
    try:
        jobs = [([summaries[k].keyhash for k in m], os.path.join(work, f"group-{g:07d}.npy")) for g, m in enumerate(members)]
        if len(members) > 1:
            make_engine(engine).map(_merge_group, jobs, desc="duplicate-keys", keep_results=False)
            files: list[str | None] = [out if m else None for (_, out), m in zip(jobs, members)]
        else:  # one group: its shards' files are read as they are
            files, members = [s.keyhash if s.samples else None for s in summaries], [[k] for k in range(len(summaries))]
        for bucket in range(1 << bits):
            parts = [part for _, part in _slices(files, bits, bucket)]
            if not parts:
                continue
            values = np.concatenate(parts)
            del parts
            values.sort()
            same = np.flatnonzero(values[1:] == values[:-1])
            if not len(same):
                continue
            candidates = np.unique(values[same])
            del values
            groups = [g for g, part in _slices(files, bits, bucket) if np.isin(part, candidates).any()]
            shards = [k for g in groups for k in members[g]]
            owners: dict[int, list[int]] = {}
            for j, part in _slices([summaries[k].keyhash for k in shards], bits, bucket):
                for h in part[np.isin(part, candidates)].tolist():
                    owners.setdefault(h, []).append(shards[j])
            found = _confirm(candidates, owners, summaries, index_of)
            if found is not None:
                return found
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _confirm(
    candidates: np.ndarray, owners: dict[int, list[int]], summaries: Sequence[ShardSummary],
    index_of: Callable[[int], ShardIndex],
) -> tuple[str, str, str] | None:
    """The first candidate hash whose keys really repeat (a hash collision of distinct keys is not).

    Returns at the first confirmed key, so a dataset indexed twice over loads two indexes, not all.
    """
    loaded: dict[int, tuple[list[str], np.ndarray]] = {}
    for h in candidates.tolist():
        seen: dict[str, int] = {}
        for k in sorted(set(owners.get(h, []))):
            if k not in loaded:
                keys = index_of(k).keys
                loaded[k] = (keys, key_hashes(keys))
            keys, hashes = loaded[k]
            for pos in np.flatnonzero(hashes == np.uint64(h)):
                key = keys[int(pos)]
                if key in seen:
                    return key, summaries[seen[key]].shard, summaries[k].shard
                seen[key] = k
    return None
