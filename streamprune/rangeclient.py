"""A lean client for ranged reads of HTTP(S) and S3 objects: one asyncio loop thread per process.

Remote reads are small (a kept run of samples, ~100 KB) and many (thousands per second), so
what a request costs the reading process matters as much as the round trip. This module
speaks just enough HTTP/1.1 for object-store reads, on the standard library alone: keep-alive
connections on one event loop thread, a response body received straight into a buffer of
its length (``asyncio.BufferedProtocol``, one copy to the ``bytes`` returned), a ``Range`` and
an optional ``If-Match`` per ``GET``, and AWS Signature Version 4 for S3, signed with ``hmac``
and cached for a minute per object (a signature covers the method, host, path and time, not
the range). Requests from other threads are started in batches (one wake-up of the loop per
batch). Measured against nginx (``python -m benchmarks.remote_clients``, results in
``benchmarks/results/remote_clients.json``) it costs less CPU per request than aiohttp,
obstore or fsspec, and keeps more requests in flight than fsspec's pool of 100 connections.

What it does not do is left to fsspec (:mod:`streamprune.storage` falls back): other schemes
(``gs://``, ``az://``, ...), ``storage_options`` it cannot map, proxies set in the environment,
and S3 without ``botocore`` (which resolves credentials: environment, ``~/.aws`` files, SSO,
instance roles). Retries, precondition failures and error messages are the caller's
(:class:`~streamprune.storage.RemoteObject`): this module raises :class:`HTTPStatusError`
(with the status) for an error response and a :class:`ConnectionError` subclass for a failed
or cut connection. No message it writes contains credentials.

The loop is uvloop's where uvloop is installed (the ``remote`` extra installs it; set
``STREAMPRUNE_EVENT_LOOP=asyncio`` for the standard library's), asyncio's otherwise.

Fork safety: the loop, its thread and its connections belong to the process that started
them. A forked child (a DataLoader worker) starts its own on first use and never touches the
parent's: closing an inherited connection would unregister the parent's socket from the epoll
set that parent and child share (see ``_hold_filesystems`` in :mod:`streamprune.storage`).

Example::

    target = target_for("http://host/shards/train-000000.tar")
    future = submit(get_range(target, 0, 512))      # a concurrent.futures.Future
    header = future.result()
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import collections
import concurrent.futures as cf
import datetime
import functools
import hashlib
import hmac
import os
import re
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any, Callable

from ._version import __version__
from .errors import ArgumentError

__all__ = [
    "Limits",
    "configure",
    "limits",
    "idle_connections",
    "event_loop_kind",
    "HTTPStatusError",
    "ConnectError",
    "ConnectionClosedError",
    "RangeIgnoredError",
    "Target",
    "target_for",
    "get_range",
    "head",
    "submit",
    "redact",
    "LEAN_SCHEMES",
]

#: Schemes this client reads; everything else goes to fsspec.
LEAN_SCHEMES = frozenset({"http", "https", "s3", "s3a"})
_MAX_HEAD = 64 * 1024  # a response head larger than this is not an object store talking
_MAX_ERROR_BODY = 64 * 1024  # error bodies are read this far (S3's XML names the error), then the connection is dropped
_MAX_REDIRECTS = 10
_SIGNATURE_SECONDS = 60.0  # a SigV4 signature is accepted for 15 minutes; re-signed every minute
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_USER_AGENT = f"streamprune/{__version__}"


@dataclass(frozen=True)
class Limits:
    """Connection and timeout limits of the process's client.

    Attributes:
        max_connections: Requests in flight at once in this process (each holds one
            connection); more wait for a free one. Also the most idle connections kept.
        connect_timeout: Seconds to open a connection (TLS handshake included).
        read_timeout: Seconds without a byte from the server before a request fails (a
            stalled response; retried by the caller).
        idle_seconds: An idle connection older than this is closed rather than reused
            (servers drop idle keep-alive connections after 5-75 s).
    """

    max_connections: int = 256
    connect_timeout: float = 30.0
    read_timeout: float = 60.0
    idle_seconds: float = 15.0


_LIMITS = Limits()


def configure(max_connections: int | None = None, connect_timeout: float | None = None, read_timeout: float | None = None,
              idle_seconds: float | None = None) -> Limits:
    """Change this process's limits (requests started afterwards use them); return the new limits.

    Args:
        max_connections: Requests in flight at once (default 256).
        connect_timeout: Seconds to open a connection.
        read_timeout: Seconds of silence before a request fails.
        idle_seconds: Oldest idle connection reused.

    Raises:
        ArgumentError: A limit that is not positive.
    """
    global _LIMITS
    changes = {k: v for k, v in (("max_connections", max_connections), ("connect_timeout", connect_timeout),
                                 ("read_timeout", read_timeout), ("idle_seconds", idle_seconds)) if v is not None}
    for name, value in changes.items():
        if not value > 0:
            raise ArgumentError(f"rangeclient.configure: {name}={value!r} must be positive")
    _LIMITS = replace(_LIMITS, **changes)
    runtime = _RUNTIME
    if runtime is not None and runtime.pid == os.getpid() and "max_connections" in changes:
        runtime.loop.call_soon_threadsafe(runtime.resize, _LIMITS.max_connections)
    return _LIMITS


def limits() -> Limits:
    """This process's current limits."""
    return _LIMITS


