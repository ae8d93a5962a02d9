"""Remote benchmark: pruned reads from a SIMULATED object store on loopback.

This is a simulation, not a cloud measurement. ``SimStore`` is a threaded Python HTTP server on
127.0.0.1 (its own process) that serves io_bench's synthetic JPEG shards with HTTP Range
support and, per request, waits a configurable time to first byte (``--latencies``, ms) before
the headers, then paces the body through token buckets: ``--conn-mbps`` per TCP connection and
``--total-mbps`` for all connections together. It counts requests and body bytes sent. The
same server answers S3 path-style requests (``/bench/<key>``: GET, HEAD, Range), so a
cache-based peer that speaks only S3 reads the same bytes through the same pacing.

Readers, all through a ``torch.utils.data.DataLoader`` with ``--workers`` (1 and 4) worker
processes, ``batch_size`` 32 and a collate that touches every image's bytes (no decode: the
suite measures I/O; decoding would cost the same per kept image in every reader):

  wds         plain ``wds.WebDataset("http://.../shard-{000000..N}.tar")``: webdataset's own
              remote mode (one ``curl`` stream per shard, shards split over workers); r = 0.
  wds_select  the same with ``.select(lambda s: s["__key__"] in kept)`` (every byte is still
              streamed; only the kept samples reach the loop).
  mosaic      MosaicML ``StreamingDataset(remote="s3://bench/mds", local=<fresh dir>)`` over the
              same images converted once with its own ``MDSWriter`` (default options) and served
              by the same store; first epoch with a cold local cache (its normal first epoch:
              it downloads whole shards). r = 0. Skipped when ``streaming`` is not installed.
  streamprune ``PrunedWebDataset("http://.../manifest.json", mask)`` at r = 0, 0.4, 0.6, 0.8 with
              sample-level and class-level random masks (local mask files); default
              ``FetchPolicy`` unless ``--depth`` is given.

Each run is forked from one process that imported the readers once (:class:`Zygote`): a clean
process per run, without an interpreter start-up that belongs to no reader's epoch.

Per run: samples/s, bytes and requests the store served (manifest and index files included),
peak memory (the largest sum of RSS over the reading process and its DataLoader workers,
sampled every 50 ms; shared pages count once per process, so workers overstate it) and the
peak minus the reading process's RSS at the start. Repeats are paired: every configuration
runs once per round, in a shuffled order, and speed-ups are taken within a round (median over
rounds, min-max interval).

Run:  python -m benchmarks remote            (full: 512 MiB, 3 latencies, 2 rounds)
      python -m benchmarks remote --quick    (smoke run on 8 MiB, one latency)
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import http.server
import json
import logging
import os
import random
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import common
from .suite import Suite, Target

__all__ = ["SimStore", "RemoteSuite", "run_cli"]

log = logging.getLogger(__name__)

BUCKET = "bench"
RATIOS = (0.0, 0.4, 0.6, 0.8)
LEVELS = ("sample", "class")
#: The class-sorted copy (a subdirectory the store serves): its masks are keyed by this level.
SORTED = "sorted"
SORTED_CLASSES = 20
CHUNK = 64 << 10


# --------------------------------------------------------------------------------------------
# the simulated object store


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
        repo = os.path.dirname(common.HERE)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.remote_bench", "--serve", os.path.abspath(root), str(conn_rate), str(total_rate)],
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
        common.stop_process(self.proc)


# --------------------------------------------------------------------------------------------
# readers


def _collate(batch: list) -> tuple[int, int]:
    """Touch every image's bytes; send back only (samples, image bytes)."""
    return len(batch), sum(len(s["jpg"]) for s in batch)


class _Memory:
    """Peak RSS of this process plus its children, sampled every 50 ms on a thread."""

    def __init__(self) -> None:
        # optional: psutil is not a dependency of the benchmarks' import
        import psutil

        self.proc = psutil.Process()
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            with contextlib.suppress(Exception):  # a worker that exited meanwhile
                total += child.memory_info().rss
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self.stop_event.wait(0.05):
            self._sample()

    def done(self) -> tuple[int, int]:
        self._sample()
        self.stop_event.set()
        self.thread.join()
        return self.peak, self.start


