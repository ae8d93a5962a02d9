"""Scale by simulation: how the driver's and a rank's costs grow with N (``python -m benchmarks scale_sim``).

A synthetic dataset per size N (shards of 10^4 samples): index sidecars and key-hash files
written as the index pass writes them, but of samples that have no payload (shard objects are
sparse files of the right size); labels over 1000 classes; scores and features from seeded
generators per shard. Each step runs in a fresh process, which reports its wall time and its
peak RSS (``VmHWM``) and the RSS before the step (after imports):

  manifest  the driver's part of ``index`` / ``shard``: the per-shard summaries (what the
            tasks return) into the manifest, with the duplicate-key check over the key-hash files;
  order     the ``shard`` writer's order (``WriteOrder``, shuffled) with every shard's positions
            computed as its task computes them: per shard, as the library does from 2^28
            samples on (forced at every size here; below 2^28 it holds NumPy's permutation,
            4 bytes a sample, so that shards written before stay the same);
  mask      a random mask written shard by shard (``write_mask_by_shard``, tasks in-process);
  algebra   ``a & b`` of two saved masks, shard by shard (``CombineMasks``);
  keys      a mask from a text key list naming 20% of the samples (``mask_from_keys`` with
            ``out=``: the list streamed into a digest table, each shard matched by a task);
  select    selector ``top`` at r = 0.8 without a global argsort (``top_mask_by_shard``);
  kmeans    2 Lloyd iterations of ``kmeans_by_shard`` (K = 16, D = 8, tasks in-process);
  rank      one rank's epoch start at 64 ranks x 8 workers: manifest + mask load, and the
            plans of its 8 workers;
  worker    one DataLoader worker of that rank: its plan, then its own shards' indexes and
            mask bits, one shard at a time (no payload is read).

Every cost is fitted against N on a log-log scale (least squares); the slope and the
extrapolation to 10^9 and 10^10 come from the fit, the bytes per extra sample from the
largest and smallest sizes. Steps' tasks run in the measured process (``LocalEngine(1)``), so
"driver" memory here includes one task's working set: an upper bound.

Virtual mode (``--virtual``, for N = 1e8 and beyond on one machine): the shard objects are
size-only (the manifest's byte counts; no file), and the index sidecars are not kept: each is
written once to be summarised (its digest is what the manifest records), then removed, and the
steps regenerate a shard's index from the seed where the library would read the sidecar
(:class:`VirtualManifest`). On disk only the key-hash files stay (8 bytes per sample) and the
masks (1 bit); the steps' memory is what it is with sidecars, their time has the regeneration
in place of the sidecar's parse (about the same: both build the same Python lists).

Run:  python -m benchmarks scale_sim                       (N = 1e6, 3e6, 1e7)
      python -m benchmarks scale_sim --sizes 1e6,1e7,1e8   (1e8: ~15 GB of index files, hours on 2 cores)
      python -m benchmarks scale_sim --virtual --sizes 1e6,1e7,1e8 --data-dir DIR   (1e8: ~1 GB on disk)
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np

if __package__:  # run as a script (one step in a fresh process, see _measure), the file needs no suite and has no package
    from .suite import Suite

STEPS = ("manifest", "order", "mask", "algebra", "keys", "select", "kmeans", "rank", "worker")
PER_SHARD = 10_000
CLASSES = 1000
RANKS, WORKERS = 64, 8
DRIVER_STEPS = ("manifest", "order", "mask", "algebra", "keys", "select", "kmeans")
#: Fraction of the samples a key list names in the ``keys`` step (the kept 20% of r = 0.8).
LISTED = 0.2
GB = 1 << 30


# --- the synthetic dataset -------------------------------------------------------------------


def _fake_index(k: int, n: int, seed: int):
    """A shard index of ``n`` payload-less samples (one ``jpg`` member each), and its sparse shard size."""
    from streamprune.shardindex import ShardIndex  # deferred: the suites' registry lists this module without the library

    rng = np.random.default_rng([seed, k])
    sizes = rng.integers(2_000, 200_000, size=n)
    blocks = 1 + (sizes + 511) // 512  # a header block, then the padded data
    end = np.cumsum(blocks) * 512
    start = end - blocks * 512
    members = [[("jpg", int(s) + 512, int(z))] for s, z in zip(start, sizes)]
    keys = [f"s{k:07d}/{i:05d}" for i in range(n)]
    index = ShardIndex(shard=f"shard-{k:07d}.tar", shard_bytes=int(end[-1]) + 1024, keys=keys,
                       labels=rng.integers(0, CLASSES, size=n), start=start, end=end, members=members)
    return index


def _make_shard(state, job):
    """One shard: sparse shard file, index sidecar + companion, key-hash file; returns the summary.

    Virtual: no shard file, and the sidecar and companion removed once summarised (the key-hash file stays).
    """
    from streamprune.indexfile import companion_path, save_index  # deferred: see _fake_index
    from streamprune.shardsummary import summarize_index

    root, k, n, seed, virtual = job
    index = _fake_index(k, n, seed)
    shard = os.path.join(root, index.shard)
    if not virtual:
        with open(shard, "wb") as fh:
            fh.truncate(index.shard_bytes)
    path = shard + ".index.json"
    save_index(index, path)
    summary = summarize_index(index, path, index.shard, index.shard + ".index.json")
    if virtual:
        for name in (path, companion_path(path)):
            if os.path.exists(name):
                os.unlink(name)
    return summary


def _virtual_manifest_class():
    """:class:`VirtualManifest`, defined on first use (the library is imported by the steps only)."""
    from streamprune.manifest import Manifest  # deferred: see _fake_index

    class VirtualManifest(Manifest):
        """A manifest whose shard indexes are regenerated from the seed (virtual mode): no sidecar is read."""

        seed = 0

        def index(self, k: int, cache: bool = True):
            cached = self._indexes.get(k)
            if cached is not None:
                return cached
            index = _fake_index(k, self.shards[k].samples, self.seed)
            if cache:
                self._indexes[k] = index
            return index

    return VirtualManifest


def _virtual_seed(data: str) -> int | None:
    """The generator's seed of a virtual dataset (its ``virtual.json``), ``None`` for one with sidecars."""
    marker = os.path.join(data, "virtual.json")
    if not os.path.exists(marker):
        return None
    with open(marker) as fh:
        return int(json.load(fh)["seed"])