def idle_connections() -> int:
    """Idle keep-alive connections this process's client holds (connections the servers closed are not counted)."""
    runtime = _RUNTIME
    if runtime is None or runtime.pid != os.getpid():
        return 0
    return runtime.idle_count


# --- errors ----------------------------------------------------------------------------------


class HTTPStatusError(Exception):
    """The server answered with an error status (``status``; for S3 also its error ``code``).

    The message has the status, the reason phrase and S3's error code, never the response
    body (S3 echoes the access key id in some error bodies).
    """

    def __init__(self, status: int, reason: str, code: str = "", region: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}".rstrip() + (f" ({code})" if code else ""))
        self.status = status
        self.reason = reason
        self.code = code
        self.region = region  # S3's x-amz-bucket-region, where it says the bucket lives elsewhere

    def __reduce__(self) -> tuple:
        return (type(self), (self.status, self.reason, self.code, self.region))


class ConnectError(ConnectionError):
    """No connection to the server (refused, unreachable, name not resolved, timed out): transient."""


class ConnectionClosedError(ConnectionError):
    """The connection closed (or stalled) before the response was complete: transient.

    ``received`` says whether any byte of the response had arrived (a keep-alive connection
    the server closed while idle fails before any).
    """

    def __init__(self, message: str, received: bool = True) -> None:
        super().__init__(message)
        self.received = received


class RangeIgnoredError(Exception):
    """The server answered a ranged ``GET`` with a body that is not the range (it ignores ``Range``): not retried."""


# --- targets: where an object is and how a request for it is written -------------------------


@dataclass
class _Origin:
    scheme: str
    host: str
    port: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class Target:
    """One object this client can read: its origin, request path, fixed headers and (S3) signer.

    Built by :func:`target_for`; used on the client's loop thread only.
    """

    def __init__(self, url: str, origin: _Origin, path: str, headers: dict[str, str] | None = None,
                 signer: _SigV4 | None = None, s3_endpoint: tuple[str, str, str] | None = None) -> None:
        self.url = url
        self.origin = origin
        self.path = path
        self.headers = dict(headers or {})
        self.signer = signer
        self.s3_endpoint = s3_endpoint  # (bucket, key, "aws" or "custom"): rebuilt when S3 names another region
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())

    @property
    def is_s3(self) -> bool:
        return self.signer is not None or self.s3_endpoint is not None

    def request(self, method: str, extra: str = "") -> bytes:
        """The request head for ``method`` with ``extra`` header lines (each ending ``\\r\\n``)."""
        host = self.origin.host_header
        signed = self.signer.headers(method, host, self.path) if self.signer is not None else ""
        return (f"{method} {self.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {_USER_AGENT}\r\n"
                f"Accept-Encoding: identity\r\n{self._fixed}{signed}{extra}\r\n").encode("latin-1")

    def moved_to_region(self, region: str) -> bool:
        """Point an S3 target at ``region`` (S3 said the bucket lives there); whether anything changed."""
        if self.signer is None and self.s3_endpoint is None:
            return False
        changed = False
        if self.signer is not None and self.signer.region != region:
            self.signer = _SigV4(self.signer.credentials, region)
            changed = True
        if self.s3_endpoint is not None and self.s3_endpoint[2] == "aws":
            bucket, key, _ = self.s3_endpoint
            origin, path = _aws_location(bucket, key, region)
            changed = changed or origin.key != self.origin.key
            self.origin, self.path = origin, path
        return changed


def redact(url: str) -> str:
    """``url`` fit for a message or log line: no password in it, no signature or token in its query."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = (userinfo.split(":", 1)[0] + ":***@" if ":" in userinfo else userinfo + "@") + hostport
    query = parts.query
    if query:
        secret = re.compile(r"(signature|credential|token|sig|key|secret|password)", re.IGNORECASE)
        query = "&".join(f"{k}=***" if secret.search(k) else (f"{k}={v}" if sep else k)
                         for k, sep, v in (item.partition("=") for item in query.split("&")))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _quote_path(path: str) -> str:
    """A request path with unsafe characters percent-encoded (existing escapes kept)."""
    return urllib.parse.quote(path, safe="/%:@!$&'()*+,;=~-._?")


def _proxied(scheme: str, host: str) -> bool:
    """Whether the environment sends requests for ``scheme://host`` through a proxy (fsspec/botocore handle those)."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host)