class Setup:
    """The dataset as served: manifest URL, shard URLs, masks, kept keys, the MDS copy."""

    def __init__(self, data_dir: str, store: SimStore, masks: dict, kept_keys: dict, mds: str | None,
                 zygote: "Zygote | None" = None) -> None:
        self.zygote = zygote
        self.data_dir = data_dir
        self.store = store
        self.masks = masks
        self.kept_keys = kept_keys
        self.mds = mds


def _loader(ds: Any, workers: int) -> Any:
    # heavy import, deferred: torch (the registry imports every suite)
    import torch

    return torch.utils.data.DataLoader(ds, batch_size=32, num_workers=workers, collate_fn=_collate,
                                       persistent_workers=False)


def build(reader: str, workers: int, data_dir: str, url: str, mask: str | None, kept: set, cache_dir: str,
          depth: int | None) -> Any:
    """The DataLoader of one configuration."""
    # heavy imports, deferred: webdataset, streamprune's readers (torch)
    import webdataset as wds

    from streamprune import PrunedWebDataset
    from streamprune.readers.scheduler import FetchPolicy

    if reader in ("wds", "wds_select"):
        n = len([f for f in os.listdir(data_dir) if f.endswith(".tar")])
        ds = wds.WebDataset(f"{url}/shard-{{000000..{n - 1:06d}}}.tar", shardshuffle=False, empty_check=False)
        if reader == "wds_select":
            ds = ds.select(lambda x: x["__key__"] in kept)
        return _loader(ds, workers)
    if reader == "mosaic":
        # optional peer: mosaicml-streaming
        from streaming import StreamingDataset
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
        ds = StreamingDataset(remote=f"s3://{BUCKET}/mds", local=cache_dir, shuffle=False, batch_size=32)
        return _loader(ds, workers)
    fetch = FetchPolicy(depth=depth) if depth else None
    where = f"{url}/{SORTED}" if reader == "streamprune_sorted" else url
    return _loader(PrunedWebDataset(f"{where}/manifest.json", mask, fetch=fetch), workers)


class Zygote:
    """A process that imports the readers once, then forks one fresh child per run.

    Each run still starts from a clean process (no fsspec, connection or page state left by
    another run), but not from a cold interpreter: importing torch, webdataset, the readers
    and their HTTP/S3 clients took most of a run's wall time here (~20 s of ~25 s on a loaded
    machine), and a training process pays it once, not per epoch. What each epoch does pay
    stays in the clock: building the dataset (manifest and index requests, MosaicML's index
    download), DataLoader workers, and every request. The code is imported once, when the
    suite starts.
    """

    def __init__(self) -> None:
        repo = os.path.dirname(common.HERE)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.remote_bench", "--zygote"], cwd=repo, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, job: dict) -> dict:
        """One run in a forked child; its result row, or a RuntimeError with the child's error."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote process died (exit {self.proc.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _zygote() -> None:
    """The zygote's side: import, then for each job line on stdin fork a child that runs it."""
    # heavy imports, done once here so each forked run starts with them loaded
    import traceback

    import torch  # noqa: F401
    import webdataset  # noqa: F401

    import streamprune.readers.webdataset  # noqa: F401

    # The HTTP and S3 clients the readers load on first use (fsspec + aiohttp for streamprune,
    # boto3 for MosaicML): a training process imports them once, not once per epoch.
    with contextlib.suppress(ImportError):  # optional: the remote extra
        import aiohttp  # noqa: F401
        import fsspec.implementations.http  # noqa: F401
    with contextlib.suppress(ImportError):  # optional peer: mosaicml-streaming and its S3 client
        import boto3  # noqa: F401
        import streaming  # noqa: F401
    out = sys.stdout
    for line in sys.stdin:
        job = json.loads(line)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            try:
                reply = _one(job)
            except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
                reply = {"error": f"{job['reader']} r={job['ratio']} {job['level']} w={job['workers']}: failed\n"
                                  + traceback.format_exc()[-3000:]}
            with os.fdopen(write_fd, "w") as fh:
                fh.write(json.dumps(reply))
            os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd) as fh:
            reply_text = fh.read()
        os.waitpid(pid, 0)
        out.write((reply_text or json.dumps({"error": "the run's process died without a result"})) + "\n")
        out.flush()


