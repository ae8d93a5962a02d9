"""Real servers for the remote-shard tests, on 127.0.0.1 only, each stopped by its fixture.

* :class:`Nginx` serves a directory with Range support and logs every request's range and
  the bytes it sent (``$bytes_sent``), so tests can check what was transferred (the one
  nginx store, :class:`benchmarks.nginx_store.NginxStore`, with no latency);
* :class:`FaultProxy` is a small threaded HTTP proxy in front of a server that answers some
  requests with 503, drops some connections mid-response, and delays some;
* :func:`moto_server` is moto's in-process S3 (``ThreadedMotoServer``).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import threading
import time

from benchmarks.nginx_store import NGINX, NginxStore
from benchmarks.servers import free_port, stop_process, wait_port

__all__ = ["NGINX", "Nginx", "FaultProxy", "free_port", "wait_port", "stop_process"]

class Nginx(NginxStore):
    """nginx serving ``root`` on one plain loopback port (no latency, no limit): the store the remote tests share."""

    def __init__(self, root: str, workdir: str) -> None:
        super().__init__(root, workdir)
        self.port = next(iter(self.ports.values()))

    @property
    def url(self) -> str:  # type: ignore[override]  # one setting: the base URL as a plain attribute
        return super().url()


class FaultProxy:
    """A threaded HTTP proxy to ``upstream_port`` that misbehaves on purpose.

    Every ``fail_every``-th GET is answered 503; every ``drop_every``-th has its connection
    closed halfway through the body; every ``slow_every``-th is delayed ``slow_seconds``.
    ``counts`` says how many of each happened.
    """

    def __init__(self, upstream_port: int, fail_every: int = 0, drop_every: int = 0, slow_every: int = 0, slow_seconds: float = 0.3):
        self.counts = {"requests": 0, "503": 0, "dropped": 0, "slow": 0}
        self.sockets: set[socket.socket] = set()  # the clients' connections, closed by stop()
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                with lock:
                    proxy.sockets.add(self.connection)

            def _forward(self, method: str) -> None:
                with lock:
                    proxy.counts["requests"] += 1
                    n = proxy.counts["requests"]
                if method == "GET" and fail_every and n % fail_every == 0:
                    with lock:
                        proxy.counts["503"] += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if slow_every and n % slow_every == 0:
                    with lock:
                        proxy.counts["slow"] += 1
                    time.sleep(slow_seconds)
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(method, self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                        self.send_header(k, v)
                self.end_headers()
                if method == "GET" and drop_every and n % drop_every == 0 and len(body) > 1:
                    with lock:
                        proxy.counts["dropped"] += 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if method == "GET":
                    self.wfile.write(body)

            def do_GET(self):
                self._forward("GET")

            def do_HEAD(self):
                self._forward("HEAD")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        # keep-alive connections outlive the listening socket (their handler threads wait for the next
        # request): close them, so a client's pool never sends a later test's request to this proxy
        for sock in list(self.sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
