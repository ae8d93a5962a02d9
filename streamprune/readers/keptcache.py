"""A local cache of the kept samples' bytes, so later epochs of a remote dataset read from disk.

The first epoch of a remote dataset fetches the kept samples' byte ranges over the network;
:class:`KeptCache` stores them on local disk as they are read, and later epochs read them
there and fetch only what is missing (a mask that changes per epoch, as InfoBatch's does,
reuses whatever is cached). Caches that hold whole shards (MosaicML streaming, LitData) hold
the pruned bytes too; this one holds about ``1 - r`` of the dataset.

One directory serves several processes on one machine (DataLoader workers, DDP ranks) and
survives restarts. Layout and file format: FORMATS.md, "Kept-bytes cache". In short::

    cache_dir/.keptcache.lock                            lock file (flock) + approximate usage
    cache_dir/<dataset>/<shard>-<size>-<etag>/<name>.spcache   chunk files

A cache made for another manifest or another version of the object is never used: the
directory names hash the dataset id, the shard id, the object's size and ETag, and each chunk
file's header records them again and is compared on read. A chunk is validated (trailer,
lengths, xxh3_64 digest of the whole file, header, byte ranges against the index) before any
of its bytes is used; an invalid one is deleted, logged, and its samples count as missing.
Chunks are written under a temporary name, fsynced and renamed, so a process killed mid-write
leaves only a temporary, which is never read and is removed by a later process once its
writer is dead (or it is older than ``max_temp_age``).

When the total size exceeds ``limit_bytes``, whole shard directories are evicted, least
recently used first (a shard directory's mtime is its last use: set when the shard is opened
and when a chunk is written), under an exclusive ``flock`` so that two processes do not evict
at once. A process reading an evicted chunk keeps its bytes: chunks are memory-mapped, and an
unlinked file lives on while mapped.

A full disk (or quota) while writing removes the temporary, logs one warning, and turns
writing off for that :class:`KeptCache`; reads go on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import mmap
import os
import re
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..atomic import remove_stale_temps, temp_name
from ..errors import CacheError
from ..shardindex import ShardIndex, checksum_hasher

__all__ = ["KeptCache", "ShardCache", "CHUNK_SUFFIX", "CHUNK_VERSION"]

log = logging.getLogger(__name__)

#: Chunk file version (FORMATS.md, "Kept-bytes cache").
CHUNK_VERSION = 1
CHUNK_SUFFIX = ".spcache"
FORMAT_NAME = "streamprune-kept-cache"
_MAGIC = b"SPKCHUNK"
# data_length, count, header_length, version, digest (u64 LE each), magic (8 bytes). The last
# 24 bytes (version, digest over everything before it, magic) keep their meaning in every version.
_TRAILER = struct.Struct("<QQQQQ8s")
_DIGESTED_TAIL = 16  # the digest and the magic are not part of what the digest covers
_LOCK_NAME = ".keptcache.lock"
_LEDGER = struct.Struct("<8sQ")
_LEDGER_MAGIC = b"SPKCUSE1"
_TEMP_RE = re.compile(re.escape(CHUNK_SUFFIX) + r"\.tmp-(\d+)$")
_DIRECT_WRITE = 256 << 10  # pieces at least this large are written without copying into the buffer
_WRITE_BUFFER = 1 << 20
# errors that mean "no room": writing stops for this instance, reads go on
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _hasher() -> Any:
    try:
        return checksum_hasher("xxh3_64")()
    except KeyError as exc:  # xxhash is a declared dependency; say so if it is missing anyway
        raise CacheError(f"the kept-bytes cache needs xxhash for its chunk digests: {exc.args[0]}") from None


def _digest(data: memoryview) -> int:
    h = _hasher()
    h.update(data)
    return h.intdigest()


def _hex(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _readable(name: str) -> str:
    """The last path component of ``name`` with anything unusual replaced, for humans browsing the cache."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]", "_", base)[:40] or "shard"