def run_once(reader: str, ratio: float, level: str, workers: int, latency: float, s: Setup, depth: int | None) -> dict:
    """One epoch of one configuration, in a fresh process forked from the zygote (clean memory and fsspec state)."""
    s.store.set_ttfb(latency)
    s.store.reset()
    job = {"reader": reader, "ratio": ratio, "level": level, "workers": workers, "latency": latency, "depth": depth,
           "data_dir": s.data_dir, "url": s.store.url, "mask": s.masks.get((ratio, level)),
           "want": len(s.kept_keys[(ratio, level)])}
    row = s.zygote.run(job)
    st = s.store.stats()
    row.update(bytes_sent=st["bytes"], requests=st["requests"], head_requests=st["head"],
               MB_per_s=st["bytes"] / row["seconds"] / 1e6)
    return row


def _one(job: dict) -> dict:
    """The child's side of :func:`run_once`: build the loader, time the epoch, measure memory."""
    kept: set = set()
    if job["reader"] == "wds_select":
        with open(job["mask"] + ".keys.json") as fh:
            kept = set(json.load(fh))
    # the heavy imports (torch, webdataset, the readers, their clients) were done by the zygote
    cache_dir = tempfile.mkdtemp(prefix="remote-bench-cache-")
    try:
        mem = _Memory()
        t0 = time.perf_counter()
        loader = build(job["reader"], job["workers"], job["data_dir"], job["url"], job["mask"], kept, cache_dir, job["depth"])
        samples = nbytes = 0
        first = None
        for count, size in loader:
            if first is None:
                first = time.perf_counter() - t0
            samples += count
            nbytes += size
        seconds = time.perf_counter() - t0
        peak, start = mem.done()
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    if samples != job["want"]:
        raise RuntimeError(f"{job['reader']} r={job['ratio']} {job['level']}: {samples} samples, expected {job['want']}")
    return {"reader": job["reader"], "ratio": job["ratio"], "level": job["level"], "workers": job["workers"],
            "latency_ms": round(job["latency"] * 1e3), "seconds": seconds, "first_batch_s": first, "samples": samples,
            "samples_per_s": samples / seconds, "image_bytes": nbytes, "peak_rss_MiB": peak / 2**20,
            "peak_over_start_MiB": (peak - start) / 2**20}


# --------------------------------------------------------------------------------------------
# setup


def make_masks(manifest: Any, ratios: Sequence[float], out: str, levels: Sequence[str] = LEVELS,
               key_level: dict[str, str] | None = None) -> tuple[dict, dict, dict]:
    """Random masks per ratio and level (``levels``), saved under ``out``.

    ``key_level`` files a level's masks under another name (the class-sorted copy's class
    masks are ``"class-sorted"``, apart from the main copy's).

    Returns:
        The mask files, their kept key sets, and the fraction of the shards' bytes their kept
        samples' tar records occupy (per ``(ratio, level)``): samples differ in size and classes
        in count, so a mask removing a fraction ``r`` of samples keeps about, not exactly,
        ``1 - r`` of the bytes.
    """
    # heavy import, deferred: streamprune.masks loads numpy-heavy modules
    from streamprune.masks import random_mask

    keys = np.asarray(manifest.keys())
    record = np.concatenate([manifest.index(k).end - manifest.index(k).start for k in range(len(manifest.shards))])
    full = sum(entry.bytes for entry in manifest.shards)
    masks, kept, kept_bytes = {}, {}, {}
    os.makedirs(out, exist_ok=True)
    for r in ratios:
        for level in levels:
            if r == 0 and level == "class":
                continue
            name = (key_level or {}).get(level, level)  # the key these masks are filed under
            m = random_mask(manifest, r, level=level, seed=1)
            masks[(r, name)] = m.save(os.path.join(out, f"keep-{name}-{r:g}.spmask"))
            kept[(r, name)] = set(keys[m.keep].tolist())
            kept_bytes[(r, name)] = float(record[m.keep].sum()) / full
            with open(masks[(r, name)] + ".keys.json", "w") as fh:
                json.dump(sorted(kept[(r, name)]), fh)
    return masks, kept, kept_bytes


