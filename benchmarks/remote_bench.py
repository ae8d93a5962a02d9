"""Remote benchmark: pruned epochs read from an object store on loopback (nginx), against the peers.

The store is nginx (:class:`benchmarks.nginx_store.NginxStore`), a native server on 127.0.0.1
with one port per setting: ``--latencies`` ms to first byte per request (the echo module's
``echo_sleep``, which waits without blocking nginx) and ``--conn-mbps`` MB/s per connection
(``limit_rate``). Requests and bytes are counted from nginx's access log, per epoch. The same
ports answer path-style S3 reads (``GET``/``HEAD /bench/<key>``, signatures ignored), so the
peers that speak only S3 read the same store. There is no aggregate bandwidth cap: nginx has
no queueing limiter for the total of all connections (``limit_rate`` is per connection, and
``limit_conn`` refuses connections rather than sharing bandwidth), and a cap made up in front
of it would not behave like a store's; the cores of this machine are the real shared limit.

Data: io_bench's synthetic ~120 KB JPEGs (:func:`benchmarks.jpegdata.make_jpeg_shards`) in
``--samples-per-shard`` samples per shard (default 1 GiB in 8 shards of 1,100: ~134 MB
shards, in the 128-256 MB that webdataset's and the streaming libraries' docs recommend, 2
per worker with 4 workers) and a class-sorted copy of the same images
(:func:`make_sorted_copy`, as ``streamprune shard --layout class-sorted``: 20 coarse classes,
written class after class). Masks: random sample-level and class-level masks at r = 0.2-0.8
on the shuffled shards (both scatter the kept samples: the data's 1,000 classes have ~1
sample per shard), class-level masks on the sorted copy. At the latencies other than the
headline, only r = 0, 0.4, 0.8 (see :func:`configs`).

Arms (one DataLoader, batch 32, a collate that touches every image's bytes, no decode; 1 and
4 workers; ``--headline-ms`` is the latency that has every arm and the targets):

  streamprune        ``PrunedWebDataset("http://.../manifest.json", mask)`` with default reader
                     settings, r = 0-0.8, sample and class masks. At r in CACHE_RATIOS (sample
                     masks, headline latency) the run reads 2 epochs of the same dataset object:
                     the second without a cache.
  streamprune_sorted the same on the class-sorted copy, its class masks.
  streamprune_cache  2 epochs of ``PrunedWebDataset(url, mask, cache_dir=<fresh dir>)``, the
                     kept-bytes cache (only when the reader takes ``cache_dir``; else skipped
                     and recorded so); its cache's bytes are measured.
  streamprune_local  the same files and mask read from the local path (the page cache holds
                     them: the store serves them from it) - the mark for the cache's epoch 2.
  wds                ``wds.WebDataset([http URLs])``; r = 0.
  mosaic             MosaicML streaming (``StreamingDataset(remote="s3://bench/mds")``), 2 epochs:
                     cold, then from its own cache.
  litdata            LitData (``StreamingDataset("s3://bench/litdata")``), 2 epochs likewise.

MDS and LitData read in place (``--readers formats``; headline latency, 2 epochs each, r = 0
and 0.8, same files and store for streamprune and the peer):

  streamprune_mds     ``PrunedWebDataset(..., cache_dir=<fresh dir>)`` over streamprune's index of
                      MosaicML's own MDS copy (``bench/mds``), indexed through the store
                      (``index_foreign(http://.../mds)``, served beside it), random sample masks. Like
                      the peers, it caches what it downloads (the kept-bytes cache), so its second
                      epoch reads local disk, as theirs do.
  mosaic_subset       MosaicML over the same files, a subset of the same size chosen its own way
                      (``Stream(choose=k)``); ``mosaic`` is the same files in full.
  streamprune_litdata the same over a LitData copy whose images are uint8 arrays (``bench/litdata_array``:
                      the ``litdata`` copy of bytes and ints is stored as one Arrow footer per chunk, which
                      has no per-sample byte ranges to read).
  litdata_array       LitData over that copy in full; ``litdata_subset`` with ``subsample=0.2``.

Their targets: streamprune's r = 0.8 epoch transfers <= 0.25 of the shards' bytes, and is no
slower than the peer's full epoch and its own subset's, epoch 1 against epoch 1 and epoch 2
against epoch 2 (paired per round). A run of only these arms writes ``remote_formats_bench.json``.

The peers' set-up is in :mod:`benchmarks.remote_peers`. A peer's run counts only when nginx's
log shows its requests on its port and it yields every sample; a run that fails or passes
``--run-timeout`` is killed and reported (never counted).

Each run is forked from one process that imported the readers once (:class:`Zygote`): a clean
process per run, without an interpreter start-up that belongs to no reader's epoch. Epoch 1
includes building the dataset (manifest and index requests, the peers' index downloads) and
DataLoader workers. Rounds are paired: every configuration runs once per round, in a shuffled
order; speed-ups are taken within a round against the same reader's r = 0 of the same
layout, workers and latency; intervals are min-max over rounds (Target: met only when the
whole interval clears the goal, inconclusive when it straddles it).

Run:  python -m benchmarks remote            (full: 1 GiB, 10/30/80 ms, 5 rounds; ~30 min, see README)
      python -m benchmarks remote --quick    (smoke run: 24 MiB, 30 ms, 1 round, r = 0 and 0.8; < 2 min)
      python -m benchmarks remote --readers formats --latencies 30 --workers 4   (MDS and LitData only, 5 rounds)
      python -m benchmarks remote --quick --readers formats --workers 4        (their smoke run, ~2 min)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import logging
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import jpegdata, mdtable, provenance, resultsfile, stats
from .nginx_store import NGINX, NginxStore, echo_module_available, read_log
from .remote_peers import BUCKET, LITDATA_ARRAY, PEERS
from .suite import Suite, Target

__all__ = ["Arm", "RemoteSuite", "configs", "evaluate_targets", "predicted", "reader_takes_cache_dir",
           "summarize", "tables"]

log = logging.getLogger(__name__)

RATIOS = (0.0, 0.2, 0.4, 0.6, 0.8)
LEVELS = ("sample", "class")
#: Sample-mask ratios whose runs read a second epoch (with and without the kept-bytes cache) and have a local-disk twin.
CACHE_RATIOS = (0.0, 0.4, 0.8)
#: The class-sorted copy (a subdirectory the store serves): its masks are keyed by this level.
SORTED = "sorted"
SORTED_LEVEL = "class-sorted"
SORTED_CLASSES = 20
#: The store's folder (beside the bucket) of streamprune's indexes of the MDS and LitData copies.
SPINDEX = "spindex"
BATCH = 32
#: Seconds a run waits after an epoch before noting the log's size (nginx logs a request once its response is sent).
SETTLE = 0.2
#: A run with no batch for this long (from its epoch's start or the batch before) stalled: reported, not counted.
STALL_S = 30.0
STREAMPRUNE = ("streamprune", "streamprune_sorted", "streamprune_cache", "streamprune_local")


class ForeignFormat(NamedTuple):
    """One peer's own format read in place: streamprune's arm, the peer's full and own-subset arms, on the same files."""

    name: str  # the arms' level, the masks' key and the streamprune index's folder
    folder: str  # the copy under the bucket
    streamprune: str
    peer: str  # the peer reading every sample (its first epoch downloads, its second reads its own cache)
    subset: str  # the peer reading a subset it selects its own way
    how: str  # the peer's option that selects it


#: MDS and LitData shards read pruned in place, against MosaicML's and LitData's own readers of the same files.
#: LitData's ``litdata`` arm reads a copy of only bytes and ints, which LitData stores as one Arrow footer per
#: chunk (not at per-sample ranges), so the format arms use the copy with the images as uint8 arrays.
FORMATS = (ForeignFormat("mds", "mds", "streamprune_mds", "mosaic", "mosaic_subset", "Stream(choose=k)"),
           ForeignFormat("litdata", LITDATA_ARRAY, "streamprune_litdata", "litdata_array", "litdata_subset",
                         "subsample=1-r"))