def _http_target(url: str, options: dict) -> Target | None:
    if set(options) - {"headers"}:
        return None  # client_kwargs, auth objects, ...: fsspec knows what they mean
    headers = options.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        return None
    if any(c in s for k, v in headers.items() for s in (k, v) for c in "\r\n"):
        return None
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or _proxied(parts.scheme, parts.hostname):
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    fixed = dict(headers)
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        fixed["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    path = _quote_path(parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(url, _Origin(parts.scheme, parts.hostname, port), path, fixed)


_S3_OPTIONS = {"key", "secret", "token", "anon", "endpoint_url", "profile", "client_kwargs"}
_S3_CLIENT_KWARGS = {"endpoint_url", "region_name"}
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_S3_CONFIGS: dict[tuple, tuple[Any, str]] = {}  # per process: (options) -> (credentials source, region)


def _aws_location(bucket: str, key: str, region: str) -> tuple[_Origin, str]:
    """AWS's own endpoint for ``bucket/key``: virtual-hosted where the bucket name allows, else path-style."""
    quoted = urllib.parse.quote(key, safe="/~")
    if _DNS_BUCKET.match(bucket):
        return _Origin("https", f"{bucket}.s3.{region}.amazonaws.com", 443), "/" + quoted
    return _Origin("https", f"s3.{region}.amazonaws.com", 443), f"/{bucket}/{quoted}"


def _s3_credentials(options: dict) -> tuple[Callable[[], tuple[str, str, str] | None], str]:
    """Where signatures get their credentials, and the region: from ``options``, else botocore's chain."""
    cache_key = (os.getpid(), tuple(sorted((k, repr(v)) for k, v in options.items())))
    hit = _S3_CONFIGS.get(cache_key)
    if hit is not None:
        return hit
    # botocore resolves credentials and region the way s3fs does (environment, ~/.aws, SSO, roles);
    # imported here because only S3 needs it, and without it S3 stays with fsspec
    import botocore.session

    session = botocore.session.Session(profile=options.get("profile"))
    region = (options.get("client_kwargs") or {}).get("region_name") or session.get_config_variable("region") or "us-east-1"
    if options.get("anon"):
        source: Callable[[], tuple[str, str, str] | None] = lambda: None  # noqa: E731 - unsigned requests
    elif options.get("key") or options.get("secret"):
        static = (str(options.get("key") or ""), str(options.get("secret") or ""), str(options.get("token") or ""))
        source = lambda: static  # noqa: E731
    else:
        credentials = session.get_credentials()

        def source() -> tuple[str, str, str] | None:
            if credentials is None:
                return None  # none configured: unsigned (public buckets read; private ones answer 403)
            frozen = credentials.get_frozen_credentials()  # refreshes role credentials before they expire
            return (frozen.access_key, frozen.secret_key, frozen.token or "")

    _S3_CONFIGS[cache_key] = (source, region)
    return source, region


def _s3_target(url: str, options: dict) -> Target | None:
    if set(options) - _S3_OPTIONS or set(options.get("client_kwargs") or {}) - _S3_CLIENT_KWARGS:
        return None
    if not all(isinstance(v, (str, bool, type(None), dict)) for v in options.values()):
        return None
    rest = url.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not bucket or not key or "?" in rest or "#" in rest:
        return None  # versioned paths (?versionId=) and the like: s3fs parses those
    try:
        source, region = _s3_credentials(options)
    except ImportError:
        return None
    except Exception:  # noqa: BLE001 - a profile or config botocore rejects: fsspec reports it in its own words
        return None
    endpoint = (options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
                or _environment_endpoint())
    quoted = urllib.parse.quote(key, safe="/~")
    if endpoint:
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        if _proxied(parts.scheme, parts.hostname):
            return None
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return None
        # a custom endpoint (MinIO, Ceph, moto, R2...) is addressed path-style: no DNS per bucket needed
        origin, path, kind = _Origin(parts.scheme, parts.hostname, port), f"{parts.path.rstrip('/')}/{bucket}/{quoted}", "custom"
    else:
        if _proxied("https", "s3.amazonaws.com"):
            return None
        (origin, path), kind = _aws_location(bucket, key, region), "aws"
    return Target(url, origin, path, signer=_SigV4(source, region), s3_endpoint=(bucket, key, kind))


def _environment_endpoint() -> str:
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return ""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def target_for(url: str, storage_options: dict | None = None) -> Target | None:
    """The :class:`Target` for ``url``, or ``None`` when this client does not read it (fsspec does).

    ``None`` for schemes other than http, https, s3 and s3a; for ``storage_options`` other than
    ``headers`` (HTTP) or ``key``, ``secret``, ``token``, ``anon``, ``endpoint_url``,
    ``profile``, ``client_kwargs={"endpoint_url", "region_name"}`` (S3); where the environment
    names a proxy for the host; and for S3 without botocore.
    """
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)://", url)
    scheme = match.group(1).lower() if match else ""
    if scheme not in LEAN_SCHEMES or any(c in url for c in "\r\n\t"):
        return None
    options = dict(storage_options or {})
    if scheme in ("http", "https"):
        return _http_target(url, options)
    return _s3_target(url, options)


