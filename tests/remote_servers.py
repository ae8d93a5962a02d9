"""Real servers for the remote-shard tests, on 127.0.0.1 only, each stopped by its fixture.

* :class:`Nginx` serves a directory with Range support and logs every request's range and
  the bytes it sent (``$bytes_sent``), so tests can check what was transferred;
* :class:`FaultProxy` is a small threaded HTTP proxy in front of a server that answers some
  requests with 503, drops some connections mid-response, and delays some;
* :func:`moto_server` is moto's in-process S3 (``ThreadedMotoServer``).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import shutil
import socket
import subprocess
import threading
import time

from benchmarks.common import free_port, stop_process, wait_port

__all__ = ["NGINX", "Nginx", "FaultProxy", "free_port", "wait_port", "stop_process"]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """nginx serving ``root`` on a free loopback port; ``log_entries()`` parses its access log."""

    def __init__(self, root: str, workdir: str) -> None:
        self.root = root
        self.workdir = workdir
        self.port = free_port()
        self.log = os.path.join(workdir, "access.log")
        conf = os.path.join(workdir, "nginx.conf")
        temp = os.path.join(workdir, "tmp")
        os.makedirs(temp, exist_ok=True)
        with open(conf, "w") as fh:
            fh.write(f"""
daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format ranges '$request_method $uri $status $bytes_sent $body_bytes_sent "$http_range"';
    access_log {self.log} ranges;
    client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; fastcgi_temp_path {temp}/fcgi;
    uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
    keepalive_requests 10000;
    server {{
        listen 127.0.0.1:{self.port};
        root {root};
        location / {{ }}
    }}
}}
""")
        self.proc = subprocess.Popen([NGINX, "-c", conf, "-p", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(self.port)
        except RuntimeError:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def clear_log(self) -> None:
        open(self.log, "w").close()
        os.kill(self.proc.pid, 10)  # SIGUSR1: reopen the log file

    def log_entries(self) -> list[dict]:
        """One dict per logged request: method, uri, status, bytes_sent, body_bytes, range."""
        time.sleep(0.1)  # nginx writes the line after the response
        out = []
        with open(self.log) as fh:
            for line in fh:
                method, uri, status, sent, body, rng = line.rstrip("\n").split(" ", 5)
                out.append({"method": method, "uri": uri, "status": int(status), "bytes_sent": int(sent),
                            "body_bytes": int(body), "range": rng.strip('"')})
        return out

    def stop(self) -> None:
        stop_process(self.proc)


class FaultProxy:
    """A threaded HTTP proxy to ``upstream_port`` that misbehaves on purpose.

    Every ``fail_every``-th GET is answered 503; every ``drop_every``-th has its connection
    closed halfway through the body; every ``slow_every``-th is delayed ``slow_seconds``.
    ``counts`` says how many of each happened.
    """

    def __init__(self, upstream_port: int, fail_every: int = 0, drop_every: int = 0, slow_every: int = 0, slow_seconds: float = 0.3):
        self.counts = {"requests": 0, "503": 0, "dropped": 0, "slow": 0}
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

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
