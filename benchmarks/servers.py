"""Local server processes of the remote suites and tests: a free port, waiting for it, stopping the server."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time

__all__ = ["free_port", "stop_process", "wait_port"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a benchmark or test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Return once something listens on ``127.0.0.1:port``.

    Raises:
        RuntimeError: Nothing listened within ``timeout`` seconds.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate a server process started with ``subprocess.Popen``; kill it if it outlives ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
