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
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .. import storage
from ..errors import ChecksumError, IndexMismatchError, ManifestError, TarFormatError, redact
from ..indexfile import object_marker
from ..shardindex import MemberTable, ShardIndex, checksum_hasher
from ..tarindex import BLOCK, split_key_ext, walk_headers

__all__ = [
    "ShardFile", "ReadAhead", "SampleMembers", "sample_members", "samples_from_buffer", "read_runs", "read_sample",
    "plan_runs", "run_spans", "default_verify", "read_exact", "READAHEAD_BYTES",
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
    """An open shard checked against its index: the one way every reader opens a shard.

    The shard is read through a :class:`~streamprune.storage.StorageObject`: a
    :class:`~streamprune.storage.LocalObject` (positioned reads on its descriptor, ``fd``) or a
    :class:`~streamprune.storage.RemoteObject` (ranged requests; ``fd`` is ``-1``). Opening it
    checks, in one place, that the object is what the index describes: its size must equal the
    index's, and when the index recorded the object's ETag for this same URL (indexed or written
    remotely) the ETag must match too; every later read is then sent with that ETag as a
    precondition (HTTP ``If-Match``, S3 ``IfMatch``:
    :meth:`~streamprune.storage.RemoteObject.expect_etag`).

    Args:
        source: The shard: a :class:`~streamprune.storage.StorageObject` (the shard takes
            it over: closing the shard closes it), or a path or URL, opened with
            :func:`~streamprune.storage.open_object`.
        index: The shard's index.
        fadvise: For a local file: use ``posix_fadvise`` to disable read-ahead and prefetch
            kept ranges. Ignored for a remote object.
        verify: Check every sample read against its checksum in the index. ``None``: the
            storage's default (:func:`default_verify`), skipped quietly when the index has no
            checksums; ``True`` on an index without checksums is an error.
        storage_options: fsspec options, when ``source`` is a URL.

    Raises:
        IndexMismatchError: The shard is missing, or its size or ETag differs from what the
            index recorded (later, on a read: a member header that disagrees, or
            :class:`~streamprune.storage.ObjectChangedError`, a subclass).
        ManifestError: ``verify=True`` but the index has no checksums, or their algorithm is
            not available here.
    """

    def __init__(self, source: storage.StorageObject | str | os.PathLike, index: ShardIndex, fadvise: bool = True,
                 verify: bool | None = None, storage_options: dict | None = None) -> None:
        if isinstance(source, storage.StorageObject):
            obj = source
        else:
            try:
                obj = storage.open_object(os.fspath(source), storage_options)
            except FileNotFoundError:
                raise IndexMismatchError(f"{os.fspath(source)}: shard file is missing") from None
        try:
            self.path = obj.url
            self.index = index
            self.storage = obj
            self.fd: int = getattr(obj, "fd", -1)
            self.verify = _resolve_verify(obj.url, index, verify)
            self._hasher = checksum_hasher(index.checksum_algorithm) if self.verify else None
            _check_object(obj, index)
        except BaseException:
            obj.close()
            raise
        self.fadvise = fadvise and _HAS_FADVISE and self.fd >= 0
        if self.fadvise:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)

    @classmethod
    def from_storage(cls, obj: storage.StorageObject, index: ShardIndex, verify: bool | None = None) -> "ShardFile":
        """``ShardFile(obj, index, fadvise=False, verify=verify)``: a shard the scheduler reads on its threads.

        No read-ahead hints: the scheduler keeps its own requests in flight.
        """
        return cls(obj, index, fadvise=False, verify=verify)

    def read_range(self, start: int, end: int, key: str = "") -> bytes:
        """Bytes ``[start, end)`` of the shard, exactly (a short read is an error naming ``key``)."""
        if self.fd < 0:
            return self.storage.read(start, end)
        return read_exact(self.fd, end - start, start, self.path, key)

    def check_sample(self, i: int, head: bytes | memoryview | None = None, start: int = -1,
                     first: tuple[str, int, int] | None = None) -> None:
        """Check that the tar headers of sample ``i``'s first member match the index: the one header check.

        Every read checks its first sample here (a coalesced run, a request, a lone sample). A
        plain ustar header (the common case) is compared field by field; anything else (PAX
        or GNU long-name headers) is parsed as the indexer parses it (PAX ``path``, GNU long
        names and the ustar name prefix applied), so any valid tar indexed earlier passes.

        Args:
            i: Sample position in the shard.
            head: The sample's bytes from its first header on, when the caller has read them
                already (a coalesced read); otherwise the header is read from the shard.
            start: The sample's first byte, when the caller has it (``-1``: from the index).
            first: The sample's first member ``(extension, data offset, size)``, when the caller
                has it (``None``: from the index).

        Raises:
            IndexMismatchError: Naming the shard, sample and what differs.
        """
        if self.index.format != "tar":
            # MDS and LitData samples carry no in-band header to compare; the shard's size
            # (checked at open) and the per-sample checksums (verify) guard them
            return
        ext, offset, size = _first_member(self.index, i) if first is None else first
        key = self.index.keys[i]
        if start < 0:
            start = int(self.index.start[i])
        if offset - start == BLOCK:
            if head is not None and len(head) >= BLOCK:
                header = bytes(head[:BLOCK])
            else:  # a short local read fails the compare below, and the walk then names the problem
                header = os.pread(self.fd, BLOCK, start) if self.fd >= 0 else self.read_range(start, offset, key)
            if _plain_header_matches(header, f"{key}.{ext}", size):
                return
        member = None
        if 0 <= start <= offset - BLOCK:
            view = _ShardView(self, start) if head is None else _BufferView(head, self, start)
            try:
                member = next(walk_headers(view, self.index.shard_bytes - start, self.path), None)
            except (TarFormatError, OSError):  # OSError: a request for the header bytes failed
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
        """Close the storage object (and so the local file's descriptor)."""
        self.storage.close()
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


