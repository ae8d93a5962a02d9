"""Where shards live: local paths and URLs, and ranged reads from either with one interface.

A location is a local path, a ``file://`` URL, or any URL fsspec knows (``http(s)://``,
``s3://``, ``gs://``, ``az://``, ...). :func:`open_object` returns a :class:`StorageObject`
for it: :class:`LocalObject` (positioned reads on a file descriptor) or :class:`RemoteObject`
(ranged requests, retried with exponential backoff and jitter). Readers use only the
interface (``size``, ``etag``, ``read``, ``submit``), so the scheduler that fetches kept runs
concurrently drives local files and object stores alike.

A remote object's ranged reads and metadata go through the lean client
(:mod:`streamprune.rangeclient`: HTTP(S) and S3 on one event loop thread per process, so
:meth:`StorageObject.submit` starts a read without taking a thread) wherever it can; other
schemes (``gs://``, ``az://``, ...), ``storage_options`` it cannot map, and whole-object
operations (``read_bytes``, ``write_bytes``, ``put_file``, ``exists``, ``remove``) use fsspec.

Credentials and endpoints come from each backend's standard configuration (for S3: the AWS
environment variables, ``AWS_ENDPOINT_URL`` included, and ``~/.aws`` files), plus
``storage_options`` (mapped by the lean client, else passed to the fsspec filesystem). Nothing
here writes or logs them, and a URL's userinfo, signature or token is redacted in every error
and log line.

fsspec and its backends are the optional ``remote`` extra: they are imported only when a URL
is used, and a missing extra is one :class:`~streamprune.optional.MissingExtraError` naming
``streamprune[remote]``.

This module is low in the layers: it knows nothing of manifests, indexes or readers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import hashlib
import logging
import os
import posixpath
import random
import re
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from . import rangeclient
from .atomic import atomic_write_bytes
from .errors import IndexMismatchError, StorageError, redact
from .optional import MissingExtraError, require_extra

__all__ = [
    "REMOTE_INSTALL_HINT",
    "RemoteError",
    "LocalReadError",
    "ObjectChangedError",
    "RetryPolicy",
    "StorageObject",
    "LocalObject",
    "RemoteObject",
    "is_remote",
    "is_file_url",
    "local_path",
    "join",
    "within",
    "parent",
    "basename",
    "open_object",
    "read_bytes",
    "write_bytes",
    "put_file",
    "exists",
    "remove",
    "object_info",
    "local_copy",
    "expand_urls",
    "require_fsspec",
]

log = logging.getLogger(__name__)

REMOTE_INSTALL_HINT = "remote shards need the `remote` extra: pip install 'streamprune[remote]'"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: HTTP statuses worth retrying: throttling and server-side trouble. 4xx other than 408/429
#: (missing object, no permission, a failed precondition) will not change on a retry.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: ``412 Precondition Failed``: the answer to an ``If-Match`` read of an object that was replaced.
PRECONDITION_FAILED = 412
#: Schemes whose ranged reads carry the expected ETag as a precondition (:meth:`RemoteObject.expect_etag`).
IF_MATCH_SCHEMES = frozenset({"http", "https", "s3", "s3a"})


class RemoteError(StorageError):
    """A remote read or write failed for good: names the URL, byte range and last status."""

    def __init__(self, message: str, url: str = "", start: int | None = None, end: int | None = None, status: Any = None):
        super().__init__(message)
        self.url = redact(url)
        self.start = start
        self.end = end
        self.status = status


class LocalReadError(StorageError):
    """A local file is shorter than a read asked for (truncated after it was indexed, or the
    index is another file's): names the path and the byte range.

    Attributes:
        url: The file's path.
        start: First byte asked for.
        end: One past the last byte asked for.
    """

    def __init__(self, message: str, url: str = "", start: int | None = None, end: int | None = None):
        super().__init__(message)
        self.url, self.start, self.end = url, start, end


class ObjectChangedError(RemoteError, IndexMismatchError):
    """A read's precondition failed: the object no longer has the ETag it was opened (indexed) with.

    The server answered ``412 Precondition Failed`` to a ranged read sent with ``If-Match``: the
    object was replaced after it was indexed (or mid-epoch). Never retried: the bytes the index
    describes are gone. Also an :class:`~streamprune.errors.IndexMismatchError`, like the size and
    ETag checks made when a shard is opened.
    """


def is_remote(location: str | os.PathLike) -> bool:
    """Whether ``location`` is a URL other than ``file://`` (needs the ``remote`` extra to read)."""
    m = _SCHEME.match(os.fspath(location))
    return m is not None and m.group(1).lower() not in ("file", "local")


def is_file_url(location: str | os.PathLike) -> bool:
    """Whether ``location`` is a ``file://`` (or ``local://``) URL, in any letter case."""
    m = _SCHEME.match(os.fspath(location))
    return m is not None and m.group(1).lower() in ("file", "local")


def local_path(location: str | os.PathLike) -> str:
    """``location`` as a local path (``file://`` stripped); unchanged for other strings."""
    location = os.fspath(location)
    for prefix in ("file://", "local://"):
        if location.startswith(prefix):
            return location[len(prefix) :]
    return location


def join(base: str, name: str) -> str:
    """``name`` resolved against the directory or URL prefix ``base`` (absolute names as they are)."""
    if is_remote(name) or os.path.isabs(local_path(name)) and not is_remote(base):
        return local_path(name) if not is_remote(name) else name
    if is_remote(base):
        return base.rstrip("/") + "/" + name.lstrip("/")
    return os.path.join(local_path(base), name)


def within(location: str, prefix: str) -> bool:
    """Whether ``location`` lies under the directory or URL prefix ``prefix`` (or is it).

    URLs compare by scheme, host and port (not the userinfo), then by path after
    percent-decoding and resolving ``.`` and ``..`` (so ``prefix/a/../../x`` and
    ``prefix/%2e%2e/x`` are outside); local paths compare as absolute, normalised paths. A
    URL is never under a local path, nor the reverse.

    Args:
        location: A resolved path or URL (e.g. :func:`join` of a prefix and a name).
        prefix: The directory or URL prefix.

    Returns:
        ``True`` when ``location`` is ``prefix`` or below it.
    """
    if is_remote(location) != is_remote(prefix):
        return False
    if not is_remote(location):
        loc = os.path.normpath(os.path.abspath(local_path(location)))
        pre = os.path.normpath(os.path.abspath(local_path(prefix)))
        return loc == pre or loc.startswith(pre.rstrip(os.sep) + os.sep)
    a, b = urllib.parse.urlsplit(location), urllib.parse.urlsplit(prefix)
    try:
        same_host = (a.scheme.lower(), (a.hostname or "").lower(), a.port) == (b.scheme.lower(), (b.hostname or "").lower(), b.port)
    except ValueError:  # a port that is not a number
        return False
    if not same_host:
        return False
    path, pre = _clean_path(a.path), _clean_path(b.path)
    return path == pre or path.startswith(pre.rstrip("/") + "/")


def _clean_path(path: str) -> str:
    """A URL path as a server may read it: percent-decoded, backslashes as slashes, dot segments resolved."""
    path = urllib.parse.unquote(path).replace("\\", "/")
    return posixpath.normpath("/" + path.lstrip("/"))


def parent(location: str) -> str:
    """The directory (or URL prefix) holding ``location``."""
    if is_remote(location):
        return location.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(local_path(location)))


