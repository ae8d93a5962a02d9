"""Block-device and page-cache helpers of the I/O suites.

* ``/proc/self/io`` counters (``read_bytes`` = bytes this process caused to be fetched from the
  block device; ``rchar`` = bytes returned by read syscalls, page cache included),
* page-cache control (evict with ``POSIX_FADV_DONTNEED``, warm by reading everything),
* the device's read-ahead and its ``/sys/dev/block`` counters.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from collections.abc import Iterable, Sequence

__all__ = ["block_stat", "check_eviction", "evict", "proc_io", "read_ahead_kb", "read_bytes", "resident_fraction", "warm"]


def proc_io() -> dict[str, int]:
    """Return this process's I/O counters (``read_bytes``, ``rchar``, ``syscr``, ...)."""
    out: dict[str, int] = {}
    with open("/proc/self/io", "rb") as fh:
        for line in fh.read().decode().splitlines():
            name, _, value = line.partition(":")
            out[name.strip()] = int(value)
    return out


def read_bytes() -> int:
    """Bytes this process has caused to be read from storage so far."""
    return proc_io()["read_bytes"]


# --------------------------------------------------------------------------------------------
# page cache


def evict(paths: Iterable[str]) -> None:
    """Drop ``paths`` from the page cache (flushing dirty pages first so they can be dropped)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(paths: Iterable[str]) -> float:
    """The fraction of ``paths``' pages in the page cache now (``mincore`` over a private mapping).

    Eviction cannot drop a page that some process has mapped (a reader that keeps its files
    mapped between epochs); a cold measurement checks this right after :func:`evict`.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    resident = total = 0
    for path in paths:
        size = os.path.getsize(path)
        if not size:
            continue
        pages = (size + page - 1) // page
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) as mm:
            address = ctypes.addressof(ctypes.c_char.from_buffer(mm))  # private mapping: reading it does not fault pages in
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore failed on {path}")
            resident += sum(b & 1 for b in vec)
        total += pages
    return resident / total if total else 0.0


def warm(paths: Iterable[str], chunk: int = 8 << 20) -> int:
    """Read ``paths`` completely so they sit in the page cache; returns bytes read."""
    total = 0
    buf = bytearray(chunk)
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while True:
                n = fh.readinto(buf)
                if not n:
                    break
                total += n
    return total


def check_eviction(paths: Sequence[str], expected_bytes: int) -> dict:
    """Evict ``paths``, read them back, and report how much came from storage.

    A working eviction makes ``read_bytes`` of the full read close to the data size; a second
    (warm) read should then read almost nothing from storage.
    """
    evict(paths)
    rb0 = read_bytes()
    t0 = time.perf_counter()
    n = warm(paths)
    t_cold = time.perf_counter() - t0
    cold = read_bytes() - rb0
    rb0 = read_bytes()
    t0 = time.perf_counter()
    warm(paths)
    t_warm = time.perf_counter() - t0
    warm_read = read_bytes() - rb0
    return {
        "file_bytes": int(n),
        "expected_bytes": int(expected_bytes),
        "cold_read_bytes": int(cold),
        "cold_fraction": cold / max(n, 1),
        "cold_seconds": t_cold,
        "cold_MBps": n / t_cold / 1e6,
        "warm_read_bytes": int(warm_read),
        "warm_seconds": t_warm,
        "warm_MBps": n / t_warm / 1e6,
        "ok": bool(cold >= 0.95 * n and warm_read <= 0.01 * n),
    }



def read_ahead_kb(path: str) -> int | None:
    """The block device read-ahead (the mmap read-around window) for ``path``'s file system."""
    try:
        dev = os.stat(path).st_dev
        base = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
        for candidate in (f"{base}/queue/read_ahead_kb", f"{base}/../queue/read_ahead_kb"):
            if os.path.exists(candidate):
                with open(candidate) as fh:
                    return int(fh.read())
    except OSError:
        pass
    return None


# The fields of /sys/dev/block/M:m/stat this module reads (Documentation/block/stat.rst)
_BLOCK_STAT_FIELDS = {"reads": 0, "read_merges": 1, "read_sectors": 2, "read_ms": 3, "io_ms": 9}


def block_stat(path: str) -> dict[str, int] | None:
    """The I/O counters of the block device holding ``path``, or ``None`` where there are none.

    From ``/sys/dev/block/M:m/stat``: ``reads`` (read requests the device completed),
    ``read_merges`` (requests merged into others before they reached it), ``read_sectors``
    (512 bytes each), ``read_ms`` (summed request times) and ``io_ms`` (wall time with at
    least one request in flight: how long the device was busy). They count every process's
    I/O on that device, not this one's alone.
    """
    try:
        dev = os.stat(path).st_dev
        with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat") as fh:
            fields = fh.read().split()
        return {name: int(fields[i]) for name, i in _BLOCK_STAT_FIELDS.items()}
    except (OSError, IndexError, ValueError):
        return None
