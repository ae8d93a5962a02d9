"""Read chosen samples of one tar shard by byte range, never touching the others' bytes.

Runs of samples that are adjacent on disk and read in that order (a lone sample is a run of
one) are fetched with one positioned read and sliced when their members are small (fewer
system calls); a run of large members (JPEG-sized, ``DIRECT_MEMBER_BYTES`` or more on
average), or a lone sample over the run limit, is read member by member straight into each
value (one copy instead of two). Each read's first tar header is checked against the index. The kernel's read-ahead
is switched off for the file (``POSIX_FADV_RANDOM``), since it would read pruned bytes, and
instead the next kept runs are announced with ``POSIX_FADV_WILLNEED`` so the disk works
ahead on exactly the bytes that will be used. A :class:`ReadAhead` keeps those hints a window
of bytes ahead of the reads; shared by the shards of an epoch, the window runs on into the
next shard before the current one ends, so the disk's queue does not drain at every shard.

With verification on (:class:`ShardFile` ``verify``), every sample read is hashed as its
members arrive and compared with the checksum its index recorded; a mismatch is a
:class:`~streamprune.errors.ChecksumError`, never a silently wrong sample. Whether a shard is
verified when the caller does not say is a property of its storage (:func:`default_verify`).
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Callable, Iterator, Sequence

import numpy as np

from .. import storage
from ..errors import ChecksumError, IndexMismatchError, ManifestError, TarFormatError, redact
from ..indexfile import object_marker
from ..shardindex import MemberTable, ShardIndex, checksum_hasher
from ..tarindex import BLOCK, split_key_ext, walk_headers

__all__ = [
    "ShardFile", "ReadAhead", "read_runs", "read_sample", "plan_runs", "run_spans", "default_verify", "read_exact",
    "READAHEAD_BYTES",
]

log = logging.getLogger(__name__)

_HAS_FADVISE = hasattr(os, "posix_fadvise")

# Runs whose members average this size or more are read member by member (see read_runs).
DIRECT_MEMBER_BYTES = 32 << 10

#: Kept bytes announced to the kernel ahead of the reads (:class:`ReadAhead`).
READAHEAD_BYTES = 16 << 20


def plan_runs(index: ShardIndex, order: np.ndarray, max_run_bytes: int) -> list[tuple[int, int]]:
    """Group ``order`` into runs of samples that are contiguous on disk.

    A run is a stretch of ``order`` whose samples follow each other on disk (each starts
    where the previous one ends); it is cut where the next sample would take the run past
    ``max_run_bytes`` counted from the run's first byte (a run always has at least one
    sample, however big).

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
    starts = index.start[order].tolist()
    ends = index.end[order].tolist()
    runs: list[tuple[int, int]] = []
    first = 0
    limit = starts[0] + max_run_bytes
    prev_end = ends[0]
    for j in range(1, n):
        end = ends[j]
        if starts[j] != prev_end or end > limit:
            runs.append((first, j))
            first = j
            limit = starts[j] + max_run_bytes
        prev_end = end
    runs.append((first, n))
    return runs


def run_spans(index: ShardIndex, order: np.ndarray, max_run_bytes: int) -> tuple[list[int], list[int]]:
    """Byte ranges ``[lo, hi)`` of the runs :func:`plan_runs` makes of ``order``, what :func:`read_runs` reads.

    Returns:
        ``(lo, hi)``: the runs' first and end offsets in the shard, in read order.
    """
    order = np.asarray(order, dtype=np.int64)
    runs = plan_runs(index, order, max_run_bytes)
    if not runs:
        return [], []
    first = np.fromiter((a for a, _ in runs), dtype=np.int64, count=len(runs))
    last = np.fromiter((b - 1 for _, b in runs), dtype=np.int64, count=len(runs))
    return index.start[order[first]].tolist(), index.end[order[last]].tolist()


