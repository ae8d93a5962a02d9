"""A local cache of the kept samples' bytes, so later epochs of a remote dataset read from disk.

The first epoch of a remote dataset fetches the kept samples' byte ranges over the network;
:class:`KeptCache` stores them on local disk as they are read, and later epochs read them
there and fetch only what is missing (a mask that changes per epoch, as InfoBatch's does,
reuses whatever is cached). Caches that hold whole shards (MosaicML streaming, LitData) hold
the pruned bytes too; this one holds about ``1 - r`` of the dataset.

One directory serves several processes on one machine (DataLoader workers, DDP ranks) and
survives restarts. Layout (FORMATS.md, "Kept-bytes cache")::

    cache_dir/.keptcache.lock                                  lock file (flock) + usage count
    cache_dir/<dataset>/<shard>-<size>-<etag>/<name>.spcache   chunk files (:mod:`.cachechunk`)

A cache made for another manifest or another version of the object is never used: the
directory names hash the dataset id, the shard id, the object's size and ETag, and each chunk
file's header records them again and is compared on read. A chunk is validated (trailer,
footer digest, header, byte ranges against the index) when the shard is opened, and each
sample against its own digest before its bytes are served; an invalid chunk is deleted,
logged, and its samples count as missing. Chunks are written under a temporary name, fsynced
and renamed, so a process killed mid-write leaves only a temporary, which is never read and
is removed by a later process once its writer is dead (or it is older than ``max_temp_age``).

When the total size exceeds ``limit_bytes``, whole shard directories are evicted, least
recently used first (a shard directory's mtime is its last use: set when the shard is opened
and when a chunk is written), under an exclusive ``flock`` so that two processes do not evict
at once. A process reading an evicted chunk keeps its bytes: chunks are memory-mapped, and an
unlinked file lives on while mapped.

A full disk (or quota) while writing removes the temporary, logs one warning, and turns
writing off for that :class:`KeptCache`; reads go on.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import itertools
import logging
import os
import re
import struct
import threading
import time
from typing import Any

import numpy as np

from ..atomic import remove_stale_temps
from ..errors import CacheError
from ..shardindex import ShardIndex
from .cachechunk import CHUNK_SUFFIX, CHUNK_VERSION, FORMAT_NAME, Chunk, ChunkError, open_chunk, sample_digest, write_chunk

__all__ = ["KeptCache", "ShardCache"]

log = logging.getLogger(__name__)

_LOCK_NAME = ".keptcache.lock"
_LEDGER = struct.Struct("<8sQ")
_LEDGER_MAGIC = b"SPKCUSE1"
_TEMP_RE = re.compile(re.escape(CHUNK_SUFFIX) + r"\.tmp-(\d+)$")
# what eviction may touch: directories named as shard_dir names them, nothing else under cache_dir
_DATASET_RE = re.compile(r"[0-9a-f]{24}")
_SHARD_RE = re.compile(r".*-[0-9a-f]{16}-\d+-[0-9a-f]{12}")
# errors that mean "no room" (the warning says so); any OSError while writing stops writing
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _hex(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _readable(name: str) -> str:
    """The last path component of ``name`` with anything unusual replaced, for humans browsing the cache."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]", "_", base)[:40] or "shard"


