"""One chunk file of the kept-bytes cache: written atomically, validated before any byte is used.

A chunk holds some samples of one shard version: their bytes back to back, then a table
(position, start in the shard, length, xxh3_64 digest per sample), a JSON header naming what
the chunk was made for, and a fixed trailer (FORMATS.md, "Kept-bytes cache"). Opening one
checks the trailer, the digest of everything after the sample bytes (table, header,
trailer), the version, the header against what the caller expects and every byte range
against the shard's index; each sample's own digest is checked before its bytes are handed
out (:meth:`Chunk.check`), so a sample is verified as it is read, while its bytes are hot
in the CPU cache, and samples never read are never hashed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import struct
from typing import Any, Sequence

import numpy as np

try:
    from xxhash import xxh3_64_intdigest
except ImportError:  # a declared dependency; without it the cache refuses to start (_xxh3)
    xxh3_64_intdigest = None

from ..atomic import temp_name
from ..errors import CacheError
from ..shardindex import checksum_hasher

__all__ = ["Chunk", "ChunkError", "CHUNK_SUFFIX", "CHUNK_VERSION", "FORMAT_NAME", "open_chunk", "write_chunk", "sample_digest"]

#: Chunk file version (FORMATS.md, "Kept-bytes cache").
CHUNK_VERSION = 1
CHUNK_SUFFIX = ".spcache"
FORMAT_NAME = "streamprune-kept-cache"
MAGIC = b"SPKCHUNK"
# data_length, count, header_length, footer_length, version, digest (u64 LE each), magic.
# The last 32 bytes (footer_length, version, digest, magic) keep their meaning in every version:
# the digest covers the footer_length bytes before it, so any version can be told from damage.
TRAILER = struct.Struct("<QQQQQQ8s")
_TAIL = 16  # digest and magic: not covered by the digest
_TABLE_COLUMNS = 4  # positions, starts, lengths, digests
_DIRECT_WRITE = 256 << 10  # pieces at least this large are written without copying into the buffer
_WRITE_BUFFER = 1 << 20


class ChunkError(CacheError):
    """A chunk file cannot be used. ``other_version``: it is whole but of another format version."""

    def __init__(self, message: str, other_version: bool = False) -> None:
        super().__init__(message)
        self.other_version = other_version


def _xxh3() -> Any:
    try:
        return checksum_hasher("xxh3_64")
    except KeyError as exc:  # xxhash is a declared dependency; say so if it is missing anyway
        raise CacheError(f"the kept-bytes cache needs xxhash for its digests: {exc.args[0]}") from None


def sample_digest(data: bytes | memoryview) -> int:
    """The xxh3_64 digest a chunk records for one sample's bytes."""
    if xxh3_64_intdigest is not None:
        return xxh3_64_intdigest(data)  # one call per served sample: the one-shot form, no hasher object
    h = _xxh3()()
    h.update(data)
    return h.intdigest()