class ReadAhead:
    """Kept runs announced to the kernel (``POSIX_FADV_WILLNEED``) a window of bytes ahead of the reads.

    Shards queue their runs in read order (:meth:`add`); the reader calls :meth:`fill` before
    each run it reads and :meth:`consumed` after it. When every queued run has been announced
    and the window still has room, ``more`` is asked to queue the next shard's runs, so hints
    run on across shard boundaries: the next shard's first kept runs are already on their way
    while the current shard's last ones are read, instead of the disk's queue draining at the
    end of every shard and refilling only once the next shard is open.

    The window is counted in bytes, which bounds what is read ahead (page cache) whatever the
    run sizes: 16 MiB is 16 runs of 1 MiB (nothing pruned) or ~130 lone samples of 120 KB.

    Args:
        window_bytes: Bytes announced but not yet read, at most (the run about to be read is
            always announced, however large).
        more: Called when the window has room and nothing queued is left to announce: it
            queues the next shard's runs with :meth:`add` and returns ``True``, or returns
            ``False`` when there is nothing (yet) to queue.
    """

    def __init__(self, window_bytes: int = READAHEAD_BYTES, more: Callable[[], bool] | None = None) -> None:
        self.window_bytes = window_bytes
        self.more = more
        self._queue: collections.deque[list] = collections.deque()  # [shard, lo, hi, next run]
        self._ahead = 0  # bytes announced and not yet read

    def add(self, shard: "ShardFile", lo: Sequence[int], hi: Sequence[int]) -> None:
        """Queue ``shard``'s runs ``[lo[j], hi[j])``, in the order they will be read (see :func:`run_spans`).

        Nothing is queued for a shard opened without ``fadvise`` (and :func:`read_runs` does not
        count its reads); runs of a shard closed before they were announced are skipped.
        """
        if shard.fadvise and len(lo):
            self._queue.append([shard, lo, hi, 0])

    def fill(self) -> None:
        """Announce queued runs until the window is full (asking ``more`` for the next shard's)."""
        queue = self._queue
        window = self.window_bytes
        fadvise = os.posix_fadvise  # looked up per call: tests record hints by patching it
        while self._ahead < window:
            if not queue:
                if self.more is None or not self.more():
                    return
                continue
            item = queue[0]
            shard, lo, hi, j = item
            fd = shard.fd
            n = len(lo) if fd >= 0 else 0
            while j < n and self._ahead < window:
                fadvise(fd, lo[j], hi[j] - lo[j], os.POSIX_FADV_WILLNEED)
                self._ahead += hi[j] - lo[j]
                j += 1
            item[3] = j
            if j == n:
                queue.popleft()

    def consumed(self, nbytes: int) -> None:
        """Count ``nbytes`` of announced runs as read."""
        self._ahead -= nbytes


def default_verify(path: str) -> bool:
    """Whether samples of the shard at ``path`` are checksummed when the caller leaves it open.

    Local files are not verified by default: the page cache and the disk's own checks make a
    silently flipped byte rare, and hashing costs CPU on every epoch. Remote storage (any URL
    but ``file://``) is: a transfer is a new chance to corrupt, and an object can be replaced.

    Args:
        path: The shard's path or URL.

    Returns:
        The default of the ``verify`` argument of the readers for this shard.
    """
    return storage.is_remote(path)


