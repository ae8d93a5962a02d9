"""Scoring benchmark: embedding throughput, nearest-centroid / k-means kernels, FM memory, LM cost.

Parts (each can be skipped with --skip a,b,c,d):
  a  embedding throughput: samples/s of ``scoring.features.embed_manifest`` (PrunedWebDataset +
     DataLoader workers + resnet18 penultimate features at input 32, float16 cache written)
     over Fashion-MNIST train (60k) when installed, else scikit-learn digits;
  b  one Lloyd k-means iteration (assignment, then centroid update) at N x D float32 points, K
     centroids (default N=1,000,000, K=1000, D=512), from the same initial centroids in every
     arm: Numba (``kernels.nearest_centroid`` + ``kmeans_accumulate``); NumPy and torch with
     the kernel's formula ``||x||^2 - 2 x c^T + ||c||^2`` (a matrix product per chunk);
     faiss-cpu's ``faiss.Kmeans`` (``niter=1``, ``init_centroids``, every point; what
     SemDeDup's reference code uses), when installed; and, assignment only, timed on a slice
     and extrapolated linearly to N (stated in the JSON), NumPy's difference tensor
     ``((x[:,None]-c[None])**2).sum(-1).argmin`` (a different algorithm: the first version's
     baseline) and ``torch.cdist(...).argmin``. Every arm runs once per repeat, in an order
     rotated per repeat; ratios to Numba are paired within a repeat and reported as median
     [min-max]; the inertia after the iteration is computed for every arm by one function;
  c  FM peak RSS: N x D float16 features as per-shard .npy memmaps (random), then in a fresh
     subprocess the chunked k-means (k-means++ on a subsample, --fm-iters Lloyd iterations)
     and the final assignment; peak RSS = the child's VmHWM from /proc/self/status (ru_maxrss
     would include the forked parent's resident set, which Linux carries across exec);
  d  LM scoring time vs one pretraining epoch on the same source (Fashion-MNIST train, 60k):
     the surrogate's epoch time is measured over --train-steps steps and extrapolated to an
     epoch (stated); LM scoring = inference over the 3,000-image footwear target. The
     surrogate's training time (those measured steps train the checkpoint LM scores with) is
     reported beside the scoring time, and their total: LM cannot score without it.

Targets: Numba nearest-centroid >= 5x faster than NumPy (the same formula; and, as first stated,
the difference tensor) and no slower than torch on CPU, each judged on the min-max of the
paired ratio (inconclusive when it straddles the threshold); FM peak RSS < 2 GB for 1M x 512.

Run:  python -m benchmarks score                 (1M x 512, K=1000, 5 repeats; ~20 min on 2 cores)
      python -m benchmarks score --skip a,c,d --merge --n 500000   (part b alone, keep the rest)
      python -m benchmarks score --quick         (small sizes, a smoke test)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamprune.atomic import atomic_write_json
from streamprune.manifest import Manifest, ShardEntry
from streamprune.sources import FASHION_MNIST_DIR
from streamprune.writers import write_shards

from . import mdtable, provenance, stats
from .suite import Suite, Target

log = logging.getLogger("score_bench")


def spread(times: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the runs of a list of times."""
    return {"median": stats.median(times), "min": min(times), "max": max(times), "runs": [round(t, 4) for t in times]}


# ------------------------------------------------------------------------------------------ b

#: Rows per chunk of the NumPy and torch matrix-product assignments (the Numba kernel uses its own blocks).
CHUNK_ROWS = 65536