def _dir_size(path: str) -> tuple[int, list[str]]:
    """Total bytes of the chunk files in a shard directory, and their paths."""
    total, files = 0, []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        with os.scandir(path) as it:
            for entry in it:
                if entry.name.endswith(CHUNK_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        total += entry.stat(follow_symlinks=False).st_size
                        files.append(entry.path)
    return total, files


def _sweep_temps(directory: str, max_age: float) -> None:
    """Remove temporaries left by killed writers in ``directory``: writer dead, or older than ``max_age`` seconds."""
    with contextlib.suppress(FileNotFoundError):
        remove_stale_temps(directory, ["*" + CHUNK_SUFFIX])  # writer's process is gone
    now = time.time()
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        with os.scandir(directory) as it:
            for entry in it:
                m = _TEMP_RE.search(entry.name)
                if m is None:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    if int(m.group(1)) != os.getpid() and now - st.st_mtime > max_age:
                        os.unlink(entry.path)  # a writer stuck this long, or a recycled pid


@dataclass
class _Chunk:
    """One validated chunk file, memory-mapped."""

    path: str
    size: int
    map: mmap.mmap | None
    view: memoryview | None
    positions: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray

    def release(self) -> None:
        view, mm = self.view, self.map
        self.view = self.map = None
        if view is not None:
            with contextlib.suppress(BufferError):
                view.release()
        if mm is not None:
            # a sample handed out by get() may still hold the map; it is freed when that goes
            with contextlib.suppress(BufferError):
                mm.close()


class KeptCache:
    """A size-limited local cache of kept samples' bytes, shared by processes on one machine.

    Args:
        cache_dir: The cache directory (created if missing). Several processes may use it at once.
        limit_bytes: Most bytes of chunk files kept; least recently used shards are evicted
            beyond it.
        chunk_bytes: A shard's added bytes are written as a chunk file once this many are
            pending (and at :meth:`ShardCache.commit`), so a long shard is not held in memory.
        max_chunks: A commit that would leave more chunk files than this for one shard
            rewrites everything that shard's cache holds as one file (a mask that changes per
            epoch adds a small chunk each epoch).
        low_water: Eviction goes down to ``low_water * limit_bytes``, so a full cache does
            not evict (a directory walk) at every commit.
        fsync: Flush each chunk to disk before renaming it into place (off only for tests and
            throwaway caches: a power loss could leave a renamed file with missing data,
            which the digest then rejects).
        max_temp_age: Seconds after which a temporary left by a writer whose process still
            seems alive (a recycled pid) is removed anyway.

    Raises:
        CacheError: ``cache_dir`` cannot be created or written, or a limit is not positive.
    """

    def __init__(self, cache_dir: str | os.PathLike, limit_bytes: int, chunk_bytes: int = 64 << 20, max_chunks: int = 16,
                 low_water: float = 0.9, fsync: bool = True, max_temp_age: float = 3600.0) -> None:
        self.cache_dir = os.path.abspath(os.fspath(cache_dir))
        if not limit_bytes > 0:
            raise CacheError(f"KeptCache({self.cache_dir!r}): limit_bytes must be positive, got {limit_bytes!r}")
        if not chunk_bytes > 0 or not max_chunks >= 1 or not 0 < low_water <= 1:
            raise CacheError(f"KeptCache({self.cache_dir!r}): chunk_bytes > 0, max_chunks >= 1 and 0 < low_water <= 1 "
                             f"are required, got {chunk_bytes!r}, {max_chunks!r}, {low_water!r}")
        self.limit_bytes = int(limit_bytes)
        self.chunk_bytes = int(chunk_bytes)
        self.max_chunks = int(max_chunks)
        self.low_water = float(low_water)
        self.fsync = bool(fsync)
        self.max_temp_age = float(max_temp_age)
        _hasher()  # fail now, not at the first chunk, if xxhash is missing
        self._init_process_state()
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
            self._lock_fd()
        except OSError as exc:
            raise CacheError(f"kept-bytes cache directory {self.cache_dir!r} cannot be used: "
                             f"{exc.strerror or exc} (it must be a writable directory)") from None
        with self._locked() as fd:
            usage = self._ledger_read(fd)
            if usage is None or usage > self.limit_bytes:
                self._evict_locked(fd)

    def _init_process_state(self) -> None:
        self._mutex = threading.RLock()  # the lock file descriptor, and flock between this process's threads
        self._stats_lock = threading.Lock()  # separate: a get() never waits for an eviction's walk
        self._fd = -1
        self._fd_pid = -1
        self._writable = True
        self._names = itertools.count()
        self._stats = {"hits": 0, "misses": 0, "bytes_served": 0, "bytes_written": 0, "chunks_written": 0,
                       "evictions": 0, "bytes_evicted": 0, "invalid_chunks": 0, "write_errors": 0}

    # a KeptCache given to DataLoader workers (spawned) arrives without descriptors, locks or counts
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items()
                if k in ("cache_dir", "limit_bytes", "chunk_bytes", "max_chunks", "low_water", "fsync", "max_temp_age")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_process_state()

    def __repr__(self) -> str:
        return f"KeptCache({self.cache_dir!r}, limit_bytes={self.limit_bytes})"

    # ---------------------------------------------------------------------------------------
    # public API

    def shard(self, dataset_id: str, shard_id: str, size: int, etag: str, index: ShardIndex) -> "ShardCache":
        """The cache of one shard: what is cached now (validated), and where to add what is fetched.

        Args:
            dataset_id: Identifies the dataset version (the manifest's fingerprint).
            shard_id: The shard's path or URL.
            size: The object's size in bytes.
            etag: The object's ETag or version marker (``""`` where the store has none).
            index: The shard's index: positions, byte ranges.

        Returns:
            A :class:`ShardCache`; close it (or use it as a context manager) when the shard's
            read ends.
        """
        return ShardCache(self, str(dataset_id), str(shard_id), int(size), str(etag), index)

    def shard_dir(self, dataset_id: str, shard_id: str, size: int, etag: str) -> str:
        """The directory holding one shard version's chunk files (which may not exist)."""
        return os.path.join(self.cache_dir, _hex(str(dataset_id), 24),
                            f"{_readable(str(shard_id))}-{_hex(str(shard_id), 16)}-{int(size)}-{_hex(str(etag), 12)}")

    def stats(self) -> dict[str, int | bool]:
        """This instance's counts (this process only; sum them over workers for a whole run).

        Returns:
            ``hits`` (samples served by :meth:`ShardCache.get`), ``misses`` (positions
            :meth:`ShardCache.cached` reported missing, and ``get`` calls that found
            nothing), ``bytes_served``, ``bytes_written`` (chunk files, footers included),
            ``chunks_written``, ``evictions`` (shard directories removed) and
            ``bytes_evicted``, ``invalid_chunks`` (found corrupt and deleted),
            ``write_errors``, and ``writable`` (False once a write failed).
        """
        with self._stats_lock:
            return {**self._stats, "writable": self._writable}

    def total_bytes(self) -> int:
        """Bytes of all chunk files in the cache now (a walk of the directory)."""
        total = 0
        for _, path in self._shard_dirs():
            total += _dir_size(path)[0]
        return total

    @property
    def writable(self) -> bool:
        """False once writing failed (a full disk): the cache then only serves what it holds."""
        return self._writable

    def evict(self) -> int:
        """Evict least recently used shards until the total is under ``low_water * limit_bytes``.

        Commits call this when the cache is over its limit; call it after lowering ``limit_bytes``.

        Returns:
            The bytes of chunk files left.
        """
        with self._locked() as fd:
            return self._evict_locked(fd)

    def close(self) -> None:
        """Release the lock file descriptor (open :class:`ShardCache` objects keep their data)."""
        with self._mutex:
            if self._fd >= 0 and self._fd_pid == os.getpid():
                os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "KeptCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------
    # lock file, usage ledger, eviction

    def _lock_fd(self) -> int:
        # flock belongs to the open file description, which a fork shares: a forked worker
        # must open its own, or it would never wait for its siblings
        if self._fd < 0 or self._fd_pid != os.getpid():
            self._fd = os.open(os.path.join(self.cache_dir, _LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._fd_pid = os.getpid()
        return self._fd

    @contextlib.contextmanager
    def _locked(self):
        with self._mutex:
            fd = self._lock_fd()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield fd
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @staticmethod
    def _ledger_read(fd: int) -> int | None:
        raw = os.pread(fd, _LEDGER.size, 0)
        if len(raw) != _LEDGER.size:
            return None
        magic, usage = _LEDGER.unpack(raw)
        return usage if magic == _LEDGER_MAGIC else None

    @staticmethod
    def _ledger_write(fd: int, usage: int) -> None:
        with contextlib.suppress(OSError):  # an approximate count: the next scan rewrites it
            os.pwrite(fd, _LEDGER.pack(_LEDGER_MAGIC, max(0, int(usage))), 0)

    def _account(self, delta: int) -> None:
        """Add ``delta`` bytes to the shared usage count; evict when over the limit."""
        try:
            with self._locked() as fd:
                usage = self._ledger_read(fd)
                usage = None if usage is None else usage + delta
                if usage is None or usage > self.limit_bytes:
                    self._evict_locked(fd)
                else:
                    self._ledger_write(fd, usage)
        except OSError as exc:  # the lock file vanished or the disk failed: caching goes on without accounting
            log.warning("kept-bytes cache %s: cannot update its usage count: %s", self.cache_dir, exc)

    def _shard_dirs(self) -> list[tuple[str, str]]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            with os.scandir(self.cache_dir) as top:
                for ds in top:
                    if not ds.is_dir(follow_symlinks=False):
                        continue
                    with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(ds.path) as it:
                        out += [(ds.path, e.path) for e in it if e.is_dir(follow_symlinks=False)]
        return out

    def _evict_locked(self, fd: int) -> int:
        """Scan the cache, evict LRU shard directories down to the low-water mark, store the exact usage."""
        entries = []
        total = 0
        for _, path in self._shard_dirs():
            with contextlib.suppress(FileNotFoundError):
                mtime = os.stat(path).st_mtime_ns
                size, files = _dir_size(path)
                entries.append((mtime, path, size, files))
                total += size
        if total > self.limit_bytes:
            target = self.low_water * self.limit_bytes
            for _, path, size, files in sorted(entries, key=lambda e: e[0]):
                if total <= target:
                    break
                for f in files:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f)
                _sweep_temps(path, self.max_temp_age)
                # a directory with a live writer's temporary stays; its rename lands in it later
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.dirname(path))  # the dataset's directory, once empty
                total -= size
                self._count(evictions=1, bytes_evicted=size)
                log.debug("kept-bytes cache: evicted %s (%d bytes)", path, size)
        self._ledger_write(fd, total)
        return total

    # ---------------------------------------------------------------------------------------
    # used by ShardCache

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for k, v in deltas.items():
                self._stats[k] += v

    def _chunk_name(self) -> str:
        return f"{os.getpid()}-{time.time_ns():x}-{next(self._names)}{CHUNK_SUFFIX}"

    def _write_failed(self, path: str, exc: OSError) -> None:
        with self._stats_lock:
            self._stats["write_errors"] += 1
            was, self._writable = self._writable, False
        if was:
            full = exc.errno in _FULL
            log.warning("kept-bytes cache %s: %s writing %s; no more samples are cached by this process "
                        "(cached samples are still served)%s", self.cache_dir, exc.strerror or exc, path,
                        "" if full else f" [errno {exc.errno}]")


class ShardCache:
    """The cached samples of one shard version, and the samples added to it.

    Made by :meth:`KeptCache.shard`. Thread-safe: :meth:`get` may run on fetch threads while
    another thread adds.
    """

    def __init__(self, cache: KeptCache, dataset_id: str, shard_id: str, size: int, etag: str, index: ShardIndex) -> None:
        self.cache = cache
        self.dataset_id, self.shard_id, self.size, self.etag = dataset_id, shard_id, size, etag
        self.index = index
        self.path = cache.shard_dir(dataset_id, shard_id, size, etag)
        self._starts = np.asarray(index.start, dtype=np.int64)
        self._lengths = np.asarray(index.end, dtype=np.int64) - self._starts
        n = len(self._starts)
        self._n = n
        self._lock = threading.RLock()
        self._have = np.zeros(n, dtype=bool)      # cached on disk or pending
        self._where = np.full(n, -1, dtype=np.int32)  # chunk number, -1: not on disk
        self._offset = np.zeros(n, dtype=np.int64)  # offset in that chunk's data
        self._chunks: list[_Chunk] = []
        self._pending: dict[int, bytes | memoryview] = {}
        self._pending_bytes = 0
        self._closed = False
        self._header = {"format": FORMAT_NAME, "version": CHUNK_VERSION, "dataset_id": dataset_id, "shard_id": shard_id,
                        "size": size, "etag": etag, "samples": n}
        self._load()

    def __repr__(self) -> str:
        return f"ShardCache({self.shard_id!r}, cached={int(self._have.sum())}/{self._n})"

    # ---------------------------------------------------------------------------------------
    # reading

    def _load(self) -> None:
        try:
            names = sorted(os.listdir(self.path))
        except (FileNotFoundError, NotADirectoryError):
            return
        self._touch()
        _sweep_temps(self.path, self.cache.max_temp_age)
        for name in names:
            if name.endswith(CHUNK_SUFFIX):
                chunk = self._open_chunk(os.path.join(self.path, name))
                if chunk is not None:
                    self._register(chunk)

    def _touch(self) -> None:
        now = time.time_ns()  # not the kernel's coarse clock: uses a few ms apart keep their order
        with contextlib.suppress(OSError):  # LRU time: this shard was just used
            os.utime(self.path, ns=(now, now))

    def _invalid(self, path: str, size: int, why: str) -> None:
        log.warning("kept-bytes cache: %s is invalid (%s); deleted, its samples will be fetched again", path, why)
        removed = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # safe while others read it: they keep their mapping
            removed = True
        self.cache._count(invalid_chunks=1)
        if removed and size:
            self.cache._account(-size)

    def _open_chunk(self, path: str) -> _Chunk | None:
        """Map and validate one chunk file; ``None`` (after deleting it when invalid) if it cannot be used."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # evicted or replaced meanwhile
        except OSError as exc:
            log.warning("kept-bytes cache: cannot open %s: %s", path, exc)
            return None
        try:
            size = os.fstat(fd).st_size
            if size < _TRAILER.size:
                self._invalid(path, size, f"{size} bytes: shorter than its trailer")
                return None
            mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        except OSError as exc:
            log.warning("kept-bytes cache: cannot map %s: %s", path, exc)
            return None
        finally:
            os.close(fd)
        why, arrays = self._validate(mm, size)
        if why is not None:
            mm.close()
            if why:  # "" : another chunk version, left for the release that wrote it
                self._invalid(path, size, why)
            return None
        positions, offsets, lengths = arrays
        return _Chunk(path, size, mm, memoryview(mm), positions, offsets, lengths)

    def _validate(self, mm: mmap.mmap, size: int) -> tuple[str | None, tuple]:
        """Why the mapped chunk is unusable (``None``: it is fine; ``""``: another version), and its arrays."""
        data_len, count, header_len, version, digest, magic = _TRAILER.unpack_from(mm, size - _TRAILER.size)
        if magic != _MAGIC:
            return "no chunk trailer (torn or truncated write)", ()
        view = memoryview(mm)
        try:
            if _digest(view[: size - _DIGESTED_TAIL]) != digest:
                return "digest mismatch", ()
        finally:
            view.release()
        if version != CHUNK_VERSION:
            return "", ()  # whole, but another version's: left for the release that wrote it
        if data_len % 8 or data_len + 24 * count + header_len + _TRAILER.size != size:
            return f"trailer lengths ({data_len}, {count} samples, {header_len}) do not add up to the file's {size} bytes", ()
        table = np.frombuffer(mm, dtype="<i8", count=3 * count, offset=data_len).reshape(3, count).astype(np.int64)
        positions, starts, lengths = table
        try:
            header = json.loads(mm[data_len + 24 * count : data_len + 24 * count + header_len].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return f"unreadable header: {exc}", ()
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME or header.get("version") != CHUNK_VERSION:
            return "not a kept-bytes cache chunk of this version", ()
        for key in ("dataset_id", "shard_id", "size", "etag", "samples"):
            if header.get(key) != self._header[key]:
                return f"made for {key} {header.get(key)!r}, not {self._header[key]!r}", ()
        if count and (positions.min() < 0 or positions.max() >= self._n):
            return f"positions outside the shard's {self._n} samples", ()
        if (lengths < 0).any() or not 0 <= data_len - int(lengths.sum()) < 8:
            return "sample lengths do not match the data section", ()
        if not (np.array_equal(starts, self._starts[positions]) and np.array_equal(lengths, self._lengths[positions])):
            return "byte ranges differ from the shard's index", ()
        offsets = np.zeros(count, dtype=np.int64)
        if count > 1:
            np.cumsum(lengths[:-1], out=offsets[1:])
        return None, (positions, offsets, lengths)

    def _register(self, chunk: _Chunk) -> None:
        with self._lock:
            number = len(self._chunks)
            self._chunks.append(chunk)
            # offsets before the chunk numbers: a concurrent get() never sees a number without its offset
            self._offset[chunk.positions] = chunk.offsets
            self._where[chunk.positions] = number
            self._have[chunk.positions] = True

    def cached(self, positions: np.ndarray) -> np.ndarray:
        """Which of ``positions`` this cache can serve (on disk, or added and not yet written).

        Args:
            positions: Sample positions in the shard (any integer array).

        Returns:
            ``bool`` array, one per position. Positions reported missing count as misses in
            :meth:`KeptCache.stats`; those reported present count as hits when :meth:`get` serves them.
        """
        positions = np.asarray(positions, dtype=np.int64)
        out = self._have[positions]
        self.cache._count(misses=int(out.size - np.count_nonzero(out)))
        return out

    def get(self, pos: int) -> bytes | memoryview | None:
        """Bytes ``[index.start[pos], index.end[pos])`` of the shard, or ``None`` when not cached.

        A ``memoryview`` into a read-only mapping of the chunk file (valid as long as it is
        referenced, even after eviction), or the ``bytes`` added when not yet written.
        """
        pos = int(pos)
        with self._lock:
            number = int(self._where[pos])
            if number >= 0:
                chunk = self._chunks[number]
                if chunk.view is not None:
                    off = int(self._offset[pos])
                    out: bytes | memoryview | None = chunk.view[off : off + int(self._lengths[pos])]
                else:
                    out = None
            else:
                out = self._pending.get(pos)
        if out is None:
            self.cache._count(misses=1)
        else:
            self.cache._count(hits=1, bytes_served=len(out))
        return out

    # ---------------------------------------------------------------------------------------
    # writing

    def add(self, pos: int, data: bytes | memoryview) -> None:
        """Add sample ``pos``'s bytes (already verified by the reader); written at the next commit.

        Positions already cached are ignored. Once ``chunk_bytes`` are pending they are
        committed. A no-op once the cache stopped writing (full disk).

        Raises:
            CacheError: ``pos`` is outside the shard, or ``data`` is not the sample's length.
        """
        pos = int(pos)
        if not 0 <= pos < self._n:
            raise CacheError(f"kept-bytes cache, shard {self.shard_id!r}: position {pos} outside its {self._n} samples")
        if len(data) != self._lengths[pos]:
            raise CacheError(f"kept-bytes cache, shard {self.shard_id!r}: sample {pos} ({self.index.keys[pos]!r}) is "
                             f"{self._lengths[pos]} bytes [{self._starts[pos]}, {self._starts[pos] + self._lengths[pos]}), "
                             f"{len(data)} were added")
        if not self.cache.writable:
            return
        with self._lock:
            if self._closed or self._have[pos]:
                return
            self._pending[pos] = data
            self._pending_bytes += len(data)
            self._have[pos] = True
            full = self._pending_bytes >= self.cache.chunk_bytes
        if full:
            self.commit()

    def commit(self) -> None:
        """Write the samples added since the last commit as one chunk file (atomically), then evict if over the limit.

        Never raises for a write failure: a full disk (or any other ``OSError``) removes the
        temporary, logs one warning and turns writing off for the :class:`KeptCache`.
        """
        with self._lock:
            if not self._pending:
                return
            pending, self._pending, self._pending_bytes = self._pending, {}, 0
            if not self.cache.writable:
                self._forget(pending)
                return
            merge = len([c for c in self._chunks if c.view is not None]) + 1 > self.cache.max_chunks
            if merge:
                items = self._everything(pending)
                old = [c for c in self._chunks if c.view is not None]
            else:
                items = sorted(pending.items())
                old = []
            written = self._write(items)
            if written is None:
                self._forget(pending)
                return
            path, size = written
            chunk = self._open_chunk(path)
            if chunk is not None:
                self._register(chunk)
            else:  # evicted by another process already: those samples are missing again
                self._forget(pending)
            freed = 0
            for c in old:
                if chunk is None:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(c.path)
                    freed += c.size
                c.release()
        self._touch()
        self.cache._count(bytes_written=size, chunks_written=1)
        self.cache._account(size - freed)

    def _forget(self, pending: dict) -> None:
        positions = np.fromiter(pending.keys(), dtype=np.int64, count=len(pending))
        self._have[positions] = self._where[positions] >= 0

    def _everything(self, pending: dict) -> list[tuple[int, bytes | memoryview]]:
        """Every sample this cache holds (mapped chunks and ``pending``), by position: a compacted chunk's content."""
        out = dict(pending)
        for pos in np.flatnonzero(self._where >= 0).tolist():
            if pos not in out:
                chunk = self._chunks[int(self._where[pos])]
                if chunk.view is not None:
                    off = int(self._offset[pos])
                    out[pos] = chunk.view[off : off + int(self._lengths[pos])]
        return sorted(out.items())

    def _write(self, items: list[tuple[int, bytes | memoryview]]) -> tuple[str, int] | None:
        """Write one chunk under a temporary name, fsync, rename; ``(path, size)`` or ``None`` when it failed."""
        positions = np.fromiter((p for p, _ in items), dtype=np.int64, count=len(items))
        lengths = self._lengths[positions]
        data_len = int(lengths.sum())
        pad = -data_len % 8
        table = np.concatenate([positions, self._starts[positions], lengths]).astype("<i8").tobytes()
        header = json.dumps(self._header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        head = _TRAILER.pack(data_len + pad, len(items), len(header), CHUNK_VERSION, 0, _MAGIC)[: _TRAILER.size - _DIGESTED_TAIL]
        path = os.path.join(self.path, self.cache._chunk_name())
        tmp = temp_name(path)
        fd = -1
        try:
            for attempt in range(2):
                try:
                    os.makedirs(self.path, exist_ok=True)
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                    break
                except FileNotFoundError:
                    if attempt:  # the directory was evicted twice between makedirs and open
                        raise
            h = _hasher()
            out = _Writer(fd, h)
            for _, data in items:
                out.write(data)
            out.write(b"\0" * pad)
            out.write(table)
            out.write(header)
            out.write(head)
            out.flush()
            _write_all(fd, struct.pack("<Q", h.intdigest()) + _MAGIC)
            if self.cache.fsync:
                os.fsync(fd)
            os.close(fd)
            fd = -1
            os.rename(tmp, path)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, FileNotFoundError):
                log.debug("kept-bytes cache: %s vanished while writing (evicted): %s", self.path, exc)
                return None
            self.cache._write_failed(tmp, exc)
            return None
        return path, data_len + pad + len(table) + len(header) + _TRAILER.size

    def close(self) -> None:
        """Commit what is pending, then release the mapped chunks (samples handed out stay valid)."""
        with self._lock:
            if self._closed:
                return
            self.commit()
            self._closed = True
            for chunk in self._chunks:
                chunk.release()
            self._have[:] = False
            self._where[:] = -1

    def __enter__(self) -> "ShardCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Writer:
    """Buffered ``os.write`` that hashes what it writes (small samples in one system call per MiB)."""

    def __init__(self, fd: int, hasher: Any) -> None:
        self.fd, self.hasher = fd, hasher
        self.buffer = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        self.hasher.update(data)
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