class _SigV4:
    """AWS Signature Version 4 for S3 requests without a body, the signed header lines cached per object for a minute."""

    def __init__(self, credentials: Callable[[], tuple[str, str, str] | None], region: str) -> None:
        self.credentials = credentials
        self.region = region
        self._cache: dict[tuple[str, str, str], tuple[float, str]] = {}
        self._keys: dict[tuple[str, str], bytes] = {}

    def headers(self, method: str, host: str, path: str, now: float | None = None) -> str:
        """The ``x-amz-*`` and ``Authorization`` header lines for one request (``now``: for tests)."""
        clock = time.monotonic()
        cached = self._cache.get((method, host, path))
        if now is None and cached is not None and cached[0] > clock:
            return cached[1]
        creds = self.credentials()
        if creds is None:
            lines = ""
        else:
            lines = self.sign(method, host, path, creds, time.time() if now is None else now)
        if now is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[(method, host, path)] = (clock + _SIGNATURE_SECONDS, lines)
        return lines

    def sign(self, method: str, host: str, path: str, creds: tuple[str, str, str], now: float) -> str:
        access, secret, token = creds
        stamp = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        amz_date, day = stamp.strftime("%Y%m%dT%H%M%SZ"), stamp.strftime("%Y%m%d")
        headers = {"host": host, "x-amz-content-sha256": _EMPTY_SHA256, "x-amz-date": amz_date}
        if token:
            headers["x-amz-security-token"] = token
        names = sorted(headers)
        signed = ";".join(names)
        path_part, _, query = path.partition("?")
        canonical_query = "&".join(sorted(query.split("&"))) if query else ""
        canonical = "\n".join([method, path_part, canonical_query, "".join(f"{n}:{headers[n]}\n" for n in names),
                               signed, _EMPTY_SHA256])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key(secret, day), to_sign.encode(), hashlib.sha256).hexdigest()
        lines = f"x-amz-content-sha256: {_EMPTY_SHA256}\r\nx-amz-date: {amz_date}\r\n"
        if token:
            lines += f"x-amz-security-token: {token}\r\n"
        return lines + f"Authorization: AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={signed}, Signature={signature}\r\n"

    def _key(self, secret: str, day: str) -> bytes:
        cached = self._keys.get((secret, day))
        if cached is None:
            key = f"AWS4{secret}".encode()
            for part in (day, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret, day): key}  # one day's key: the old one is never needed again
            cached = key
        return cached


# --- one connection: an HTTP/1.1 exchange at a time -------------------------------------------

_IDLE, _HEAD, _FIXED, _CHUNKED, _UNTIL_CLOSE = range(5)


class _Response:
    __slots__ = ("status", "reason", "headers", "body")

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytearray | None) -> None:
        self.status, self.reason, self.headers, self.body = status, reason, headers, body