def _check_object(obj: storage.StorageObject, index: ShardIndex) -> None:
    """Check that ``obj`` is the shard ``index`` describes: its size, and its ETag where the index recorded one.

    Raises:
        IndexMismatchError: Naming the shard and what differs.
    """
    size = obj.size
    if size != index.shard_bytes:
        raise IndexMismatchError(
            f"{obj.url}: shard is {size} bytes but its index describes {index.shard_bytes}; the shard was "
            "rewritten or replaced after indexing (re-run `streamprune index`)"
        )
    marker = object_marker(index)
    # the index records the URL redacted (indexfile never writes credentials)
    etag = obj.etag if marker.get("etag") and marker.get("url") == redact(obj.url) else ""
    if etag and etag != marker["etag"]:
        raise IndexMismatchError(
            f"{obj.url}: object ETag is {etag} but the index recorded {marker['etag']}: the object was replaced "
            "after indexing (re-run `streamprune index`)"
        )
    if etag:
        obj.expect_etag(etag)  # and every read must still see that object: one replaced mid-epoch is an error


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


class _ShardView:
    """Byte slices of an open shard, relative to ``base`` (what the tar header walk reads)."""

    def __init__(self, shard: ShardFile, base: int) -> None:
        self.shard = shard
        self.base = base

    def __getitem__(self, span: slice) -> bytes:
        start = self.base + span.start
        stop = min(self.base + span.stop, self.shard.index.shard_bytes)  # the walk may ask past the end
        return self.shard.read_range(start, stop) if stop > start else b""


class _BufferView(_ShardView):
    """Like :class:`_ShardView`, but served from bytes already read where they cover the slice."""

    def __init__(self, head: bytes | memoryview, shard: ShardFile, base: int) -> None:
        super().__init__(shard, base)
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

#: The members of some samples as flat sequences, ``(first, ext, offset, size)``: what
#: :func:`samples_from_buffer` slices by. Sample ``j`` (the ``j``-th of the positions they were
#: gathered for) has members ``first[j]:first[j + 1]`` of the other three, in archive order. A
#: plain tuple: built per lone sample, where a named tuple's constructor would cost more than the
#: slicing.
SampleMembers = tuple[Sequence[int], Sequence[str], Sequence[int], Sequence[int]]


#: Up to this many samples, :func:`sample_members` reads the index's member lists; more are gathered with numpy.
_FEW_SAMPLES = 8


def sample_members(index: ShardIndex, positions: Sequence[int] | np.ndarray) -> SampleMembers:
    """The members of the samples at ``positions`` (in that order), as :data:`SampleMembers`.

    Many samples are gathered in a few bulk numpy steps (no per-sample tuples or lists, and a
    pruned sample costs nothing); a few (a lone sample, a small request) come from the index's
    member lists, which costs less than the numpy calls.

    Args:
        index: The shard's index.
        positions: Sample positions in the shard.

    Returns:
        The members, flat.
    """
    members = index.members
    if not isinstance(members, MemberTable):  # lists of tuples (an index parsed from JSON or walked from tar headers)
        first, exts, offsets, sizes = [0], [], [], []
        for pos in (positions.tolist() if isinstance(positions, np.ndarray) else positions):
            for ext, offset, size in members[pos]:
                exts.append(ext)
                offsets.append(offset)
                sizes.append(size)
            first.append(len(exts))
        return first, exts, offsets, sizes
    if len(positions) <= _FEW_SAMPLES:
        rows, ext_col, offset_col, size_col = members.columns()
        first, exts, offsets, sizes = [0], [], [], []
        for pos in (positions.tolist() if isinstance(positions, np.ndarray) else positions):
            a, b = rows[pos], rows[pos + 1]
            exts += ext_col[a:b]
            offsets += offset_col[a:b]
            sizes += size_col[a:b]
            first.append(len(exts))
        return first, exts, offsets, sizes
    order = np.asarray(positions, dtype=np.int64)
    row_first, ext_id, offset, size, extensions = members.arrays
    lo = row_first[order]
    count = row_first[order + 1] - lo
    ends = np.cumsum(count)
    # row of every member of the chosen samples: each sample's first row plus 0, 1, ... count-1
    rows = np.repeat(lo - (ends - count), count) + np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
    first = [0]
    first.extend(ends.tolist())
    return first, [extensions[e] for e in ext_id[rows].tolist()], offset[rows].tolist(), size[rows].tolist()