class Chunk:
    """A validated chunk file, memory-mapped read-only.

    Attributes:
        path: The file.
        size: Its size in bytes.
        identity: ``(st_dev, st_ino, st_size, st_mtime_ns)`` of the file when it was opened: a
            file with another identity under the same name is another file.
        positions: ``int64[n]`` sample positions in the shard, in file order.
        starts: ``int64[n]`` their starts in the shard.
        header: The decoded JSON header.
        verified: Per table row, whether that sample's digest was checked and matched.
        bad: Set once a sample failed its check: nothing more is served from this chunk.
        users: How many holders share it (kept by :class:`~streamprune.readers.keptcache.KeptCache`).
    """

    def __init__(self, path: str, identity: tuple, mm: mmap.mmap, positions: np.ndarray, starts: np.ndarray,
                 lengths: np.ndarray, digests: np.ndarray, header: dict) -> None:
        self.path, self.identity, self.size, self.header = path, identity, identity[2], header
        self._map: mmap.mmap | None = mm
        self._view: memoryview | None = memoryview(mm)
        self.positions, self.starts, self.lengths = positions, starts, lengths
        self.users = 0
        offsets = np.zeros(len(positions), dtype=np.int64)
        if len(positions) > 1:
            np.cumsum(lengths[:-1], out=offsets[1:])
        # lists: a scalar per served sample from a list is several times faster than from numpy
        self._offsets, self._lengths, self._digests = offsets.tolist(), lengths.tolist(), digests.tolist()
        self.verified = [False] * len(positions)
        self.bad = False

    def __len__(self) -> int:
        return len(self.positions)

    def matches(self, expect: dict, starts: np.ndarray, lengths: np.ndarray) -> bool:
        """Whether this chunk suits a shard opened with ``expect`` and this index (see :func:`open_chunk`)."""
        return (all(self.header.get(k) == v for k, v in expect.items()) and bool(len(self.positions))
                and int(self.positions.max()) < len(starts) and np.array_equal(self.starts, starts[self.positions])
                and np.array_equal(self.lengths, lengths[self.positions]))

    @property
    def live(self) -> bool:
        """Whether samples are still served from this chunk (not released, none found damaged)."""
        return self._view is not None and not self.bad

    def sample(self, row: int) -> memoryview | None:
        """The bytes of table row ``row`` (not yet checked; see :meth:`check`), or ``None`` once released or bad."""
        view = self._view
        if view is None or self.bad:
            return None
        off = self._offsets[row]
        return view[off : off + self._lengths[row]]

    def check(self, row: int, data: memoryview) -> bool:
        """Whether ``data`` (from :meth:`sample`) matches its recorded digest; remembered when it does."""
        if self.verified[row]:
            return True
        ok = sample_digest(data) == self._digests[row]
        if ok:
            self.verified[row] = True
        else:
            self.bad = True
        return ok

    def release(self) -> None:
        """Unmap (now, or when the last sample handed out is dropped)."""
        view, mm = self._view, self._map
        self._view = self._map = None
        if view is not None:
            with contextlib.suppress(BufferError):
                view.release()
        if mm is not None:
            with contextlib.suppress(BufferError):  # a sample handed out still holds the map: freed with it
                mm.close()