class _Connection(asyncio.BufferedProtocol):
    """A keep-alive connection; a fixed-length body is received straight into the bytearray returned."""

    def __init__(self, key: tuple[str, str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.loop = loop
        self.transport: Any = None
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self.last_activity = 0.0
        self.on_lost: Callable[[_Connection], None] | None = None  # set while idle in a pool: takes it out
        self._scratch = bytearray(_MAX_HEAD)
        self._state = _IDLE
        self._waiter: asyncio.Future | None = None
        self._head = bytearray()
        self._raw = bytearray()
        self._body: bytearray | None = None
        self._view: memoryview | None = None
        self._got = 0
        self._expected = 0
        self._limit = 0
        self._method = "GET"
        self._max_body = 0
        self._received = False
        self._status = 0
        self._reason = ""
        self._headers: dict[str, str] = {}
        self._chunk_state = 0
        self._chunk_left = 0

    # asyncio callbacks

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> Any:
        if self._state == _FIXED:
            return self._view[self._got :]  # type: ignore[index]  # set with the state
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self.last_activity = time.monotonic()
        self._received = True
        if self._state == _FIXED:
            self._got += nbytes
            if self._got == self._expected:
                self._complete(self._body)
            return
        if self._state == _IDLE:
            self.reusable = False  # bytes nobody asked for: this connection is out of step
            self.transport.close()
            return
        try:
            self._feed(bytes(self._scratch[:nbytes]))
        except _ProtocolError as exc:
            self._fail(ConnectionClosedError(f"malformed response: {exc}"))
            self.transport.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.reusable = False
        if self.on_lost is not None:
            self.on_lost(self)
        if self._state == _UNTIL_CLOSE:
            self._complete(self._take_raw())
        elif self._waiter is not None and not self._waiter.done():
            where = "before the response" if not self._received else "mid-response"
            detail = f" ({exc})" if exc else ""
            self._fail(ConnectionClosedError(f"connection closed {where}{detail}", received=self._received))

    # one exchange

    def send(self, request: bytes, method: str, max_body: int) -> asyncio.Future:
        """Write ``request``; the future gets the :class:`_Response` (a body over ``max_body`` bytes is not read)."""
        self._waiter = self.loop.create_future()
        self._method, self._max_body = method, max_body
        self._state, self._received = _HEAD, False
        self._head = bytearray()
        self.last_activity = time.monotonic()
        self.transport.write(request)
        return self._waiter

    def _feed(self, data: bytes) -> None:
        if self._state == _HEAD:
            start = max(0, len(self._head) - 3)
            self._head += data
            end = self._head.find(b"\r\n\r\n", start)
            if end < 0:
                if len(self._head) > _MAX_HEAD:
                    raise _ProtocolError("response head over 64 KiB")
                return
            rest = bytes(self._head[end + 4 :])
            self._parse_head(bytes(self._head[:end]))
            self._head = bytearray()
            if self._state == _HEAD:  # an interim 1xx response: the real one follows
                if rest:
                    self._feed(rest)
                return
            data = rest
            if self._state == _FIXED:
                n = min(len(data), self._expected)
                self._view[:n] = data[:n]  # type: ignore[index]
                self._got = n
                if n < len(data):
                    self.reusable = False
                if self._got == self._expected:
                    self._complete(self._body)
                return
            if self._state == _IDLE:  # no body
                if data:
                    self.reusable = False
                return
        if self._state == _UNTIL_CLOSE:
            self._raw += data
            if len(self._raw) > self._limit:
                self.reusable = False
                self._complete(None)
                self.transport.abort()
            return
        if self._state == _CHUNKED:
            self._raw += data
            self._parse_chunks()

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise _ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(code)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _ProtocolError(f"malformed header line {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if 100 <= status < 200:
            return  # 100 Continue and friends: keep reading heads
        self._status, self._reason, self._headers = status, reason, headers
        if version == "HTTP/1.0" or "close" in headers.get("connection", "").lower():
            self.reusable = False
        limit = self._max_body if 200 <= status < 300 else _MAX_ERROR_BODY
        if self._method == "HEAD" or status in (204, 304):
            self._complete(None)
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._state, self._limit, self._raw, self._body = _CHUNKED, limit, bytearray(), bytearray()
            self._chunk_state, self._chunk_left = 0, 0
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise _ProtocolError(f"Content-Length {headers['content-length']!r}") from None
            if length > limit:
                self.reusable = False  # the body is not read: the connection cannot carry another request
                self._complete(None)
                self.transport.abort()
            elif length == 0:
                self._complete(bytearray())
            else:
                self._body = bytearray(length)
                self._view = memoryview(self._body)
                self._state, self._expected, self._got = _FIXED, length, 0
        else:
            self._state, self._limit, self._raw = _UNTIL_CLOSE, limit, bytearray()
            self.reusable = False

    def _parse_chunks(self) -> None:
        raw, pos = self._raw, 0
        while True:
            if self._chunk_state == 0:  # a size line
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                try:
                    size = int(bytes(raw[pos:eol]).split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _ProtocolError("malformed chunk size") from None
                pos = eol + 2
                if size == 0:
                    self._chunk_state = 2
                else:
                    self._chunk_state, self._chunk_left = 1, size
                    if len(self._body) + size > self._limit:  # type: ignore[arg-type]
                        self.reusable = False
                        self._complete(None)
                        self.transport.abort()
                        return
            elif self._chunk_state == 1:  # chunk data and its CRLF
                if len(raw) - pos < self._chunk_left + 2:
                    break
                self._body += raw[pos : pos + self._chunk_left]  # type: ignore[operator]
                pos += self._chunk_left + 2
                self._chunk_state = 0
            else:  # trailers, up to an empty line
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                if eol == pos:
                    del raw[: eol + 2]
                    if raw:
                        self.reusable = False
                    self._complete(self._body)
                    return
                pos = eol + 2
        del raw[:pos]

    def _take_raw(self) -> bytearray:
        raw, self._raw = self._raw, bytearray()
        return raw

    def _complete(self, body: bytearray | None) -> None:
        self._state = _IDLE
        self._view = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(_Response(self._status, self._reason, self._headers, body))

    def _fail(self, exc: BaseException) -> None:
        self._state = _IDLE
        self.reusable = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def check_stalled(self, timeout: float) -> None:
        """Fail the exchange when nothing arrived for ``timeout`` seconds."""
        if self._waiter is None or self._waiter.done():
            return
        if time.monotonic() - self.last_activity >= timeout:
            # received=True: a stalled server is not an idle connection closed under us; the caller's retry decides
            self._fail(ConnectionClosedError(f"no data for {timeout:g} s (read timeout)", received=True))
            self.transport.abort()


class _ProtocolError(Exception):
    """The bytes received are not a well-formed HTTP/1.1 response."""


# --- the process's loop, connections and limits ----------------------------------------------


class _Runtime:
    """The event loop thread of one process, its idle connections and its request gate."""

    def __init__(self, limits: Limits) -> None:
        self.pid = os.getpid()
        self.limits = limits
        self.loop = _new_loop()
        self.idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self.idle_count = 0
        self.gate: asyncio.Semaphore | None = None
        self.ssl_context: ssl.SSLContext | None = None
        self.active: set[_Connection] = set()  # connections waiting for a response: the watchdog's
        # requests from other threads, started in batches: one wake-up of the loop per batch, not per request
        self.queue: collections.deque[tuple[cf.Future, Coroutine[Any, Any, Any]]] = collections.deque()
        self.wake_pending = False
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), name="streamprune-rangeclient", daemon=True)
        self.thread.start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.gate = asyncio.Semaphore(self.limits.max_connections)
        self.loop.call_soon(started.set)
        self.loop.call_soon(self._watchdog)
        self.loop.run_forever()

    def post(self, coro: Coroutine[Any, Any, Any]) -> cf.Future:
        """Start ``coro`` on the loop (from any thread); its outcome as a :class:`concurrent.futures.Future`."""
        future: cf.Future = cf.Future()
        self.queue.append((future, coro))
        if not self.wake_pending:
            self.wake_pending = True
            self.loop.call_soon_threadsafe(self._drain)
        return future

    def _drain(self) -> None:
        self.wake_pending = False  # before popping: a request queued from now on schedules another drain
        queue, loop = self.queue, self.loop
        while queue:
            future, coro = queue.popleft()
            if future.cancelled():
                coro.close()
                continue
            task = loop.create_task(coro)
            task.add_done_callback(functools.partial(_settle, future))
            future.add_done_callback(functools.partial(_propagate_cancel, loop, task))

    def _watchdog(self) -> None:
        """Every second (or sooner for short timeouts): fail exchanges silent for ``read_timeout``, close stale idle ones."""
        timeout = self.limits.read_timeout
        for conn in list(self.active):
            conn.check_stalled(timeout)
        self._close_stale()
        self.loop.call_later(min(1.0, timeout / 4), self._watchdog)

    def resize(self, max_connections: int) -> None:
        """New requests wait on a gate of ``max_connections`` (those in flight finish on the old one)."""
        self.limits = replace(self.limits, max_connections=max_connections)
        self.gate = asyncio.Semaphore(max_connections)

    def tls(self) -> ssl.SSLContext:
        if self.ssl_context is None:
            context = ssl.create_default_context()
            bundle = os.environ.get("AWS_CA_BUNDLE") or os.environ.get("REQUESTS_CA_BUNDLE")
            if bundle:
                context.load_verify_locations(bundle)
            self.ssl_context = context
        return self.ssl_context

    def take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        """The most recently used idle connection to ``key`` (``None``: open a new one)."""
        pool = self.idle.get(key)
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            self.idle_count -= 1
            conn.on_lost = None
            if not conn.closed and now - conn.idle_since < self.limits.idle_seconds:
                return conn
            conn.transport.close()
        return None

    def give_back(self, conn: _Connection) -> None:
        """Keep a connection for the next request to its origin, or close it (out of step, or too many idle)."""
        if not conn.reusable or conn.closed or self.idle_count >= self.limits.max_connections:
            conn.transport.close()
            return
        conn.idle_since = time.monotonic()
        conn.on_lost = self._forget
        self.idle.setdefault(conn.key, collections.deque()).append(conn)
        self.idle_count += 1

    def _forget(self, conn: _Connection) -> None:
        """An idle connection closed by the server: out of its pool (the pool only holds live ones)."""
        conn.on_lost = None
        pool = self.idle.get(conn.key)
        if pool is not None and conn in pool:
            pool.remove(conn)
            self.idle_count -= 1
            if not pool:
                del self.idle[conn.key]

    def _close_stale(self) -> None:
        """Close idle connections older than ``idle_seconds`` (oldest first in each pool)."""
        oldest = time.monotonic() - self.limits.idle_seconds
        for key in list(self.idle):
            pool = self.idle[key]
            while pool and pool[0].idle_since < oldest:
                conn = pool.popleft()
                self.idle_count -= 1
                conn.on_lost = None
                conn.transport.close()
            if not pool:
                del self.idle[key]

    async def connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        context = self.tls() if scheme == "https" else None
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Connection(key, self.loop), host, port, ssl=context,
                                            server_hostname=host if context else None),
                self.limits.connect_timeout)
        except ssl.SSLCertVerificationError:
            raise  # a certificate that does not verify will not on a retry either
        except asyncio.TimeoutError:
            raise ConnectError(f"cannot connect to {host}:{port}: no connection within {self.limits.connect_timeout:g} s") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        return conn

    async def exchange(self, target: Target, method: str, extra: str, max_body: int) -> _Response:
        """One request on a pooled connection (a kept-alive one the server had closed is replaced once)."""
        gate = self.gate
        assert gate is not None
        async with gate:
            for attempt in range(2):
                key = target.origin.key
                conn = self.take_idle(key) if attempt == 0 else None
                reused = conn is not None
                if conn is None:
                    conn = await self.connect(key)
                waiter = conn.send(target.request(method, extra), method, max_body)
                self.active.add(conn)
                try:
                    response = await waiter
                except ConnectionClosedError as exc:
                    conn.transport.abort()
                    if reused and not exc.received:
                        continue  # closed while idle: the request never reached the server
                    raise
                except BaseException:  # cancelled mid-response: the connection is out of step
                    conn.reusable = False
                    conn.transport.abort()
                    raise
                finally:
                    self.active.discard(conn)
                self.give_back(conn)
                return response
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close every idle connection and stop the loop (on the loop thread, at exit)."""
        for pool in self.idle.values():
            for conn in pool:
                conn.on_lost = None
                conn.transport.close()
        self.idle.clear()
        self.loop.stop()


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (less CPU per request; ``STREAMPRUNE_EVENT_LOOP=asyncio`` opts out), else asyncio's."""
    if os.environ.get("STREAMPRUNE_EVENT_LOOP", "").lower() != "asyncio":
        try:
            # optional: the `remote` extra installs uvloop; the standard loop does the same work, slower
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def event_loop_kind() -> str:
    """Which event loop this process's client runs (or would run): ``"uvloop"`` or ``"asyncio"``."""
    runtime = _RUNTIME
    loop = runtime.loop if runtime is not None and runtime.pid == os.getpid() else None
    if loop is None:
        loop = _new_loop()
        loop.close()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