#: The ratios of the format arms (r = 0 and the issue's r = 0.8).
FORMAT_RATIOS = (0.0, 0.8)
FORMAT_SP = tuple(f.streamprune for f in FORMATS)
FORMAT_READERS = tuple(r for f in FORMATS for r in (f.streamprune, f.subset)) + ("litdata_array",)
READERS = STREAMPRUNE + PEERS + FORMAT_READERS
#: ``--readers formats``: the MDS and LitData arms, with MosaicML's full reader of the same MDS files.
FORMATS_GROUP = ("streamprune_mds", "mosaic", "mosaic_subset", "streamprune_litdata", "litdata_array", "litdata_subset")
#: Each format arm's format.
FORMAT_OF = {r: f for f in FORMATS for r in (f.streamprune, f.subset)} | {"litdata_array": FORMATS[1]}


class Arm(NamedTuple):
    """One configuration: reader, mask (ratio and level), DataLoader workers, store latency and epochs read."""

    reader: str
    ratio: float
    level: str
    workers: int
    latency_ms: int
    epochs: int = 1


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


def reader_takes_cache_dir() -> bool:
    """Whether streamprune's reader accepts the kept-bytes cache's ``cache_dir`` keyword."""
    # heavy import, deferred: streamprune's readers (torch)
    from streamprune import PrunedSource, PrunedWebDataset

    return any("cache_dir" in inspect.signature(cls.__init__).parameters for cls in (PrunedSource, PrunedWebDataset))


def build(job: dict, cache_dir: str) -> tuple[Any, Any]:
    """The dataset and DataLoader of one run (``job`` as made by :func:`run_once`)."""
    # heavy import, deferred: streamprune's readers (torch)
    from streamprune import PrunedWebDataset

    from . import remote_peers

    reader, workers = job["reader"], job["workers"]
    # MosaicML's boto3 client takes its endpoint from S3_ENDPOINT_URL: this run's latency port
    # (this forked process's environment only; its DataLoader workers inherit it)
    os.environ["S3_ENDPOINT_URL"] = job["endpoint"]
    if reader == "wds":
        ds = remote_peers.wds_dataset(job["base_url"], job["shard_names"])
    elif reader == "mosaic":
        ds = remote_peers.mosaic_dataset("mds", cache_dir, BATCH)
    elif reader == "litdata":
        ds = remote_peers.litdata_dataset("litdata", cache_dir, job["endpoint"])
    elif reader == "mosaic_subset":
        ds = remote_peers.mosaic_dataset("mds", cache_dir, BATCH, choose=job["want"])
    elif reader in ("litdata_array", "litdata_subset"):
        ds = remote_peers.litdata_dataset(LITDATA_ARRAY, cache_dir, job["endpoint"], subsample=1 - job["ratio"])
    else:
        kwargs: dict[str, Any] = {}
        if job["cache_kw"]:  # the reader has a kept-bytes cache: on for the cache arm and the format arms (whose peers
            # cache what they download), off for the others
            kwargs["cache_dir"] = cache_dir if reader in ("streamprune_cache", *FORMAT_SP) else None
        ds = PrunedWebDataset(job["manifest"], job["mask"], **kwargs)
    return ds, remote_peers.peer_loader(reader, ds, BATCH, workers, _collate)


def _tree_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file removed meanwhile
                total += os.path.getsize(os.path.join(root, name))
    return total


def _one(job: dict, beat: Callable[[], None] = lambda: None) -> dict:
    """One run, in the forked child: build the loader, time each epoch, note the log's size after it.

    ``beat`` is called at each epoch's start and after each batch (the zygote's stall watch).
    """
    # the heavy imports (torch, webdataset, the readers, their clients) were done by the zygote
    cache_dir = tempfile.mkdtemp(prefix="remote-bench-cache-")
    epochs = []
    try:
        mem = _Memory()
        ds = loader = None
        for epoch in range(job["epochs"]):
            beat()
            t0 = time.perf_counter()
            if loader is None:  # epoch 1 builds the dataset: manifest, indexes, the peers' index files
                ds, loader = build(job, cache_dir)
                if job["want"] is None:  # a subset the peer sizes itself (LitData's subsample): its own length
                    job["want"] = len(ds)
            if hasattr(ds, "set_epoch") and job["reader"].startswith("streamprune"):
                ds.set_epoch(epoch)
            samples = nbytes = 0
            first = None
            last, gap = t0, 0.0
            for count, size in loader:
                beat()
                now = time.perf_counter()
                first = now - t0 if first is None else first
                gap, last = max(gap, now - last), now
                samples += count
                nbytes += size
            seconds = time.perf_counter() - t0
            if samples != job["want"]:
                raise RuntimeError(f"epoch {epoch + 1}: {samples} samples, expected {job['want']}")
            time.sleep(SETTLE)
            epochs.append({"epoch": epoch + 1, "seconds": seconds, "first_batch_s": first, "max_gap_s": gap, "samples": samples,
                           "image_bytes": nbytes, "log_end": os.path.getsize(job["log"]),
                           "cache_bytes": _tree_bytes(cache_dir)})
        peak, start = mem.done()
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {"epochs": epochs, "peak_rss_MiB": peak / 2**20, "peak_over_start_MiB": (peak - start) / 2**20}


class Zygote:
    """A process that imports the readers once, then forks one fresh child per run.

    Each run still starts from a clean process (no fsspec, connection or page state left by
    another run), but not from a cold interpreter: importing torch, webdataset, the readers
    and their HTTP/S3 clients took most of a run's wall time (~20 s of ~25 s on a loaded
    machine), and a training process pays it once, not per epoch. What each epoch does pay
    stays in the clock: building the dataset, DataLoader workers, and every request. A run that
    passes its ``timeout`` is killed with its process group (workers, ``curl``) and answered
    as an error.
    """

    def __init__(self) -> None:
        repo = os.path.dirname(resultsfile.HERE)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
        # -W: runpy warns that the package (its registry) imported this module before running it as __main__
        self.proc = subprocess.Popen([sys.executable, "-W", "ignore::RuntimeWarning:runpy", "-m", "benchmarks.remote_bench",
                                      "--zygote"], cwd=repo, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, job: dict) -> dict:
        """One run in a forked child: its result, or ``{"error": ...}`` (``"stalled": True`` when it timed out)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote process died (exit {self.proc.poll()})")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_child(pid: int, read_fd: int, beat_fd: int, timeout: float, stall: float) -> str | None:
    """The child's reply; ``None`` when it sent none within ``timeout`` s, or no beat for ``stall`` s.

    In both cases its process group (the run, its DataLoader workers, ``curl``) is killed.
    """
    chunks = []
    start = last_beat = time.monotonic()
    fds = [read_fd, beat_fd]
    while True:
        now = time.monotonic()
        left = min(start + timeout, last_beat + stall) - now
        ready, _, _ = select.select(fds, [], [], max(left, 0)) if left > 0 else ([], [], [])
        if not ready:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        if beat_fd in ready:
            if os.read(beat_fd, 1 << 12):
                last_beat = time.monotonic()
            else:  # the child closed its end (it is done, or died)
                fds.remove(beat_fd)
        if read_fd in ready:
            data = os.read(read_fd, 1 << 16)
            if not data:
                break
            chunks.append(data)
    os.waitpid(pid, 0)
    # workers or curl processes the run left behind (a reader that does not join them) go too
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return b"".join(chunks).decode()


def _zygote() -> None:
    """The zygote's side: import, then for each job line on stdin fork a child that runs it."""
    # heavy imports, done once here so each forked run starts with them loaded
    import traceback
    import warnings

    import torch  # noqa: F401
    import webdataset  # noqa: F401

    import streamprune.readers.webdataset  # noqa: F401

    # The HTTP and S3 clients the readers load on first use (fsspec + aiohttp for streamprune,
    # boto3 for MosaicML and LitData): a training process imports them once, not per epoch.
    with contextlib.suppress(ImportError):  # optional: the remote extra
        import aiohttp  # noqa: F401
        import fsspec.implementations.http  # noqa: F401
    with contextlib.suppress(ImportError):  # optional peer: mosaicml-streaming and its S3 client
        import boto3  # noqa: F401
        import streaming  # noqa: F401
    with contextlib.suppress(ImportError):  # optional peer: litdata (imports only: no obstore runtime before a fork)
        import litdata  # noqa: F401
    # 4 workers on 2 cores is the point of the 4-worker arms: torch's advice against it, once per run, is noise
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    out = sys.stdout
    for line in sys.stdin:
        job = json.loads(line)
        read_fd, write_fd = os.pipe()
        beat_read, beat_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            os.close(beat_read)
            os.setpgid(0, 0)  # its own process group: a stalled run is killed with its workers
            try:
                reply = _one(job, functools.partial(os.write, beat_write, b"."))
            except BaseException:  # noqa: BLE001 - reported to the parent, which records it
                reply = {"error": traceback.format_exc()[-3000:]}
            with os.fdopen(write_fd, "w") as fh:
                fh.write(json.dumps(reply))
            os._exit(0)
        os.close(write_fd)
        os.close(beat_write)
        t0 = time.monotonic()
        try:
            text = _wait_child(pid, read_fd, beat_read, job["timeout"], STALL_S)
        finally:
            os.close(read_fd)
            os.close(beat_read)
        if text is None:
            took = time.monotonic() - t0
            why = (f"no result within {job['timeout']:.0f} s" if took >= job["timeout"] - 1 else
                   f"no batch for {STALL_S:.0f} s (after {took:.0f} s)")
            text = json.dumps({"error": f"stalled: {why}; killed", "stalled": True})
        out.write((text or json.dumps({"error": "the run's process died without a result"})) + "\n")
        out.flush()