class _Coarse:
    """The dataset's samples, in manifest order, with a coarse class ``label % classes``."""

    def __init__(self, manifest: Any, classes: int) -> None:
        # heavy import, deferred: streamprune's readers (torch)
        from streamprune import PrunedMapDataset

        self.ds = PrunedMapDataset(manifest)
        self.labels = manifest.labels() % classes
        self.class_names = [f"k{c:02d}" for c in range(classes)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        sample = self.ds[i]
        return sample["__key__"], {"jpg": sample["jpg"]}, int(self.labels[i])


def make_sorted_copy(manifest: Any, data_dir: str, classes: int = SORTED_CLASSES, log=print) -> Any:
    """The same images with ``classes`` coarse classes, written class after class to ``data_dir/sorted``
    (``write_shards(layout="class-sorted")``, as ``streamprune shard --layout class-sorted``).

    Source-class pruning (LM, FM) removes whole classes; when a class's samples sit together
    (a dataset sharded class by class, as many are), a class-level mask keeps long runs and
    a pruned epoch needs few, large requests. io_bench's data has 1,000 classes of ~2 samples
    scattered over the shards, so its class-level masks are as scattered as sample-level ones.
    """
    # heavy import, deferred: streamprune's writers (torch)
    from streamprune import Manifest, write_shards

    out = os.path.join(data_dir, SORTED)
    stamp = os.path.join(out, "sorted.json")
    if os.path.exists(stamp):
        return Manifest.load(out)
    shutil.rmtree(out, ignore_errors=True)
    source = _Coarse(manifest, classes)
    write_shards(source, out, samples_per_shard=manifest.shards[0].samples, shuffle=False, layout="class-sorted",
                 checksum=True, progress=False, class_names=source.class_names)
    with open(stamp, "w") as fh:
        json.dump({"classes": classes, "samples": len(source)}, fh)
    log(f"wrote the class-sorted copy ({classes} classes) to {out}")
    return Manifest.load(out)


def convert_mds(manifest: Any, data_dir: str, log=print) -> str | None:
    """The dataset written once with MosaicML's ``MDSWriter`` (default options) to ``data_dir/mds``."""
    try:
        # optional peer: mosaicml-streaming
        from streaming import MDSWriter
    except ImportError:
        log("mosaicml-streaming is not installed: the mosaic peer is skipped")
        return None
    # heavy import, deferred: streamprune's readers (torch)
    from streamprune import PrunedSource

    out = os.path.join(data_dir, "mds")
    stamp = os.path.join(out, "converted.json")
    if os.path.exists(stamp):
        return out
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with MDSWriter(out=out, columns={"__key__": "str", "jpg": "bytes", "cls": "int"}) as writer:
        for sample in PrunedSource(data_dir):
            writer.write({"__key__": sample["__key__"], "jpg": sample["jpg"], "cls": int(sample["cls"])})
    with open(stamp, "w") as fh:
        json.dump({"seconds": time.perf_counter() - t0}, fh)
    log(f"converted to MDS in {time.perf_counter() - t0:.1f} s")
    return out


def configs(ratios: Sequence[float], workers: Sequence[int], latencies: Sequence[float], mosaic: bool,
            sorted_copy: bool = False) -> list[tuple]:
    """Every (reader, ratio, level, workers, latency) of one round."""
    out = []
    top = max(ratios)
    for lat in latencies:
        if sorted_copy:  # the class-sorted copy: class-level masks, one worker
            out.append(("streamprune_sorted", 0.0, "class-sorted", workers[0], lat))
            out.extend(("streamprune_sorted", r, "class-sorted", workers[0], lat) for r in ratios if r > 0)
        for w in workers if round(lat * 1e3) == 30 or len(latencies) == 1 else workers[:1]:
            out.append(("wds", 0.0, "sample", w, lat))
            out.append(("wds_select", top, "sample", w, lat))
            if mosaic:
                out.append(("mosaic", 0.0, "sample", w, lat))
            for r in ratios:
                for level in LEVELS:
                    if r == 0 and level == "class":
                        continue
                    out.append(("streamprune", r, level, w, lat))
    return out


# --------------------------------------------------------------------------------------------
# summary and targets


def summarize(runs: list[dict]) -> list[dict]:
    """One row per configuration: medians over rounds, min-max intervals."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["reader"], r["ratio"], r["level"], r["workers"], r["latency_ms"]), []).append(r)
    rows = []
    for (reader, ratio, level, workers, lat), rs in sorted(groups.items()):
        sps = [r["samples_per_s"] for r in rs]
        first = [r["first_batch_s"] for r in rs if r.get("first_batch_s") is not None]
        rows.append({"reader": reader, "ratio": ratio, "level": level, "workers": workers, "latency_ms": lat,
                     "repeats": len(rs), "samples": rs[0]["samples"], "samples_per_s": common.median(sps),
                     "samples_per_s_interval": [min(sps), max(sps)],
                     # start-up (imports, manifest, worker fork, first shard) plus the first batch
                     "first_batch_s": common.median(first) if first else None,
                     "MB_per_s": common.median([r["MB_per_s"] for r in rs]),
                     "bytes_sent": int(common.median([r["bytes_sent"] for r in rs])),
                     "requests": int(common.median([r["requests"] for r in rs])),
                     "peak_rss_MiB": max(r["peak_rss_MiB"] for r in rs),
                     "peak_over_start_MiB": max(r["peak_over_start_MiB"] for r in rs)})
    return rows


def _find(rows: list[dict], **kw: Any) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def paired_speedups(runs: list[dict]) -> dict[tuple, list[float]]:
    """A streamprune reader's t(r=0) / t(r) within each round, per (ratio, level, workers, latency).

    Each arm is paired with its own r=0 (the class-sorted copy with its own full read).
    """
    base = {(r["reader"], r["round"], r["workers"], r["latency_ms"]): r["seconds"] for r in runs
            if r["reader"].startswith("streamprune") and r["ratio"] == 0}
    out: dict[tuple, list[float]] = {}
    for r in runs:
        if r["reader"].startswith("streamprune") and r["ratio"] > 0:
            b = base.get((r["reader"], r["round"], r["workers"], r["latency_ms"]))
            if b:
                out.setdefault((r["ratio"], r["level"], r["workers"], r["latency_ms"]), []).append(b / r["seconds"])
    return out


def evaluate_targets(rows: list[dict], runs: list[dict], full_bytes: int, conn_mbps: float, total_mbps: float,
                     command: str) -> list[dict]:
    """The suite's targets, judged (``Target.check``)."""
    targets: list[Target] = []
    for row in rows:
        if not row["reader"].startswith("streamprune") or row["ratio"] == 0:
            continue
        r = row["ratio"]
        # the literal goal is (1-r) x 1.05; a random mask keeps about, not exactly, 1-r of the
        # bytes (sample sizes and class counts vary), so the goal is the mask's own kept bytes x 1.05,
        # and the row keeps the literal one beside it
        kept = row.get("kept_bytes_fraction", 1 - r)
        targets.append(Target.check(
            f"bytes transferred <= kept bytes x 1.05 (r={r:g}, {row['level']}, {row['workers']} w, "
            f"{row['latency_ms']} ms; kept {kept:.3f} of the bytes, 1-r = {1 - r:.2f})", row["bytes_sent"] / full_bytes,
            kept * 1.05, "<=", command=command, ratio=r, level=row["level"], literal_goal=(1 - r) * 1.05))
    for (r, level, w, lat), values in sorted(paired_speedups(runs).items()):
        goal = 0.85 / (1 - r)
        targets.append(Target.check(
            f"speed-up over its own r=0 >= 0.85/(1-r) ({level}, {w} w, {lat} ms)", common.median(values), goal, ">=",
            interval=values if len(values) > 1 else None, command=command, ratio=r, level=level))
    for row in rows:
        if row["reader"] != "streamprune" or row["ratio"] != 0:
            continue
        for peer in ("wds", "mosaic"):
            other = _find(rows, reader=peer, ratio=0.0, workers=row["workers"], latency_ms=row["latency_ms"])
            if other is None:
                continue
            lo = row["samples_per_s_interval"][0] / other["samples_per_s_interval"][1]
            hi = row["samples_per_s_interval"][1] / other["samples_per_s_interval"][0]
            targets.append(Target.check(
                f"r=0 samples/s vs {peer} ({row['workers']} w, {row['latency_ms']} ms)",
                row["samples_per_s"] / other["samples_per_s"], 1.0, ">=",
                interval=(lo, hi) if row["repeats"] > 1 and other["repeats"] > 1 else None, command=command))
    one = _find(rows, reader="streamprune", ratio=0.0, workers=1, latency_ms=30)
    if one is not None:
        targets.append(Target.check(
            f"1 worker, 30 ms, r=0: MB/s >= 60% of the {total_mbps:g} MB/s cap (the total; one connection's is "
            f"{conn_mbps:g})", one["MB_per_s"] / total_mbps, 0.6, ">=", command=command))
    return [t.to_dict() for t in targets]


# --------------------------------------------------------------------------------------------
# report


def tables(results: dict[str, Any]) -> str:
    """The suite's tables."""
    f = common.fmt_num
    setup = results["setup"]
    out = [f"SIMULATED object store on loopback (a Python HTTP server in its own process): time to first byte "
           f"{', '.join(str(x) for x in setup['latencies_ms'])} ms per request, {setup['conn_mbps']:g} MB/s per connection, "
           f"{setup['total_mbps']:g} MB/s in all; {setup['samples']:,} JPEG samples, {setup['full_bytes'] / 1e6:.1f} MB in "
           f"{setup['shards']} shards; {setup['rounds']} paired rounds; DataLoader batch 32, no decode.", ""]
    head = ["latency", "workers", "reader", "r", "level", "samples/s", "1st batch s", "MB/s", "MB sent", "requests",
            "peak RSS MiB"]
    rows = []
    for r in sorted(results["rows"], key=lambda x: (x["latency_ms"], x["workers"], x["reader"] != "streamprune",
                                                     x["reader"], x["ratio"], x["level"])):
        rows.append([r["latency_ms"], r["workers"], r["reader"], f"{r['ratio']:g}", r["level"] if r["reader"] in
                     ("streamprune", "streamprune_sorted", "wds_select") and r["ratio"] else "", f(r["samples_per_s"], 0),
                     f(r["first_batch_s"], 2) if r.get("first_batch_s") is not None else "", f(r["MB_per_s"], 1),
                     f(r["bytes_sent"] / 1e6, 1), f(r["requests"]), f(r["peak_rss_MiB"], 0)])
    out.append(common.markdown_table(head, rows, "rrlllrrrrrr"[:len(head)]))
    return "\n".join(out)


def plot(rows: list[dict], latencies: Sequence[int], path: str) -> None:
    """samples/s against r, one panel per latency."""
    # heavy import, deferred: matplotlib
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred with matplotlib, after choosing the Agg backend

    fig, axes = plt.subplots(1, len(latencies), figsize=(5 * len(latencies), 4), squeeze=False)
    for ax, lat in zip(axes[0], latencies):
        for w, style in ((1, "-"), (4, "--")):
            for level, colour in (("sample", "C0"), ("class", "C1")):
                pts = sorted((r["ratio"], r["samples_per_s"]) for r in rows if r["reader"] == "streamprune"
                             and r["latency_ms"] == lat and r["workers"] == w and (r["level"] == level or r["ratio"] == 0))
                if pts:
                    ax.plot(*zip(*pts), style, color=colour, marker="o", label=f"streamprune {level}, {w} w")
            pts = sorted((r["ratio"], r["samples_per_s"]) for r in rows if r["reader"] == "streamprune_sorted"
                         and r["latency_ms"] == lat and r["workers"] == w)
            if pts:
                ax.plot(*zip(*pts), style, color="C5", marker="s", label=f"streamprune, class-sorted copy, {w} w")
            for reader, colour in (("wds", "C2"), ("wds_select", "C3"), ("mosaic", "C4")):
                row = next((r for r in rows if r["reader"] == reader and r["latency_ms"] == lat and r["workers"] == w), None)
                if row:
                    ax.axhline(row["samples_per_s"], ls=style, color=colour, lw=1, label=f"{reader} (r={row['ratio']:g}), {w} w")
        ax.set_title(f"SIMULATED store, {lat} ms to first byte")
        ax.set_xlabel("ratio removed r")
        ax.set_ylabel("samples/s")
        ax.grid(alpha=0.3)
    fullest = max(axes[0], key=lambda ax: len(ax.get_lines()))  # the panel with the 4-worker lines too
    fullest.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# run


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The suite's options (``python -m benchmarks remote --help``)."""
    p = common.arg_parser("remote", __doc__.split("\n\n")[0])
    p.add_argument("--total-mb", type=float, default=512,
                   help="dataset size in MiB (default 512: an epoch long enough that its start-up is a small part)")
    p.add_argument("--samples-per-shard", type=int, default=96, help="samples per shard (default 96: ~12 MB shards)")
    p.add_argument("--latencies", default="10,30,80", help="time to first byte per request, ms (default 10,30,80)")
    p.add_argument("--conn-mbps", type=float, default=100, help="MB/s per connection (default 100)")
    p.add_argument("--total-mbps", type=float, default=400, help="MB/s in all (default 400)")
    p.add_argument("--workers", default="1,4", help="DataLoader workers (default 1,4)")
    p.add_argument("--rounds", type=int, default=2, help="paired rounds (default 2)")
    p.add_argument("--depth", type=int, default=None, help="streamprune requests in flight (default: FetchPolicy's)")
    p.add_argument("--no-mosaic", action="store_true", help="skip the MosaicML streaming peer")
    p.add_argument("--no-sorted", action="store_true", help="skip the class-sorted copy (streamprune_sorted)")
    p.add_argument("--seed", type=int, default=0, help="round order seed")
    p.add_argument("--quick", action="store_true", help="8 MiB, 30 ms, 1 round: a smoke run, not a measurement")
    p.add_argument("--resummarize", default=None, metavar="JSON",
                   help="recompute rows and targets of an earlier results file from its runs (no measuring)")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results, or results/quick)")
    args = p.parse_args(argv)
    if args.quick:
        args.total_mb, args.samples_per_shard, args.latencies, args.rounds = 8, 16, "30", 1
    args.data_dir = os.path.join(common.DEFAULT_DATA, "remote_jpeg_quick" if args.quick else f"remote_jpeg_{round(args.total_mb)}mb")
    args.out = args.out or (os.path.join(common.DEFAULT_RESULTS, "quick") if args.quick else common.DEFAULT_RESULTS)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every configuration; return the results."""
    # heavy import, deferred: streamprune.manifest

    t_start = time.perf_counter()
    latencies = [float(x) / 1e3 for x in args.latencies.split(",")]
    workers = [int(x) for x in args.workers.split(",")]
    manifest = common.make_jpeg_shards(args.data_dir, args.total_mb, samples_per_shard=args.samples_per_shard,
                                       workers=1 if args.quick else 2)
    full_bytes = sum(os.path.getsize(manifest.shard_path(k)) for k in range(len(manifest.shards)))
    mds = None if args.no_mosaic else convert_mds(manifest, args.data_dir)
    with tempfile.TemporaryDirectory(prefix="remote-bench-") as tmp:
        masks, kept, kept_bytes = make_masks(manifest, RATIOS, tmp)
        if not args.no_sorted:
            sorted_manifest = make_sorted_copy(manifest, args.data_dir)
            more = make_masks(sorted_manifest, RATIOS, os.path.join(tmp, SORTED), levels=("class",),
                              key_level={"class": "class-sorted"})
            for have, add in zip((masks, kept, kept_bytes), more):
                have.update(add)
            masks[(0.0, "class-sorted")] = None  # its r=0: every sample of the sorted copy
            kept[(0.0, "class-sorted")] = set(sorted_manifest.keys())
            kept_bytes[(0.0, "class-sorted")] = 1.0
        env = {"AWS_ACCESS_KEY_ID": "sim", "AWS_SECRET_ACCESS_KEY": "sim", "AWS_DEFAULT_REGION": "us-east-1"}
        store = SimStore(args.data_dir, args.conn_mbps * 1e6, args.total_mbps * 1e6)
        env["S3_ENDPOINT_URL"] = store.endpoint
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        zygote = Zygote()
        try:
            s = Setup(args.data_dir, store, masks, kept, mds, zygote)
            plan = configs(RATIOS, workers, latencies, mds is not None, sorted_copy=not args.no_sorted)
            runs: list[dict] = []
            rng = random.Random(args.seed)
            for rnd in range(args.rounds):
                order = plan[:]
                rng.shuffle(order)
                for i, (reader, r, level, w, lat) in enumerate(order):
                    row = run_once(reader, r, level, w, lat, s, args.depth)
                    row["round"] = rnd
                    runs.append(row)
                    print(f"[{rnd}:{i + 1}/{len(order)}] {reader:11s} r={r:g} {level:6s} w={w} {lat * 1e3:.0f} ms: "
                          f"{row['samples_per_s']:7.0f} samples/s {row['MB_per_s']:6.1f} MB/s {row['requests']:5d} req "
                          f"{row['bytes_sent'] / 1e6:6.1f} MB peak {row['peak_rss_MiB']:.0f} MiB", flush=True)
        finally:
            zygote.stop()
            store.stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    command = common.command_line()
    rows, targets = judge(runs, kept_bytes, full_bytes, args.conn_mbps, args.total_mbps, command)
    return {
        "suite": "remote", "command": command, "simulation": True,
        "setup": {"samples": manifest.num_samples, "shards": len(manifest.shards), "full_bytes": full_bytes,
                  "latencies_ms": [round(x * 1e3) for x in latencies], "conn_mbps": args.conn_mbps,
                  "total_mbps": args.total_mbps, "workers": workers, "rounds": args.rounds, "depth": args.depth,
                  "ratios": list(RATIOS), "mosaic": mds is not None, "sorted_classes": None if args.no_sorted else SORTED_CLASSES,
                  "kept_bytes_fraction": {f"{r:g}/{level}": v for (r, level), v in sorted(kept_bytes.items())}},
        "machine": common.machine_info() | {"packages_remote": common.package_versions(
            ["fsspec", "aiohttp", "mosaicml-streaming", "boto3"])},
        "rows": rows, "runs": runs, "targets": targets, "total_seconds": time.perf_counter() - t_start,
        "speedups": [{"ratio": k[0], "level": k[1], "workers": k[2], "latency_ms": k[3], "values": v}
                     for k, v in sorted(paired_speedups(runs).items())],
    }


def judge(runs: list[dict], kept_bytes: dict, full_bytes: int, conn_mbps: float, total_mbps: float,
          command: str) -> tuple[list[dict], list[dict]]:
    """Rows (medians per configuration, with each mask's kept-bytes fraction) and judged targets."""
    rows = summarize(runs)
    for row in rows:
        if row["reader"].startswith("streamprune") and row["ratio"] > 0:
            row["kept_bytes_fraction"] = kept_bytes[(row["ratio"], row["level"])]
    return rows, evaluate_targets(rows, runs, full_bytes, conn_mbps, total_mbps, command)


def resummarize(path: str) -> dict[str, Any]:
    """An earlier results file with its rows and targets recomputed from its runs by this code."""
    with open(path) as fh:
        results = json.load(fh)
    setup = results["setup"]
    kept_bytes = {(float(k.split("/")[0]), k.split("/")[1]): v for k, v in setup["kept_bytes_fraction"].items()}
    results["rows"], results["targets"] = judge(results["runs"], kept_bytes, setup["full_bytes"], setup["conn_mbps"],
                                                setup["total_mbps"], results["command"])
    return results


def run_cli(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run, write the JSON and plot, print the tables; return the results."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    results = resummarize(args.resummarize) if args.resummarize else run(args)
    os.makedirs(args.out, exist_ok=True)
    path = args.resummarize or os.path.join(args.out, "remote_bench.json")
    common.write_json(path, results)
    with contextlib.suppress(ImportError):  # no matplotlib: no plot
        plot(results["rows"], results["setup"]["latencies_ms"], os.path.splitext(path)[0] + ".png")
    suite = RemoteSuite()
    print(suite.markdown(results))
    print(f"\n{results['total_seconds']:.0f} s -> {path}")
    return results


class RemoteSuite(Suite):
    """``remote``: pruned reads over a SIMULATED object store (latency + bandwidth caps) vs webdataset and MosaicML streaming."""

    name, title = "remote", "Remote shards over a simulated object store (loopback HTTP, latency and bandwidth caps)"
    run, tables = staticmethod(run_cli), staticmethod(tables)


if __name__ == "__main__":  # the store's own process (SimStore starts it)
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        _serve(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    elif len(sys.argv) == 2 and sys.argv[1] == "--zygote":
        _zygote()