class ShardFile:
    """An open shard checked against its index.

    Args:
        path: Shard path.
        index: The shard's index.
        fadvise: Use ``posix_fadvise`` to disable read-ahead and prefetch kept ranges.
        verify: Check every sample read against its checksum in the index. ``None``: the
            storage's default (:func:`default_verify`), skipped quietly when the index has no
            checksums; ``True`` on an index without checksums is an error.

    Raises:
        IndexMismatchError: The file's size or a member header disagrees with the index.
        ManifestError: ``verify=True`` but the index has no checksums, or their algorithm is
            not available here.
    """

    def __init__(self, path: str, index: ShardIndex, fadvise: bool = True, verify: bool | None = None) -> None:
        self.path = path
        self.index = index
        self.storage: storage.StorageObject | None = None
        self.verify = _resolve_verify(path, index, verify)
        self._hasher = checksum_hasher(index.checksum_algorithm) if self.verify else None
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

    @classmethod
    def from_storage(cls, obj: storage.StorageObject, index: ShardIndex, verify: bool | None = None) -> "ShardFile":
        """A shard read through a :class:`~streamprune.storage.StorageObject` (a URL, or a local file).

        The object's size must equal the index's; when the index recorded the object's ETag for
        this same URL (indexed or written remotely), the ETag must match too, and every later read
        is sent with that ETag as a precondition (HTTP ``If-Match``, S3 ``IfMatch``:
        :meth:`~streamprune.storage.RemoteObject.expect_etag`). Reads go through :meth:`read_range`;
        ``fd`` is the local descriptor, or ``-1`` for a remote object.

        Raises:
            IndexMismatchError: The object's size or ETag differs from what the index recorded
                (later, on a read: :class:`~streamprune.storage.ObjectChangedError`, a subclass).
        """
        self = cls.__new__(cls)
        self.path = obj.url
        self.index = index
        self.storage = obj
        self.fd = getattr(obj, "fd", -1)
        self.fadvise = False
        self.verify = _resolve_verify(obj.url, index, verify)
        self._hasher = checksum_hasher(index.checksum_algorithm) if self.verify else None
        size = obj.size
        if size != index.shard_bytes:
            obj.close()
            raise IndexMismatchError(
                f"{obj.url}: object is {size} bytes but its index describes {index.shard_bytes}; the shard was "
                "rewritten or replaced after indexing (re-run `streamprune index`)"
            )
        marker = object_marker(index)
        # the index records the URL redacted (indexfile never writes credentials)
        etag = obj.etag if marker.get("etag") and marker.get("url") == redact(obj.url) else ""
        if etag and etag != marker["etag"]:
            obj.close()
            raise IndexMismatchError(
                f"{obj.url}: object ETag is {etag} but the index recorded {marker['etag']}: the object was replaced "
                "after indexing (re-run `streamprune index`)"
            )
        if etag:
            obj.expect_etag(etag)  # and every read must still see that object: one replaced mid-epoch is an error
        return self

    def read_range(self, start: int, end: int, key: str = "") -> bytes:
        """Bytes ``[start, end)`` of the shard, exactly (a short read is an error naming ``key``)."""
        if self.storage is not None and self.fd < 0:
            return self.storage.read(start, end)
        return read_exact(self.fd, end - start, start, self.path, key)

    def check_sample(self, i: int, head: bytes | memoryview | None = None) -> None:
        """Check that the tar headers of sample ``i``'s first member match the index.

        A plain ustar header (the common case) is compared field by field; anything else (PAX
        or GNU long-name headers) is parsed as the indexer parses it (PAX ``path``, GNU long
        names and the ustar name prefix applied), so any valid tar indexed earlier passes.

        Args:
            i: Sample position in the shard.
            head: The sample's bytes from its first header on, when the caller has read them
                already (a coalesced read); otherwise the header is read from the file.

        Raises:
            IndexMismatchError: Naming the shard, sample and what differs.
        """
        ext, offset, size = _first_member(self.index, i)
        key = self.index.keys[i]
        start = int(self.index.start[i])
        if head is None and self.fd < 0:  # no descriptor (a remote object): fetch the sample once
            head = self.read_range(start, int(self.index.end[i]), key)
        if head is not None and offset - start == BLOCK and len(head) >= BLOCK:
            header = bytes(head[:BLOCK])
        elif head is None and offset - start == BLOCK:
            header = read_exact(self.fd, BLOCK, start, self.path, key)
        else:
            header = None
        if header is not None and _plain_header_matches(header, f"{key}.{ext}", size):
            return
        member = None
        if 0 <= start <= offset - BLOCK:
            view = _FileView(self.fd, start) if head is None else _BufferView(head, self.fd, start)
            try:
                member = next(walk_headers(view, self.index.shard_bytes - start, self.path), None)
            except (TarFormatError, OSError):  # OSError: a walk past the fetched bytes of a remote object
                member = None
        name = member.name if member is not None else None
        stored_size = member.size if member is not None else -1
        got_key, got_ext = split_key_ext(name) if name is not None else (None, None)
        ok = (
            member is not None
            and start + member.data_offset == offset
            and stored_size == size
            and got_key == key
            and got_ext is not None
            and got_ext.lower() == ext
        )
        if not ok:
            raise IndexMismatchError(
                f"{self.path}: sample {key!r} (#{i}) does not match the index (header names {name!r} with "
                f"{stored_size} bytes, index says {key + '.' + ext!r} with {size}); the shard was rewritten after indexing"
            )

    def check_checksum(self, i: int, parts: list[bytes]) -> None:
        """Check sample ``i``'s member data (in archive order) against its checksum in the index.

        Raises:
            ChecksumError: Naming the shard, the sample's key and its byte range.
        """
        h = self._hasher()  # type: ignore[misc]  # set whenever verify is on
        for part in parts:
            h.update(part)
        got = h.intdigest()
        stored = int(self.index.checksums[i])  # type: ignore[index]
        if got != stored:
            key = self.index.keys[i]
            start, end = int(self.index.start[i]), int(self.index.end[i])
            raise ChecksumError(
                f"{self.path}: sample {key!r} (#{i}, bytes {start}-{end}) fails its {self.index.checksum_algorithm} "
                f"checksum (index {stored:x}, read {got:x}): the shard's bytes changed after indexing (disk or "
                "transfer damage, or the shard was rewritten in place); restore the shard or re-run `streamprune index`",
                shard=self.path,
                key=key,
                start=start,
                end=end,
            )

    def prefetch(self, start: int, end: int) -> None:
        """Ask the kernel to start reading ``[start, end)`` in the background."""
        if self.fadvise and end > start:
            os.posix_fadvise(self.fd, start, end - start, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        """Close the file descriptor (or the storage object)."""
        if self.storage is not None:
            self.storage.close()
            self.fd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "ShardFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _first_member(index: ShardIndex, i: int) -> tuple[str, int, int]:
    """``index.members[i][0]`` without building the member lists of the whole shard.

    A :class:`MemberTable` converts all its columns to lists on its first lookup, which is
    worth it for many lookups but not for the one header check of a shard's first sample.
    """
    members = index.members
    if not isinstance(members, MemberTable):
        return members[i][0]
    first, ext_id, offset, size, extensions = members.arrays
    if not 0 <= i < len(members) or first[i] == first[i + 1]:
        return members[i][0]  # the same IndexError as a list lookup
    row = int(first[i])
    return extensions[int(ext_id[row])], int(offset[row]), int(size[row])


def _resolve_verify(path: str, index: ShardIndex, verify: bool | None) -> bool:
    """``verify`` made definite for this shard (see :class:`ShardFile`)."""
    if verify is None:
        verify = default_verify(path)
        if verify and index.checksums is None:
            log.debug("%s: its index has no checksums; samples are read unverified", redact(path))
            return False
    if not verify:
        return False
    if index.checksums is None:
        raise ManifestError(
            f"{path}: verify=True, but the shard's index has no per-sample checksums (it was written before "
            "they existed, or without them); re-run `streamprune index` on the shard, or read with verify=False"
        )
    try:
        checksum_hasher(index.checksum_algorithm)
    except KeyError as exc:
        raise ManifestError(f"{path}: cannot verify: {exc.args[0]}") from None
    return True


class _FileView:
    """Byte slices of an open file, relative to ``base`` (what the tar header walk reads)."""

    def __init__(self, fd: int, base: int) -> None:
        self.fd = fd
        self.base = base

    def __getitem__(self, span: slice) -> bytes:
        return os.pread(self.fd, span.stop - span.start, self.base + span.start)


class _BufferView(_FileView):
    """Like :class:`_FileView`, but served from bytes already read where they cover the slice."""

    def __init__(self, head: bytes | memoryview, fd: int, base: int) -> None:
        super().__init__(fd, base)
        self.head = head

    def __getitem__(self, span: slice) -> bytes:
        if span.stop <= len(self.head):
            return bytes(self.head[span.start : span.stop])
        return super().__getitem__(span)


def _plain_header_matches(header: bytes, name: str, size: int) -> bool:
    """Whether a 512-byte ustar header names exactly ``name`` with ``size`` data bytes.

    The cheap check every coalesced read gets; ``False`` also for headers this does not
    parse (PAX, GNU long names, a name split into prefix and name, base-256 sizes), which the
    caller then checks with the full header walk.
    """
    if header[156:157] not in (b"0", b"\0") or header[345:346] != b"\0":
        return False
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) >= 100 or header[: len(raw)] != raw or header[len(raw)] != 0:
        return False
    field = header[124:136].split(b"\0", 1)[0].strip(b" ")
    # octal digits only (int() alone would accept "_", signs and blanks); one C call, no loop
    return bool(field) and not field.translate(None, b"01234567") and int(field, 8) == size


