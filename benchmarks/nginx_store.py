"""A native object store for remote tests and benchmarks: nginx on loopback, with latency and bandwidth.

nginx (C, non-blocking) serves a directory with Range and ``If-Match`` support. Each port
stands for one store setting: ``ttfb`` seconds to first byte (the echo module's
``echo_sleep``, which waits without blocking nginx's worker) and ``rate`` bytes per second per
connection (``limit_rate``). Every request is logged with its port, range, status, bytes sent
and time, so a run's requests and bytes are counted from what the server really served.

The same ports answer path-style S3 reads (``GET /bucket/key`` with a ``Range``, ``HEAD``):
nginx ignores the signature, so S3-only clients configured with an endpoint URL and path-style
addressing read the same files through the same latency. ``root/bucket/key`` is the file.

Needs Debian's ``nginx-light`` and, for ``ttfb > 0``, ``libnginx-mod-http-echo``.

Example::

    store = NginxStore(root, workdir, settings={"t30": (0.03, 100e6)})
    url = store.url("t30") + "/shards/train-000000.tar"
    ...
    entries = store.log_entries()   # one dict per request served
    store.stop()
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from .servers import free_port, stop_process, wait_port

__all__ = ["NGINX", "ECHO_MODULE", "NginxStore", "echo_module_available", "read_log", "summarise_log"]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
#: Debian's libnginx-mod-http-echo installs the module here.
ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"


def echo_module_available() -> bool:
    """Whether nginx and its echo module (for time to first byte) are installed."""
    return os.path.exists(NGINX) and os.path.exists(ECHO_MODULE)


class NginxStore:
    """nginx serving ``root`` on one loopback port per store setting.

    Args:
        root: Directory served (``root/path`` is ``url(name) + "/path"``).
        workdir: Where the configuration, logs and temporaries go.
        settings: ``name -> (ttfb seconds, bytes/s per connection or None)``; one port each.
            Default: one plain port ``"plain"`` (no latency, no limit).
        workers: nginx worker processes (1: the store should not take the cores the client
            is measured on; nginx serves thousands of requests/s per worker).

    Raises:
        RuntimeError: nginx is missing, the echo module is missing where a setting has a
            ``ttfb``, or nginx did not start (its error log is quoted).
    """

    def __init__(self, root: str, workdir: str, settings: Mapping[str, tuple[float, float | None]] | None = None,
                 workers: int = 1) -> None:
        self.root = os.path.abspath(root)
        self.workdir = os.path.abspath(workdir)
        self.settings = dict(settings or {"plain": (0.0, None)})
        if not os.path.exists(NGINX):
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
        if any(ttfb > 0 for ttfb, _ in self.settings.values()) and not os.path.exists(ECHO_MODULE):
            raise RuntimeError(f"{ECHO_MODULE} is missing (Debian: apt-get install libnginx-mod-http-echo)")
        self.ports = {name: free_port() for name in self.settings}
        self.log = os.path.join(self.workdir, "access.log")
        os.makedirs(os.path.join(self.workdir, "tmp"), exist_ok=True)
        conf = os.path.join(self.workdir, "nginx.conf")
        with open(conf, "w") as fh:
            fh.write(self._config(workers))
        self.proc = subprocess.Popen([NGINX, "-c", conf, "-p", self.workdir], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            for port in self.ports.values():
                wait_port(port)
        except RuntimeError:
            self.stop()
            with open(os.path.join(self.workdir, "error.log")) as fh:
                raise RuntimeError(f"nginx did not start: {fh.read()[-2000:]}") from None

    def _config(self, workers: int) -> str:
        temp = os.path.join(self.workdir, "tmp")
        needs_echo = any(ttfb > 0 for ttfb, _ in self.settings.values())
        servers = []
        for name, (ttfb, rate) in self.settings.items():
            limit = f"limit_rate {int(rate)};" if rate else ""
            if ttfb > 0:
                # echo_sleep waits on a timer (the worker keeps serving others), then the named
                # location serves the file: Range, If-Match and ETag as for any static file
                body = f"""
        location / {{ echo_sleep {ttfb:.3f}; echo_exec @file; }}
        location @file {{ {limit} }}"""
            else:
                body = f"""
        location / {{ {limit} }}"""
            servers.append(f"""
    server {{
        listen 127.0.0.1:{self.ports[name]} reuseport;
        root {self.root};{body}
    }}""")
        load = f"load_module {ECHO_MODULE};\n" if needs_echo else ""
        return f"""{load}