_RUNTIME: _Runtime | None = None
_RUNTIME_LOCK = threading.Lock()
#: Runtimes inherited from a parent process: held, never used, never closed (see the module docstring).
_INHERITED: list[_Runtime] = []


def _runtime() -> _Runtime:
    global _RUNTIME
    runtime = _RUNTIME
    if runtime is not None and runtime.pid == os.getpid():
        return runtime
    with _RUNTIME_LOCK:
        if _RUNTIME is not None and _RUNTIME.pid != os.getpid():
            _INHERITED.append(_RUNTIME)
            _RUNTIME = None
        if _RUNTIME is None:
            _RUNTIME = _Runtime(_LIMITS)
        return _RUNTIME


def _after_fork_in_child() -> None:
    """In a forked child: keep the parent's runtime alive but unused, and a fresh lock (the parent's may be held)."""
    global _RUNTIME, _RUNTIME_LOCK
    _RUNTIME_LOCK = threading.Lock()
    if _RUNTIME is not None:
        _INHERITED.append(_RUNTIME)
        _RUNTIME = None
    _S3_CONFIGS.clear()


def _shutdown() -> None:
    runtime = _RUNTIME
    if runtime is None or runtime.pid != os.getpid() or not runtime.thread.is_alive():
        return
    runtime.loop.call_soon_threadsafe(runtime.close)
    runtime.thread.join(2.0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_shutdown)