def basename(location: str) -> str:
    """The last path component of a path or URL."""
    return location.rstrip("/").rsplit("/", 1)[-1] if is_remote(location) else os.path.basename(local_path(location))


def require_fsspec(feature: str = "this URL") -> Any:
    """Import fsspec, or raise the one error naming ``streamprune[remote]``.

    Raises:
        MissingExtraError: fsspec is not installed.
    """
    fsspec = require_extra("fsspec", REMOTE_INSTALL_HINT, feature)
    _guard_forks()
    return fsspec


#: The fsspec filesystems alive at a fork: emptied again in the parent, kept in the child.
_INHERITED: list = []
_FORK_GUARD = threading.Lock()
_fork_guarded = False


def _guard_forks() -> None:
    """Register the fork hooks below (once per process)."""
    global _fork_guarded
    with _FORK_GUARD:
        if not _fork_guarded and hasattr(os, "register_at_fork"):
            os.register_at_fork(before=_hold_filesystems, after_in_parent=_INHERITED.clear)
            _fork_guarded = True


def _hold_filesystems() -> None:
    """Before a fork: hold every cached fsspec filesystem, so a forked child never finalizes the parent's.

    fsspec empties its instance cache in a forked child, so the parent's instances are
    garbage collected there and their finalizers close the parent's pooled connections: the
    asyncio transports unregister their sockets from an epoll set that parent and child share
    (epoll registrations belong to the open file description, which fork shares). The parent's
    event loop then never hears from those connections, and its next request on one hangs
    until aiohttp's timeout (300 s): seen when DataLoader workers (fork) had run an epoch and
    the main process then read a manifest over HTTP again. Held here, the inherited instances
    stay alive in the child and are never finalized there (DataLoader workers leave with
    ``os._exit``); the parent lets go of them right after the fork.
    """
    fsspec = sys.modules.get("fsspec")
    if fsspec is None:
        return
    classes = [fsspec.AbstractFileSystem]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        cache = cls.__dict__.get("_cache")
        if cache:
            _INHERITED.extend(cache.values())