def samples_from_buffer(
    shard: ShardFile,
    positions: Sequence[int],
    a: int,
    b: int,
    lo: int,
    data: bytes,
    url: str,
    members: SampleMembers | None = None,
    check_header: bool = True,
    verify: bool | None = None,
) -> Iterable[dict]:
    """The samples ``positions[a:b]`` of one read, sliced out of its bytes: the one buffer-to-sample routine.

    Every read of several samples' bytes at once goes through here: a coalesced run
    (:func:`read_runs`), a sample read whole (:func:`read_sample`), a scheduled request
    (:func:`~streamprune.readers.scheduler.read_shards_scheduled`), a few samples' members
    (:func:`~streamprune.keys.read_member_data`). The read's first header is checked against
    the index (:meth:`ShardFile.check_sample`), each member is sliced into its own ``bytes``
    (one copy), and with ``shard.verify`` each sample is checked against its checksum before
    it is yielded.

    Args:
        shard: The open shard.
        positions: Sample positions in the shard; ``positions[a:b]`` lie in ``data``, in that order.
        a: First of them.
        b: One past the last.
        lo: Shard offset of ``data[0]`` (the first sample's first header).
        data: The bytes read (``bytes``: slices are copies the caller may keep; a ``memoryview``,
            e.g. of a mapped cache file, is copied member by member).
        url: Value for each sample's ``__url__``.
        members: :func:`sample_members` of ``positions`` (all of them), when the caller gathered
            them once for many reads; ``None``: gathered here for ``positions[a:b]``.
        check_header: Check the first sample's tar header against the index.
        verify: Check each sample's checksum; ``None``: ``shard.verify`` (``False`` for bytes
            checked already, e.g. against the kept-bytes cache's digests).

    Returns:
        The samples in order, ``{"__key__": key, "__url__": url, ext: bytes, ...}``: a tuple
        for a lone sample, else a generator (so a checksum error is raised after the samples
        before it have been yielded). The header is checked when this is called.

    Raises:
        IndexMismatchError: The first header disagrees with the index.
        ChecksumError: ``shard.verify`` is on and a sample's bytes differ from its checksum.
    """
    if members is None:
        positions = positions[a:b]
        a, b = 0, len(positions)
        members = sample_members(shard.index, positions)
    first, exts, offsets, sizes = members
    if check_header:
        m0 = first[a]
        shard.check_sample(positions[a], data, lo, (exts[m0], offsets[m0], sizes[m0]) if first[a + 1] > m0 else None)
    verify = shard.verify if verify is None else verify and shard.verify
    src: Any = data if not isinstance(data, memoryview) else _Copies(data)
    if b - a > 1:
        return _slice_samples(shard, positions, a, b, first, exts, offsets, sizes, lo, src, url, verify)
    # A lone sample (most reads of a pruned shard, every map-style read), sliced here: a generator
    # and another call cost as much as the slicing of a small sample.
    pos, m0, m1 = positions[a], first[a], first[b]
    sample = {"__key__": shard.index.keys[pos], "__url__": url}
    for m in range(m0, m1):
        rel = offsets[m] - lo
        sample[exts[m]] = src[rel : rel + sizes[m]]
    if verify:
        shard.check_checksum(pos, [sample[exts[m]] for m in range(m0, m1)])
    return (sample,)


class _Copies:
    """A memoryview whose slices are ``bytes`` copies (a sample must not pin a mapped file)."""

    def __init__(self, view: memoryview) -> None:
        self.view = view

    def __getitem__(self, span: slice) -> bytes:
        return bytes(self.view[span])