def read_exact(fd: int, size: int, offset: int, path: str, key: str) -> bytes:
    """``os.pread`` that insists on ``size`` bytes.

    Raises:
        IndexMismatchError: Fewer bytes came back: the shard was cut short after indexing.
    """
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise _short_read(path, key, len(data), size, offset)
    return data

def _member_columns(index: ShardIndex, order: np.ndarray) -> tuple[list[int], list[str], list[int], list[int]]:
    """The members of the samples at ``order``, as flat lists built in a few bulk numpy steps.

    Returns:
        ``(count, ext, offset, size)``: ``count[j]`` members belong to ``order[j]``; the other
        lists hold one entry per member, the samples' members one after another in ``order``.
        Only the requested samples' members are converted to Python objects (a pruned sample
        costs nothing), and no per-sample tuples or lists are built.
    """
    members = index.members
    if isinstance(members, MemberTable):
        first, ext_id, offset, size, extensions = members.arrays
    else:  # an index parsed from JSON or walked from tar headers: lists of tuples
        counts = np.fromiter((len(g) for g in members), dtype=np.int64, count=len(members))
        first = np.zeros(len(members) + 1, dtype=np.int64)
        np.cumsum(counts, out=first[1:])
        flat = [m for g in members for m in g]
        extensions = sorted({m[0] for m in flat})
        ext_of = {e: j for j, e in enumerate(extensions)}
        ext_id = np.fromiter((ext_of[m[0]] for m in flat), dtype=np.int64, count=len(flat))
        offset = np.fromiter((m[1] for m in flat), dtype=np.int64, count=len(flat))
        size = np.fromiter((m[2] for m in flat), dtype=np.int64, count=len(flat))
    lo = first[order]
    count = first[order + 1] - lo
    total = int(count.sum())
    # row of every member of the chosen samples: each sample's first row plus 0, 1, ... count-1
    base = np.repeat(lo - (np.cumsum(count) - count), count)
    rows = base + np.arange(total, dtype=np.int64)
    names = [extensions[e] for e in ext_id[rows].tolist()]
    return count.tolist(), names, offset[rows].tolist(), size[rows].tolist()