def _filesystem(url: str, storage_options: dict | None) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path it knows the object by."""
    fsspec = require_fsspec(url)
    try:
        fs, path = fsspec.core.url_to_fs(url, **_default_options(url, storage_options))
    except ImportError as exc:  # the backend (s3fs, gcsfs, aiohttp) is missing
        raise MissingExtraError(f"{url}: {REMOTE_INSTALL_HINT} (import failed: {exc})") from None
    except ValueError as exc:  # a protocol fsspec does not know
        raise RemoteError(f"{url}: not a location fsspec can open ({exc})", url=url) from None
    return fs, path


def _default_options(url: str, storage_options: dict | None) -> dict:
    options = dict(storage_options or {})
    scheme = _SCHEME.match(url).group(1).lower()  # type: ignore[union-attr]  # callers pass URLs
    if scheme in ("s3", "s3a") and os.environ.get("AWS_ENDPOINT_URL") and "endpoint_url" not in options:
        # older s3fs releases ignore AWS_ENDPOINT_URL; pass it explicitly so every version honours it
        options.setdefault("client_kwargs", {}).setdefault("endpoint_url", os.environ["AWS_ENDPOINT_URL"])
    return options


@dataclass(frozen=True)
class RetryPolicy:
    """How a transient failure is retried: ``attempts`` tries in all, exponential backoff with full jitter.

    Attributes:
        attempts: Tries per request, the first included.
        base_delay: Seconds of the first backoff (doubled each retry).
        max_delay: Cap on one backoff.
    """

    attempts: int = 6
    base_delay: float = 0.05
    max_delay: float = 4.0

    def delay(self, attempt: int) -> float:
        """Backoff before retry ``attempt`` (1-based): uniform in [0, min(max, base * 2**(attempt-1))]."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


DEFAULT_RETRY = RetryPolicy()