# --------------------------------------------------------------------------------------------
# one run


class Setup:
    """What every run needs: the store, the data's paths and URLs, the masks and their kept samples."""

    def __init__(self, data_dir: str, store: NginxStore, shard_names: list[str], masks: dict, kept: dict,
                 cache_kw: bool, timeout: float) -> None:
        self.data_dir = data_dir
        self.store = store
        self.shard_names = shard_names
        self.masks = masks
        self.kept = kept
        self.zygote: Zygote | None = None  # started once the setup is complete
        self.cache_kw = cache_kw
        self.timeout = timeout


def _port_name(latency_ms: int) -> str:
    return f"t{latency_ms}"


def job_for(arm: Arm, s: Setup) -> dict:
    """The zygote's job for ``arm``: URLs on the arm's latency port, mask, samples expected."""
    endpoint = s.store.url(_port_name(arm.latency_ms))
    base = f"{endpoint}/{BUCKET}"
    if arm.reader == "streamprune_local":
        manifest = os.path.join(s.data_dir, "manifest.json")
    elif arm.reader == "streamprune_sorted":
        manifest = f"{base}/{SORTED}/manifest.json"
    elif arm.reader in FORMAT_OF:  # streamprune's index of the peer's own files, served beside them
        manifest = f"{endpoint}/{SPINDEX}/{arm.level}/manifest.json"
    else:
        manifest = f"{base}/manifest.json"
    key = (arm.ratio, arm.level)
    want = None if arm.reader == "litdata_subset" else s.kept[key]
    return {"reader": arm.reader, "ratio": arm.ratio, "level": arm.level, "workers": arm.workers,
            "latency_ms": arm.latency_ms, "epochs": arm.epochs, "endpoint": endpoint, "base_url": base,
            "shard_names": s.shard_names, "manifest": manifest, "mask": s.masks.get(key) if arm.reader.startswith("streamprune") else None,
            "want": want,
            "log": s.store.log, "cache_kw": s.cache_kw, "timeout": s.timeout * arm.epochs}


def _count(entries: list[dict]) -> dict[str, int]:
    gets = [e for e in entries if e["method"] == "GET"]
    return {"requests": len(entries), "gets": len(gets), "ranged_gets": sum(e["range"] not in ("", "-") for e in gets),
            # the same object and range asked for again: a retry, or a download repeated by another worker
            "repeated_gets": len(gets) - len({(e["uri"], e["range"]) for e in gets}),
            "heads": sum(e["method"] == "HEAD" for e in entries), "errors": sum(e["status"] >= 400 for e in entries),
            "bytes_sent": sum(e["body_bytes"] for e in entries)}


def run_once(arm: Arm, s: Setup) -> tuple[list[dict], str | None]:
    """One run of ``arm`` in a fresh forked process: one row per epoch, or an error (the run is then not counted)."""
    s.store.clear_log()
    load = os.getloadavg()[0]
    assert s.zygote is not None
    reply = s.zygote.run(job_for(arm, s))
    if "error" in reply:
        return [], reply["error"]
    time.sleep(SETTLE)
    port = s.store.ports[_port_name(arm.latency_ms)]
    rows = []
    start = 0
    for ep in reply["epochs"]:
        counts = _count(read_log(s.store.log, port, start, ep["log_end"]))
        start = ep["log_end"]
        row = arm._asdict() | {k: v for k, v in ep.items() if k != "log_end"} | counts
        row.update(samples_per_s=ep["samples"] / ep["seconds"], MB_per_s=counts["bytes_sent"] / ep["seconds"] / 1e6,
                   gets_per_s=counts["ranged_gets"] / ep["seconds"], peak_rss_MiB=reply["peak_rss_MiB"],
                   peak_over_start_MiB=reply["peak_over_start_MiB"], load_1min=load)
        rows.append(row)
    return rows, run_problem(rows, remote=arm.reader != "streamprune_local")


def run_problem(rows: list[dict], remote: bool = True) -> str | None:
    """Why a finished run must not be counted (``None``: it counts).

    A remote reader whose requests did not reach nginx on its port did not read the store; a
    run with no batch for :data:`STALL_S` seconds stalled (MosaicML's 60 s read timeout, for one).
    """
    if remote and sum(r["requests"] for r in rows) == 0:
        return "no request reached nginx on its port: the run did not read the store"
    stalled = [r for r in rows if r["max_gap_s"] >= STALL_S]
    if stalled:
        return "; ".join(f"stalled: no batch for {r['max_gap_s']:.0f} s in epoch {r['epoch']} (epoch {r['seconds']:.0f} s, "
                         f"{r['requests']} requests, {r['repeated_gets']} repeated GETs, {r['errors']} errors)" for r in stalled)
    return None


# --------------------------------------------------------------------------------------------
# setup