def numpy_broadcast_nearest(x: np.ndarray, c: np.ndarray, chunk: int = 64) -> np.ndarray:
    """NumPy assignment through the full difference tensor: ``((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)``.

    A different algorithm from the kernel's (N x K x D subtractions, no matrix product); kept
    as what the first version of this benchmark compared against.
    """
    out = np.empty(len(x), dtype=np.int64)
    for lo in range(0, len(x), chunk):
        out[lo : lo + chunk] = ((x[lo : lo + chunk, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    return out


def numpy_mm_nearest(x: np.ndarray, c: np.ndarray, chunk: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """NumPy assignment with the kernel's formula ``||x||^2 - 2 x c^T + ||c||^2`` (a BLAS matrix product per chunk).

    Args:
        x: ``float32[N, D]`` points.
        c: ``float32[K, D]`` centroids.
        chunk: Rows per matrix product.

    Returns:
        ``(int64[N] nearest index, float32[N] squared distance)``, like ``kernels.nearest_centroid``.
    """
    c = np.ascontiguousarray(c, dtype=np.float32)
    c_sq = (c.astype(np.float64) ** 2).sum(1).astype(np.float32)
    idx = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=np.float32)
    for lo in range(0, len(x), chunk):
        xb = x[lo : lo + chunk]
        dots = xb @ c.T
        dots *= -2.0
        dots += c_sq
        best = dots.argmin(1)
        idx[lo : lo + len(xb)] = best
        dist[lo : lo + len(xb)] = np.maximum(dots[np.arange(len(xb)), best] + np.einsum("ij,ij->i", xb, xb), 0.0)
    return idx, dist


def numpy_accumulate(x: np.ndarray, idx: np.ndarray, k: int, chunk: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster float64 sums and counts in NumPy: per chunk, sort by cluster and ``np.add.reduceat``.

    (``np.add.at`` would be the one-liner; it is several times slower at this size.)
    """
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    for lo in range(0, len(x), chunk):
        ib = idx[lo : lo + chunk]
        order = np.argsort(ib, kind="stable")
        sorted_ids = ib[order]
        present = np.flatnonzero(np.bincount(sorted_ids, minlength=k))
        starts = np.searchsorted(sorted_ids, present)
        sums[present] += np.add.reduceat(x[lo : lo + chunk][order], starts, axis=0)
    return sums, np.bincount(idx, minlength=k)


def lloyd_update(sums: np.ndarray, counts: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """New centroids ``sums / counts``; an empty cluster keeps its previous centroid."""
    out = previous.astype(np.float32, copy=True)
    full = counts > 0
    out[full] = (sums[full] / counts[full, None]).astype(np.float32)
    return out


#: faiss-cpu's SIMD levels, best first, with the /proc/cpuinfo flags each needs (faiss.loader's rule).
FAISS_LEVELS = (("avx512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")), ("avx2", ("avx2", "fma", "f16c", "popcnt")))


def cpu_faiss_level(flags: set[str]) -> str:
    """The best faiss SIMD level the CPU supports: ``avx512``, ``avx2`` or ``generic``."""
    for level, needs in FAISS_LEVELS:
        if all(f in flags for f in needs):
            return level
    return "generic"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:  # not Linux: let faiss.loader decide alone
        pass
    return set()


def load_faiss() -> tuple[Any, dict[str, Any]]:
    """Import faiss-cpu with the build that matches this CPU, and say which one runs.

    faiss-cpu wheels up to 1.14 ship separate ``swigfaiss``, ``swigfaiss_avx2`` and
    ``swigfaiss_avx512`` modules and ``faiss.loader`` picks one (``FAISS_OPT_LEVEL`` overrides
    it); from 1.15 one module carries every level and dispatches at run time (compile options
    ``DD``, ``faiss.SIMDConfig``): the loader then logs that the AVX2 module is missing although
    the AVX2 kernels run. This sets ``FAISS_OPT_LEVEL`` to the CPU's best level when unset,
    selects that level in a dynamic-dispatch build, and records the outcome.

    Returns:
        ``(faiss module or None, build record)``; the record has ``cpu_level``, ``loaded_module``,
        ``compile_options``, ``dynamic_dispatch``, ``active_level`` and ``matches_cpu``.
    """
    cpu_level = cpu_faiss_level(_cpu_flags())
    os.environ.setdefault("FAISS_OPT_LEVEL", cpu_level)
    messages: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    loader_log = logging.getLogger("faiss.loader")
    handler, old_level = _Keep(), loader_log.level
    loader_log.addHandler(handler)
    loader_log.setLevel(logging.DEBUG)
    try:  # optional extra: the faiss arm runs only when faiss-cpu is installed
        import faiss
    except ImportError:
        return None, {"skipped": "faiss not installed (pip install faiss-cpu)", "cpu_level": cpu_level}
    finally:
        loader_log.removeHandler(handler)
        loader_log.setLevel(old_level)
    loaded = [m for m in ("faiss.swigfaiss_avx512_spr", "faiss.swigfaiss_avx512", "faiss.swigfaiss_avx2", "faiss.swigfaiss") if m in sys.modules]
    record: dict[str, Any] = {"version": faiss.__version__, "cpu_level": cpu_level, "FAISS_OPT_LEVEL": os.environ["FAISS_OPT_LEVEL"],
                              "loaded_module": loaded[0] if loaded else None, "compile_options": faiss.get_compile_options().strip(),
                              "loader_log": messages}
    config = getattr(faiss, "SIMDConfig", None)
    if config is not None and config.has_dynamic_dispatch():
        record["dynamic_dispatch"] = True
        best = config.auto_detect_simd_level()
        if config.get_level() != best:
            config.set_level(best)
        record["active_level"] = str(config.get_level_name()).lower()
    else:
        record["dynamic_dispatch"] = False
        module = record["loaded_module"] or ""
        record["active_level"] = "avx512" if "avx512" in module else ("avx2" if "avx2" in module else "generic")
    record["matches_cpu"] = record["active_level"].startswith(cpu_level)
    if not record["matches_cpu"]:
        log.warning("faiss runs its %s kernels on a CPU that supports %s: its times understate faiss", record["active_level"], cpu_level)
    return faiss, record



def bench_kernels(n: int, k: int, d: int, repeats: int, numpy_rows: int, cdist_rows: int,
                  only: Sequence[str] | None = None) -> dict[str, Any]:
    """Part b: one Lloyd iteration (assignment, then update) per arm, all arms interleaved in each repeat.

    Arms (same data, same initial centroids): Numba (``kernels.nearest_centroid`` +
    ``kmeans_accumulate``), NumPy with the kernel's formula, torch with the same formula
    (``addmm``), faiss-cpu's ``faiss.Kmeans`` (``niter=1``, the same initial centroids, every
    point used), and two assignment-only arms timed on a slice and extrapolated linearly to N:
    the NumPy difference-tensor broadcast and ``torch.cdist``. In every repeat each arm runs once,
    in an order rotated by one per repeat; ratios are paired within a repeat. The assignment
    and update steps are timed inside the same iteration, so an iteration can never look faster
    than its own assignment. Inertia (sum of squared distances to the nearest centroid) of each
    arm's updated centroids is computed afterwards, untimed, by the same function for every arm.

    Args:
        n: Points.
        k: Centroids.
        d: Dimensions.
        repeats: Interleaved repeats.
        numpy_rows: Rows the NumPy broadcast arm is timed on.
        cdist_rows: Rows the ``torch.cdist`` arm is timed on.
        only: Arms to run (``numba`` always runs: every ratio is paired with it); default all.

    Returns:
        The ``kernels`` part of the results.
    """
    # heavy imports, loaded only when part b runs (the registry imports every suite)
    import numba
    import torch

    from streamprune.kernels import kmeans_accumulate, nearest_centroid

    faiss, faiss_build = load_faiss()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    c = x[rng.choice(n, k, replace=False)].copy()
    threads = numba.get_num_threads()
    nearest_centroid(x[:4096], c)  # compile / warm
    xt, ct = torch.from_numpy(x), torch.from_numpy(c)
    ct_sq = (ct.double() ** 2).sum(1).float()
    np_rows, cd_rows = min(n, numpy_rows), min(n, cdist_rows)

    def numba_arm() -> dict[str, Any]:
        t0 = time.perf_counter()
        idx, dist = nearest_centroid(x, c)
        t1 = time.perf_counter()
        sums, counts = np.zeros((k, d)), np.zeros(k, dtype=np.int64)
        kmeans_accumulate(x, idx, sums, counts)
        cent = lloyd_update(sums, counts, c)
        return {"assign_s": t1 - t0, "update_s": time.perf_counter() - t1, "centroids": cent, "idx": idx, "dist": dist}

    def numpy_arm() -> dict[str, Any]:
        t0 = time.perf_counter()
        idx, _ = numpy_mm_nearest(x, c)
        t1 = time.perf_counter()
        sums, counts = numpy_accumulate(x, idx, k)
        cent = lloyd_update(sums, counts, c)
        return {"assign_s": t1 - t0, "update_s": time.perf_counter() - t1, "centroids": cent, "idx": idx}

    def torch_arm() -> dict[str, Any]:
        t0 = time.perf_counter()
        idx = torch.empty(n, dtype=torch.int64)
        for lo in range(0, n, CHUNK_ROWS):
            idx[lo : lo + CHUNK_ROWS] = torch.addmm(ct_sq, xt[lo : lo + CHUNK_ROWS], ct.T, alpha=-2.0).argmin(1)
        t1 = time.perf_counter()
        sums = torch.zeros(k, d, dtype=torch.float64)
        for lo in range(0, n, CHUNK_ROWS):  # chunked: a float64 copy of all N rows would cost 4 GB at 1M x 512
            sums.index_add_(0, idx[lo : lo + CHUNK_ROWS], xt[lo : lo + CHUNK_ROWS].double())
        counts = torch.bincount(idx, minlength=k)
        cent = lloyd_update(sums.numpy(), counts.numpy(), c)
        return {"assign_s": t1 - t0, "update_s": time.perf_counter() - t1, "centroids": cent, "idx": idx.numpy()}

    def faiss_arm() -> dict[str, Any]:
        km = faiss.Kmeans(d, k, niter=1, seed=0, verbose=False, max_points_per_centroid=-(-n // k))
        km.train(x, init_centroids=c)
        return {"centroids": np.asarray(km.centroids, dtype=np.float32).copy(), "objective": [float(o) for o in km.obj]}

    def broadcast_arm() -> dict[str, Any]:
        return {"idx": numpy_broadcast_nearest(x[:np_rows], c)}

    def cdist_arm() -> dict[str, Any]:
        for lo in range(0, cd_rows, CHUNK_ROWS):
            torch.cdist(xt[lo : min(cd_rows, lo + CHUNK_ROWS)], ct).argmin(1)
        return {}

    arms: dict[str, Any] = {"numba": numba_arm, "numpy_mm": numpy_arm, "torch_mm": torch_arm}
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
        arms["faiss"] = faiss_arm
    arms.update(numpy_broadcast=broadcast_arm, torch_cdist=cdist_arm)
    if only:
        arms = {name: fn for name, fn in arms.items() if name == "numba" or name in only}
    scale = {"numpy_broadcast": n / np_rows, "torch_cdist": n / cd_rows}  # slice arms, extrapolated linearly to N
    names = list(arms)
    times: dict[str, dict[str, list[float]]] = {a: {"total": [], "assign": [], "update": []} for a in names}
    last: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for rep in range(repeats):
            for name in names[rep % len(names):] + names[: rep % len(names)]:  # rotated: no arm always runs first
                t0 = time.perf_counter()
                out = arms[name]()
                total = (time.perf_counter() - t0) * scale.get(name, 1.0)
                times[name]["total"].append(total)
                if "assign_s" in out or name in scale:  # faiss times its iteration as a whole
                    times[name]["assign"].append(out.get("assign_s", total))
                if "update_s" in out:
                    times[name]["update"].append(out["update_s"])
                last[name] = out
                log.info("b: repeat %d %s %.2f s", rep, name, total)

    def inertia(centroids: np.ndarray) -> float:
        return float(nearest_centroid(x, centroids)[1].sum(dtype=np.float64))

    idx_nb = last["numba"]["idx"]
    described = {
        "numba": "kernels.nearest_centroid (||x||^2 - 2 x c^T + ||c||^2 in row blocks, Numba prange) + kmeans_accumulate",
        "numpy_mm": f"NumPy, the same formula: x @ c.T per {CHUNK_ROWS:,}-row chunk (BLAS) + argmin; update by sort + np.add.reduceat",
        "torch_mm": f"torch, the same formula: addmm(||c||^2, x, c^T, alpha=-2).argmin per {CHUNK_ROWS:,}-row chunk; update by index_add_ (float64)",
        "faiss": "faiss.Kmeans(niter=1, max_points_per_centroid=ceil(N/K): every point) .train(x, init_centroids=the same c)",
        "numpy_broadcast": f"NumPy difference tensor ((x[:,None]-c[None])**2).sum(-1).argmin, 64-row chunks: a different algorithm; "
                           f"assignment only, timed on {np_rows:,} rows, extrapolated to N",
        "torch_cdist": f"torch.cdist(x, c).argmin per chunk; assignment only, timed on {cd_rows:,} rows, extrapolated to N",
    }
    out: dict[str, Any] = {
        "N": n, "K": k, "D": d, "repeats": repeats, "chunk_rows": CHUNK_ROWS,
        "threads": {"torch": torch.get_num_threads(), "numba": threads, "faiss": threads if faiss is not None else None},
        "timing": ("one Lloyd iteration per arm; every arm once per repeat, order rotated per repeat; assignment and update timed "
                   "inside the same iteration; ratios paired within a repeat; intervals = min-max over the repeats"),
        "interval": f"min-max over {repeats} paired repeats: covers the median with probability 1 - 2^(1-n) = {1 - 2.0 ** (1 - repeats):.3f}",
        "arms": {},
    }
    for name in names:
        t = times[name]
        entry: dict[str, Any] = {"what": described[name]}
        if t["assign"]:
            entry["assign_s"] = spread(t["assign"])
        if t["update"]:
            entry["update_s"] = spread(t["update"])
        if name in scale:
            entry["extrapolated_from_rows"] = np_rows if name == "numpy_broadcast" else cd_rows
        else:
            entry["iteration_s"] = spread(t["total"])
            entry["inertia"] = inertia(last[name]["centroids"])
        if "idx" in last[name] and name != "numba":
            entry["agreement_with_numba"] = float((last[name]["idx"] == idx_nb[: len(last[name]["idx"])]).mean())
        if "objective" in last[name]:
            entry["faiss_objective_at_init"] = last[name]["objective"][0]
        out["arms"][name] = entry
    out["inertia_at_init"] = float(last["numba"]["dist"].sum(dtype=np.float64))
    nb = out["arms"]["numba"]
    for name, entry in out["arms"].items():
        if name != "numba":
            if times[name]["assign"]:
                entry["assign_vs_numba"] = stats.paired_ratio(times[name]["assign"], times["numba"]["assign"]).to_dict()
            if "iteration_s" in entry:
                entry["iteration_vs_numba"] = stats.paired_ratio(times[name]["total"], times["numba"]["total"]).to_dict()
                entry["inertia_vs_numba"] = entry["inertia"] / nb["inertia"]
    if faiss is not None:
        out["faiss"] = {"version": faiss.__version__, "init": "the same initial centroids as every other arm (init_centroids)",
                        "note": "faiss splits empty clusters after the update; the other arms keep an empty cluster's centroid",
                        "build": faiss_build}
    else:
        out["faiss"] = faiss_build
    return out


# ------------------------------------------------------------------------------------------ c

_RSS_CHILD = r"""
import json, resource, sys, time
import numpy as np
from streamprune.manifest import Manifest, ShardEntry
from streamprune.scoring.features import FeatureStore
from streamprune.scoring.fm import kmeans
def status(field):
    # VmHWM/VmRSS of this process image: unlike ru_maxrss, VmHWM starts afresh at exec, so the
    # forked parent's resident set (large after part b) is not counted.
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
cfg = json.loads(sys.argv[1])
shards = [ShardEntry(name=f"s{k:05d}.tar", index=f"s{k:05d}.idx", samples=n, bytes=0, sha256="", index_sha256="bench")
          for k, n in enumerate(cfg["shard_rows"])]
m = Manifest(root=cfg["dir"], shards=shards, classes=[], label_ext=None)
rss0 = status("VmRSS")
t0 = time.perf_counter()
store = FeatureStore(cfg["dir"], m, {"bench": 1})
km = kmeans(store, cfg["k"], iters=cfg["iters"], tol=0.0, chunk_rows=cfg["chunk_rows"], init_sample=cfg["init_sample"], seed=0)
secs = time.perf_counter() - t0
print(json.dumps({"peak_rss_bytes": status("VmHWM"), "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "rss_after_imports_bytes": rss0, "seconds": secs, "iterations": km.iterations,
                  "inertia": km.inertia, "max_chunk_rows": store.max_chunk_rows, "chunks_read": store.chunks_read,
                  "nonempty_clusters": int((km.counts > 0).sum())}))
"""


def feature_sidecar(manifest: Manifest, k: int, identity: dict[str, Any], dim: int) -> dict[str, Any]:
    """The sidecar of shard ``k``'s feature array (FORMATS.md, per-shard feature cache).

    Written here from the documented fields; ``bench_fm_rss`` checks it with the library's
    ``shard_is_complete``, so a change of the format fails loudly instead of recomputing.
    """
    # heavy import (torch, numba), loaded only when part c runs
    from streamprune.scoring.features import FEATURES_FORMAT, FEATURES_VERSION

    entry = manifest.shards[k]
    return {"format": FEATURES_FORMAT, "version": FEATURES_VERSION, "shard": entry.name, "samples": int(entry.samples),
            "index_sha256": entry.index_sha256, "identity": json.loads(json.dumps(identity)), "dim": dim}


def bench_fm_rss(n: int, k: int, d: int, iters: int, shard_rows: int, chunk_rows: int, init_sample: int, work: str) -> dict:
    """Part c: peak RSS of FM's chunked k-means over ``n x d`` float16 features on disk, in a fresh subprocess."""
    # heavy import (torch, numba), loaded only when part c runs
    from streamprune.scoring.features import feature_paths, shard_is_complete

    fdir = os.path.join(work, f"fm_rss_{n}x{d}")
    os.makedirs(fdir, exist_ok=True)
    rows = [min(shard_rows, n - lo) for lo in range(0, n, shard_rows)]
    shards = [ShardEntry(name=f"s{j:05d}.tar", index=f"s{j:05d}.idx", samples=r, bytes=0, sha256="", index_sha256="bench") for j, r in enumerate(rows)]
    m = Manifest(root=fdir, shards=shards, classes=[], label_ext=None)
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((k, d)).astype(np.float32) * 2
    for j, r in enumerate(rows):
        array, sidecar = feature_paths(fdir, m, j)
        if os.path.exists(sidecar):
            continue
        arr = np.lib.format.open_memmap(array, mode="w+", dtype=np.float16, shape=(r, d))
        arr[:] = (centers[rng.integers(0, k, r)] + rng.standard_normal((r, d), dtype=np.float32)).astype(np.float16)
        arr.flush()
        del arr
        atomic_write_json(sidecar, feature_sidecar(m, j, {"bench": 1}, d))
        if not shard_is_complete(fdir, m, j, {"bench": 1}):
            raise RuntimeError(f"{sidecar}: the library does not accept this feature sidecar (has the format changed?)")
    gen_s = time.perf_counter() - t0
    cfg = {"dir": fdir, "shard_rows": rows, "k": k, "iters": iters, "chunk_rows": chunk_rows, "init_sample": init_sample}
    proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, json.dumps(cfg)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"FM RSS child failed: {proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(N=n, K=k, D=d, lloyd_iterations=iters, shard_rows=shard_rows, chunk_rows=chunk_rows, init_sample=init_sample,
               features_on_disk_bytes=n * d * 2, generate_seconds=round(gen_s, 1),
               note="fresh subprocess: FeatureStore + kmeans (k-means++ on init_sample rows, Lloyd iterations, final assignment); "
               "peak = VmHWM of the child (includes torch/numba imports); ru_maxrss is also given but on Linux it carries over the forked parent's resident set across exec")
    res["peak_rss_GiB"] = res["peak_rss_bytes"] / 2**30
    res["targets"] = {"peak_rss_lt_2GB": bool(res["peak_rss_bytes"] < 2e9)}
    return res


# ------------------------------------------------------------------------------------------ a, d


def _fashion_shards(work: str) -> tuple[Manifest, Manifest]:
    # heavy import (torch, numba, webdataset), loaded only when part a or d runs
    from streamprune.demo import footwear_target

    src_dir = os.path.join(work, "fashion_train")
    tgt_dir = os.path.join(work, "fashion_footwear")
    if os.path.exists(os.path.join(src_dir, "manifest.json")):
        source = Manifest.load(src_dir)
    else:
        source = write_shards(FASHION_MNIST_DIR, src_dir, samples_per_shard=5000, workers=2, progress=False, overwrite=True)
    target = Manifest.load(tgt_dir) if os.path.exists(os.path.join(tgt_dir, "manifest.json")) else footwear_target(FASHION_MNIST_DIR, tgt_dir, progress=False)
    return source, target


def _digits_shards(work: str) -> tuple[Manifest, None]:
    # optional extra: scikit-learn's digits stand in when Fashion-MNIST is not installed
    from sklearn.datasets import load_digits

    src_dir = os.path.join(work, "digits")
    if os.path.exists(os.path.join(src_dir, "manifest.json")):
        return Manifest.load(src_dir), None
    d = load_digits()
    path = os.path.join(work, "digits.npz")
    np.savez(path, images=(d.images * 16).clip(0, 255).astype(np.uint8), labels=d.target)
    return write_shards(path, src_dir, samples_per_shard=500, progress=False, overwrite=True), None


def bench_embed(source: Manifest, workers: int, batch_size: int, work: str, dataset: str) -> dict:
    """Part a: samples/s of ``embed_manifest`` with an untrained resnet18 at input 32."""
    # heavy imports (torch, numba, webdataset), loaded only when part a runs
    import torch

    from streamprune.models import build_surrogate, features
    from streamprune.scoring.features import embed_manifest

    torch.manual_seed(0)
    model = build_surrogate("resnet18", source.num_classes).eval()
    cache = tempfile.mkdtemp(prefix="embed_", dir=work)
    t0 = time.perf_counter()
    embed_manifest(source, cache, lambda x: features(model, x), {"bench": time.time()}, input_size=32, batch_size=batch_size, workers=workers, progress=False)
    secs = time.perf_counter() - t0
    shutil.rmtree(cache, ignore_errors=True)
    return {"dataset": dataset, "samples": source.num_samples, "seconds": secs, "samples_per_s": source.num_samples / secs,
            "surrogate": "resnet18 (untrained, weights=None)", "input_size": 32, "workers": workers, "batch_size": batch_size,
            "torch_threads": torch.get_num_threads(), "includes": "decode + transform in workers, forward, float16 cache write"}


def lm_cost(d: dict[str, Any]) -> dict[str, Any]:
    """LM's whole cost against one pretraining epoch, from part d's stored fields.

    LM needs a trained surrogate before it can score: its training time
    (``train_seconds_measured``, the steps that trained the checkpoint LM scored with) counts
    beside the scoring time (``lm_score_source_seconds``).

    Args:
        d: Part d's results (``lm_vs_epoch``).

    Returns:
        ``surrogate_train_seconds``, ``surrogate_train_steps``, ``lm_score_seconds``,
        ``lm_total_seconds``, ``epoch_seconds_extrapolated``, ``score_fraction_of_epoch`` and
        ``total_fraction_of_epoch``; ``{}`` when part d did not run.
    """
    if "epoch_seconds_extrapolated" not in d:
        return {}
    train_s, score_s, epoch_s = d["train_seconds_measured"], d["lm_score_source_seconds"], d["epoch_seconds_extrapolated"]
    return {"surrogate_train_seconds": train_s, "surrogate_train_steps": d["train_steps_measured"], "lm_score_seconds": score_s,
            "lm_total_seconds": train_s + score_s, "epoch_seconds_extrapolated": epoch_s,
            "score_fraction_of_epoch": score_s / epoch_s, "total_fraction_of_epoch": (train_s + score_s) / epoch_s}


def bench_lm_vs_epoch(source: Manifest, target: Manifest, train_steps: int, work: str) -> dict:
    """Part d: surrogate training (which also times the epoch) and LM scoring over the target."""
    # heavy imports (torch, numba, webdataset), loaded only when part d runs
    from streamprune.scoring import score_source
    from streamprune.train import train_surrogate

    ck = os.path.join(work, "bench_surrogate.pt")
    tr = train_surrogate(source, "resnet18", ck, max_steps=train_steps, batch_size=128, input_size=32, workers=1, progress=False)
    steps_per_epoch = math.ceil(source.num_samples / 128)
    epoch_s = tr["seconds"] / tr["steps"] * steps_per_epoch
    t0 = time.perf_counter()
    r = score_source(source, "lm", [0.7], tempfile.mkdtemp(prefix="lm_", dir=work), target=target, surrogate="resnet18", checkpoint=ck, workers=1, progress=False)
    lm_s = time.perf_counter() - t0
    out = {"train_steps_measured": tr["steps"], "train_seconds_measured": tr["seconds"], "steps_per_epoch": steps_per_epoch,
           "epoch_seconds_extrapolated": epoch_s, "batch_size": 128,
           "lm_score_source_seconds": lm_s, "lm_method_seconds": r["seconds"]["score"], "target_samples": target.num_samples,
           "fraction_of_epoch": lm_s / epoch_s,
           "note": (f"epoch time extrapolated from {tr['steps']} measured steps (incl. the loader's start-up) to {steps_per_epoch} steps; "
                    "LM = inference over the target + masks, with the surrogate trained by those measured steps")}
    return {**out, **lm_cost(out)}


# ------------------------------------------------------------------------------------------ plot


#: Part b's arms as shown, in table order.
ARM_LABELS = {"numba": "Numba", "numpy_mm": "NumPy, same formula", "torch_mm": "torch, same formula", "faiss": "faiss.Kmeans",
              "numpy_broadcast": "NumPy difference tensor (other algorithm; slice, extrap.)", "torch_cdist": "torch.cdist (slice, extrap.)"}
#: Part b's arms as labelled on the plot.
SHORT_LABELS = {"numba": "Numba", "numpy_mm": "NumPy\nsame formula", "torch_mm": "torch\nsame formula", "faiss": "faiss",
                "numpy_broadcast": "NumPy diff.\ntensor (extrap.)", "torch_cdist": "torch.cdist\n(extrap.)"}
#: Which results key each part writes, by its --skip letter.
PARTS = {"a": "embed", "b": "kernels", "c": "fm_rss", "d": "lm_vs_epoch"}


def plot(res: dict[str, Any], path: str) -> None:
    """Three panels: part b's assignment and iteration times per arm, part c's peak RSS, part d's costs."""
    # heavy import, loaded only to draw (the registry imports every suite)
    import matplotlib

    matplotlib.use("Agg")
    # after matplotlib.use: the backend must be chosen before pyplot loads
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    b = res.get("kernels") or {}
    arms = b.get("arms") or {}
    if arms:
        names = [a for a in ARM_LABELS if a in arms]
        xs = np.arange(len(names))
        for off, key, label in ((-0.2, "assign_s", "assignment"), (0.2, "iteration_s", "one k-means iteration")):
            vals = [arms[a].get(key, {}).get("median", np.nan) for a in names]
            err = [[v - arms[a].get(key, {}).get("min", v) for a, v in zip(names, vals)],
                   [arms[a].get(key, {}).get("max", v) - v for a, v in zip(names, vals)]]
            axes[0].bar(xs + off, vals, 0.4, yerr=err, capsize=3, label=label)
        axes[0].set_yscale("log")
        axes[0].set_xticks(xs)
        axes[0].set_xticklabels([SHORT_LABELS[a] for a in names], fontsize=8)
        axes[0].set_ylabel("seconds (log), median, bars min-max")
        axes[0].legend()
        axes[0].set_title(f"N={b['N']:,} K={b['K']} D={b['D']}, {b['repeats']} interleaved repeats")
    c = res.get("fm_rss")
    if c:
        axes[1].bar(["FM k-means peak RSS"], [c["peak_rss_bytes"] / 1e9], color="tab:green")
        axes[1].axhline(2.0, color="red", ls="--", label="target 2 GB")
        axes[1].axhline(c["features_on_disk_bytes"] / 1e9, color="gray", ls=":", label="features on disk")
        axes[1].set_ylabel("GB")
        axes[1].legend()
        axes[1].set_title(f"{c['N']:,} x {c['D']} float16, K={c['K']}")
    a, lm = res.get("embed"), lm_cost(res.get("lm_vs_epoch") or {})
    labels, vals = [], []
    if lm:
        labels += ["pretrain epoch\n(extrap.)", f"surrogate training\n({lm['surrogate_train_steps']} steps)", "LM scoring", "LM total"]
        vals += [lm["epoch_seconds_extrapolated"], lm["surrogate_train_seconds"], lm["lm_score_seconds"], lm["lm_total_seconds"]]
    if a:
        labels += [f"embed {a['samples']:,}\n({a['samples_per_s']:.0f}/s)"]
        vals += [a["seconds"]]
    if labels:
        axes[2].bar(labels, vals, color="tab:orange")
        axes[2].set_ylabel("seconds")
        axes[2].tick_params(axis="x", labelsize=8)
        axes[2].set_title("scoring cost vs one epoch" + (f" (LM total = {lm['total_fraction_of_epoch']:.1%})" if lm else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plain_command(command: str | None) -> str | None:
    """``command`` with an absolute interpreter path shown as ``python`` (results must not record local paths)."""
    if not command:
        return command
    head, _, rest = command.partition(" ")
    if os.path.isabs(head) and os.path.basename(head).startswith("python"):
        return f"python {rest}".rstrip()
    return command


def merged_parts(earlier: dict[str, Any]) -> dict[str, Any]:
    """The parts of an earlier results file, each with ``measured_by``: the command that measured it.

    A part the earlier run skipped (``--skip`` in its command) was itself carried over from the
    run before it (``earlier_command``).
    """
    command = plain_command(earlier.get("command")) or ""
    words = command.split()
    skipped = set()
    for i, word in enumerate(words):
        if word == "--skip" and i + 1 < len(words):
            skipped |= set(words[i + 1].split(","))
        elif word.startswith("--skip="):
            skipped |= set(word.split("=", 1)[1].split(","))
    out = {}
    for letter, key in PARTS.items():
        part = earlier.get(key)
        if isinstance(part, dict):
            by = part.get("measured_by") or plain_command(earlier.get("earlier_command") if letter in skipped else command)
            out[key] = {**part, "measured_by": by}
    return out


def merge_arms(earlier: dict[str, Any], new: dict[str, Any], earlier_command: str, command: str) -> dict[str, Any]:
    """Part b with the arms just rerun replaced and the others kept from ``earlier``, each arm saying who measured it.

    Numba runs in both runs; its row is the new one (the rerun arms' ratios are paired with
    it), the kept arms' ratios stay paired with the earlier run's Numba times. The earlier
    run's configuration must match (N, K, D).

    Raises:
        ValueError: The two runs measured different sizes.
    """
    if any(earlier.get(key) != new.get(key) for key in ("N", "K", "D")):
        raise ValueError(f"--arms --merge: the stored part b is N={earlier.get('N')} K={earlier.get('K')} D={earlier.get('D')}, "
                         f"this run N={new['N']} K={new['K']} D={new['D']}: rerun every arm or use the same sizes")
    arms = {}
    for name, entry in earlier["arms"].items():
        arms[name] = {**entry, "measured_by": entry.get("measured_by") or earlier_command}
    for name, entry in new["arms"].items():
        arms[name] = {**entry, "measured_by": command}
    merged = {**earlier, **{k: v for k, v in new.items() if k != "arms"}, "arms": arms}
    merged["faiss"] = new.get("faiss") if "faiss" in new["arms"] else earlier.get("faiss")
    merged["timing"] = (new["timing"] + "; arms measured by different commands are marked per arm (measured_by), and a kept "
                        "arm's ratios are paired with the Numba times of its own run")
    return merged


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The suite's own options (``python -m benchmarks score --help``; ``--data-dir`` is the work folder)."""
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5, help="Interleaved repeats of part b (min-max covers the median with 1 - 2^(1-n)).")
    ap.add_argument("--numpy-rows", type=int, default=2000, help="Rows the NumPy difference-tensor arm is timed on (extrapolated to N).")
    ap.add_argument("--cdist-rows", type=int, default=100000, help="Rows torch.cdist is timed on (extrapolated to N).")
    ap.add_argument("--fm-n", type=int, help="Rows for the FM RSS part (default --n).")
    ap.add_argument("--fm-iters", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip", default="", help="Comma-separated parts to skip (a,b,c,d).")
    ap.add_argument("--arms", default="", help="Part b: only these arms (numba always runs); with --merge the other arms' "
                    "rows are kept from the existing JSON, each marked with the command that measured it.")
    ap.add_argument("--merge", action="store_true", help="Keep the skipped parts' results from the existing JSON.")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure the parts not skipped (options as :func:`add_arguments`); the results, targets judged."""
    if args.quick:
        args.n, args.k, args.repeats, args.train_steps = 20000, 100, 3, 5
    args.work = args.data_dir
    skip = set(filter(None, args.skip.split(",")))
    os.makedirs(args.work, exist_ok=True)
    command = provenance.command_line()
    res: dict = {"benchmark": "score_bench", "command": command, "machine": provenance.machine_info(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out_json = os.path.join(args.out, "score_bench.json")
    earlier_kernels, earlier_command = None, None
    if args.merge and os.path.exists(out_json):  # keep the parts skipped now from an earlier run, each with its command
        with open(out_json) as fh:
            earlier = json.load(fh)
        earlier_kernels, earlier_command = earlier.get("kernels"), (earlier.get("kernels") or {}).get("measured_by") or earlier.get("command")
        res = {**{PARTS[p]: v for p, v in ((p, merged_parts(earlier).get(PARTS[p])) for p in skip if p in PARTS) if v},
               "earlier_command": plain_command(earlier.get("command")), **res}
    fashion = os.path.isdir(FASHION_MNIST_DIR)
    if "a" not in skip or "d" not in skip:
        source, target = _fashion_shards(args.work) if fashion else _digits_shards(args.work)
    if "a" not in skip:
        log.info("a: embedding throughput")
        res["embed"] = bench_embed(source, args.workers, 256, args.work, "fashion-mnist train" if fashion else "sklearn digits")
        log.info("a: %s", res["embed"])
    if "d" not in skip:
        if target is None:
            res["lm_vs_epoch"] = {"skipped": "Fashion-MNIST not installed (no footwear target)"}
        else:
            log.info("d: LM vs one epoch")
            res["lm_vs_epoch"] = bench_lm_vs_epoch(source, target, args.train_steps, args.work)
            log.info("d: %s", res["lm_vs_epoch"])
    elif isinstance(res.get("lm_vs_epoch"), dict):  # derived from the stored fields of an earlier run
        res["lm_vs_epoch"].update(lm_cost(res["lm_vs_epoch"]))
    if "b" not in skip:
        log.info("b: kernels at N=%d K=%d D=%d", args.n, args.k, args.d)
        only = [a for a in args.arms.split(",") if a] if args.arms else None
        res["kernels"] = bench_kernels(args.n, args.k, args.d, args.repeats, args.numpy_rows, args.cdist_rows, only)
        if only and args.merge and isinstance(earlier_kernels, dict) and earlier_kernels.get("arms"):
            res["kernels"] = merge_arms(earlier_kernels, res["kernels"], plain_command(earlier_command) or "", command)
    if "c" not in skip:
        n = args.fm_n or args.n
        log.info("c: FM peak RSS at %d x %d", n, args.d)
        res["fm_rss"] = bench_fm_rss(n, args.k, args.d, args.fm_iters, 10000, 65536, max(50 * args.k, 10000), args.work)
        log.info("c: %s", res["fm_rss"])
    for letter, key in PARTS.items():
        if letter not in skip and isinstance(res.get(key), dict):
            res[key]["measured_by"] = command
    res["targets"] = [t.to_dict() for t in score_targets(res)]
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return res


def score_targets(results: dict[str, Any]) -> list[Target]:
    """The kernel-speed and FM-memory targets, judged on the paired ratios and their intervals.

    Args:
        results: The results (``kernels`` and ``fm_rss`` parts).

    Returns:
        The targets; a ratio target is inconclusive when its min-max over repeats straddles the threshold.
    """
    command = results.get("command")
    out = []
    arms = (results.get("kernels") or {}).get("arms") or {}
    goals = (("numpy_mm", "Numba nearest-centroid >= 5x faster than NumPy, same formula (‖x‖² − 2x·cᵀ + ‖c‖²)", 5.0),
             ("numpy_broadcast", "Numba nearest-centroid >= 5x faster than NumPy's N x K x D difference tensor (a different algorithm)", 5.0),
             ("torch_mm", "Numba nearest-centroid no slower than torch on CPU, same formula", 1.0))
    for name, label, threshold in goals:
        ratio = (arms.get(name) or {}).get("assign_vs_numba")
        if ratio:
            out.append(Target.check(label, round(ratio["median"], 2), threshold, ">=", interval=(ratio["min"], ratio["max"]),
                                    command=command, repeats=ratio["n"], rounds=ratio["n"],
                                    coverage=round(stats.coverage(ratio["n"]), 3)))
    f = results.get("fm_rss") or {}
    if f:
        gb = f["peak_rss_bytes"] / 1e9
        out.append(Target.check("FM peak RSS < 2 GB for 1M x 512", gb, 2.0, "<", shown=f"{gb:.2f} GB", goal="< 2 GB",
                                command=f.get("measured_by") or command))
    return out


def _range(entry: dict[str, Any] | None, digits: int = 1, unit: str = " s") -> str:
    if not entry:
        return "–"
    return f"{entry['median']:.{digits}f}{unit} [{entry['min']:.{digits}f}-{entry['max']:.{digits}f}]"


def kernel_table(k: dict[str, Any]) -> str:
    """Part b: one row per arm (times, paired ratios to Numba, inertia after the iteration)."""
    arms = k.get("arms") or {}
    rows = []
    for name, label in ARM_LABELS.items():
        a = arms.get(name)
        if not a:
            continue
        inertia = f"{a['inertia']:.6g}" + (f" ({a['inertia_vs_numba']:.6f})" if "inertia_vs_numba" in a else "") if "inertia" in a else "–"
        rows.append([label, _range(a.get("assign_s")), _range(a.get("update_s"), 2), _range(a.get("iteration_s")),
                     _range(a.get("assign_vs_numba"), 2, "×") if name != "numba" else "1",
                     _range(a.get("iteration_vs_numba"), 2, "×") if name != "numba" else "1", inertia])
    head = (f"(b) One Lloyd iteration from the same initial centroids, N={k['N']:,} K={k['K']} D={k['D']} float32, "
            f"{k['threads']['numba']} threads, {k['repeats']} interleaved repeats: median [min-max] seconds; "
            f"÷ Numba = the arm's time / Numba's in the same repeat (> 1: Numba faster), median [min-max]; "
            f"{k['interval']}. Inertia = sum of squared distances to the updated centroids, computed for every arm by the same "
            f"function (÷ Numba's); before the iteration it was {k['inertia_at_init']:.6g}.")
    table = mdtable.markdown_table(["arm", "assignment", "update", "one iteration", "assignment ÷ Numba", "iteration ÷ Numba",
                                   "inertia (÷ Numba)"], rows, "lrrrrrr")
    numba_by = (arms.get("numba") or {}).get("measured_by")
    kept = [f"{ARM_LABELS.get(n, n)} (`{a['measured_by']}`)" for n, a in arms.items() if a.get("measured_by") and a["measured_by"] != numba_by]
    if kept:
        table += "\n\nRows kept from an earlier run (their ratios paired with that run's Numba): " + "; ".join(kept) + "."
    build = (k.get("faiss") or {}).get("build")
    if build:
        table += (f"\n\nfaiss {build['version']}: {build['active_level']} kernels "
                  f"({'dynamic dispatch' if build['dynamic_dispatch'] else build['loaded_module']}; compile options "
                  f"`{build['compile_options']}`) on a CPU whose best level is {build['cpu_level']}"
                  f"{'' if build['matches_cpu'] else ': NOT the build that matches the CPU'}.")
    return f"{head}\n\n{table}"


def tables(results: dict[str, Any]) -> str:
    """Parts a, c and d as one measure/value table, then part b's table per arm."""
    rows = []
    e = results.get("embed")
    if e:
        rows.append([f"(a) embedding throughput, {e['dataset']} {e['samples']:,}, {e['surrogate']}@{e['input_size']}, {e['workers']} worker(s)",
                     f"{e['samples_per_s']:,.0f} samples/s ({e['seconds']:.1f} s)"])
    f = results.get("fm_rss")
    if f:
        rows.append([f"(c) FM k-means peak RSS, {f['N']:,} x {f['D']} float16, K={f['K']}",
                     f"{f['peak_rss_bytes'] / 1e9:.2f} GB ({f['rss_after_imports_bytes'] / 1e9:.2f} GB after imports), {f['seconds']:.0f} s"])
    lm = lm_cost(results.get("lm_vs_epoch") or {})
    if lm:
        epoch = lm["epoch_seconds_extrapolated"]
        rows.append(["(d) one pretraining epoch (extrapolated)", f"{epoch:.0f} s"])
        rows.append([f"(d) LM: surrogate training ({lm['surrogate_train_steps']} steps) + scoring = total",
                     (f"{lm['surrogate_train_seconds']:.1f} s + {lm['lm_score_seconds']:.1f} s = {lm['lm_total_seconds']:.1f} s "
                      f"= {100 * lm['total_fraction_of_epoch']:.1f}% of an epoch (scoring alone {100 * lm['score_fraction_of_epoch']:.1f}%)")])
    parts = [mdtable.markdown_table(["measure", "value"], rows, "ll")] if rows else []
    k = results.get("kernels") or {}
    if k.get("arms"):
        parts.append(kernel_table(k))
    elif k:
        parts.append("(b) stored in the layout before paired repeats; rerun `python -m benchmarks score --skip a,c,d --merge`.")
    by = {key: (results.get(key) or {}).get("measured_by") for key in PARTS.values()}
    if any(by.values()):
        parts.append("Measured by: " + "; ".join(f"{key} `{cmd}`" for key, cmd in by.items() if cmd) + ".")
    return "\n\n".join(parts)


class ScoreSuite(Suite):
    """``score``: embedding throughput, k-means kernels, FM peak memory, LM scoring vs a pretraining epoch."""

    name, title = "score", "Scoring costs (embedding, k-means kernels, FM memory, LM)"
    data_name = "score"
    has_plot = True
    measures = ("streamprune/kernels.py", "streamprune/scoring/kmeans.py", "streamprune/scoring/fm.py", "streamprune/scoring/lm.py",
                "streamprune/scoring/features.py", "streamprune/infer.py")
    add_arguments, measurement = staticmethod(add_arguments), staticmethod(run)
    targets, tables = staticmethod(score_targets), staticmethod(tables)
    log_format = "%(asctime)s %(name)s: %(message)s"

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        """The targets, judged again on the stored parts."""
        return {**results, "targets": [t.to_dict() for t in score_targets(results)]}

    def plot(self, results: dict[str, Any], path: str) -> None:
        """Kernel times and memory (:func:`plot`)."""
        plot(results, path)