def _status(exc: BaseException) -> Any:
    """The HTTP status an exception carries (aiohttp ``status``, botocore response), else ``None``."""
    for attr in ("status", "code", "status_code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    cause = exc.__cause__ or exc.__context__
    return _status(cause) if cause is not None and cause is not exc else None


def _transient(exc: BaseException) -> bool:
    """Whether a failed request is worth retrying (a dropped connection, a timeout, 408/429/5xx)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, MissingExtraError)):
        return False
    name = type(exc).__name__
    if "Payload" in name or "Disconnected" in name:
        return True  # a body cut short (its `code` is aiohttp's parser state, not an HTTP status)
    status = _status(exc)
    if status is not None:
        return status in TRANSIENT_STATUS
    if isinstance(exc, (ConnectionError, TimeoutError, _ShortRead)):
        return True
    # aiohttp/botocore connection and payload errors, by name: importing them would load the extra
    return any(word in name for word in ("Connection", "Connector", "Timeout", "ReadError", "ClientOSError"))


class _ShortRead(Exception):
    """A response ended before the requested range did (a dropped connection): retried."""


class StorageObject:
    """One object (file) read by byte range. Subclasses: :class:`LocalObject`, :class:`RemoteObject`."""

    url: str

    @property
    def size(self) -> int:
        """Size in bytes."""
        raise NotImplementedError

    @property
    def etag(self) -> str:
        """The store's version marker (ETag, generation), or ``""`` where it has none."""
        return ""

    #: Whether :meth:`submit` runs reads without the executor it is given (on the lean client's event loop).
    native_async: bool = False

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``; exactly ``end - start`` of them, or an error."""
        raise NotImplementedError

    def submit(self, start: int, end: int, executor: cf.Executor) -> cf.Future:
        """Start reading bytes ``[start, end)`` without blocking: a future of exactly ``end - start`` bytes.

        Here (local files, fsspec's remote schemes) the read runs on ``executor``; a
        :class:`RemoteObject` read by the lean client ignores ``executor`` (:attr:`native_async`).
        The future raises what :meth:`read` would.
        """
        return executor.submit(self.read, start, end)

    def expect_etag(self, etag: str) -> None:
        """Make every later read conditional on the object still having ``etag`` (where the store can).

        A no-op here (local files have no ETag); :class:`RemoteObject` sends it with each ranged read.
        """

    def close(self) -> None:
        """Release the descriptor or connection (the object may be reopened by the next read)."""

    def __enter__(self) -> "StorageObject":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalObject(StorageObject):
    """A local file, read with ``os.pread`` (thread-safe: no shared file offset)."""

    def __init__(self, path: str) -> None:
        self.url = local_path(path)
        self.fd = os.open(self.url, os.O_RDONLY)

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read(self, start: int, end: int) -> bytes:
        data = os.pread(self.fd, end - start, start)
        if len(data) != end - start:
            raise LocalReadError(f"{self.url}: bytes {start}-{end}: read {len(data)} of {end - start} (file shorter)",
                              url=self.url, start=start, end=end)
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class RemoteObject(StorageObject):
    """An object behind a URL, read with ranged requests, retried when transient.

    HTTP(S) and S3 objects are read by the lean client (:mod:`streamprune.rangeclient`) where
    it can map ``storage_options`` (:attr:`native_async` is then true); everything else through
    fsspec. Safe to share between threads (each read is one independent request) and to pickle
    (clients and filesystems are rebuilt in the process that reads: DataLoader workers open
    their own, forked or spawned).

    After :meth:`expect_etag`, every ranged read is conditional on the object still having that
    ETag, so an object replaced between two reads (mid-epoch) is an :class:`ObjectChangedError`,
    never bytes of the new object read against the old index. HTTP(S) and S3 send ``If-Match``
    (through fsspec, S3 sends ``IfMatch`` with each ``GetObject`` via s3fs's ``call_s3``: its
    ``cat_file`` takes no request parameters). Other backends (``gs://``, ``az://``, ...) read
    without a precondition: for them only the size and ETag check when the shard is opened applies.

    Args:
        url: The object's URL.
        storage_options: For the lean client (``headers`` for HTTP; ``key``, ``secret``,
            ``token``, ``anon``, ``endpoint_url``, ``profile``, ``client_kwargs`` with
            ``endpoint_url``/``region_name`` for S3) or, any other option, the fsspec filesystem.
        retry: Retry policy for transient failures.
        info: The object's ``fs.info()`` when the caller has it (saves one request).
    """

    def __init__(self, url: str, storage_options: dict | None = None, retry: RetryPolicy = DEFAULT_RETRY, info: dict | None = None):
        self.url = url
        self.storage_options = storage_options
        self.retry = retry
        self._fs: Any = None
        self._path = ""
        self._info = info
        self.if_match = ""  # the ETag every ranged read requires (expect_etag); "" sends no precondition
        self.requests = 0  # ranged requests sent (retries included), for benchmarks and tests
        self.bytes_read = 0
        self._lock = threading.Lock()
        self._target: Any = None  # the lean client's Target, or False where fsspec reads the object
        self._target_pid = -1  # the process it was made in (a forked child makes its own)
        self._shown = rangeclient.redact(url)  # the URL as messages name it: no password, signature or token

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fs"] = None
        state["_lock"] = None
        state["_target"] = None  # holds a credentials source: rebuilt where the object is read
        state["_target_pid"] = -1
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._target, self._target_pid = None, -1
        self.__dict__.setdefault("_shown", rangeclient.redact(self.url))  # pickled before the lean client

    @property
    def fs(self) -> Any:
        """The fsspec filesystem (built on first use, in this process)."""
        if self._fs is None:
            self._fs, self._path = _filesystem(self.url, self.storage_options)
        return self._fs

    def _lean(self) -> Any:
        """The lean client's target for this object in this process, or ``None`` (fsspec reads it)."""
        pid = os.getpid()
        if self._target_pid != pid:
            self._target = rangeclient.target_for(self.url, self.storage_options) or False
            self._target_pid = pid
        return self._target or None

    @property
    def native_async(self) -> bool:  # type: ignore[override]  # a class attribute on the base class
        """Whether :meth:`submit` runs on the lean client's loop (HTTP(S)/S3 with options it maps)."""
        return self._lean() is not None

    def info(self) -> dict:
        """The object's metadata (``size``, ``ETag``, ...), fetched once."""
        if self._info is None:
            target = self._lean()
            if target is None:
                self._info = self._call(lambda: self.fs.info(self._path), None, None)
            else:
                self._info = rangeclient.submit(self._retrying(lambda: rangeclient.head(target), None, None)).result()
        return self._info

    @property
    def size(self) -> int:
        return int(self.info()["size"])

    @property
    def etag(self) -> str:
        return info_etag(self.info())

    def expect_etag(self, etag: str) -> None:
        """Send ``etag`` as a precondition with every later ranged read (HTTP(S) and S3; see the class).

        A weak ETag (``W/"..."``) is not sent: ``If-Match`` compares strongly, so it would fail
        every read of an unchanged object.
        """
        self.if_match = "" if etag.startswith("W/") else etag

    def read(self, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        if self._lean() is not None:
            return self.submit(start, end, _NO_EXECUTOR).result()

        def fetch() -> bytes:
            with self._lock:
                self.requests += 1
            data = self._get(start, end)
            if len(data) != end - start:
                raise _ShortRead(f"got {len(data)} of {end - start} bytes")
            with self._lock:
                self.bytes_read += len(data)
            return data

        return self._call(fetch, start, end)

    def submit(self, start: int, end: int, executor: cf.Executor) -> cf.Future:
        """Start reading ``[start, end)``: on the lean client's loop (``executor`` unused), else on ``executor``."""
        try:
            target = self._lean()
        except Exception as exc:  # noqa: BLE001 - raised by the future, as read() would raise it
            future: cf.Future = cf.Future()
            future.set_exception(exc)
            return future
        if target is None:
            return executor.submit(self.read, start, end)
        if end <= start:
            future = cf.Future()
            future.set_result(b"")
            return future

        async def get() -> bytes:
            with self._lock:
                self.requests += 1
            data = await rangeclient.get_range(target, start, end, self.if_match)
            with self._lock:
                self.bytes_read += len(data)
            return data

        return rangeclient.submit(self._retrying(get, start, end))

    def _get(self, start: int, end: int) -> bytes:
        """One ranged GET of ``[start, end)`` through fsspec, conditional on :attr:`if_match` where the backend can send it."""
        scheme = _SCHEME.match(self.url).group(1).lower()  # type: ignore[union-attr]  # a URL, checked by open_object
        if not self.if_match or scheme not in IF_MATCH_SCHEMES:
            return self.fs.cat_file(self._path, start=start, end=end)
        if scheme in ("http", "https"):
            # cat_file's headers= replaces the filesystem's own (storage_options); keep both
            headers = {**(getattr(self.fs, "kwargs", {}).get("headers") or {}), "If-Match": self.if_match}
            return self.fs.cat_file(self._path, start=start, end=end, headers=headers)
        bucket, key, version = self.fs.split_path(self._path)
        request = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end - 1}", "IfMatch": self.if_match}
        if version:
            request["VersionId"] = version
        response = self.fs.call_s3("get_object", **request)
        body = response["Body"]
        try:
            # the body is aiobotocore's stream: read it on the filesystem's event loop
            return require_fsspec(self.url).asyn.sync(self.fs.loop, body.read)
        finally:
            body.close()

    def _call(self, fn: Callable[[], Any], start: int | None, end: int | None) -> Any:
        """Run one request through fsspec, retrying transient failures; a final failure names URL, range and status."""
        for attempt in range(1, self.retry.attempts + 1):
            try:
                if self._fs is None:
                    self.fs  # noqa: B018 - build the filesystem (errors here are not transient)
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified: transient ones are retried
                final = self._give_up(exc, attempt, start, end)
                if final is not None:
                    raise final  # noqa: B904 - _give_up set its cause
                time.sleep(self._pause(exc, attempt, start))
        raise AssertionError("unreachable: the last attempt gives up")

    async def _retrying(self, fn: Callable[[], Any], start: int | None, end: int | None) -> Any:
        """:meth:`_call` on the lean client's loop: ``fn()`` is a coroutine, backoffs do not block the loop."""
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified: transient ones are retried
                final = self._give_up(exc, attempt, start, end)
                if final is not None:
                    raise final  # noqa: B904 - _give_up set its cause
                await asyncio.sleep(self._pause(exc, attempt, start))
        raise AssertionError("unreachable: the last attempt gives up")

    def _pause(self, exc: BaseException, attempt: int, start: int | None) -> float:
        pause = self.retry.delay(attempt)
        span = f" bytes {start}-" if start is not None else ""
        log.debug("%s%s: %s; retry %d in %.2fs", self._shown, span, exc, attempt, pause)
        return pause

    def _give_up(self, exc: BaseException, attempt: int, start: int | None, end: int | None) -> BaseException | None:
        """``None`` to retry ``exc`` (transient, attempts left); else the error to raise (its cause set)."""
        if isinstance(exc, (MissingExtraError, RemoteError)):
            return exc
        span = f" bytes {start}-{end}" if start is not None else ""
        status = _status(exc)
        lean_status = status if isinstance(exc, rangeclient.HTTPStatusError) else None
        final: RemoteError
        if isinstance(exc, FileNotFoundError) or lean_status == 404:
            final = RemoteError(f"{self._shown}: object not found", url=self.url, start=start, end=end, status=404)
            return _caused(final, None)
        if isinstance(exc, PermissionError) or lean_status == 403:
            final = RemoteError(
                f"{self._shown}: access denied ({exc}); check the credentials and endpoint (AWS_* variables, "
                "~/.aws files, or storage_options)", url=self.url, start=start, end=end, status=403,
            )
            return _caused(final, None)
        if _transient(exc) and attempt < self.retry.attempts:
            return None
        if status == PRECONDITION_FAILED and self.if_match:
            final = ObjectChangedError(
                f"{self._shown}:{span}: the object no longer has ETag {self.if_match} (412 Precondition Failed): it was "
                "replaced after indexing; re-run `streamprune index`", url=self.url, start=start, end=end, status=status,
            )
            return _caused(final, exc)
        tries = "after retries" if _transient(exc) else "not retried"
        final = RemoteError(
            f"{self._shown}:{span} request failed {tries} (last status {status if status is not None else 'none'}: "
            f"{type(exc).__name__}: {exc})", url=self.url, start=start, end=end, status=status,
        )
        return _caused(final, exc)


class _NoExecutor(cf.Executor):
    """The executor :meth:`RemoteObject.read` hands its own :meth:`~RemoteObject.submit` when the lean client reads."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:  # pragma: no cover - never called
        raise AssertionError("the lean client runs reads on its own loop")


_NO_EXECUTOR = _NoExecutor()


def _caused(error: BaseException, cause: BaseException | None) -> BaseException:
    """``error`` raised ``from cause`` (``None``: no chained traceback).

    A client library's exception may quote the URL it requested, userinfo included; chained,
    it would be printed with the traceback. Our own message already says what it said
    (redacted), so such a cause is dropped.
    """
    if cause is not None and redact(str(cause)) != str(cause):
        cause = None
    error.__cause__ = cause
    error.__suppress_context__ = True
    return error


def info_etag(info: dict) -> str:
    """The version marker in an fsspec ``info()`` dict: ETag (S3, HTTP), else generation or version."""
    for key in ("ETag", "etag", "VersionId", "generation", "version_id"):
        value = info.get(key)
        if value:
            return str(value)
    return ""


def open_object(location: str, storage_options: dict | None = None, retry: RetryPolicy = DEFAULT_RETRY) -> StorageObject:
    """A :class:`StorageObject` for a path or URL.

    Raises:
        FileNotFoundError: A local file is missing.
        MissingExtraError: A URL without the ``remote`` extra installed.
    """
    if is_remote(location):
        require_fsspec(location)
        return RemoteObject(location, storage_options, retry)
    return LocalObject(location)


def object_info(location: str, storage_options: dict | None = None) -> dict:
    """``{"size": int, "etag": str}`` of a path or URL (``etag`` empty for local files)."""
    if not is_remote(location):
        return {"size": os.path.getsize(local_path(location)), "etag": ""}
    obj = RemoteObject(location, storage_options)
    return {"size": obj.size, "etag": obj.etag}


def read_bytes(location: str, storage_options: dict | None = None) -> bytes:
    """A whole file or object (one request, retried when transient).

    Raises:
        FileNotFoundError: It does not exist (local or remote).
    """
    if not is_remote(location):
        with open(local_path(location), "rb") as fh:
            return fh.read()
    obj = RemoteObject(location, storage_options)
    try:
        return obj._call(lambda: obj.fs.cat_file(obj._path), None, None)  # noqa: SLF001 - our own class
    except RemoteError as exc:
        if exc.status == 404:
            raise FileNotFoundError(redact(location)) from None
        raise


def exists(location: str, storage_options: dict | None = None) -> bool:
    """Whether a path or URL exists."""
    if not is_remote(location):
        return os.path.exists(local_path(location))
    obj = RemoteObject(location, storage_options)
    return bool(obj._call(lambda: obj.fs.exists(obj._path), None, None))  # noqa: SLF001 - our own class


def write_bytes(location: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write a whole object (an object store's PUT is atomic: readers see the old or the new object)."""
    if not is_remote(location):
        atomic_write_bytes(local_path(location), data)
        return
    obj = RemoteObject(location, storage_options)
    obj._call(lambda: obj.fs.pipe_file(obj._path, data), None, None)  # noqa: SLF001 - our own class


def put_file(local: str, location: str, storage_options: dict | None = None) -> None:
    """Upload a local file to ``location`` (one object: complete or absent)."""
    obj = RemoteObject(location, storage_options)
    obj._call(lambda: obj.fs.put_file(local, obj._path), None, None)  # noqa: SLF001 - our own class


def remove(location: str, storage_options: dict | None = None) -> None:
    """Delete a path or object; a missing one is not an error."""
    if not is_remote(location):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local_path(location))
        return
    obj = RemoteObject(location, storage_options)
    with contextlib.suppress(FileNotFoundError, RemoteError):
        obj._call(lambda: obj.fs.rm_file(obj._path), None, None)  # noqa: SLF001 - our own class


def local_copy(location: str, storage_options: dict | None = None, cache_dir: str | None = None) -> str:
    """A local path holding a small remote file (a mask), downloaded once per URL and version.

    Local locations are returned as they are. The cache key is the URL with the object's size
    and ETag, so a replaced object is downloaded again.
    """
    if not is_remote(location):
        return local_path(location)
    info = object_info(location, storage_options)
    key = hashlib.sha256(f"{location}\0{info['size']}\0{info['etag']}".encode()).hexdigest()[:32]
    cache_dir = cache_dir or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(tempfile.gettempdir(), f"streamprune-{os.getuid()}")), "streamprune-remote"
    )
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"{key}-{basename(location)}")
    if not os.path.exists(path) or os.path.getsize(path) != info["size"]:
        write_bytes(path, read_bytes(location, storage_options))
    return path


def expand_urls(patterns: list[str]) -> list[str]:
    """Expand webdataset brace patterns (``shards-{000000..000099}.tar``) and keep order."""
    # Deferred on purpose: braceexpand ships with webdataset, a heavy import for the command line.
    from braceexpand import braceexpand

    out: list[str] = []
    for pattern in patterns:
        out.extend(braceexpand(pattern) if "{" in pattern else [pattern])
    return out


def iter_object(location: str, storage_options: dict | None = None, block: int = 8 << 20) -> Iterator[bytes]:
    """A file or object's bytes in order, ``block`` at a time: one sequential streaming pass."""
    if not is_remote(location):
        with open(local_path(location), "rb") as fh:
            while chunk := fh.read(block):
                yield chunk
        return
    obj = RemoteObject(location, storage_options)
    size = obj.size
    for start in range(0, size, block):
        yield obj.read(start, min(size, start + block))
