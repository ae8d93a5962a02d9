"""The lean client's HTTP, signing and limits, against a small scripted server on 127.0.0.1.

The remote tests (tests/readers/test_remote.py) read shards through it from nginx and moto; these
check what those servers never do: chunked and close-delimited bodies, interim responses,
keep-alive connections closed while idle, redirects, a server that ignores ``Range``, requests
in flight at once, and SigV4 signatures against botocore's own signer.
"""

from __future__ import annotations

import asyncio
import datetime
import threading

import pytest

from streamprune import rangeclient, storage
from streamprune.storage import RemoteError, RetryPolicy

DATA = bytes(range(256)) * 400  # 102,400 bytes


class ScriptedServer:
    """An HTTP/1.1 server whose answer to each request is decided by ``script(method, path, headers, n)``.

    ``script`` returns ``(status, headers, body, mode)``; ``mode`` is ``"length"`` (Content-Length),
    ``"chunked"``, ``"close"`` (no length: the body ends when the connection closes) or
    ``"drop"`` (the connection is closed instead of answering) or ``"length_close"`` (answered,
    then closed without saying so). ``None`` answers the Range of ``DATA``. Before answering, a
    request waits ``hold`` seconds, or until ``barrier`` requests are open at once; ``peak``
    records the most open at once, so a test can check how many a client keeps in flight.
    """

    def __init__(self, script=None, barrier: int = 0, hold: float = 0.0) -> None:
        self.script = script
        self.barrier = barrier
        self.hold = hold
        self.requests: list[tuple[str, str, dict]] = []
        self.open = self.peak = 0
        self.connections = 0
        self.writers: set = set()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _run(self, started):
        asyncio.set_event_loop(self.loop)
        self.full = asyncio.Event()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024))
        self.port = self.server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader, writer):
        self.connections += 1
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                self.requests.append((method, path, headers))
                n = len(self.requests)
                self.open += 1
                self.peak = max(self.peak, self.open)
                if self.barrier:
                    if self.open >= self.barrier:
                        self.full.set()
                    try:
                        await asyncio.wait_for(self.full.wait(), 30)
                    except asyncio.TimeoutError:
                        pass  # the client never had `barrier` requests open: answered anyway, the test sees `peak`
                if self.hold:
                    await asyncio.sleep(self.hold)
                self.open -= 1
                answer = self.script(method, path, headers, n) if self.script else None
                status, extra, body, mode = answer if answer is not None else _range_answer(method, headers)
                if mode == "drop":
                    writer.close()
                    return
                out = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in extra.items())]
                if mode in ("length", "length_close"):
                    out.append(f"Content-Length: {len(body)}")
                elif mode == "chunked":
                    out.append("Transfer-Encoding: chunked")
                else:
                    out.append("Connection: close")
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
                if method != "HEAD":
                    if mode == "chunked":
                        for i in range(0, len(body), 1000):
                            piece = body[i : i + 1000]
                            writer.write(f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n")
                        writer.write(b"0\r\nX-Trailer: yes\r\n\r\n")
                    else:
                        writer.write(body)
                await writer.drain()
                if mode in ("close", "length_close"):
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def stop(self):
        async def shutdown():
            self.server.close()
            for writer in self.writers:  # the client's pooled connections hear of it (FIN), as from a real server
                writer.close()
            # Handlers still waiting on a connection end here, not in the garbage collector
            # ("Task was destroyed but it is pending").
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _range_answer(method, headers):
    if "range" not in headers:
        return 200, {"ETag": '"v1"'}, DATA, "length"
    lo, hi = (int(x) for x in headers["range"][len("bytes=") :].split("-"))
    return 206, {"ETag": '"v1"', "Content-Range": f"bytes {lo}-{hi}/{len(DATA)}"}, DATA[lo : hi + 1], "length"


@pytest.fixture
def server_factory():
    servers = []

    def make(script=None, barrier=0, hold=0.0):
        servers.append(ScriptedServer(script, barrier, hold))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def _read(url, start, end, **kwargs):
    return storage.RemoteObject(url, retry=RetryPolicy(attempts=3, base_delay=0.01), **kwargs).read(start, end)


def test_chunked_and_close_delimited_and_interim_responses(server_factory):
    def script(method, path, headers, n):
        if path == "/chunked":
            return _range_answer(method, headers)[:3] + ("chunked",)
        if path == "/close":
            return _range_answer(method, headers)[:3] + ("close",)
        return None

    server = server_factory(script)
    assert _read(server.url + "/chunked", 10, 5010) == DATA[10:5010]
    assert _read(server.url + "/close", 0, 4096) == DATA[:4096]
    # an error body sent chunked is read to its end (S3's error code), and the connection stays usable
    errors = server_factory(lambda m, p, h, n: (404, {}, b"<Error><Code>NoSuchKey</Code></Error>", "chunked") if n == 1 else None)
    with pytest.raises(RemoteError, match="object not found"):
        _read(errors.url + "/x", 0, 10)
    assert _read(errors.url + "/x", 0, 10) == DATA[:10]


def test_a_keep_alive_connection_closed_by_the_server_is_replaced_without_a_retry(server_factory):
    # closed after each answer without saying so: the client must notice the idle connection is gone
    closing = server_factory(lambda m, p, h, n: _range_answer(m, h)[:3] + ("length_close",))
    obj = storage.RemoteObject(closing.url + "/o", retry=RetryPolicy(attempts=1))  # no retries: the pool must cope
    assert [obj.read(i, i + 100) for i in range(0, 1000, 100)] == [DATA[i : i + 100] for i in range(0, 1000, 100)]
    # the second request reaches the server, which closes the connection unanswered (as a server does that
    # drops an idle keep-alive connection just as a request arrives): nothing of an answer had arrived, so
    # the pool sends it once more on a new connection, and the read succeeds without RetryPolicy
    dropped = server_factory(lambda m, p, h, n: (200, {}, b"", "drop") if n == 2 else None)
    obj = storage.RemoteObject(dropped.url + "/o", retry=RetryPolicy(attempts=1))
    assert obj.read(0, 10) == DATA[:10]
    assert obj.read(10, 20) == DATA[10:20]
    assert dropped.connections == 2 and len(dropped.requests) == 3


def test_connections_a_server_closes_leave_the_pool(server_factory):
    # a pool that kept dead connections would count them against its limit until it pooled nothing
    import time

    server = ScriptedServer()
    obj = storage.RemoteObject(server.url + "/o")
    futures = [obj.submit(i, i + 10, None) for i in range(20)]
    assert [f.result(30) for f in futures] == [DATA[i : i + 10] for i in range(20)]
    held = rangeclient.idle_connections()
    assert held >= 1
    server.stop()  # closes every connection, as a server shutting down does
    deadline = time.monotonic() + 10
    while rangeclient.idle_connections() > held - server.connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rangeclient.idle_connections() <= held - server.connections


def test_redirects_are_followed_and_credentials_stay_with_their_origin(server_factory):
    target = server_factory()
    hops = server_factory(lambda m, p, h, n: (302, {"Location": f"{target.url}/final"}, b"", "length")
                          if p == "/start" else None)
    data = storage.RemoteObject(hops.url + "/start", {"headers": {"Authorization": "Bearer s3cr3t", "X-Keep": "1"}}).read(5, 50)
    assert data == DATA[5:50]
    _, path, headers = target.requests[-1]
    assert path == "/final" and headers["range"] == "bytes=5-49"
    assert "authorization" not in headers and headers["x-keep"] == "1"


def test_a_server_that_ignores_range_is_one_clear_error(server_factory):
    server = server_factory(lambda m, p, h, n: (200, {}, DATA, "length"))
    obj = storage.RemoteObject(server.url + "/o")
    with pytest.raises(RemoteError, match=r"bytes 100-200 request failed not retried .*ignores Range"):
        obj.read(100, 200)
    assert obj.requests == 1
    assert obj.read(0, len(DATA)) == DATA  # the whole object asked for: a 200 is the answer


def test_transient_statuses_are_retried_and_counted(server_factory):
    server = server_factory(lambda m, p, h, n: (503, {}, b"busy", "length") if n % 2 else None)
    obj = storage.RemoteObject(server.url + "/o", retry=RetryPolicy(attempts=3, base_delay=0.001))
    assert obj.read(0, 1000) == DATA[:1000]
    assert obj.requests == 2 and obj.bytes_read == 1000
    always = server_factory(lambda m, p, h, n: (503, {}, b"busy", "length"))
    obj = storage.RemoteObject(always.url + "/o", retry=RetryPolicy(attempts=3, base_delay=0.001))
    with pytest.raises(RemoteError, match=r"bytes 0-10 request failed after retries \(last status 503"):
        obj.read(0, 10)
    assert obj.requests == 3


def _check_peak(server, n, max_connections, peak):
    """``n`` 10-byte reads submitted at once under ``max_connections``: right bytes, ``peak`` open at most."""
    rangeclient.configure(max_connections=max_connections)
    obj = storage.RemoteObject(server.url + "/o")
    futures = [obj.submit(i, i + 10, None) for i in range(n)]
    assert all(f.result(60) == DATA[i : i + 10] for i, f in enumerate(futures))
    assert server.peak == peak


def test_at_least_256_requests_in_flight_and_configurable(server_factory):
    # the server answers nothing until `barrier` requests are open at once: a client that keeps fewer in
    # flight waits 30 s and the peak says how many it allowed
    assert rangeclient.limits().max_connections >= 256
    server = server_factory(barrier=256)
    obj = storage.RemoteObject(server.url + "/o")
    assert obj.native_async
    ranges = [(i * 100, i * 100 + 100) for i in range(256)]
    futures = [obj.submit(a, b, None) for a, b in ranges]
    assert [f.result(60) for f in futures] == [DATA[a:b] for a, b in ranges]
    assert server.peak == 256
    previous = rangeclient.limits().max_connections
    try:
        # raised: all 300 at once (a barrier of 300 holds every answer until 300 are open)
        _check_peak(server_factory(barrier=300), 300, max_connections=300, peak=300)
        # lowered: 40 requests, each held a little, never more than 8 open
        _check_peak(server_factory(hold=0.05), 40, max_connections=8, peak=8)
    finally:
        rangeclient.configure(max_connections=previous)
    with pytest.raises(ValueError, match="max_connections"):
        rangeclient.configure(max_connections=0)


def test_cancelled_submit_drops_its_request_and_later_reads_work(server_factory):
    import time

    server = server_factory(hold=1.0)
    obj = storage.RemoteObject(server.url + "/o")
    future = obj.submit(0, 10, None)
    deadline = time.monotonic() + 10
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert future.cancel() and future.cancelled()
    assert obj.read(10, 20) == DATA[10:20]  # on another connection: the cancelled one is out of step, dropped
    assert server.connections == 2


def test_sigv4_signature_equals_botocore(monkeypatch):
    botocore_auth = pytest.importorskip("botocore.auth")
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    fixed = datetime.datetime(2025, 3, 4, 5, 6, 7)
    monkeypatch.setattr(botocore_auth, "get_current_datetime", lambda: fixed)
    now = fixed.replace(tzinfo=datetime.timezone.utc).timestamp()
    for token in ("", "FwoGZXIvYXdzEJr//token+with/slashes="):
        for key in ("ds/shard-000000.tar", "a b/+c=d/é~x.tar"):
            options = {"key": "AKIDEXAMPLE", "secret": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "token": token,
                       "endpoint_url": "http://127.0.0.1:9000", "client_kwargs": {"region_name": "eu-west-3"}}
            target = rangeclient.target_for(f"s3://bucket/{key}", options)
            assert target is not None
            lines = target.signer.headers("GET", target.origin.host_header, target.path, now=now)
            mine = dict(line.split(": ", 1) for line in lines.strip().split("\r\n"))
            request = AWSRequest(method="GET", url=f"http://127.0.0.1:9000{target.path}")
            botocore_auth.S3SigV4Auth(Credentials(options["key"], options["secret"], token or None), "s3", "eu-west-3").add_auth(request)
            assert mine["Authorization"] == request.headers["Authorization"]
            assert mine["x-amz-date"] == request.headers["X-Amz-Date"]
            assert options["secret"] not in lines


def test_urls_in_messages_hide_credentials():
    assert rangeclient.redact("https://user:hunter2@host/a?X-Amz-Signature=abc&x=1") == "https://user:***@host/a?X-Amz-Signature=***&x=1"
    obj = storage.RemoteObject("http://user:hunter2@127.0.0.1:9/shard.tar", retry=RetryPolicy(attempts=1))
    with pytest.raises(RemoteError) as info:
        obj.read(0, 10)
    assert "hunter2" not in str(info.value) and "127.0.0.1:9/shard.tar" in str(info.value)


def test_what_the_lean_client_does_not_map_goes_to_fsspec(monkeypatch):
    assert rangeclient.target_for("gs://bucket/key") is None
    assert rangeclient.target_for("http://host/x", {"client_kwargs": {"trust_env": True}}) is None
    assert rangeclient.target_for("s3://bucket/key", {"requester_pays": True}) is None
    assert rangeclient.target_for("s3://bucket/key?versionId=3") is None
    assert rangeclient.target_for("http://host/x", {"headers": {"A": "b"}}) is not None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert rangeclient.target_for("http://host/x") is None  # fsspec's aiohttp and botocore know proxies


@pytest.mark.integration
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_both_event_loops_read_the_same_bytes(server_factory, loop):
    import os
    import subprocess
    import sys

    if loop == "uvloop":
        pytest.importorskip("uvloop")
    server = server_factory()
    code = (
        "import sys; from streamprune import rangeclient, storage\n"
        "obj = storage.RemoteObject(sys.argv[1] + '/o')\n"
        "fs = [obj.submit(a, a + 1000, None) for a in range(0, 50000, 1000)]\n"
        "print(rangeclient.event_loop_kind(), obj.size, b''.join(f.result() for f in fs).hex())\n"
    )
    env = dict(os.environ, STREAMPRUNE_EVENT_LOOP=loop)
    out = subprocess.run([sys.executable, "-c", code, server.url], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kind, size, data = out.stdout.split()
    assert kind == loop and int(size) == len(DATA) and bytes.fromhex(data) == DATA[:50000]
