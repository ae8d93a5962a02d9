"""Shared helpers for the streamprune benchmarks.

* ``/proc/self/io`` counters (``read_bytes`` = bytes this process caused to be fetched from
  the block device; ``rchar`` = bytes returned by read syscalls, page cache included),
* page-cache control (evict with ``POSIX_FADV_DONTNEED``, warm by reading everything),
* a deterministic ImageNet-like JPEG source and a cached shard generator,
* machine/package info for the result JSON, and small statistics helpers.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import math
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import Any

import numpy as np

from streamprune.indexfile import companion_path

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "data")
DEFAULT_RESULTS = os.path.join(HERE, "results")

GENERATOR_VERSION = 2


# --------------------------------------------------------------------------------------------
# /proc/self/io


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


# --------------------------------------------------------------------------------------------
# synthetic ImageNet-like JPEGs


def make_jpeg(i: int, seed: int = 0, noise: float = 16.0, quality: int = 95) -> bytes:
    """A deterministic random-textured RGB JPEG (~256-320 px a side, ~100-150 KB).

    A bicubically upsampled coarse colour field (object-like blobs) plus per-pixel Gaussian
    texture, encoded by PIL at quality 95 without chroma subsampling (like high-quality
    photo JPEGs), so the file sizes land around ImageNet's larger images.
    """
    # heavy import (PIL), loaded only when this runs: the registry imports every suite
    from PIL import Image

    rng = np.random.default_rng([seed, i])
    w = int(rng.integers(256, 321))
    h = int(rng.integers(256, 321))
    coarse = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
    texture = rng.standard_normal((h, w, 3), dtype=np.float32) * noise
    pixels = np.clip(base + texture, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


class JpegSource:
    """A streamprune ``Source`` of ``n`` synthetic JPEG samples with labels in ``0..classes-1``."""

    def __init__(self, n: int, seed: int = 0, classes: int = 1000) -> None:
        self.n = n
        self.seed = seed
        self.classes = classes
        self.class_names = [f"c{c:04d}" for c in range(classes)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        label = int(np.random.default_rng([self.seed, i, 7]).integers(self.classes))
        return f"img{i:08d}", {"jpg": make_jpeg(i, self.seed)}, label


def dataset_files(manifest: Any) -> dict[str, list[str]]:
    """Every file a reader of ``manifest`` opens, by kind, so that cold runs evict all of them.

    Args:
        manifest: A ``streamprune.Manifest`` (tar shards or ``.beton`` files).

    Returns:
        ``{"shards", "index_json", "index_npz", "manifest"}``: the data files, their index
        sidecars, the sidecars' binary companions (``<shard>.index.npz``; only those that exist,
        since a reader opens one only when it is there) and the manifest file. A mask file is
        not part of a dataset: callers add the one they read.
    """
    indexes = [manifest.resolve(s.index) for s in manifest.shards]
    companions = [companion_path(p) for p in indexes]
    return {
        "shards": [manifest.shard_path(k) for k in range(len(manifest.shards))],
        "index_json": indexes,
        "index_npz": [p for p in companions if os.path.isfile(p)],
        "manifest": [manifest.path],
    }


def make_jpeg_shards(
    out_dir: str,
    total_mb: float,
    samples_per_shard: int = 500,
    seed: int = 0,
    workers: int = 2,
    log=print,
):
    """Generate (or reuse) JPEG shards of about ``total_mb`` MiB in ``out_dir``.

    Returns:
        The loaded :class:`streamprune.Manifest`.
    """
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    from streamprune import Manifest, write_shards

    params = {
        "generator_version": GENERATOR_VERSION,
        "total_mb": total_mb,
        "samples_per_shard": samples_per_shard,
        "seed": seed,
    }
    meta_path = os.path.join(out_dir, "bench_meta.json")
    if os.path.exists(meta_path) and os.path.exists(os.path.join(out_dir, "manifest.json")):
        with open(meta_path) as fh:
            meta = json.load(fh)
        if meta.get("params") == params:
            log(f"reusing data in {out_dir}")
            return Manifest.load(out_dir)
    # Estimate the per-sample size from a few images, then size the dataset to total_mb.
    probe = [len(make_jpeg(i, seed)) for i in range(48)]
    per_sample = float(np.mean(probe)) + 1792  # 2 headers, jpg padding (~256), label block
    n = max(8, int(np.ceil(total_mb * 2**20 / per_sample)))
    log(f"generating {n} JPEG samples (~{np.mean(probe) / 1e3:.0f} KB each) into {out_dir} ...")
    t0 = time.perf_counter()
    write_shards(
        JpegSource(n, seed),
        out_dir,
        samples_per_shard=samples_per_shard,
        shuffle=False,
        workers=workers,
        checksum=True,
        progress=False,
        class_names=JpegSource(1, seed).class_names,
        overwrite=True,  # data of other parameters: its shards and index files go first
    )
    os.sync()
    with open(meta_path, "w") as fh:
        json.dump({"params": params, "samples": n, "seconds": time.perf_counter() - t0}, fh)
    log(f"  done in {time.perf_counter() - t0:.1f} s")
    return Manifest.load(out_dir)


def jpeg_sizes(manifest) -> np.ndarray:
    """Size in bytes of each sample's ``jpg`` member (manifest order)."""
    sizes = []
    for k in range(len(manifest.shards)):
        for group in manifest.index(k).members:
            sizes.extend(size for ext, _, size in group if ext == "jpg")
    manifest.drop_cache()
    return np.asarray(sizes, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# FFCV (shared by the io and ffcv suites)


def ffcv_pipelines() -> dict:
    """The FFCV decode pipelines of the benchmarks: centre-crop RGB decode to 224 px + ``ToTensor``; int labels."""
    # optional extra: ffcv, only installed with streamprune[ffcv]
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.transforms import ToTensor

    return {"image": [CenterCropRGBImageDecoder((224, 224), 224 / 256), ToTensor()], "label": [IntDecoder(), ToTensor()]}


def page_stats(manifest: Any, keep: np.ndarray | None) -> dict:
    """Pages touched by the kept samples, and kept data bytes, from the file's own tables."""
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    from streamprune.betonindex import read_beton

    info = read_beton(manifest.shard_path(0))
    pages = info.sample_pages()
    keep = np.ones(info.num_samples, dtype=bool) if keep is None else keep
    data = manifest.sample_bytes()
    all_pages = np.unique(pages[pages >= 0])
    touched = np.unique(pages[keep & (pages >= 0)])
    return {
        "pages_total": len(all_pages),
        "pages_touched": len(touched),
        "page_fraction": len(touched) / max(len(all_pages), 1),
        "predicted_page_read_bytes": int(len(touched) * info.page_size),
        "kept_data_fraction": float(data[keep].sum() / max(data.sum(), 1)),
    }


def run_epoch(loader: Any) -> tuple[float, int, int]:
    """Iterate one epoch; returns seconds, samples and a label checksum."""
    n = 0
    total = 0
    t0 = time.perf_counter()
    for _images, labels in loader:
        n += int(labels.shape[0])
        total += int(labels.sum())
    return time.perf_counter() - t0, n, total


def release_mmap(loader: Any) -> None:
    """Drop FFCV's memory map of the file (os_cache=True keeps one open across epochs).

    Pages mapped into a process cannot be evicted with POSIX_FADV_DONTNEED, so a live map would
    make every later "cold" epoch warm. FFCV maps the file again at the next epoch.
    """
    context = getattr(loader.memory_manager, "context", None)
    if context is not None and getattr(context, "mmap", None) is not None:
        context.mmap = None
    gc.collect()


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


# --------------------------------------------------------------------------------------------
# info and statistics


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


def arg_parser(suite: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of a suite's options, shown as ``python -m benchmarks SUITE``.

    Args:
        suite: The suite's name.
        description: The help text above the options (kept as written).

    Returns:
        The parser, to which the suite adds its options.
    """
    return argparse.ArgumentParser(prog=f"python -m benchmarks {suite}", description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def command_line() -> str:
    """How this run was invoked, to reproduce it: ``python -m benchmarks NAME ARGS`` (no interpreter path)."""
    if _COMMAND is not None:
        return _COMMAND
    return " ".join(["python", *(shlex.quote(a) for a in sys.argv)])


def median(values: Sequence[float]) -> float:
    """The median as a float (NaN for no values)."""
    return float(statistics.median(values)) if len(values) else float("nan")


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (NumPy scalars and arrays converted)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, default=_json_default)
        fh.write("\n")
    os.replace(tmp, path)


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj).__name__)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], aligns: str | None = None) -> str:
    """A markdown table, columns padded; ``aligns`` has one ``l`` or ``r`` per column (default: first ``l``, rest ``r``)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    aligns = aligns or "l" + "r" * (len(headers) - 1)

    def fmt(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, aligns)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, aligns)) + "|"
    return "\n".join([fmt(cells[0]), sep] + [fmt(r) for r in cells[1:]])


def fmt_num(value: Any, digits: int = 3) -> str:
    """A number for a table: floats with ``digits`` decimals and thousands separators, ints with separators."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return "nan"
        return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return str(value)


def ratios_of(rows: Sequence[dict], key: str = "ratio") -> list[float]:
    """The distinct values of ``key`` in ``rows``, sorted (rows without it are skipped)."""
    return sorted({float(r[key]) for r in rows if r.get(key) is not None})