def read_runs(
    shard: ShardFile,
    order: np.ndarray,
    url: str,
    max_run_bytes: int = 1 << 20,
    prefetch_bytes: int = READAHEAD_BYTES,
    direct_member_bytes: int = DIRECT_MEMBER_BYTES,
    check_headers: bool = True,
    readahead: ReadAhead | None = None,
) -> Iterator[dict]:
    """Yield webdataset sample dicts for ``order`` (positions in the shard), in that order.

    A run of adjacent samples whose members average at least ``direct_member_bytes`` is read
    member by member, each straight into its ``bytes`` value (one copy; the run's first header
    is read on its own, 512 bytes, to be checked), and so is a lone sample larger than
    ``max_run_bytes``; any other run, a lone sample included, is read with one positioned
    read and sliced (fewer system calls). Either way
    only the kept samples' bytes are read, and every read's first tar header is checked
    against the index. When ``shard.verify`` is on, each sample is checked against its
    checksum before it is yielded.

    Args:
        shard: The open shard.
        order: Sample positions to read, in yield order.
        url: Value for each sample's ``__url__``.
        max_run_bytes: Largest single coalesced read.
        prefetch_bytes: How far ahead (in kept bytes) to announce reads to the kernel, when
            ``readahead`` is not given.
        direct_member_bytes: Mean member size from which a run is read member by member.
        check_headers: Check the first tar header of every read (run) against the index.
        readahead: A window shared with the shards read before and after this one, which
            already holds this shard's runs (``ReadAhead.add(shard, *run_spans(index, order,
            max_run_bytes))``); ``None``: a window over this shard alone.

    Yields:
        ``{"__key__": key, "__url__": url, ext: bytes, ...}``.

    Raises:
        ChecksumError: ``shard.verify`` is on and a sample's bytes differ from its checksum.
        IndexMismatchError: A run's first header disagrees with the index, or the file is
            shorter than the index says.
    """
    index = shard.index
    order = np.asarray(order, dtype=np.int64)
    runs = plan_runs(index, order, max_run_bytes)
    if not runs:
        return
    # Everything per sample is computed here in bulk (numpy, one tolist per column), so the
    # loop below does no numpy scalar access, builds no member tuples and calls no helpers
    # on the common path: at ~120 KB samples on a warm cache the per-sample Python work was
    # as large as the copy itself (see benchmarks/README.md, io, reader rows).
    positions = order.tolist()
    keys = index.keys
    count, exts, offsets, sizes = _member_columns(index, order)
    # member_first[j]: where sample order[j]'s members start in the flat lists
    member_first = [0]
    for c in count:
        member_first.append(member_first[-1] + c)
    starts = index.start[order].tolist()
    run_first = [a for a, _ in runs]
    run_last = [b - 1 for _, b in runs]
    run_lo = [starts[a] for a in run_first]
    run_hi = index.end[order[run_last]].tolist()
    n_runs = len(runs)
    fd = shard.fd
    path = shard.path
    pread = os.pread  # looked up per call (tests record reads by patching os.pread)
    verify = shard.verify
    if not shard.fadvise:
        readahead = None
    elif readahead is None:
        readahead = ReadAhead(prefetch_bytes)
        readahead.add(shard, run_lo, run_hi)
    for r in range(n_runs):
        a, b = runs[r]
        lo = run_lo[r]
        hi = run_hi[r]
        if readahead is not None:
            readahead.fill()
            readahead.consumed(hi - lo)
        m0 = member_first[a]
        if hi - lo > max_run_bytes or hi - lo >= direct_member_bytes * (member_first[b] - m0):
            # large members: one read per member, straight into its value; the run's first
            # header is read on its own (512 bytes, far cheaper than copying the run again)
            first = positions[a]
            if check_headers and (not count[a] or offsets[m0] - lo != BLOCK or not _plain_header_matches(
                pread(fd, BLOCK, lo), f"{keys[first]}.{exts[m0]}", sizes[m0]
            )):
                shard.check_sample(first)  # PAX / long names, or a mismatch: the full check decides
            for j in range(a, b):
                pos = positions[j]
                key = keys[pos]
                sample = {"__key__": key, "__url__": url}
                for m in range(member_first[j], member_first[j + 1]):
                    size = sizes[m]
                    data = pread(fd, size, offsets[m])
                    if len(data) != size:
                        raise _short_read(path, key, len(data), size, offsets[m])
                    sample[exts[m]] = data
                if verify:
                    shard.check_checksum(pos, [sample[exts[m]] for m in range(member_first[j], member_first[j + 1])])
                yield sample
            continue
        data = pread(fd, hi - lo, lo)
        if len(data) != hi - lo:
            raise _short_read(path, keys[positions[a]], len(data), hi - lo, lo)
        first = positions[a]
        if check_headers and (not count[a] or offsets[m0] - lo != BLOCK or not _plain_header_matches(
            data[:BLOCK], f"{keys[first]}.{exts[m0]}", sizes[m0]
        )):
            shard.check_sample(first, memoryview(data))
        for j in range(a, b):
            pos = positions[j]
            sample = {"__key__": keys[pos], "__url__": url}
            for m in range(member_first[j], member_first[j + 1]):
                rel = offsets[m] - lo
                sample[exts[m]] = data[rel : rel + sizes[m]]  # bytes slicing: one copy, no memoryview
            if verify:
                shard.check_checksum(pos, [sample[exts[m]] for m in range(member_first[j], member_first[j + 1])])
            yield sample


