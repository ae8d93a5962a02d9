"""A simulated object store in Python, for the scripts that still use it (not the remote suite).

``SimStore`` is a threaded Python HTTP server on 127.0.0.1 (its own process) with HTTP Range
support that, per request, waits a configurable time to first byte before the headers, then
paces the body through token buckets: ``conn_rate`` bytes/s per TCP connection and
``total_rate`` for all connections together. It counts requests and body bytes sent, and answers
S3 path-style requests (``/bench/<key>``). Its request rate is bounded by Python on the same
cores as the client, which is why the remote suite reads from nginx instead
(:mod:`benchmarks.nginx_store`); ``benchmarks.remote_clients`` and
``benchmarks.remote_index_measure`` still use it, for their total-bandwidth cap and control
endpoints (``set_ttfb``, ``reset``, ``stats``).
"""

from __future__ import annotations

import email.utils
import http.server
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

from . import resultsfile, servers

__all__ = ["BUCKET", "SimStore"]

BUCKET = "bench"
CHUNK = 64 << 10


class _Pacer:
    """A token bucket as a virtual clock: ``rate`` bytes/s with ``burst`` bytes of credit."""

    def __init__(self, rate: float, burst: int = CHUNK) -> None:
        self.rate = float(rate)
        self.burst = burst
        self.t = 0.0

    def take(self, n: int, now: float) -> float:
        """Reserve ``n`` bytes; the seconds to wait before sending them."""
        self.t = max(self.t, now - self.burst / self.rate) + n / self.rate
        return self.t - now


def _serve(root: str, conn_rate: float, total_rate: float) -> None:
    """The store's process: serve ``root`` until killed; print the port first."""
    state = {"ttfb": 0.0, "requests": 0, "bytes": 0, "head": 0}
    lock = threading.Lock()
    total = _Pacer(total_rate)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def setup(self) -> None:
            super().setup()
            # headers and body leave in separate writes: with Nagle on, the body waits for the
            # client's delayed ACK (~40 ms), a latency on every request that no store has
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.pacer = _Pacer(conn_rate)

        def _file(self) -> str | None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
            if path.startswith(BUCKET + "/"):
                path = path[len(BUCKET) + 1 :]
            full = os.path.normpath(os.path.join(root, path))
            return full if full.startswith(root) and os.path.isfile(full) else None

        def _control(self) -> bool:
            parts = urllib.parse.urlsplit(self.path)
            if not parts.path.startswith("/__"):
                return False
            query = dict(urllib.parse.parse_qsl(parts.query))
            with lock:
                if parts.path == "/__reset":
                    state.update(requests=0, bytes=0, head=0)
                if "ttfb" in query:
                    state["ttfb"] = float(query["ttfb"])
                body = json.dumps(state).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True

        def _headers(self, path: str) -> tuple[int, str]:
            st = os.stat(path)
            return st.st_size, f'"{st.st_mtime_ns:x}-{st.st_size:x}"'

        def _missing(self) -> None:
            body = b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code></Error>"
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            if self._control():
                return
            with lock:
                state["requests"] += 1
                state["head"] += 1
                ttfb = state["ttfb"]
            time.sleep(ttfb)
            path = self._file()
            if path is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            size, etag = self._headers(path)
            self.send_response(200)
            self._common(size, etag, os.path.getmtime(path))
            self.end_headers()

        def _common(self, length: int, etag: str, mtime: float) -> None:
            self.send_header("Content-Length", str(length))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", email.utils.formatdate(mtime, usegmt=True))

        def do_GET(self) -> None:
            if self._control():
                return
            with lock:
                state["requests"] += 1
                ttfb = state["ttfb"]
            time.sleep(ttfb)
            path = self._file()
            if path is None:
                self._missing()
                return
            size, etag = self._headers(path)
            lo, hi, status = 0, size, 200
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                a, _, b = rng[6:].split(",")[0].partition("-")
                if a:
                    lo, hi = int(a), min(size, int(b) + 1) if b else size
                else:
                    lo, hi = max(0, size - int(b)), size
                status = 206
            self.send_response(status)
            self._common(hi - lo, etag, os.path.getmtime(path))
            if status == 206:
                self.send_header("Content-Range", f"bytes {lo}-{hi - 1}/{size}")
            self.end_headers()
            with open(path, "rb") as fh:
                fh.seek(lo)
                left = hi - lo
                while left > 0:
                    chunk = fh.read(min(CHUNK, left))
                    now = time.monotonic()
                    wait = self.pacer.take(len(chunk), now)
                    with lock:
                        wait = max(wait, total.take(len(chunk), now))
                    if wait > 0:
                        time.sleep(wait)
                    try:
                        self.wfile.write(chunk)
                    except OSError:
                        return
                    left -= len(chunk)
                    with lock:
                        state["bytes"] += len(chunk)

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        request_queue_size = 128

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


class SimStore:
    """The simulated object store, in a child process: ``url``, ``set_ttfb``, ``reset``, ``stats``, ``stop``."""

    def __init__(self, root: str, conn_rate: float, total_rate: float) -> None:
        repo = os.path.dirname(resultsfile.HERE)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.sim_store", "--serve", os.path.abspath(root), str(conn_rate), str(total_rate)],
            cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the simulated store did not start ({line!r})")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}/{BUCKET}"
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def _control(self, what: str, **query: Any) -> dict:
        q = ("?" + urllib.parse.urlencode(query)) if query else ""
        with urllib.request.urlopen(f"{self.endpoint}/__{what}{q}", timeout=30) as resp:
            return json.loads(resp.read())

    def set_ttfb(self, seconds: float) -> None:
        self._control("config", ttfb=seconds)

    def reset(self) -> None:
        self._control("reset")

    def stats(self) -> dict:
        return self._control("stats")

    def stop(self) -> None:
        servers.stop_process(self.proc)


if __name__ == "__main__":  # the store's own process (SimStore starts it)
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        _serve(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