daemon off;
master_process {'on' if workers > 1 else 'off'};
worker_processes {workers};
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format ranges '$server_port $request_method $uri $status $bytes_sent $body_bytes_sent $request_time "$http_range"';
    access_log {self.log} ranges;
    client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; fastcgi_temp_path {temp}/fcgi;
    uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    sendfile on;
    tcp_nodelay on;
    default_type application/octet-stream;
{''.join(servers)}
}}
"""

    def url(self, name: str | None = None) -> str:
        """``http://127.0.0.1:PORT`` of setting ``name`` (the only one when ``None``)."""
        if name is None:
            if len(self.ports) != 1:
                raise ValueError(f"this store has several settings ({sorted(self.ports)}): name one")
            name = next(iter(self.ports))
        return f"http://127.0.0.1:{self.ports[name]}"

    def clear_log(self, settle: float = 0.1) -> None:
        """Empty the access log (nginx reopens it on SIGUSR1).

        Args:
            settle: Seconds to wait first: nginx logs a request after its response, so a request
                the caller has just finished may be logged after the log was emptied.
        """
        time.sleep(settle)
        open(self.log, "w").close()
        os.kill(self.proc.pid, 10)
        time.sleep(0.05)

    def log_entries(self, name: str | None = None, settle: float = 0.1) -> list[dict[str, Any]]:
        """One dict per request served (``port``, ``method``, ``uri``, ``status``, ``bytes_sent``,
        ``body_bytes``, ``seconds``, ``range``), of setting ``name`` or of all.

        Args:
            name: Only this setting's port; ``None``: every request.
            settle: Seconds to wait first (nginx logs a request after its response).
        """
        time.sleep(settle)
        return read_log(self.log, self.ports[name] if name is not None else None)

    def stop(self) -> None:
        """Stop nginx."""
        stop_process(self.proc)


def read_log(path: str, port: int | None = None, start: int = 0, end: int | None = None) -> list[dict[str, Any]]:
    """The requests logged in ``path`` between byte offsets ``start`` and ``end`` (``None``: to the end).

    A process that reads the store can note the log's size (``os.path.getsize``) at points in
    its run (nginx writes one line per request when its response is done) and have its
    requests split at those points, e.g. per epoch.

    Args:
        path: The access log (:attr:`NginxStore.log`).
        port: Only requests to this port (one store setting); ``None``: all.
        start: Byte offset of the first line to read (a line boundary).
        end: Byte offset after the last line to read (a line boundary); ``None``: the end of the file.

    Returns:
        One dict per request, as :meth:`NginxStore.log_entries`.
    """
    out = []
    with open(path, "rb") as fh:
        fh.seek(start)
        text = fh.read(-1 if end is None else max(0, end - start)).decode()
    for line in text.splitlines():
        p, method, uri, status, sent, body, seconds, rng = line.split(" ", 7)
        if port is not None and int(p) != port:
            continue
        out.append({"port": int(p), "method": method, "uri": uri, "status": int(status), "bytes_sent": int(sent),
                    "body_bytes": int(body), "seconds": float(seconds), "range": rng.strip('"')})
    return out


def summarise_log(entries: list[dict[str, Any]], method: str | None = "GET") -> dict[str, int]:
    """Requests and body bytes of ``entries`` (of one ``method``; ``None``: all)."""
    chosen = [e for e in entries if method is None or e["method"] == method]
    return {"requests": len(chosen), "body_bytes": sum(e["body_bytes"] for e in chosen)}