def _short_read(path: str, key: str, got: int, size: int, offset: int) -> IndexMismatchError:
    """The error :func:`read_exact` raises, for reads made inline in :func:`read_runs`."""
    return IndexMismatchError(
        f"{path}: sample {key!r}: read {got} of {size} bytes at offset {offset}; the shard is shorter "
        "than its index says (truncated or rewritten after indexing)"
    )


def read_sample(shard: ShardFile, pos: int, url: str, direct_member_bytes: int = DIRECT_MEMBER_BYTES) -> dict:
    """One sample as a webdataset dict, read by the rule :func:`read_runs` applies to a run of one.

    For random access (:class:`~streamprune.readers.mapstyle.PrunedMapDataset`): large members
    (``direct_member_bytes`` or more on average) are read one by one straight into their
    values, after a 512-byte read of the sample's first header; smaller ones come from one
    read of the whole sample, sliced. The first header is checked against the index either way.

    Args:
        shard: The open shard.
        pos: The sample's position in the shard.
        url: Value for the sample's ``__url__``.
        direct_member_bytes: Mean member size from which members are read one by one.

    Returns:
        ``{"__key__": key, "__url__": url, ext: bytes, ...}``.

    Raises:
        IndexMismatchError: The sample's first header disagrees with the index, or the file is
            shorter than the index says.
        ChecksumError: ``shard.verify`` is on and the sample's bytes differ from its checksum.
    """
    index = shard.index
    key = index.keys[pos]
    group = index.members[pos]
    lo = int(index.start[pos])
    hi = int(index.end[pos])
    fd = shard.fd
    sample: dict = {"__key__": key, "__url__": url}
    if not group:
        shard.check_sample(pos)
    elif fd >= 0 and hi - lo >= direct_member_bytes * len(group):
        ext, offset, size = group[0]
        if offset - lo != BLOCK or not _plain_header_matches(os.pread(fd, BLOCK, lo), f"{key}.{ext}", size):
            shard.check_sample(pos)  # PAX / long names, or a mismatch: the full check decides
        for ext, offset, size in group:
            sample[ext] = read_exact(fd, size, offset, shard.path, key)
    else:
        # a remote shard (no descriptor) is read the same way: one request for the whole sample
        data = read_exact(fd, hi - lo, lo, shard.path, key) if fd >= 0 else shard.read_range(lo, hi, key)
        ext, offset, size = group[0]
        if offset - lo != BLOCK or not _plain_header_matches(data[:BLOCK], f"{key}.{ext}", size):
            shard.check_sample(pos, memoryview(data))
        for ext, offset, size in group:
            sample[ext] = data[offset - lo : offset - lo + size]
    if shard.verify:
        shard.check_checksum(pos, [sample[ext] for ext, _, _ in group])
    return sample