def make_masks(manifest: Any, ratios: Sequence[float], out: str, levels: Sequence[str] = LEVELS,
               key_level: dict[str, str] | None = None) -> tuple[dict, dict, dict]:
    """Random masks per ratio and level (``levels``), saved under ``out``.

    ``key_level`` files a level's masks under another name (the class-sorted copy's class
    masks are ``"class-sorted"``, apart from the main copy's).

    Returns:
        The mask files, their kept sample counts, and the fraction of the shards' bytes their
        kept samples' tar records occupy (per ``(ratio, level)``): samples differ in size and
        classes in count, so a mask removing a fraction ``r`` of samples keeps about, not
        exactly, ``1 - r`` of the bytes.
    """
    # heavy import, deferred: streamprune.masks loads numpy-heavy modules
    from streamprune.masks import random_mask

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
            kept[(r, name)] = int(m.keep.sum())
            kept_bytes[(r, name)] = float(record[m.keep].sum()) / full
    manifest.drop_cache()
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
    per shard, so its class-level masks are as scattered as sample-level ones.
    """
    # heavy import, deferred: streamprune's writers (torch)
    from streamprune import Manifest, write_shards

    out = os.path.join(data_dir, SORTED)
    stamp = os.path.join(out, "sorted.json")
    if os.path.exists(stamp):
        return Manifest.load(out)
    shutil.rmtree(out, ignore_errors=True)
    source = _Coarse(manifest, classes)
    t0 = time.perf_counter()
    write_shards(source, out, samples_per_shard=manifest.shards[0].samples, shuffle=False, layout="class-sorted",
                 checksum=True, progress=False, class_names=source.class_names)
    with open(stamp, "w") as fh:
        json.dump({"classes": classes, "samples": len(source), "seconds": time.perf_counter() - t0}, fh)
    log(f"wrote the class-sorted copy ({classes} classes) to {out} in {time.perf_counter() - t0:.1f} s")
    return Manifest.load(out)


def configs(latencies_ms: Sequence[int], workers: Sequence[int], headline_ms: int, readers: Sequence[str],
            ratios: Sequence[float] = RATIOS) -> list[Arm]:
    """Every configuration of one round.

    At ``headline_ms`` every arm with every worker count; at the other latencies streamprune's
    sample masks and class-sorted copy at r in CACHE_RATIOS, and webdataset, with the most
    workers only (the latency's effect, at a fraction of the runs: MosaicML and LitData
    download whole shards, so their epochs depend little on the time to first byte, and they
    are the slowest runs).
    """
    out: list[Arm] = []
    for lat in latencies_ms:
        head = lat == headline_ms
        for w in workers if head else [max(workers)]:
            some = [r for r in ratios if head or r in CACHE_RATIOS]
            if "streamprune" in readers:
                for r in some:
                    for level in LEVELS if head else ("sample",):
                        if r == 0 and level == "class":
                            continue
                        two = head and level == "sample" and r in CACHE_RATIOS  # epoch 2 without the cache
                        out.append(Arm("streamprune", r, level, w, lat, 2 if two else 1))
            if "streamprune_sorted" in readers:
                out.extend(Arm("streamprune_sorted", r, SORTED_LEVEL, w, lat) for r in some)
            if head and "streamprune_cache" in readers:
                out.extend(Arm("streamprune_cache", r, "sample", w, lat, 2) for r in CACHE_RATIOS if r in ratios)
            if head and "streamprune_local" in readers:
                out.extend(Arm("streamprune_local", r, "sample", w, lat) for r in CACHE_RATIOS if r in ratios)
            for peer in PEERS if head else ("wds",):
                if peer in readers:
                    out.append(Arm(peer, 0.0, "sample", w, lat, 1 if peer == "wds" else 2))
            for f in FORMATS if head else ():  # first and second epochs, as the peers' own
                kept = [r for r in FORMAT_RATIOS if r in ratios]
                if f.streamprune in readers:
                    out.extend(Arm(f.streamprune, r, f.name, w, lat, 2) for r in kept)
                if f.peer in FORMAT_READERS and f.peer in readers:
                    out.append(Arm(f.peer, 0.0, f.name, w, lat, 2))
                if f.subset in readers:
                    out.extend(Arm(f.subset, r, f.name, w, lat, 2) for r in kept if r > 0)
    return out


# --------------------------------------------------------------------------------------------
# plan predictions (the fetch planner's, when there is one)


def planner() -> tuple[Callable | None, str | None]:
    """streamprune's epoch predictor (``streamprune.readers.prediction.predict_epoch``), or why there is none."""
    try:
        # optional: the fetch planner may not be part of this checkout
        from streamprune.readers.prediction import predict_epoch
    except ImportError as exc:
        return None, f"no predictor: streamprune.readers.prediction.predict_epoch cannot be imported ({exc})"
    return predict_epoch, None