def submit(coro: Coroutine[Any, Any, Any]) -> cf.Future:
    """Run ``coro`` on this process's client loop (started on first use); its result as a :class:`concurrent.futures.Future`.

    Cancelling the future cancels the request (its connection is dropped, not reused).
    """
    return _runtime().post(coro)


def _settle(future: cf.Future, task: asyncio.Task) -> None:
    """Hand a finished task's outcome to the future another thread waits on."""
    if future.done():
        return
    try:
        if task.cancelled():
            future.cancel()
        elif task.exception() is not None:
            future.set_exception(task.exception())
        else:
            future.set_result(task.result())
    except cf.InvalidStateError:  # cancelled by its owner meanwhile
        pass


def _propagate_cancel(loop: asyncio.AbstractEventLoop, task: asyncio.Task, future: cf.Future) -> None:
    if future.cancelled() and not task.done():
        loop.call_soon_threadsafe(task.cancel)


# --- requests ---------------------------------------------------------------------------------


_S3_CODE = re.compile(rb"<Code>([A-Za-z0-9.]{1,64})</Code>")


def _status_error(target: Target, response: _Response) -> HTTPStatusError:
    code = ""
    if target.is_s3 and response.body:
        match = _S3_CODE.search(bytes(response.body[:_MAX_ERROR_BODY]))
        code = match.group(1).decode() if match else ""
    return HTTPStatusError(response.status, response.reason, code, response.headers.get("x-amz-bucket-region", ""))


