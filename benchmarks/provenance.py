"""Where a results file comes from: the command, the git commit (and whether the tree was dirty), the machine.

Every results file a suite writes carries :func:`provenance`'s keys at its top level, so that
``python -m benchmarks --report`` can show them and ``--report --check`` can tell whether the
code a suite measures has changed since.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

__all__ = ["clear_command", "command_line", "file_history", "git_revision", "machine_info", "package_versions", "provenance", "set_command"]

HERE = os.path.dirname(os.path.abspath(__file__))


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of ``names`` (``"not installed"`` when missing)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine_info() -> dict:
    """Cores, memory, Python, OS, CPU model and package versions."""
    info = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "packages": package_versions(["streamprune", "numpy", "webdataset", "torch", "pillow", "matplotlib", "psutil"]),
    }
    with contextlib.suppress(ImportError, OSError):  # no psutil, or no load average
        # optional extra: psutil
        import psutil

        info["memory_GiB"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["load_avg_at_start"] = os.getloadavg()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover
        pass
    return info


def git_revision(path: str = HERE) -> dict[str, Any]:
    """The checkout's commit and whether it had uncommitted changes: ``{"commit": sha, "dirty": bool}``.

    ``{"commit": None, "dirty": None}`` outside a git checkout (or without git), so a results
    file always says whether it can be tied to a commit. Results files (``benchmarks/results``),
    which a run rewrites, do not make a checkout dirty.
    """
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                 ":(exclude,top)benchmarks/results"], cwd=path, capture_output=True, text=True, timeout=10,
                                check=True)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}


#: The command recorded in results files, set by the runner (:func:`set_command`).
_COMMAND: str | None = None


def set_command(prefix: str, argv: Sequence[str]) -> None:
    """Record how the suite now running was invoked, e.g. ``python -m benchmarks io`` and its options.

    Args:
        prefix: The invocation up to the suite's options (no interpreter path).
        argv: The options passed to the suite.
    """
    global _COMMAND
    _COMMAND = " ".join([prefix, *(shlex.quote(a) for a in argv)])


def clear_command() -> None:
    """Forget the command set by :func:`set_command`."""
    global _COMMAND
    _COMMAND = None


def command_line() -> str:
    """How this run was invoked, to reproduce it: ``python -m benchmarks NAME ARGS`` (no interpreter path)."""
    if _COMMAND is not None:
        return _COMMAND
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.dirname(script) == HERE and script.endswith(".py"):  # python -m benchmarks.X (or python benchmarks/X.py)
        return " ".join(["python", "-m", f"benchmarks.{os.path.basename(script)[:-3]}", *(shlex.quote(a) for a in sys.argv[1:])])
    return " ".join(["python", *(shlex.quote(a) for a in sys.argv)])


def file_history(path: str) -> dict[str, str | None]:
    """The last commit that changed ``path`` and its date: ``{"commit", "date"}`` (``None`` where git has none)."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%H %cI", "--", os.path.abspath(path)],
                             cwd=os.path.dirname(os.path.abspath(path)), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "date": None}
    words = out.stdout.split()
    return {"commit": words[0], "date": words[1]} if out.returncode == 0 and len(words) == 2 else {"commit": None, "date": None}


def provenance(**extra_packages: Sequence[str]) -> dict[str, Any]:
    """The keys every results file records: ``command``, ``commit``, ``dirty``, ``machine``, ``date``.

    Args:
        **extra_packages: ``machine`` keys to add with the versions of these packages
            (``packages_remote=["fsspec", ...]``).

    Returns:
        A dict to merge into the results (the suite's own keys win where both name one).
    """
    machine = machine_info()
    for key, names in extra_packages.items():
        machine[key] = package_versions(names)
    return {"command": command_line(), **git_revision(), "machine": machine,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