def open_chunk(path: str, expect: dict, starts: np.ndarray, lengths: np.ndarray) -> Chunk:
    """Map ``path`` and validate everything but the samples' own digests.

    Args:
        path: The chunk file.
        expect: Header fields that must match (format, version, dataset id, shard id, size, ETag,
            sample count).
        starts: The shard index's ``start`` per position.
        lengths: The shard index's ``end - start`` per position.

    Returns:
        The chunk.

    Raises:
        FileNotFoundError: It is gone (evicted, or removed as invalid by another process).
        OSError: It cannot be opened or mapped.
        ChunkError: It is damaged, made for something else, or of another version.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        size = st.st_size
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if size < TRAILER.size:
            raise ChunkError(f"{size} bytes: shorter than a chunk trailer (torn or truncated write)")
        mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        return _validate(path, mm, identity, expect, starts, lengths)
    except BaseException:
        mm.close()
        raise


def _validate(path: str, mm: mmap.mmap, identity: tuple, expect: dict, starts: np.ndarray, lengths: np.ndarray) -> Chunk:
    size = identity[2]
    data_len, count, header_len, footer_len, version, digest, magic = TRAILER.unpack_from(mm, size - TRAILER.size)
    if magic != MAGIC:
        raise ChunkError("no chunk trailer (torn or truncated write)")
    if footer_len > size - _TAIL:
        raise ChunkError(f"footer length {footer_len} exceeds the file's {size} bytes")
    h = _xxh3()()
    with memoryview(mm) as view:
        h.update(view[size - _TAIL - footer_len : size - _TAIL])
    if h.intdigest() != digest:
        raise ChunkError("footer digest mismatch")
    if version != CHUNK_VERSION:
        raise ChunkError(f"chunk version {version}, this release reads {CHUNK_VERSION}", other_version=True)
    table_len = 8 * _TABLE_COLUMNS * count
    if data_len % 8 or footer_len != table_len + header_len + TRAILER.size - _TAIL or data_len + footer_len + _TAIL != size:
        raise ChunkError(f"trailer lengths (data {data_len}, {count} samples, header {header_len}, footer {footer_len}) "
                         f"do not add up to the file's {size} bytes")
    table = np.frombuffer(mm, dtype="<u8", count=_TABLE_COLUMNS * count, offset=data_len).reshape(_TABLE_COLUMNS, count).copy()
    positions, got_starts, got_lengths = (col.astype(np.int64) for col in table[:3])
    digests = table[3]
    try:
        header = json.loads(mm[data_len + table_len : data_len + table_len + header_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ChunkError(f"unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise ChunkError("header is not a JSON object")
    for key, value in expect.items():
        if header.get(key) != value:
            raise ChunkError(f"made for {key} {header.get(key)!r}, not {value!r}")
    n = len(starts)
    if count and (positions.min() < 0 or positions.max() >= n):
        raise ChunkError(f"positions outside the shard's {n} samples")
    if not 0 <= data_len - int(got_lengths.sum()) < 8:
        raise ChunkError("sample lengths do not add up to the data section")
    if not (np.array_equal(got_starts, starts[positions]) and np.array_equal(got_lengths, lengths[positions])):
        raise ChunkError("byte ranges differ from the shard's index")
    return Chunk(path, identity, mm, positions, got_starts, got_lengths, digests, header)


def write_chunk(path: str, items: Sequence[tuple[int, bytes | memoryview]], starts: np.ndarray, lengths: np.ndarray,
                header: dict, fsync: bool = True) -> int:
    """Write samples as a chunk file: a temporary name, fsync, then a rename to ``path``.

    Args:
        path: Final name (its directory must exist).
        items: ``(position, bytes)`` per sample, in the order to store them.
        starts: The shard index's ``start`` per position.
        lengths: The shard index's ``end - start`` per position.
        header: The JSON header (what the chunk is for).
        fsync: Flush the data before the rename.

    Returns:
        The file's size.

    Raises:
        OSError: The write failed (the temporary is removed; nothing is left under ``path``).
    """
    positions = np.fromiter((p for p, _ in items), dtype=np.int64, count=len(items))
    digests = np.fromiter((sample_digest(d) for _, d in items), dtype=np.uint64, count=len(items))
    data_len = int(lengths[positions].sum())
    pad = -data_len % 8
    table = b"".join(col.astype("<u8").tobytes() for col in (positions, starts[positions], lengths[positions], digests))
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    footer_len = len(table) + len(head) + TRAILER.size - _TAIL
    tail = TRAILER.pack(data_len + pad, len(items), len(head), footer_len, CHUNK_VERSION, 0, MAGIC)[: TRAILER.size - _TAIL]
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        out = _Writer(fd)
        for _, data in items:
            out.write(data)
        out.write(b"\0" * pad)
        out.flush()
        h = _xxh3()()
        for part in (table, head, tail):
            h.update(part)
        _write_all(fd, table + head + tail + struct.pack("<Q", h.intdigest()) + MAGIC)
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return data_len + pad + footer_len + _TAIL


class _Writer:
    """Buffered ``os.write``: small samples go out one system call per MiB."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        if len(data) >= _DIRECT_WRITE:
            self.flush()
            _write_all(self.fd, data)
            return
        self.buffer += data
        if len(self.buffer) >= _WRITE_BUFFER:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            _write_all(self.fd, self.buffer)
            self.buffer = bytearray()


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - os.write raises rather than returning 0 on a regular file
            raise OSError(errno.EIO, "write returned 0")
        view = view[n:]