def _dir_size(path: str) -> tuple[int, list[str], bool]:
    """Total bytes of the chunk files in a shard directory, their paths, and whether it holds temporaries."""
    total, files, temps = 0, [], False
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        with os.scandir(path) as it:
            for entry in it:
                if entry.name.endswith(CHUNK_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        total += entry.stat(follow_symlinks=False).st_size
                        files.append(entry.path)
                elif _TEMP_RE.search(entry.name):
                    temps = True
    return total, files, temps


def _identity(path: str) -> tuple | None:
    """What tells one file from another under the same name (as :attr:`Chunk.identity`); ``None`` when missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


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
                    if int(m.group(1)) != os.getpid() and now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                        os.unlink(entry.path)  # a writer stuck this long, or a recycled pid


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
            throwaway caches: after a power loss a renamed file could miss data, which its
            digests then reject, at a cost of refetching).
        max_temp_age: Seconds after which a temporary left by a writer whose process still
            seems alive (a recycled pid) is removed anyway.
        verify: When each sample's digest is checked: ``"read"`` (default) as :meth:`ShardCache.get`
            serves it (one pass over bytes about to be copied anyway; a sample that fails is a
            miss then, although :meth:`ShardCache.cached` reported it); ``"open"``: every
            cached sample when the shard is opened, so :meth:`ShardCache.cached` is exact, at
            the cost of a second pass over the bytes; ``"none"``: sample bytes are trusted as
            a local shard's are (the chunk's structure, header and ranges are still checked),
            for a reader that checks each sample against its index checksum itself and calls
            :meth:`ShardCache.discard` on a mismatch. A sample is checked once per process:
            its chunk stays mapped (up to ``max_mapped_bytes``) for the next epoch.
        max_mapped_bytes: Bytes of chunk files kept mapped after their shard is closed, so a
            later epoch in this process reads them without page faults or a second check
            (page cache, shown in the process's RSS; unmapped when their file is deleted, checked
            at most once a second, so eviction frees the disk space).

    Raises:
        CacheError: ``cache_dir`` cannot be created or written, or a limit is not positive.
    """

    def __init__(self, cache_dir: str | os.PathLike, limit_bytes: int, chunk_bytes: int = 64 << 20, max_chunks: int = 16,
                 low_water: float = 0.9, fsync: bool = True, max_temp_age: float = 3600.0, verify: str = "read",
                 max_mapped_bytes: int = 1 << 30) -> None:
        self.cache_dir = os.path.abspath(os.fspath(cache_dir))
        if not limit_bytes > 0:
            raise CacheError(f"KeptCache({self.cache_dir!r}): limit_bytes must be positive, got {limit_bytes!r}")
        if verify not in ("read", "open", "none"):
            raise CacheError(f"KeptCache({self.cache_dir!r}): verify must be 'read', 'open' or 'none', got {verify!r}")
        if not chunk_bytes > 0 or not max_chunks >= 1 or not 0 < low_water <= 1:
            raise CacheError(f"KeptCache({self.cache_dir!r}): chunk_bytes > 0, max_chunks >= 1 and 0 < low_water <= 1 "
                             f"are required, got {chunk_bytes!r}, {max_chunks!r}, {low_water!r}")
        self.limit_bytes = int(limit_bytes)
        self.chunk_bytes = int(chunk_bytes)
        self.max_chunks = int(max_chunks)
        self.low_water = float(low_water)
        self.fsync = bool(fsync)
        self.max_temp_age = float(max_temp_age)
        self.verify = verify
        self.max_mapped_bytes = max(0, int(max_mapped_bytes))
        sample_digest(b"")  # fail now, not at the first chunk, if xxhash is missing
        self._init_process_state()
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
            if not os.access(self.cache_dir, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
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
        self._open_lock = threading.Lock()
        self._open: collections.OrderedDict[str, Chunk] = collections.OrderedDict()  # path -> mapped chunk, LRU
        self._open_pid = os.getpid()
        self._open_checked = time.monotonic()
        self._stats = {"hits": 0, "misses": 0, "bytes_served": 0, "bytes_written": 0, "chunks_written": 0,
                       "evictions": 0, "bytes_evicted": 0, "invalid_chunks": 0, "write_errors": 0, "chunks_opened": 0}

    # a KeptCache given to DataLoader workers (spawned) arrives without descriptors, locks or counts
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items()
                if k in ("cache_dir", "limit_bytes", "chunk_bytes", "max_chunks", "low_water", "fsync", "max_temp_age", "verify",
                         "max_mapped_bytes")}

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
            ``write_errors``, ``chunks_opened`` (mapped and validated; a chunk still mapped from
            an earlier epoch is not opened again), and ``writable`` (False once a write failed).
        """
        with self._stats_lock:
            return {**self._stats, "writable": self._writable}

    def total_bytes(self) -> int:
        """Bytes of all chunk files in the cache now (a walk of the directory)."""
        total = 0
        for path in self._shard_dirs():
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
        """Unmap the chunks no open :class:`ShardCache` uses, and release the lock file descriptor."""
        with self._open_lock:
            for path, chunk in list(self._open.items()):
                if chunk.users <= 0:
                    del self._open[path]
                    chunk.release()
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

    def _shard_dirs(self) -> list[str]:
        """Every shard directory in the cache (only names this class makes: a cache_dir shared with other files is safe)."""
        out = []
        with contextlib.suppress(FileNotFoundError):
            with os.scandir(self.cache_dir) as top:
                for ds in top:
                    if not (_DATASET_RE.fullmatch(ds.name) and ds.is_dir(follow_symlinks=False)):
                        continue
                    with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(ds.path) as it:
                        out += [e.path for e in it if _SHARD_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
        return out

    def _evict_locked(self, fd: int) -> int:
        """Scan the cache, evict LRU shard directories down to the low-water mark, store the exact usage."""
        entries = []
        total = 0
        for path in self._shard_dirs():
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(path)
                size, files, temps = _dir_size(path)
                if temps:  # killed writers' leftovers, in a shard nobody opened since; its LRU time is kept
                    _sweep_temps(path, self.max_temp_age)
                    with contextlib.suppress(OSError):
                        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
                entries.append((st.st_mtime_ns, path, size, files))
                total += size
        if total > self.limit_bytes:
            target = self.low_water * self.limit_bytes
            for _, path, size, files in sorted(entries, key=lambda e: e[0]):
                if total <= target:
                    break
                for f in files:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f)
                self._unmap(files)
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

    def _registry(self) -> collections.OrderedDict[str, Chunk]:
        if self._open_pid != os.getpid():  # a forked child starts with its own (the parent's stay mapped there)
            self._open, self._open_pid = collections.OrderedDict(), os.getpid()
        return self._open

    def _acquire(self, path: str, expect: dict, starts: np.ndarray, lengths: np.ndarray) -> Chunk:
        """The chunk at ``path``, validated: the one mapped already when it is the same file, else opened.

        Raises:
            As :func:`~streamprune.readers.cachechunk.open_chunk`.
        """
        identity = _identity(path)
        if identity is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        with self._open_lock:
            chunk = self._registry().get(path)
            if chunk is not None and chunk.identity == identity and chunk.live and chunk.matches(expect, starts, lengths):
                self._open.move_to_end(path)
                chunk.users += 1
                return chunk
        chunk = open_chunk(path, expect, starts, lengths)
        self._count(chunks_opened=1)
        with self._open_lock:
            registry = self._registry()
            old = registry.pop(path, None)
            if old is not None and old.users <= 0:
                old.release()
            chunk.users = 1
            registry[path] = chunk
            self._trim()
        return chunk

    def _release_chunk(self, chunk: Chunk, gone: bool = False) -> None:
        """A holder is done with ``chunk``; ``gone``: its file was deleted, never hand it out again."""
        with self._open_lock:
            registry = self._registry()
            chunk.users -= 1
            if (gone or not chunk.live) and registry.get(chunk.path) is chunk:
                del registry[chunk.path]
            if chunk.users <= 0 and registry.get(chunk.path) is not chunk:
                chunk.release()
            self._trim()

    def _trim(self) -> None:
        """Unmap chunks no shard uses: their file is gone (at most once a second), then the oldest beyond the limit."""
        registry = self._open
        now = time.monotonic()
        if now - self._open_checked > 1.0:
            self._open_checked = now
            for path, chunk in list(registry.items()):
                if chunk.users <= 0 and _identity(path) != chunk.identity:
                    registry.pop(path).release()  # a mapping would keep an evicted file's disk space
        total = sum(chunk.size for chunk in registry.values())
        for path in [p for p, c in registry.items() if c.users <= 0]:
            if total <= self.max_mapped_bytes:
                break
            chunk = registry.pop(path)
            total -= chunk.size
            chunk.release()

    def _unmap(self, paths: list[str]) -> None:
        """Forget the mappings of deleted files (unmapped now, or by their last user)."""
        with self._open_lock:
            registry = self._registry()
            for path in paths:
                chunk = registry.pop(path, None)
                if chunk is not None and chunk.users <= 0:
                    chunk.release()

    def _served(self, data: bytes | memoryview | None) -> None:
        stats = self._stats
        with self._stats_lock:
            if data is None:
                stats["misses"] += 1
            else:
                stats["hits"] += 1
                stats["bytes_served"] += len(data)

    def _chunk_name(self) -> str:
        return f"{os.getpid()}-{time.time_ns():x}-{next(self._names)}{CHUNK_SUFFIX}"

    def _write_failed(self, path: str, exc: OSError) -> None:
        with self._stats_lock:
            self._stats["write_errors"] += 1
            was, self._writable = self._writable, False
        if was:
            what = "disk full" if exc.errno in _FULL else "write failed"
            log.warning("kept-bytes cache %s: %s (%s) writing %s; no more samples are cached by this KeptCache "
                        "(cached samples are still served)", self.cache_dir, what, exc.strerror or exc, path)



class ShardCache:
    """The cached samples of one shard version, and the samples added to it.

    Made by :meth:`KeptCache.shard`; use it while the shard is read, then :meth:`close` it.
    Thread-safe: :meth:`get` may run on fetch threads while another thread adds.
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
        self._have = np.zeros(n, dtype=bool)  # cached on disk or pending
        self._where = np.full(n, -1, dtype=np.int32)  # chunk number, -1: not on disk
        self._row = np.zeros(n, dtype=np.int64)  # row in that chunk's table
        self._chunks: list[Chunk | None] = []  # by number; None once merged away (released)
        self._pending: dict[int, bytes | memoryview] = {}
        self._pending_bytes = 0
        self._closed = False
        self._trust = cache.verify == "none"
        self._expect = {"format": FORMAT_NAME, "version": CHUNK_VERSION, "dataset_id": dataset_id, "shard_id": shard_id,
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
        if any(_TEMP_RE.search(name) for name in names):
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

    def _invalid(self, path: str, why: str) -> None:
        """Delete an invalid chunk (safe while others read it: they keep their mapping), log and count it."""
        log.warning("kept-bytes cache: %s is invalid (%s); deleted, its samples will be fetched again", path, why)
        size = 0
        with contextlib.suppress(FileNotFoundError):
            size = os.stat(path).st_size
            os.unlink(path)
        self.cache._unmap([path])
        self.cache._count(invalid_chunks=1)
        if size:
            self.cache._account(-size)

    def _open_chunk(self, path: str) -> Chunk | None:
        """Map and validate one chunk file; ``None`` (after deleting it when invalid) if it cannot be used."""
        try:
            chunk = self.cache._acquire(path, self._expect, self._starts, self._lengths)
        except FileNotFoundError:
            return None  # evicted, or found invalid by another process, meanwhile
        except ChunkError as exc:
            if not exc.other_version:  # another release's file is left to it (and to eviction)
                self._invalid(path, str(exc))
            return None
        except OSError as exc:
            log.warning("kept-bytes cache: cannot read %s: %s", path, exc)
            return None
        if self.cache.verify == "open":
            for row in range(len(chunk)):
                if not chunk.check(row, chunk.sample(row)):
                    self.cache._release_chunk(chunk, gone=True)
                    self._invalid(path, f"sample {int(chunk.positions[row])}: digest mismatch")
                    return None
        return chunk

    def _register(self, chunk: Chunk) -> None:
        with self._lock:
            number = len(self._chunks)
            self._chunks.append(chunk)
            # rows before chunk numbers: a get() never sees a number without its row
            self._row[chunk.positions] = np.arange(len(chunk))
            self._where[chunk.positions] = number
            self._have[chunk.positions] = True

    def _drop(self, chunk: Chunk, why: str) -> None:
        """A chunk failed a sample's check: stop serving it and delete it."""
        with self._lock:
            chunk.bad = True
            if chunk not in self._chunks or not (self._where == self._chunks.index(chunk)).any():
                return  # dropped already (by another thread)
            number = self._chunks.index(chunk)
            lost = np.flatnonzero(self._where == number)
            self._where[lost] = -1
            self._have[lost] = False
            for pos in lost.tolist():
                if pos in self._pending:
                    self._have[pos] = True
        self._invalid(chunk.path, why)

    def cached(self, positions: np.ndarray) -> np.ndarray:
        """Which of ``positions`` this cache holds (on disk, or added and not yet written).

        Args:
            positions: Sample positions in the shard (any integer array).

        Returns:
            ``bool`` array, one per position. Positions reported missing count as misses in
            :meth:`KeptCache.stats`; those reported present count as hits when :meth:`get`
            serves them. With ``verify="read"``, :meth:`get` may still find a reported sample
            damaged and return ``None``: fetch it then.
        """
        positions = np.asarray(positions, dtype=np.int64)
        out = self._have[positions]
        self.cache._count(misses=int(out.size - np.count_nonzero(out)))
        return out

    def _verified(self, pos: int) -> memoryview | bytes | None:
        # chunk number and row read together under the lock: a merge registers the new chunk's
        # rows for positions an older chunk still serves, so a row read apart from its number
        # could point into the other chunk (wrong bytes, seen with readers on threads)
        with self._lock:
            number = self._where.item(pos)
            if number < 0:
                return self._pending.get(pos)
            chunk = self._chunks[number]
            if chunk is None:
                return None
            row = self._row.item(pos)
        data = chunk.sample(row)
        if data is None or self._trust or chunk.verified[row]:
            return data
        if not chunk.check(row, data):
            self._drop(chunk, f"sample {pos}: digest mismatch")
            return None
        return data

    def get(self, pos: int) -> bytes | memoryview | None:
        """Bytes ``[index.start[pos], index.end[pos])`` of the shard, or ``None`` when not cached.

        With ``verify="read"`` (or ``"open"``) the bytes were checked against their digest
        first (once per sample and process); a sample that fails deletes its chunk and is a miss.

        Returns:
            A read-only ``memoryview`` into a mapping of the chunk file (valid as long as it is
            referenced, even after eviction or :meth:`close`), the ``bytes`` added when not yet
            written, or ``None``.
        """
        out = self._verified(int(pos))
        self.cache._served(out)
        return out

    def discard(self, pos: int, why: str = "the reader found it damaged") -> None:
        """Stop serving sample ``pos``, and delete the chunk file it came from.

        For a reader that verifies what :meth:`get` returned against the index's checksums
        itself (``verify="none"``): a mismatch means the cached bytes are damaged; the
        reader fetches the sample instead, and later epochs fetch that chunk's samples again.
        """
        pos = int(pos)
        with self._lock:
            number = self._where.item(pos)
            if number < 0:
                self._have[pos] = pos in self._pending
                return
            chunk = self._chunks[number]
        if chunk is not None:
            self._drop(chunk, f"sample {pos}: {why}")

    # ---------------------------------------------------------------------------------------
    # writing

    def add(self, pos: int, data: bytes | memoryview) -> None:
        """Add sample ``pos``'s bytes (already verified by the reader); written at the next commit.

        Positions already cached are ignored; ``data`` is kept by reference until then (do
        not modify it). Once ``chunk_bytes`` are pending they are committed. A no-op once the
        cache stopped writing (full disk).

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
        """Write the samples added since the last commit as one chunk file (atomically); evict if over the limit.

        When the shard would then have more than ``max_chunks`` chunk files, everything it
        holds is written as one file instead and the others are deleted. Never raises for a
        write failure: a full disk (or any other ``OSError``) removes the temporary, logs
        one warning and turns writing off for the :class:`KeptCache`.
        """
        with self._lock:
            if not self._pending:
                return
            pending, self._pending, self._pending_bytes = self._pending, {}, 0
            if not self.cache.writable:
                self._forget(pending)
                return
            live = [c for c in self._chunks if c is not None and c.live]
            merge = len(live) + 1 > self.cache.max_chunks
            items = self._everything(pending, live) if merge else sorted(pending.items())
            path = os.path.join(self.path, self.cache._chunk_name())
            size = self._write(path, items)
            chunk = self._open_chunk(path) if size else None
            if chunk is None:  # failed, or evicted by another process already: those samples are missing again
                self._forget(pending)
                return
            self._register(chunk)
            freed = 0
            if merge:
                for old in live:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(old.path)
                        freed += old.size
                    self._chunks[self._chunks.index(old)] = None
                    self.cache._release_chunk(old, gone=True)
        self._touch()
        self.cache._count(bytes_written=size, chunks_written=1)
        self.cache._account(size - freed)

    def _forget(self, pending: dict) -> None:
        positions = np.fromiter(pending.keys(), dtype=np.int64, count=len(pending))
        self._have[positions] = self._where[positions] >= 0

    def _everything(self, pending: dict, live: list[Chunk]) -> list[tuple[int, bytes | memoryview]]:
        """Every sample this cache holds (``live`` chunks and ``pending``), by position: a merged chunk's content.

        Samples from chunks are checked first, whatever ``verify`` says: a damaged byte must
        not be rewritten under a fresh digest.
        """
        out = dict(pending)
        for chunk in live:
            number = self._chunks.index(chunk)
            for row, pos in enumerate(chunk.positions.tolist()):
                if pos in out or self._where.item(pos) != number:
                    continue
                data = chunk.sample(row)
                if data is None:
                    break
                if not chunk.check(row, data):
                    self._drop(chunk, f"sample {pos}: digest mismatch")
                    break
                out[pos] = data
        return sorted(out.items())

    def _write(self, path: str, items: list[tuple[int, bytes | memoryview]]) -> int:
        """:func:`write_chunk` with the failure policy: the file's size, or 0 when it was not written."""
        for attempt in range(2):
            try:
                os.makedirs(self.path, exist_ok=True)
                return write_chunk(path, items, self._starts, self._lengths, self._expect, fsync=self.cache.fsync)
            except FileNotFoundError as exc:
                # the directory was evicted between makedirs and the write: once more, then give up quietly
                if attempt:
                    log.debug("kept-bytes cache: %s vanished while writing: %s", self.path, exc)
            except OSError as exc:
                self.cache._write_failed(path, exc)
                return 0
        return 0

    def close(self) -> None:
        """Commit what is pending, then release the mapped chunks (samples handed out stay valid)."""
        with self._lock:
            if self._closed:
                return
            self.commit()
            self._closed = True
            for chunk in self._chunks:
                if chunk is not None:
                    self.cache._release_chunk(chunk)
            self._have[:] = False
            self._where[:] = -1

    def __enter__(self) -> "ShardCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