async def _request(target: Target, method: str, extra: str, max_body: int) -> _Response:
    """``method`` on ``target`` following HTTP redirects and S3 region answers; an error status raises."""
    runtime = _runtime()
    current, moved = target, False
    for _ in range(_MAX_REDIRECTS + 1):
        response = await runtime.exchange(current, method, extra, max_body)
        status = response.status
        if status < 300:
            return response
        if current.is_s3:
            region = response.headers.get("x-amz-bucket-region", "")
            if status in (301, 307, 400) and region and not moved and current.moved_to_region(region):
                moved = True  # the bucket lives in another region: sign for it (and ask its endpoint) once
                continue
            raise _status_error(current, response)
        location = response.headers.get("location")
        if status in (301, 302, 303, 307, 308) and location:
            current = _redirected(current, location)
            continue
        raise _status_error(current, response)
    raise HTTPStatusError(310, f"more than {_MAX_REDIRECTS} redirects")


def _redirected(target: Target, location: str) -> Target:
    """The target a redirect points to (credentials are not forwarded to another origin)."""
    base = f"{target.origin.scheme}://{target.origin.host_header}{target.path}"
    url = urllib.parse.urljoin(base, location)
    new = _http_target(url, {})
    if new is None:
        raise HTTPStatusError(302, "redirected to a location this client cannot follow")
    same_origin = new.origin.key == target.origin.key
    headers = {k: v for k, v in target.headers.items() if same_origin or k.lower() not in ("authorization", "cookie")}
    return Target(target.url, new.origin, new.path, headers | new.headers)


async def get_range(target: Target, start: int, end: int, if_match: str = "") -> bytes:
    """Bytes ``[start, end)`` of the object, with ``If-Match: if_match`` when given.

    Raises:
        HTTPStatusError: An error status (412 when ``if_match`` no longer matches).
        RangeIgnoredError: The server sent something other than the range.
        ConnectionError: A connection failed or was cut (:class:`ConnectError`, :class:`ConnectionClosedError`).
    """
    extra = f"Range: bytes={start}-{end - 1}\r\n"
    if if_match:
        if "\r" in if_match or "\n" in if_match:
            raise ValueError(f"ETag {if_match!r} cannot be sent in a header")
        extra += f"If-Match: {if_match}\r\n"
    response = await _request(target, "GET", extra, end - start)
    body = response.body
    if body is None or len(body) != end - start or (response.status == 200 and start != 0):
        got = "a larger body" if body is None else f"{len(body)} bytes"
        raise RangeIgnoredError(f"asked for bytes {start}-{end - 1}, got status {response.status} with {got}"
                                f"{' (the server ignores Range)' if response.status == 200 else ''}")
    content_range = response.headers.get("content-range", "")
    if response.status == 206 and content_range and not content_range.startswith(f"bytes {start}-{end - 1}/"):
        raise RangeIgnoredError(f"asked for bytes {start}-{end - 1}, the server sent {content_range!r}")
    return bytes(body)


async def head(target: Target) -> dict[str, Any]:
    """The object's ``size`` and ``ETag`` (as fsspec's ``info()`` names them), from a ``HEAD``.

    A server that answers ``HEAD`` without a size (or refuses it: 403/405 for presigned URLs)
    is asked for byte 0 instead, and the size read from ``Content-Range``.

    Raises:
        HTTPStatusError: An error status (404: no such object).
    """
    try:
        response = await _request(target, "HEAD", "", 0)
    except HTTPStatusError as exc:
        if target.is_s3 or exc.status not in (403, 405, 501):
            raise
        response = None
    size = None
    if response is not None and "content-length" in response.headers and \
            response.headers.get("content-encoding", "identity") in ("identity", ""):
        size = int(response.headers["content-length"])
    if size is None:
        ranged = await _request(target, "GET", "Range: bytes=0-0\r\n", 1)
        total = ranged.headers.get("content-range", "").rpartition("/")[2]
        if ranged.status == 200:  # Range ignored: the whole object's length
            total = ranged.headers.get("content-length", "")
        if not total.isdigit():
            raise RangeIgnoredError("the server says neither the object's size nor its Content-Range")
        size, response = int(total), ranged
    info: dict[str, Any] = {"name": target.url, "size": size, "type": "file"}
    for header, key in (("etag", "ETag"), ("last-modified", "LastModified")):
        if response.headers.get(header):
            info[key] = response.headers[header]
    return info