def _slice_samples(shard: ShardFile, positions: Sequence[int], a: int, b: int, first: Sequence[int], exts: Sequence[str],
                   offsets: Sequence[int], sizes: Sequence[int], lo: int, data: Any, url: str, verify: bool) -> Iterator[dict]:
    """:func:`samples_from_buffer`'s samples, one at a time (a checksum error comes after the samples before it)."""
    keys = shard.index.keys
    for j in range(a, b):
        pos = positions[j]
        sample = {"__key__": keys[pos], "__url__": url}
        for m in range(first[j], first[j + 1]):
            rel = offsets[m] - lo
            sample[exts[m]] = data[rel : rel + sizes[m]]  # bytes slicing: one copy, no memoryview
        if verify:
            shard.check_checksum(pos, [sample[exts[m]] for m in range(first[j], first[j + 1])])
        yield sample


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
    read and sliced by :func:`samples_from_buffer` (fewer system calls). Either way
    only the kept samples' bytes are read, and every read's first tar header is checked
    against the index. When ``shard.verify`` is on, each sample is checked against its
    checksum before it is yielded.

    Args:
        shard: The open shard (a local file: positioned reads on its descriptor).
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
    members = sample_members(index, order)
    member_first, exts, offsets, sizes = members
    starts = index.start[order].tolist()
    run_lo = [starts[a] for a, _ in runs]
    run_hi = index.end[order[[b - 1 for _, b in runs]]].tolist()
    fd = shard.fd
    path = shard.path
    pread = os.pread  # looked up per call (tests record reads by patching os.pread)
    verify = shard.verify
    if not shard.fadvise:
        readahead = None
    elif readahead is None:
        readahead = ReadAhead(prefetch_bytes)
        readahead.add(shard, run_lo, run_hi)
    for r, (a, b) in enumerate(runs):
        lo = run_lo[r]
        hi = run_hi[r]
        if readahead is not None:
            readahead.fill()
            readahead.consumed(hi - lo)
        m0 = member_first[a]
        if hi - lo > max_run_bytes or hi - lo >= direct_member_bytes * (member_first[b] - m0):
            # large members: one read per member, straight into its value; the run's first
            # header is read on its own (512 bytes, far cheaper than copying the run again)
            if check_headers:
                shard.check_sample(positions[a], None, lo, (exts[m0], offsets[m0], sizes[m0]) if member_first[a + 1] > m0 else None)
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
        yield from samples_from_buffer(shard, positions, a, b, lo, data, url, members, check_headers)


def _short_read(path: str, key: str, got: int, size: int, offset: int) -> IndexMismatchError:
    """The error :func:`read_exact` raises, for reads made inline in :func:`read_runs`."""
    return IndexMismatchError(
        f"{path}: sample {key!r}: read {got} of {size} bytes at offset {offset}; the shard is shorter "
        "than its index says (truncated or rewritten after indexing)"
    )


def read_sample(shard: ShardFile, pos: int, url: str, direct_member_bytes: int = DIRECT_MEMBER_BYTES) -> dict:
    """One sample as a webdataset dict, read by the rule :func:`read_runs` applies to a run of one.

    For random access (:class:`~streamprune.readers.mapstyle.PrunedMapDataset`): large members
    (``direct_member_bytes`` or more on average) of a local shard are read one by one straight
    into their values, after a 512-byte read of the sample's first header; otherwise (smaller
    members, or a remote shard: one request) the whole sample is read at once and sliced by
    :func:`samples_from_buffer`. The first header is checked against the index either way.

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
    # the sample's member rows, looked up once: (a, b) of the index's own columns when it has them
    members = index.members
    if isinstance(members, MemberTable):
        rows, exts, offsets, sizes = members.columns()
        first = (rows[pos], rows[pos + 1])
    else:
        group = members[pos]
        exts, offsets, sizes = zip(*group) if group else ((), (), ())
        first = (0, len(group))
    m0, m1 = first
    lo = int(index.start[pos])
    hi = int(index.end[pos])
    fd = shard.fd
    if m0 == m1 or fd < 0 or hi - lo < direct_member_bytes * (m1 - m0):
        data = read_exact(fd, hi - lo, lo, shard.path, key) if fd >= 0 else shard.read_range(lo, hi, key)
        return next(iter(samples_from_buffer(shard, (pos,), 0, 1, lo, data, url, (first, exts, offsets, sizes))))
    shard.check_sample(pos, None, lo, (exts[m0], offsets[m0], sizes[m0]))
    sample: dict = {"__key__": key, "__url__": url}
    for m in range(m0, m1):
        sample[exts[m]] = read_exact(fd, sizes[m], offsets[m], shard.path, key)
    if shard.verify:
        shard.check_checksum(pos, [sample[exts[m]] for m in range(m0, m1)])
    return sample