def predicted(manifest_url: str, mask: str | None, latency: float, bandwidth: float = 100e6, workers: int = 1) -> dict | None:
    """What ``streamprune inspect --plan`` predicts for one epoch: ``{"requests", "bytes", "seconds"}``.

    The reader's default model with this store's latency and per-connection bandwidth, the
    reader's adaptive depth for ``workers`` DataLoader workers (256 requests in flight shared).
    ``requests`` counts what nginx logs: data requests, each shard's metadata requests and the
    manifest. ``seconds`` is one process's epoch; with several workers the shards are split
    among them, so it is divided by ``workers`` (an upper bound on the parallel speed-up).

    Returns:
        The prediction, or ``None`` when there is no predictor (:func:`planner` says why).
    """
    fn, _reason = planner()
    if fn is None:
        return None
    # deferred: streamprune's readers load torch (the registry imports every suite)
    from streamprune.manifest import Manifest
    from streamprune.masks import MaskFile
    from streamprune.readers.planner import store_model

    manifest = Manifest.load(manifest_url)
    model = store_model(None, latency=latency, conn_bandwidth=bandwidth)
    out = fn(manifest, MaskFile(mask) if mask else None, model, max_depth=min(128, 256 // max(1, workers)))
    planned = out["planned"]
    return {"requests": float(planned["requests"] + planned["metadata_requests"] + 1), "bytes": float(planned["bytes"]),
            "seconds": planned["seconds"] / max(1, workers)}


# --------------------------------------------------------------------------------------------
# summary and targets


def _key(r: dict) -> tuple:
    return (r["reader"], r["ratio"], r["level"], r["workers"], r["latency_ms"], r.get("epoch", 1))


def match(**fields: Any) -> Callable[[dict], bool]:
    """A test for runs or rows with these field values (``epoch`` 1 where a run has none)."""
    return lambda r: all((r.get(k, 1) if k == "epoch" else r.get(k)) == v for k, v in fields.items())


def paired(runs: list[dict], num: Callable[[dict], Any], den: Callable[[dict], Any],
           rounds: Sequence[int] | None = None) -> stats.Ratio:
    """Per round, ``seconds(den run) / seconds(num run)`` for the runs ``num`` and ``den`` select.

    Args:
        runs: The runs that completed (a failed or stalled run is in ``failures``, not here).
        num: Selects the arm whose speed is measured.
        den: Selects the arm it is compared with.
        rounds: The rounds that were run (default: those either arm has); a round missing on
            either side is not counted, and counted in the ratio's ``failed``.

    Returns:
        The paired ratio (:mod:`benchmarks.stats`).
    """
    a = {r["round"]: r["seconds"] for r in runs if num(r)}
    b = {r["round"]: r["seconds"] for r in runs if den(r)}
    return stats.paired_by_round(b, a, rounds=sorted(set(a) | set(b)) if rounds is None else rounds)


def speedups(runs: list[dict]) -> dict[tuple, stats.Ratio]:
    """Epoch 1 of each pruned streamprune configuration (tar, class-sorted, MDS, LitData): t(its r = 0) / t(r), per round."""
    out: dict[tuple, list[float]] = {}
    readers = ("streamprune", "streamprune_sorted", *(f.streamprune for f in FORMATS))
    pruned = {_key(r) for r in runs if r["reader"] in readers and r["ratio"] > 0 and r.get("epoch", 1) == 1}
    for key in sorted(pruned):
        reader, ratio, level, w, lat, _ = key
        base_level = {"streamprune": "sample", "streamprune_sorted": SORTED_LEVEL}.get(reader, level)
        out[key] = paired(runs, match(reader=reader, ratio=ratio, level=level, workers=w, latency_ms=lat, epoch=1),
                          match(reader=reader, ratio=0.0, level=base_level, workers=w, latency_ms=lat, epoch=1))
    return out


def summarize(runs: list[dict]) -> list[dict]:
    """One row per configuration and epoch: medians over rounds, min-max intervals, paired speed-ups."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(_key(r), []).append(r)
    ups = speedups(runs)
    rows = []
    for key, rs in sorted(groups.items()):
        reader, ratio, level, workers, lat, epoch = key
        sps = [r["samples_per_s"] for r in rs]
        first = [r["first_batch_s"] for r in rs if r.get("first_batch_s") is not None]
        row = {"reader": reader, "ratio": ratio, "level": level, "workers": workers, "latency_ms": lat, "epoch": epoch,
               "repeats": len(rs), "samples": rs[0]["samples"], "seconds": stats.median([r["seconds"] for r in rs]),
               "samples_per_s": stats.median(sps), "samples_per_s_interval": [min(sps), max(sps)],
               # start-up (manifest, worker fork, first requests) plus the first batch
               "first_batch_s": stats.median(first) if first else None,
               "MB_per_s": stats.median([r["MB_per_s"] for r in rs]),
               "bytes_sent": int(stats.median([r["bytes_sent"] for r in rs])),
               "requests": int(stats.median([r["requests"] for r in rs])),
               "peak_rss_MiB": max(r["peak_rss_MiB"] for r in rs),
               "peak_over_start_MiB": max(r["peak_over_start_MiB"] for r in rs)}
        if "ranged_gets" in rs[0]:
            gps = [r["gets_per_s"] for r in rs]
            row.update(ranged_gets=int(stats.median([r["ranged_gets"] for r in rs])), gets_per_s=stats.median(gps),
                       gets_per_s_interval=[min(gps), max(gps)], heads=int(stats.median([r["heads"] for r in rs])),
                       errors=max(r["errors"] for r in rs), cache_bytes=max(r.get("cache_bytes", 0) for r in rs),
                       repeated_gets=max(r.get("repeated_gets", 0) for r in rs))
        if key in ups and ups[key].n:
            row.update(speedup=ups[key].median, speedup_interval=[ups[key].low, ups[key].high], speedup_rounds=ups[key].n)
        rows.append(row)
    return rows


def _find(rows: list[dict], **kw: Any) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def evaluate_targets(rows: list[dict], runs: list[dict], setup: dict, command: str) -> list[dict]:
    """The suite's targets at the headline latency, judged (``Target.check``; intervals are min-max over rounds)."""
    head = setup["headline_ms"]
    full_bytes = setup["full_bytes"]
    rounds = list(range(setup["rounds"])) if setup.get("rounds") else None  # a peer's failed or stalled round: not counted
    kept_fraction = {(float(k.split("/")[0]), k.split("/")[1]): v for k, v in setup["kept_bytes_fraction"].items()}
    targets: list[Target] = []
    at = [r for r in rows if r["latency_ms"] == head]
    for row in at:  # pruned epochs against their own r = 0
        if row["reader"] not in ("streamprune", "streamprune_sorted") or row["ratio"] == 0 or row["epoch"] != 1:
            continue
        r, level, w = row["ratio"], row["level"], row["workers"]
        values = speedups(runs).get(_key(row))
        if values is None or not values.n:
            continue
        where = f"{level}, {w} w, {head} ms"
        targets.append(Target.check(f"pruned epoch no slower than the unpruned: speed-up >= 1 ({where})",
                                    None, 1.0, ">=", paired=values, command=command, ratio=r, level=level))
        goal = {"sample": 0.7, SORTED_LEVEL: 0.85}.get(level)
        if goal is not None:
            targets.append(Target.check(f"speed-up >= {goal}/(1-r) ({where})", None, goal / (1 - r), ">=",
                                        paired=values, command=command, ratio=r, level=level))
        # the literal goal is (1-r) x 1.05; a random mask keeps about, not exactly, 1-r of the bytes,
        # so the goal is the mask's own kept bytes x 1.05 (the row keeps the literal one beside it)
        kept = kept_fraction.get((r, level), 1 - r)
        targets.append(Target.check(
            f"bytes transferred <= kept bytes x 1.05 ({where}; kept {kept:.3f} of the bytes)", row["bytes_sent"] / full_bytes,
            kept * 1.05, "<=", command=command, ratio=r, level=level, literal_goal=(1 - r) * 1.05))
    ran = setup.get("readers", READERS)  # arms left out of a run (--readers) have no target
    for w in sorted({r["workers"] for r in at}):  # streamprune's full epoch against each peer's first
        for peer in PEERS:
            if peer not in ran or "streamprune" not in ran:
                continue
            values = paired(runs, match(reader="streamprune", ratio=0.0, level="sample", workers=w, latency_ms=head, epoch=1),
                            match(reader=peer, workers=w, latency_ms=head, epoch=1), rounds)
            if values.n or values.failed:
                targets.append(Target.check(f"r=0 samples/s >= {peer}'s first epoch ({w} w, {head} ms)",
                                            None, 1.0, ">=", paired=values, command=command))
    for row in at:  # the kept-bytes cache: epoch 2 against the local reader of the same files and mask
        if row["reader"] != "streamprune_cache" or row["epoch"] != 2:
            continue
        r, w = row["ratio"], row["workers"]
        values = paired(runs, match(reader="streamprune_cache", ratio=r, level="sample", workers=w, latency_ms=head, epoch=2),
                        match(reader="streamprune_local", ratio=r, level="sample", workers=w, latency_ms=head, epoch=1))
        if values.n:
            targets.append(Target.check(f"epoch 2 with the cache >= 0.9x the local-disk reader ({w} w, {head} ms)",
                                        None, 0.9, ">=", paired=values, command=command, ratio=r, level="sample"))
        kept = kept_fraction.get((r, "sample"), 1.0) * full_bytes
        targets.append(Target.check(f"cache bytes <= kept bytes x 1.05 ({w} w, {head} ms)", row["cache_bytes"] / kept, 1.05,
                                    "<=", command=command, ratio=r, level="sample"))
    ones = [r for r in at if r["reader"] in ("streamprune", "streamprune_sorted") and r["epoch"] == 1 and r["workers"] == 1
            and "ranged_gets" in r]
    if ones:  # the client's request rate: the one-worker run with the most requests, all in one process
        busiest = max(ones, key=lambda r: r["ranged_gets"])
        values = [x["gets_per_s"] for x in runs if _key(x) == _key(busiest)]
        targets.append(Target.check(
            f"client ranged GETs/s per process >= 2,000 ({busiest['reader']} r={busiest['ratio']:g} {busiest['level']}, "
            f"1 w, {head} ms: {busiest['ranged_gets']:,} GETs)", stats.median(values), 2000.0, ">=",
            interval=(min(values), max(values)) if len(values) > 1 else None, rounds=len(values), command=command))
    targets += format_targets(at, runs, setup, command, rounds)
    for p in setup.get("predictions") or []:  # the planner's predictions, when there is a planner
        row = _find(at, reader=p["reader"], ratio=p["ratio"], level=p["level"], workers=p["workers"], epoch=1)
        if row is None:
            continue
        for what, measured in (("requests", row["requests"]), ("bytes", row["bytes_sent"]), ("seconds", row["seconds"])):
            error = abs(p[what] / measured - 1) if measured else float("inf")
            targets.append(Target.check(
                f"plan's predicted {what} within 20% of measured ({p['reader']} {p['level']}, {p['workers']} w, {head} ms)",
                error, 0.2, "<=", command=command, ratio=p["ratio"], level=p["level"], predicted=p[what], measured_value=measured))
    return [t.to_dict() for t in targets]


def format_targets(at: list[dict], runs: list[dict], setup: dict, command: str, rounds: Sequence[int] | None) -> list[Target]:
    """The MDS and LitData targets at the headline latency (rows ``at``): bytes, and epochs against the peer's own.

    streamprune's pruned epoch (r = 0.8) moves at most 0.25 of the shards' bytes, and is no
    slower than the peer's full epoch and than the peer's own subset, epoch 1 against epoch 1
    and epoch 2 against epoch 2 (the peer's second epoch reads the shards it cached; streamprune's
    reads the store again); streamprune's full epoch against the peer's. Speed is t(peer) / t(streamprune),
    paired within a round: a round either arm failed or stalled in is reported, not counted.
    """
    out: list[Target] = []
    r = max(FORMAT_RATIOS)
    for f in FORMATS:
        total = (setup.get("format_bytes") or {}).get(f.name)
        for w in sorted({x["workers"] for x in at if x["reader"] == f.streamprune}):
            where = f"{w} w, {setup['headline_ms']} ms"
            row = _find(at, reader=f.streamprune, ratio=r, workers=w, epoch=1)
            if row is not None and total:
                # a random mask keeps about, not exactly, 1 - r of the bytes: the row says how much it kept
                kept = (setup.get("kept_bytes_fraction") or {}).get(f"{r:g}/{f.name}")
                each = [x["bytes_sent"] / total for x in runs if _key(x) == _key(row)]
                out.append(Target.check(f"{f.name}: bytes transferred at r={r:g} <= 0.25 of the shards ({where}"
                                        + (f"; kept {kept:.3f} of the bytes)" if kept is not None else ")"),
                                        row["bytes_sent"] / total, 0.25, "<=", command=command, ratio=r, level=f.name,
                                        interval=(min(each), max(each)) if len(each) > 1 else None, rounds=len(each),
                                        kept_bytes_fraction=kept))
            pairs = [(r, f.peer, 0.0, "full", e) for e in (1, 2)] + [(r, f.subset, r, f"own subset ({f.how})", e) for e in (1, 2)]
            pairs.append((0.0, f.peer, 0.0, "full", 1))
            for ours, peer, theirs, what, epoch in pairs:
                values = paired(runs, match(reader=f.streamprune, ratio=ours, workers=w, latency_ms=setup["headline_ms"],
                                            epoch=epoch),
                                match(reader=peer, ratio=theirs, workers=w, latency_ms=setup["headline_ms"], epoch=epoch), rounds)
                if values.n or values.failed:
                    nth = "first" if epoch == 1 else "second"
                    out.append(Target.check(f"{f.name}: streamprune r={ours:g} epoch {epoch} no slower than {peer}'s {what} {nth} "
                                            f"epoch: t({peer}) / t(streamprune) >= 1 ({where})", None, 1.0, ">=",
                                            paired=values, command=command, ratio=ours, level=f.name))
    return out


# --------------------------------------------------------------------------------------------
# report


def _row_cells(r: dict, f: Callable) -> list:
    lo_hi = r.get("samples_per_s_interval")
    sps = f(r["samples_per_s"], 0) + (f" [{lo_hi[0]:,.0f}-{lo_hi[1]:,.0f}]" if lo_hi and r.get("repeats", 1) > 1 else "")
    up = ""
    if r.get("speedup") is not None:
        lo, hi = r["speedup_interval"]
        up = f"{r['speedup']:.2f}" + (f" [{lo:.2f}-{hi:.2f}]" if r.get("repeats", 1) > 1 else "")
    pruned = r["reader"].startswith("streamprune") or r["reader"] == "wds_select"
    return [r["latency_ms"], r["workers"], r["reader"], f"{r['ratio']:g}", r["level"] if pruned else "", r.get("epoch", 1), sps,
            up, f(r["first_batch_s"], 2) if r.get("first_batch_s") is not None else "", f(r["MB_per_s"], 1),
            f(r["bytes_sent"] / 1e6, 1), f(r["requests"]), f(r["gets_per_s"], 0) if r.get("gets_per_s") is not None else "",
            f(r["cache_bytes"] / 1e6, 1) if r.get("cache_bytes") else "", f(r["peak_rss_MiB"], 0)]


def tables(results: dict[str, Any]) -> str:
    """The suite's tables: the headline latency, the other latencies, failed and skipped arms."""
    f = mdtable.fmt_num
    setup = results["setup"]
    if setup.get("store") == "nginx":
        out = [f"nginx on loopback (one port per setting; echo_sleep before each response, limit_rate per connection): time "
               f"to first byte {', '.join(str(x) for x in setup['latencies_ms'])} ms per request, {setup['conn_mbps']:g} MB/s "
               f"per connection, no aggregate cap; {setup['samples']:,} JPEG samples, {setup['full_bytes'] / 1e6:,.0f} MB in "
               f"{setup['shards']} shards of {setup['samples_per_shard']:,} samples; {setup['rounds']} paired rounds; DataLoader "
               f"batch {BATCH}, no decode. Speed-up: t(same reader and layout at r=0) / t, paired within a round. Commit "
               f"{str(results.get('commit'))[:12]}{' (dirty)' if results.get('dirty') else ''}.", ""]
    else:  # a results file of the earlier suite, on the Python simulated store
        out = [f"SIMULATED object store (an earlier version of this suite: a Python HTTP server): time to first byte "
               f"{', '.join(str(x) for x in setup['latencies_ms'])} ms, {setup['conn_mbps']:g} MB/s per connection, "
               f"{setup.get('total_mbps', 0):g} MB/s in all; {setup['samples']:,} JPEG samples in {setup['shards']} shards; "
               f"{setup['rounds']} paired rounds.", ""]
    head = ["latency", "workers", "reader", "r", "level", "epoch", "samples/s [min-max]", "speed-up [min-max]", "1st batch s",
            "MB/s", "MB sent", "requests", "ranged GETs/s", "cache MB", "peak RSS MiB"]
    order = {name: i for i, name in enumerate(READERS)}
    rows = sorted(results["rows"], key=lambda x: (x["latency_ms"] != setup.get("headline_ms"), x["latency_ms"], x["workers"],
                                                  order.get(x["reader"], 99), x["reader"], x["ratio"], x["level"],
                                                  x.get("epoch", 1)))
    out.append(mdtable.markdown_table(head, [_row_cells(r, f) for r in rows], "rrlllrrrrrrrrrr"))
    failures = results.get("failures") or []
    if failures:
        out += ["", f"Runs that failed or stalled ({len(failures)}; not counted):", ""]
        out.append(mdtable.markdown_table(
            ["round", "latency", "workers", "reader", "r", "level", "error"],
            [[x["round"], x["latency_ms"], x["workers"], x["reader"], f"{x['ratio']:g}", x["level"],
              x["error"].strip().splitlines()[-1][:160].replace("|", "/")] for x in failures], "rrrlrll"))
    skipped = results.get("skipped") or []
    if skipped:
        out += ["", "Not run:", ""] + [f"- {x['what']}: {x['reason']}" for x in skipped]
    return "\n".join(out)


def plot(rows: list[dict], latencies: Sequence[int], path: str) -> None:
    """samples/s (epoch 1) against r, one panel per latency."""
    # heavy import, deferred: matplotlib
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred with matplotlib, after choosing the Agg backend

    fig, axes = plt.subplots(1, len(latencies), figsize=(5 * len(latencies), 4), squeeze=False)
    styles = {1: "-", 4: "--"}
    for ax, lat in zip(axes[0], latencies):
        first = [r for r in rows if r["latency_ms"] == lat and r.get("epoch", 1) == 1]
        for w in sorted({r["workers"] for r in first}):
            style = styles.get(w, ":")
            for reader, level, colour in (("streamprune", "sample", "C0"), ("streamprune", "class", "C1"),
                                          ("streamprune_sorted", SORTED_LEVEL, "C5")):
                pts = sorted((r["ratio"], r["samples_per_s"]) for r in first if r["reader"] == reader and r["workers"] == w
                             and (r["level"] == level or (r["ratio"] == 0 and reader == "streamprune_sorted")
                                  or (r["ratio"] == 0 and level == "class" and r["level"] == "sample")))
                if pts:
                    ax.plot(*zip(*pts), style, color=colour, marker="o", label=f"streamprune {level}, {w} w")
            for reader, colour in (("wds", "C2"), ("mosaic", "C4"), ("litdata", "C3")):
                row = next((r for r in first if r["reader"] == reader and r["workers"] == w), None)
                if row:
                    ax.axhline(row["samples_per_s"], ls=style, color=colour, lw=1, label=f"{reader} 1st epoch, {w} w")
        ax.set_title(f"nginx store, {lat} ms to first byte")
        ax.set_xlabel("ratio removed r")
        ax.set_ylabel("samples/s (epoch 1)")
        ax.grid(alpha=0.3)
    fullest = max(axes[0], key=lambda ax: len(ax.get_lines()))
    fullest.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# run


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The suite's own options (``python -m benchmarks remote --help``; ``--seed`` orders the rounds)."""
    p.add_argument("--total-mb", type=float, default=1024,
                   help="dataset size in MiB (default 1024: 8 shards, 2 per worker with 4 workers)")
    p.add_argument("--samples-per-shard", type=int, default=1100, help="samples per shard (default 1100: ~134 MB shards)")
    p.add_argument("--latencies", default="10,30,80", help="time to first byte per request, ms (default 10,30,80)")
    p.add_argument("--headline-ms", type=int, default=30, help="the latency with every arm, and the targets (default 30)")
    p.add_argument("--conn-mbps", type=float, default=100, help="MB/s per connection (default 100)")
    p.add_argument("--workers", default="1,4", help="DataLoader workers (default 1,4)")
    p.add_argument("--rounds", type=int, default=5, help="paired rounds (default 5)")
    p.add_argument("--readers", default=",".join(READERS),
                   help=f"arms to run (default all: {','.join(READERS)}); 'formats' stands for the MDS and LitData arms "
                        f"({','.join(FORMATS_GROUP)})")
    p.add_argument("--run-timeout", type=float, default=None,
                   help="seconds an epoch may take before its run is killed (default 60 + 1 s per 20 MB of data)")



def configure(args: argparse.Namespace) -> argparse.Namespace:
    """``--quick`` (24 MiB, 30 ms, 1 round, r = 0 and 0.8: every arm once), the data folder; unknown readers are a usage error."""
    args.ratios = RATIOS
    if args.quick:  # every arm once, at r = 0 and 0.8 only
        args.total_mb, args.samples_per_shard, args.latencies, args.rounds = 24, 64, "30", 1
        args.headline_ms, args.ratios = 30, (0.0, 0.8)
    args.data_dir = args.data_dir or os.path.join(resultsfile.DEFAULT_DATA, "remote_jpeg_quick" if args.quick else
                                                  f"remote_jpeg_{round(args.total_mb)}mb_{args.samples_per_shard}")
    args.readers = ",".join(x for name in args.readers.split(",") for x in (FORMATS_GROUP if name == "formats" else (name,)))
    unknown = set(args.readers.split(",")) - set(READERS)
    if unknown:
        raise SystemExit(f"python -m benchmarks remote: --readers: unknown {', '.join(sorted(unknown))}; known: {', '.join(READERS)}")
    return args


def prepare(args: argparse.Namespace, readers: list[str], skipped: list[dict]) -> tuple[Any, Any, dict[str, str]]:
    """The shards, the class-sorted copy and the peers' copies (made once, reused); drops readers that cannot run."""
    # heavy import, deferred: streamprune.manifest
    from . import remote_peers

    manifest = jpegdata.make_jpeg_shards(args.data_dir, args.total_mb, samples_per_shard=args.samples_per_shard,
                                       workers=1 if args.quick else 2)
    shards = [manifest.shard_path(k) for k in range(len(manifest.shards))]
    sorted_manifest = make_sorted_copy(manifest, args.data_dir) if "streamprune_sorted" in readers else None
    copies = {}
    for peer, copy, convert, users in (
            ("mosaic", "mds", remote_peers.convert_mds, ("mosaic", *FORMAT_READERS[:2])),
            ("litdata", "litdata", remote_peers.convert_litdata, ("litdata",)),
            ("litdata", LITDATA_ARRAY, remote_peers.convert_litdata_array, FORMAT_READERS[2:])):
        mine = [r for r in users if r in readers]
        if not mine:
            continue
        missing = remote_peers.installed(peer)
        if missing:
            skipped.append({"what": ", ".join(mine), "reason": missing})
            for r in mine:
                readers.remove(r)
            continue
        copies[copy] = convert(shards, args.data_dir)
    return manifest, sorted_manifest, copies


def index_formats(store: NginxStore, endpoint: str, readers: Sequence[str], ratios: Sequence[float], out: str,
                  masks_dir: str) -> tuple[dict, dict, dict, dict[str, int]]:
    """streamprune's indexes of the MDS and LitData copies, made through the store, and their masks.

    Each copy is indexed at its URL (``streamprune index http://.../bench/mds``: its ``index.json``
    and each shard's offset table by ranged reads, each shard's digest read once) into
    ``out/<format>`` (a folder the store serves beside the bucket: the runs read the manifest
    and the index files from the store, as the peers read their ``index.json``).

    Returns:
        Masks, kept counts and kept-bytes fractions keyed ``(ratio, format)`` (as
        :func:`make_masks`), and each format's shard bytes.
    """
    # heavy import, deferred: streamprune's indexing (numpy, the readers' storage)
    from streamprune.indexing import index_foreign

    masks: dict = {}
    kept: dict = {}
    kept_bytes: dict = {}
    shard_bytes: dict[str, int] = {}
    for f in FORMATS:
        if not any(FORMAT_OF[r] is f for r in readers if r in FORMAT_OF):
            continue
        t0 = time.perf_counter()
        manifest = index_foreign(f"{endpoint}/{BUCKET}/{f.folder}", os.path.join(out, f.name), progress=False, workers=4)
        log.warning("indexed the %s copy through the store in %.1f s", f.name, time.perf_counter() - t0)
        m, k, b = make_masks(manifest, [r for r in FORMAT_RATIOS if r in ratios], os.path.join(masks_dir, f.name),
                             levels=("sample",), key_level={"sample": f.name})
        masks |= m | {(0.0, f.name): None}
        kept |= k
        kept_bytes |= b
        shard_bytes[f.name] = sum(entry.bytes for entry in manifest.shards)
    return masks, kept, kept_bytes, shard_bytes


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every configuration; return the results."""
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    git = provenance.git_revision()
    if not echo_module_available():
        raise RuntimeError("the remote suite needs nginx and its echo module (Debian: apt-get install nginx-light "
                           "libnginx-mod-http-echo)")
    latencies = [int(x) for x in args.latencies.split(",")]
    if args.headline_ms not in latencies:
        raise ValueError(f"--headline-ms {args.headline_ms} is not one of --latencies {args.latencies}")
    workers = [int(x) for x in args.workers.split(",")]
    readers = [r for r in READERS if r in args.readers.split(",")]
    skipped: list[dict] = []
    manifest, sorted_manifest, _copies = prepare(args, readers, skipped)
    cache_kw = reader_takes_cache_dir()
    if "streamprune_cache" in readers and not cache_kw:
        skipped.append({"what": "streamprune_cache (epoch 2 with the kept-bytes cache)",
                        "reason": "streamprune's reader has no cache_dir keyword (inspect.signature of PrunedSource and "
                                  "PrunedWebDataset)"})
        readers.remove("streamprune_cache")
    full_bytes = sum(os.path.getsize(manifest.shard_path(k)) for k in range(len(manifest.shards)))
    timeout = args.run_timeout or 60 + full_bytes / 20e6
    plan = configs(latencies, workers, args.headline_ms, readers, args.ratios)
    with tempfile.TemporaryDirectory(prefix="remote-bench-") as tmp:
        masks, kept, kept_bytes = make_masks(manifest, args.ratios, os.path.join(tmp, "masks"))
        masks[(0.0, "sample")] = None  # r = 0: no mask, every sample
        if sorted_manifest is not None:
            more = make_masks(sorted_manifest, args.ratios, os.path.join(tmp, "masks", SORTED), levels=("class",),
                              key_level={"class": SORTED_LEVEL})
            for have, add in zip((masks, kept, kept_bytes), more):
                have.update(add)
            masks[(0.0, SORTED_LEVEL)] = None
            kept[(0.0, SORTED_LEVEL)] = sorted_manifest.num_samples
            kept_bytes[(0.0, SORTED_LEVEL)] = 1.0
        root = os.path.join(tmp, "root")
        os.makedirs(root)
        os.symlink(os.path.abspath(args.data_dir), os.path.join(root, BUCKET))  # http://.../bench/<file>, s3://bench/<file>
        store = NginxStore(root, os.path.join(tmp, "nginx"),
                           {_port_name(lat): (lat / 1e3, args.conn_mbps * 1e6) for lat in latencies})
        # the MDS and LitData copies' indexes name their shards' URLs on the headline port, where their arms run
        more_masks, more_kept, more_bytes, format_bytes = index_formats(
            store, store.url(_port_name(args.headline_ms)), readers, args.ratios, os.path.join(root, SPINDEX),
            os.path.join(tmp, "masks"))
        masks |= more_masks
        kept |= more_kept
        kept_bytes |= more_bytes
        shard_names = [os.path.basename(manifest.shard_path(k)) for k in range(len(manifest.shards))]
        s = Setup(args.data_dir, store, shard_names, masks, kept, cache_kw, timeout)
        predictions, why_no_predictions = [], planner()[1]
        if why_no_predictions is None:
            for arm in plan:
                if arm.latency_ms == args.headline_ms and arm.reader in ("streamprune", "streamprune_sorted"):
                    job = job_for(arm, s)
                    try:
                        p = predicted(job["manifest"], job["mask"], arm.latency_ms / 1e3, bandwidth=args.conn_mbps * 1e6,
                                      workers=arm.workers)
                    except Exception as exc:  # noqa: BLE001 - a predictor that fails is reported, not fatal
                        why_no_predictions = f"predict_epoch failed: {type(exc).__name__}: {exc}"
                        predictions = []
                        break
                    if p is not None:
                        predictions.append({"reader": arm.reader, "ratio": arm.ratio, "level": arm.level,
                                            "workers": arm.workers, **p})
        if why_no_predictions:
            skipped.append({"what": "plan predictions (requests, bytes, time within 20%)", "reason": why_no_predictions})
        env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        saved = {k: os.environ.get(k) for k in env}
        runs: list[dict] = []
        failures: list[dict] = []
        zygote = None
        try:
            os.environ.update(env)  # dummy credentials for the S3 clients; each run sets its own endpoint (build)
            zygote = s.zygote = Zygote()
            rng = random.Random(args.seed)
            for rnd in range(args.rounds):
                order = plan[:]
                rng.shuffle(order)
                t_round = time.perf_counter()
                for i, arm in enumerate(order):
                    rows, error = run_once(arm, s)
                    tag = (f"[{rnd}:{i + 1}/{len(order)}] {arm.reader:18s} r={arm.ratio:g} {arm.level:12s} w={arm.workers} "
                           f"{arm.latency_ms} ms")
                    if error is not None:
                        failures.append(arm._asdict() | {"round": rnd, "error": error})
                        print(f"{tag}: FAILED {error.strip().splitlines()[-1][:200]}", flush=True)
                        continue
                    for row in rows:
                        row["round"] = rnd
                        runs.append(row)
                    print(f"{tag}: " + "; ".join(
                        f"ep{r['epoch']} {r['samples_per_s']:6.0f} samples/s {r['seconds']:6.2f} s {r['requests']:5d} req "
                        f"{r['bytes_sent'] / 1e6:7.1f} MB" for r in rows) + f"; peak {rows[0]['peak_rss_MiB']:.0f} MiB", flush=True)
                print(f"round {rnd + 1}/{args.rounds}: {time.perf_counter() - t_round:.0f} s (load {os.getloadavg()[0]:.1f})",
                      flush=True)
        finally:
            if zygote is not None:
                zygote.stop()
            store.stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    command = provenance.command_line()
    setup = {"store": "nginx", "samples": manifest.num_samples, "shards": len(manifest.shards),
             "samples_per_shard": args.samples_per_shard, "full_bytes": full_bytes, "latencies_ms": latencies,
             "headline_ms": args.headline_ms, "conn_mbps": args.conn_mbps, "workers": workers, "rounds": args.rounds,
             "readers": readers, "ratios": list(args.ratios), "cache_ratios": list(CACHE_RATIOS), "sorted_classes": SORTED_CLASSES,
             "run_timeout_s": timeout, "reader_cache_dir": cache_kw, "predictions": predictions,
             "format_bytes": format_bytes,
             "kept_bytes_fraction": {f"{r:g}/{level}": v for (r, level), v in sorted(kept_bytes.items())}}
    rows = summarize(runs)
    return {
        "suite": "remote", "command": command, "commit": git["commit"], "dirty": git["dirty"],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "setup": setup,
        "machine": provenance.machine_info() | {"packages_remote": provenance.package_versions(
            ["fsspec", "aiohttp", "obstore", "boto3", "mosaicml-streaming", "litdata"]), "nginx": _nginx_version()},
        "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
        "rows": rows, "runs": runs, "failures": failures, "skipped": skipped,
        "targets": evaluate_targets(rows, runs, setup, command), "total_seconds": time.perf_counter() - t_start,
    }


def _nginx_version() -> str | None:
    try:
        out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return out.stderr.strip() or None


def resummarize(results: dict[str, Any]) -> dict[str, Any]:
    """Results of this suite (nginx store) with their rows and targets recomputed from their runs.

    Raises:
        ValueError: Results of the older simulated-store suite (no ``setup.store``).
    """
    if results.get("setup", {}).get("store") != "nginx":
        raise ValueError("not a results file of the nginx-store remote suite (no setup.store); rerun it")
    rows = summarize(results["runs"])
    return {**results, "rows": rows, "targets": evaluate_targets(rows, results["runs"], results["setup"], results["command"])}


class RemoteSuite(Suite):
    """``remote``: pruned epochs from an nginx store on loopback (latency, per-connection bandwidth) vs webdataset, MosaicML, LitData."""

    name, title = "remote", "Remote shards from an nginx store on loopback (time to first byte, per-connection bandwidth)"
    has_plot = True
    measures = ("streamprune/readers/webdataset.py", "streamprune/readers/scheduler.py", "streamprune/readers/planner.py",
                "streamprune/readers/byterange.py", "streamprune/readers/keptcache.py", "streamprune/readers/cachechunk.py",
                "streamprune/rangeclient.py", "streamprune/storage.py")
    add_arguments, configure, measurement = staticmethod(add_arguments), staticmethod(configure), staticmethod(run)
    tables = staticmethod(tables)
    log_level = logging.WARNING

    def output_name(self, args: argparse.Namespace) -> str:
        """``remote_formats_bench`` for a run of only the MDS and LitData arms (``--readers formats``), so that it
        does not replace the whole suite's results; else ``remote_bench``."""
        return "remote_formats_bench" if set(args.readers.split(",")) <= set(FORMATS_GROUP) else self.stem

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        """Rows and targets from the stored runs (:func:`resummarize`)."""
        return resummarize(results)

    def plot(self, results: dict[str, Any], path: str) -> None:
        """Samples/s against latency per reader (:func:`plot`; none without matplotlib)."""
        with contextlib.suppress(ImportError):
            plot(results["rows"], results["setup"]["latencies_ms"], path)


if __name__ == "__main__":  # the zygote's own process (Zygote starts it)
    if len(sys.argv) == 2 and sys.argv[1] == "--zygote":
        _zygote()