def _load_manifest(data: str):
    """The dataset's manifest: the library's, or in virtual mode one that regenerates its indexes."""
    from streamprune.manifest import Manifest  # deferred: see _fake_index

    seed = _virtual_seed(data)
    if seed is None:
        return Manifest.load(data)
    manifest = _virtual_manifest_class().load(data)
    manifest.seed = seed
    return manifest


def generate(root: str, n: int, seed: int, workers: int, virtual: bool = False) -> str:
    """The dataset of ``n`` samples under ``root`` (reused when complete); returns its directory."""
    from streamprune.engine import LocalEngine  # deferred: see _fake_index

    out = os.path.join(root, f"n{n}" + ("-virtual" if virtual else ""))
    done = os.path.join(out, "summaries.pkl")
    if os.path.exists(done):
        return out
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    if virtual:
        with open(os.path.join(out, "virtual.json"), "w") as fh:
            json.dump({"seed": seed}, fh)
    shards = -(-n // PER_SHARD)
    jobs = [(out, k, min(PER_SHARD, n - k * PER_SHARD), seed, virtual) for k in range(shards)]
    summaries = LocalEngine(workers).map(_make_shard, jobs, desc="generate")
    with open(done + ".tmp", "wb") as fh:
        pickle.dump(summaries, fh)
    os.replace(done + ".tmp", done)
    return out


def key_list(data: str, summaries_or_counts: Any, seed: int) -> str:
    """The ``keys`` step's list (written once, untimed): :data:`LISTED` of each shard's keys, shard order."""
    path = os.path.join(data, "listed.txt")
    if os.path.exists(path):
        return path
    counts = [getattr(s, "samples", s) for s in summaries_or_counts]
    with open(path + ".tmp", "w") as fh:
        for k, n in enumerate(counts):
            chosen = np.flatnonzero(np.random.default_rng([seed, k, 17]).random(int(n)) < LISTED)
            fh.write("".join(f"s{k:07d}/{i:05d}\n" for i in chosen.tolist()))
    os.replace(path + ".tmp", path)
    return path


class RandomKeep:
    """Shard ``k`` keeps each sample with probability ``p`` (seeded per shard): a random mask."""

    def __init__(self, seed: int, p: float) -> None:
        self.seed, self.p = seed, p

    def __call__(self, k: int, index: Any) -> np.ndarray:
        return np.random.default_rng([self.seed, k, 7]).random(len(index)) < self.p


class SeededScores:
    """Shard ``k``'s scores from a seeded generator (rounded, so that ties occur)."""

    def __init__(self, counts: np.ndarray, seed: int) -> None:
        self.counts, self.seed = counts, seed

    def __call__(self, k: int) -> np.ndarray:
        return np.round(np.random.default_rng([self.seed, k, 11]).normal(size=int(self.counts[k])), 3)


class SeededFeatures:
    """Feature shards from a seeded generator (16 blobs in D = 8), never stored: ``shard``, ``take``, ``offsets``."""

    def __init__(self, counts: np.ndarray, seed: int, dim: int = 8) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.num_samples, self.dim, self.seed = int(self.offsets[-1]), dim, seed
        self.means = np.random.default_rng(seed).normal(scale=5.0, size=(16, dim)).astype(np.float32)

    def shard(self, k: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, k, 13])
        n = int(self.offsets[k + 1] - self.offsets[k])
        return self.means[rng.integers(0, 16, size=n)] + rng.normal(size=(n, self.dim)).astype(np.float32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        # heavy import (torch), deferred: the registry imports every suite; the k-means step has it loaded already
        from streamprune.scoring.features import take_rows

        return take_rows(self.shard, self.offsets, rows, self.dim)


# --- one step, in its own process ------------------------------------------------------------


def _rss() -> int:
    """Peak RSS of this process so far, bytes: Linux's ``VmHWM``, else ``ru_maxrss``.

    Not ``ru_maxrss`` where ``VmHWM`` exists: Linux carries a forking parent's peak into the
    child's ``ru_maxrss`` across ``exec``, so a step started by ``python -m benchmarks`` (torch
    imported, ~0.5 GB) would report the runner's peak, not its own; ``VmHWM`` is the new
    process image's.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_step(step: str, data: str) -> dict[str, Any]:
    """Run one step on the dataset in ``data``; return seconds, RSS before and peak."""
    # deferred (see _fake_index); the scoring and readers packages only by the steps that use them (torch)
    from streamprune.engine import LocalEngine
    from streamprune.keys import mask_from_keys
    from streamprune.manifest import manifest_from_summaries
    from streamprune.masks import MaskFile, kept_counts
    from streamprune.shardmask import CombineMasks, write_mask_by_shard  # deferred, as above
    from streamprune.shardsummary import ClassCounts  # deferred, as above
    from streamprune.topk import top_mask_by_shard  # deferred, as above

    if step == "kmeans":
        from streamprune.scoring.kmeans import kmeans_by_shard  # deferred: torch, for this step only
    if step in ("rank", "worker"):
        from streamprune.readers.plan import plan_epoch, within_shard_order  # deferred: the readers package imports torch
    engine = LocalEngine(1)
    out: dict[str, Any] = {}
    if step == "manifest":
        with open(os.path.join(data, "summaries.pkl"), "rb") as fh:
            summaries = pickle.load(fh)
        base = _rss()
        t0 = time.perf_counter()
        chunk = int(os.environ.get("SCALE_SIM_DUP_CHUNK", "0")) or None
        counted = ClassCounts()  # as index_shards does: each summary's label counts folded as it arrives
        for summary in summaries:
            counted.fold(summary)
        seed = _virtual_seed(data)
        # virtual: a hash match is confirmed against the regenerated index, as the sidecar is gone
        index_of = None if seed is None else (lambda k: _fake_index(k, summaries[k].samples, seed))
        manifest_from_summaries(data, summaries, label_ext="cls", index_of=index_of, chunk=chunk, class_counts=counted.total).save()
        seconds = time.perf_counter() - t0
    else:
        manifest = _load_manifest(data) if step not in ("rank", "worker") else None
        base = _rss()
        t0 = time.perf_counter()
        if step == "mask":
            write_mask_by_shard(manifest, RandomKeep(1, 0.5), os.path.join(data, "a.spmask"), {"method": "random"}, engine=engine)
            seconds = time.perf_counter() - t0
            write_mask_by_shard(manifest, RandomKeep(2, 0.7), os.path.join(data, "b.spmask"), {"method": "random"}, engine=engine)
        elif step == "algebra":
            write_mask_by_shard(manifest, CombineMasks([os.path.join(data, "a.spmask"), os.path.join(data, "b.spmask")], "and"),
                                os.path.join(data, "and.spmask"), {"method": "and"}, engine=engine)
            seconds = time.perf_counter() - t0
        elif step == "order":
            from streamprune.writers.order import WriteOrder  # deferred, as above

            n = manifest.num_samples
            order = WriteOrder(n, True, 9, lazy_from=1)
            check = 0
            for a in range(0, n, PER_SHARD):
                check ^= int(np.bitwise_xor.reduce(order.positions(a, min(a + PER_SHARD, n))))
            seconds = time.perf_counter() - t0
            if check != (n - 1, 1, n, 0)[(n - 1) % 4]:  # XOR of 0..n-1 in closed form: every position once (necessary, cheap)
                raise RuntimeError("order step: the positions are not a permutation")
        elif step == "keys":
            mask = mask_from_keys(manifest, os.path.join(data, "listed.txt"), out=os.path.join(data, "keys.spmask"), engine=engine)
            seconds = time.perf_counter() - t0
            p = mask.provenance
            if p["missing"] or p["duplicates"] or mask.kept != p["ids"]:  # every listed key is one sample
                raise RuntimeError(f"keys step: {p['ids']} ids, {p['missing']} missing, {p['duplicates']} repeated, kept {mask.kept}")
            out["kept"] = mask.kept
        elif step == "select":
            counts = np.array([s.samples for s in manifest.shards])
            mask = top_mask_by_shard(manifest, SeededScores(counts, 5), 0.8, os.path.join(data, "top.spmask"), engine=engine)
            seconds = time.perf_counter() - t0
            out["kept"] = mask.kept
        elif step == "kmeans":
            counts = np.array([s.samples for s in manifest.shards])
            result = kmeans_by_shard(SeededFeatures(counts, 3), 16, engine=engine, iters=2, tol=0.0, init_sample=20_000,
                                     assignments_dir=os.path.join(data, "assignments"))
            seconds = (time.perf_counter() - t0) / result.iterations  # the init and final assignment pass included, spread
            out["iterations"] = result.iterations
        elif step in ("rank", "worker"):
            manifest = _load_manifest(data)
            mask = MaskFile(os.path.join(data, "top.spmask"))
            mask.check(manifest)
            counts = kept_counts(manifest, mask)
            workers = range(WORKERS) if step == "rank" else [0]
            plans = [plan_epoch(counts, seed=0, epoch=1, shuffle=True, rank=0, world_size=RANKS, worker=w, num_workers=WORKERS)
                     for w in workers]
            seconds = time.perf_counter() - t0
            if step == "worker":
                read = 0
                for segment in plans[0].segments:  # what the worker holds while reading: one shard's index and bits
                    index = manifest.index(segment.shard, cache=False)
                    keep = mask.shard(segment.shard)
                    order = within_shard_order(np.flatnonzero(keep), 0, 1, segment.shard, True)[segment.begin : segment.end]
                    read += int(index.data_bytes[order].sum() > 0)
                seconds = time.perf_counter() - t0
                out["shards_read"] = read
            out["segments"] = len(plans[0].segments)
        else:
            raise ValueError(f"unknown step {step!r}")
    out.update(seconds=seconds, rss_before=base, rss_peak=_rss())
    return out


# --- the driver of the simulation ------------------------------------------------------------


def _measure(step: str, data: str) -> dict[str, Any]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    # the file as a script, not ``-m benchmarks.scale_sim``: the benchmarks package imports every suite (torch), ~0.5 GB
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), step, data], capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise RuntimeError(f"step {step} on {data} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fit(ns: list[int], ys: list[float]) -> dict[str, float]:
    """Least-squares line through ``(log N, log y)``: slope, and the fitted y at 10^9 and 10^10."""
    x, y = np.log10(np.asarray(ns, dtype=float)), np.log10(np.maximum(np.asarray(ys, dtype=float), 1e-9))
    slope, icept = np.polyfit(x, y, 1) if len(ns) > 1 else (float("nan"), float(y[0]))
    return {"slope": float(slope), "at_1e9": float(10 ** (icept + slope * 9)), "at_1e10": float(10 ** (icept + slope * 10))}


def simulate(sizes: list[int], work: str, seed: int, workers: int, dup_chunk: int = 0, virtual: bool = False,
             steps: tuple[str, ...] = STEPS) -> dict[str, Any]:
    """Generate each size, measure each of ``steps`` (default every step), fit; returns the results.

    ``dup_chunk``: hashes the duplicate-key check sorts at once (0: the library's default),
    smaller than the default so that its memory cap is reached within the measured sizes.
    """
    os.environ["SCALE_SIM_DUP_CHUNK"] = str(dup_chunk)
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in steps}
    loads = []
    for n in sizes:
        t0 = time.perf_counter()
        data = generate(work, n, seed, workers, virtual)
        print(f"scale_sim: N={n:.0e} generated in {time.perf_counter() - t0:.0f} s", flush=True)
        with open(os.path.join(data, "summaries.pkl"), "rb") as fh:
            key_list(data, pickle.load(fh), seed)
        for step in steps:
            loads.append(os.getloadavg()[0])
            r = _measure(step, data)
            r["n"] = n
            rows[step].append(r)
            print(f"  {step:9s} {r['seconds']:8.2f} s  peak {r['rss_peak'] / 2**20:7.0f} MiB (before {r['rss_before'] / 2**20:6.0f})  "
                  f"load {loads[-1]:.1f}", flush=True)
    summary = {}
    for step in steps:
        ns = [r["n"] for r in rows[step]]
        grown = [max(r["rss_peak"] - r["rss_before"], 1 << 20) for r in rows[step]]
        time_fit = fit(ns, [r["seconds"] for r in rows[step]])
        mem_fit = fit(ns, grown)
        lo, hi = rows[step][0], rows[step][-1]
        per_sample = (hi["rss_peak"] - lo["rss_peak"]) / (hi["n"] - lo["n"]) if hi["n"] > lo["n"] else float("nan")
        # peak at 10^9: the largest measured peak plus the fitted growth beyond it (the fixed part is not extrapolated)
        peak_1e9 = hi["rss_peak"] + max(mem_fit["at_1e9"] - grown[-1], 0.0)
        peak_1e9_linear = hi["rss_peak"] + max(per_sample, 0.0) * (10**9 - hi["n"])
        summary[step] = {"time": time_fit, "memory": mem_fit, "bytes_per_extra_sample": per_sample,
                         "peak_at_1e9_fit": peak_1e9, "peak_at_1e9_linear": peak_1e9_linear, "largest_peak": hi["rss_peak"]}
    return {"sizes": sizes, "per_shard": PER_SHARD, "dup_chunk": dup_chunk, "virtual": virtual, "steps": rows, "fits": summary,
            "load": loads}


def _present(res: dict[str, Any], steps: tuple[str, ...]) -> list[str]:
    """Those of ``steps`` the results measured (a ``--steps`` run measures some)."""
    return [s for s in steps if s in res["fits"]]


def verdicts(res: dict[str, Any]) -> list[list[str]]:
    """Each target, what was measured and extrapolated, and the verdict."""
    out = []
    fits = res["fits"]
    for step in _present(res, DRIVER_STEPS):
        f = fits[step]
        peak = max(f["peak_at_1e9_fit"], f["peak_at_1e9_linear"])
        out.append([f"{step}: driver peak at 1e9 <= 4 GB", f"{peak / GB:.2f} GB (largest measured {f['largest_peak'] / GB:.2f} GB)",
                    "met" if peak <= 4 * GB else "**missed**"])
        out.append([f"{step}: bytes per extra sample <= 4", f"{f['bytes_per_extra_sample']:.3f}",
                    "met" if f["bytes_per_extra_sample"] <= 4 else "**missed**"])
    if "rank" in fits:
        rank = fits["rank"]["time"]
        out.append(["rank: epoch start at 1e9 <= 1 s", f"{rank['at_1e9']:.3f} s (slope {rank['slope']:.2f})",
                    "met" if rank["at_1e9"] <= 1 else "**missed**"])
    if "worker" in fits:
        worker = fits["worker"]
        last = res["steps"]["worker"][-1]
        # what the dataset adds to a worker: its peak above the process's start (torch's import, ~0.5 GB, is
        # there in any DataLoader worker, shared with the parent after fork, and does not grow with N)
        grown = max(worker["peak_at_1e9_fit"], worker["peak_at_1e9_linear"]) - last["rss_before"]
        out.append(["worker: memory the dataset adds at 1e9 <= 256 MB",
                    f"{grown / 2**20:.0f} MiB above the worker's start ({last['rss_before'] / 2**20:.0f} MiB with torch imported)",
                    "met" if grown <= 256 * 2**20 else "**missed**"])
    for step in _present(res, STEPS):
        for what in ("time", "memory"):
            s = fits[step][what]["slope"]
            out.append([f"{step}: {what} slope <= 1.05", f"{s:.2f}", "met" if s <= 1.05 else "**missed**"])
    return out


def plot(res: dict[str, Any], path: str) -> None:
    """Log-log: seconds and memory growth of each step against N, with the fitted slopes."""
    import matplotlib  # plotting only; the dev extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the headless backend

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for step in _present(res, STEPS):
        ns = [r["n"] for r in res["steps"][step]]
        a.loglog(ns, [r["seconds"] for r in res["steps"][step]], "o-", label=f"{step} ({res['fits'][step]['time']['slope']:.2f})")
        b.loglog(ns, [max(r["rss_peak"] - r["rss_before"], 1 << 20) / 2**20 for r in res["steps"][step]], "o-",
                 label=f"{step} ({res['fits'][step]['memory']['slope']:.2f})")
    a.set(xlabel="N samples", ylabel="seconds", title="time (fitted slope)")
    b.set(xlabel="N samples", ylabel="MiB above the process's start", title="memory growth (fitted slope)")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tables(res: dict[str, Any]) -> str:
    """The measured rows, the fits and the verdicts, as markdown."""
    from .mdtable import markdown_table  # deferred: keeps the step processes' imports small

    rows = [[s, f"{r['n']:.0e}", f"{r['seconds']:.2f}", f"{r['rss_before'] / 2**20:.0f}", f"{r['rss_peak'] / 2**20:.0f}"]
            for s in _present(res, STEPS) for r in res["steps"][s]]
    fits = [[s, f"{f['time']['slope']:.2f}", f"{f['time']['at_1e9']:.3g}", f"{f['time']['at_1e10']:.3g}", f"{f['memory']['slope']:.2f}",
             f"{f['bytes_per_extra_sample']:.3f}", f"{max(f['peak_at_1e9_fit'], f['peak_at_1e9_linear']) / GB:.2f}"]
            for s, f in res["fits"].items()]
    return "\n\n".join([
        markdown_table(["step", "N", "seconds", "RSS before MiB", "peak RSS MiB"], rows, "llrrr"),
        markdown_table(["step", "time slope", "s at 1e9", "s at 1e10", "memory slope", "B / extra sample", "peak GB at 1e9"], fits, "lrrrrrr"),
        markdown_table(["target", "measured / extrapolated", "verdict"], verdicts(res), "lll"),
    ])


if __name__ == "__main__":
    print(json.dumps(run_step(sys.argv[1], sys.argv[2])))
    sys.exit(0)  # the suite below is not defined in a step's process


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as :class:`~benchmarks.suite.Target` dicts (one measurement per size: point verdicts)."""
    from .suite import Target  # deferred: keeps the step processes' imports small

    fits, out = res["fits"], []
    for step in _present(res, DRIVER_STEPS):
        f = fits[step]
        peak = max(f["peak_at_1e9_fit"], f["peak_at_1e9_linear"])
        out.append(Target.check(f"{step}: driver peak at 1e9 (GB, extrapolated) <= 4", round(peak / GB, 3), 4.0, "<=").to_dict())
        out.append(Target.check(f"{step}: bytes per extra sample <= 4", round(f["bytes_per_extra_sample"], 3), 4.0, "<=").to_dict())
    if "rank" in fits:
        out.append(Target.check("rank: epoch start at 1e9 (s, extrapolated) <= 1", round(fits["rank"]["time"]["at_1e9"], 3), 1.0,
                                "<=").to_dict())
    if "worker" in fits:
        last = res["steps"]["worker"][-1]
        grown = max(fits["worker"]["peak_at_1e9_fit"], fits["worker"]["peak_at_1e9_linear"]) - last["rss_before"]
        out.append(Target.check("worker: memory the dataset adds at 1e9 (MiB, extrapolated) <= 256", round(grown / 2**20, 1), 256.0,
                                "<=").to_dict())
    for step in _present(res, STEPS):
        for what in ("time", "memory"):
            out.append(Target.check(f"{step}: {what} slope <= 1.05", round(fits[step][what]["slope"], 3), 1.05, "<=").to_dict())
    return out


class ScaleSimSuite(Suite):
    """``scale_sim``: how the driver's and a rank's costs grow with N, on synthetic manifests and masks."""

    name, title = "scale_sim", "Scale by simulation: driver and per-rank costs against N (fitted slopes)"
    results_name = "scale_sim"
    has_plot = True
    measures = ("streamprune/shardsummary.py", "streamprune/topk.py", "streamprune/shardmask.py", "streamprune/indexing.py",
                "streamprune/keys.py", "streamprune/keytable.py", "streamprune/writers/order.py",
                "streamprune/masks.py", "streamprune/manifest.py", "streamprune/scoring/kmeans.py", "streamprune/readers")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Sizes, generator processes and the duplicate check's chunk."""
        parser.add_argument("--sizes", default="1e6,3e6,1e7", help="sample counts, comma-separated (default 1e6,3e6,1e7)")
        parser.add_argument("--sim-workers", type=int, default=2, help="processes generating the synthetic shards (default 2)")
        parser.add_argument("--dup-chunk", type=int, default=1 << 20,
                            help="hashes the duplicate-key check sorts at once (default 2^20, below the library's 2^24, so that "
                                 "its cap is reached within N <= 1e7; 0: the library's default)")
        parser.add_argument("--steps", default=",".join(STEPS),
                            help=f"steps to measure, comma-separated (default all: {','.join(STEPS)}); the rank and worker "
                                 "steps read the select step's mask, every step the manifest step's manifest (kept in --data-dir)")
        parser.add_argument("--virtual", action="store_true",
                            help="size-only shards and no index sidecars kept (indexes regenerated from the seed): ~9 bytes "
                                 "per sample on disk, for N = 1e8 (see the module docstring)")

    def measure(self, args: argparse.Namespace) -> dict[str, Any]:
        """Generate each size, measure each step in its own process, fit (:func:`simulate`)."""
        sizes = [int(float(x)) for x in args.sizes.split(",") if x]
        if args.quick:
            sizes = [100_000, 300_000]
        work = args.data_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "scale_sim")
        load_before = os.getloadavg()
        steps = tuple(x.strip() for x in args.steps.split(",") if x.strip())
        unknown = sorted(set(steps) - set(STEPS))
        if unknown:
            raise SystemExit(f"scale_sim: unknown steps {unknown}; the steps are {', '.join(STEPS)}")
        res = simulate(sizes, work, args.seed, args.sim_workers, args.dup_chunk, args.virtual, steps)
        return {"benchmark": "scale_sim", "load_before": load_before, "load_after": os.getloadavg(), **res}

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        """The targets from the stored fits (:func:`targets`)."""
        return {**results, "targets": targets(results)}

    def plot(self, results: dict[str, Any], path: str) -> None:
        """Log-log time and memory growth against N (:func:`plot`)."""
        plot(results, path)

    def tables(self, results: dict[str, Any]) -> str:
        """Rows, fits and verdicts (:func:`tables`)."""
        return tables(results)
