"""Scoring benchmark: embedding throughput, nearest-centroid / k-means kernels, FM memory, LM cost.

Parts (each can be skipped with --skip a,b,c,d):
  a  embedding throughput: samples/s of ``scoring.features.embed_manifest`` (PrunedWebDataset +
     DataLoader workers + resnet18 penultimate features at input 32, float16 cache written)
     over Fashion-MNIST train (60k) when installed, else scikit-learn digits;
  b  nearest-centroid assignment and one k-means iteration (assignment + centroid update) at
     N x D float32 points, K centroids (default N=1,000,000, K=1000, D=512), median of
     --repeats runs: Numba (``kernels.nearest_centroid`` / ``kmeans_accumulate``) vs a
     straightforward NumPy version (chunked broadcast ``((x[:,None]-c[None])**2).sum(-1).argmin``
     timed on a slice and extrapolated linearly to N, stated in the JSON) vs torch on the CPU
     (``torch.cdist(...).argmin``, timed on --cdist-rows rows and extrapolated, and the mm
     formula ``||c||^2 - 2 x c^T`` on all N; the faster is reported);
  c  FM peak RSS: N x D float16 features as per-shard .npy memmaps (random), then in a fresh
     subprocess the chunked k-means (k-means++ on a subsample, --fm-iters Lloyd iterations)
     and the final assignment; peak RSS = the child's VmHWM from /proc/self/status (ru_maxrss
     would include the forked parent's resident set, which Linux carries across exec);
  d  LM scoring time vs one pretraining epoch on the same source (Fashion-MNIST train, 60k):
     the surrogate's epoch time is measured over --train-steps steps and extrapolated to an
     epoch (stated); LM scoring = inference over the 3,000-image footwear target.

Targets: Numba nearest-centroid >= 5x faster than straightforward NumPy and no slower than
torch on CPU; FM peak RSS < 2 GB for 1M x 512.

Run:  python -m benchmarks score                 (1M x 512, K=1000; ~10-15 min on 2 cores)
      python -m benchmarks score --quick         (small sizes, a smoke test)
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import common
from .suite import Suite, Target

log = logging.getLogger("score_bench")
FASHION = "/usr/share/datasets/fashion-mnist"


def _timed(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return common.median(times), [round(t, 4) for t in times], out


def _interleaved(fns: dict, repeats: int) -> dict:
    """Run several functions round-robin ``repeats`` times (shared-machine noise hits all alike).

    Returns ``{name: (median, runs, last output)}``.
    """
    times = {name: [] for name in fns}
    outs = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (common.median(t), [round(v, 4) for v in t], outs[name]) for name, t in times.items()}


# ------------------------------------------------------------------------------------------ b


def numpy_nearest(x: np.ndarray, c: np.ndarray, chunk: int = 64) -> np.ndarray:
    """The straightforward NumPy assignment: chunked broadcast of the full difference tensor."""
    out = np.empty(len(x), dtype=np.int64)
    for lo in range(0, len(x), chunk):
        out[lo : lo + chunk] = ((x[lo : lo + chunk, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    return out


def bench_kernels(n: int, k: int, d: int, repeats: int, numpy_rows: int, cdist_rows: int) -> dict:
    import torch

    from streamprune.kernels import kmeans_accumulate, nearest_centroid

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    c = x[rng.choice(n, k, replace=False)].copy()
    out: dict = {"N": n, "K": k, "D": d, "repeats": repeats, "threads": {"torch": torch.get_num_threads(), "numba": __import__("numba").get_num_threads()}}
    nearest_centroid(x[:4096], c)  # compile / warm
    xt, ct = torch.from_numpy(x), torch.from_numpy(c)
    cd_rows = min(n, cdist_rows)
    c_sq = (ct * ct).sum(1)

    def torch_cdist(chunk=65536, rows=cd_rows):
        res = torch.empty(rows, dtype=torch.int64)
        for lo in range(0, rows, chunk):
            res[lo : lo + chunk] = torch.cdist(xt[lo : min(rows, lo + chunk)], ct).argmin(1)
        return res

    def torch_mm(chunk=65536):
        res = torch.empty(n, dtype=torch.int64)
        for lo in range(0, n, chunk):
            res[lo : lo + chunk] = torch.addmm(c_sq, xt[lo : lo + chunk], ct.T, alpha=-2.0).argmin(1)
        return res

    def numba_iter():
        idx, _dist = nearest_centroid(x, c)
        sums = np.zeros((k, d)); counts = np.zeros(k, dtype=np.int64)
        kmeans_accumulate(x, idx, sums, counts)
        return sums / np.maximum(counts, 1)[:, None]

    def torch_iter():
        idx = torch_mm()
        sums = torch.zeros(k, d, dtype=torch.float64).index_add_(0, idx, xt.double())
        counts = torch.bincount(idx, minlength=k)
        return sums / counts.clamp(min=1)[:, None]

    with torch.no_grad():
        r = _interleaved({"numba": lambda: nearest_centroid(x, c), "torch_mm": torch_mm, "torch_cdist": torch_cdist}, repeats)
        it = _interleaved({"numba": numba_iter, "torch": torch_iter}, repeats)
    med, runs, (idx_nb, _) = r["numba"]
    out["numba_nearest_s"] = {"median": med, "runs": runs, "min": min(runs)}
    out["numba_kmeans_iter_s"] = {"median": it["numba"][0], "runs": it["numba"][1], "min": min(it["numba"][1])}
    m_mm, r_mm, idx_mm = r["torch_mm"]
    m_cd, r_cd, _ = r["torch_cdist"]
    m_cd = m_cd * n / cd_rows  # extrapolated when timed on a slice
    m_it, r_it = it["torch"][0], it["torch"][1]
    out["torch_cdist_nearest_s"] = {"median": m_cd, "runs_on_slice": r_cd, "slice_rows": cd_rows,
                                    "note": "median extrapolated linearly to N" if cd_rows < n else "full run"}
    out["torch_mm_nearest_s"] = {"median": m_mm, "runs": r_mm}
    out["torch_best"] = "mm" if m_mm <= m_cd else "cdist"
    out["torch_nearest_s"] = min(m_cd, m_mm)
    out["torch_mm_nearest_s"]["min"] = min(r_mm)
    out["torch_kmeans_iter_s"] = {"median": m_it, "runs": r_it, "min": min(r_it), "assignment": "mm (index_add_ update)"}
    out["timing"] = "variants run round-robin per repeat (the machine is shared; noise hits all alike); median reported, min too"
    agree = float((idx_mm.numpy() == idx_nb).mean())
    out["agreement_numba_vs_torch_mm"] = agree  # float32 rounding can flip near-ties

    rows = min(numpy_rows, n)
    med, runs, idx_np = _timed(lambda: numpy_nearest(x[:rows], c), repeats)
    out["numpy_nearest_s"] = {
        "median_on_slice": med, "runs_on_slice": runs, "slice_rows": rows, "extrapolated_to_N": med * n / rows,
        "note": f"timed on the first {rows} rows and extrapolated linearly to N={n}" if rows < n else "full run",
    }
    out["agreement_numba_vs_numpy_slice"] = float((idx_np == idx_nb[:rows]).mean())

    def numpy_iter_slice():
        idx = numpy_nearest(x[:rows], c)
        sums = np.zeros((k, d)); np.add.at(sums, idx, x[:rows])
        return sums

    med, runs, _ = _timed(numpy_iter_slice, repeats)
    out["numpy_kmeans_iter_s"] = {"median_on_slice": med, "runs_on_slice": runs, "extrapolated_to_N": med * n / rows, "slice_rows": rows}
    np_full = out["numpy_nearest_s"]["extrapolated_to_N"]
    nb = out["numba_nearest_s"]["median"]
    out["speedup_numba_vs_numpy"] = np_full / nb
    out["speedup_numba_vs_torch"] = out["torch_nearest_s"] / nb
    out["targets"] = {
        "numba_ge_5x_numpy": bool(np_full / nb >= 5.0),
        "numba_no_slower_than_torch": bool(nb <= out["torch_nearest_s"]),
    }
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


def bench_fm_rss(n: int, k: int, d: int, iters: int, shard_rows: int, chunk_rows: int, init_sample: int, work: str) -> dict:
    from streamprune.atomic import atomic_write_json
    from streamprune.manifest import Manifest, ShardEntry
    from streamprune.scoring.features import _expected_sidecar, feature_paths

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
        arr.flush(); del arr
        atomic_write_json(sidecar, {**_expected_sidecar(m, j, {"bench": 1}), "dim": d})
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


def _fashion_shards(work: str):
    from streamprune.demo import footwear_target
    from streamprune.manifest import Manifest
    from streamprune.writers import write_shards

    src_dir = os.path.join(work, "fashion_train")
    tgt_dir = os.path.join(work, "fashion_footwear")
    if os.path.exists(os.path.join(src_dir, "manifest.json")):
        source = Manifest.load(src_dir)
    else:
        source = write_shards(FASHION, src_dir, samples_per_shard=5000, workers=2, progress=False)
    target = Manifest.load(tgt_dir) if os.path.exists(os.path.join(tgt_dir, "manifest.json")) else footwear_target(FASHION, tgt_dir, progress=False)
    return source, target


def _digits_shards(work: str):
    from sklearn.datasets import load_digits

    from streamprune.manifest import Manifest
    from streamprune.writers import write_shards

    src_dir = os.path.join(work, "digits")
    if os.path.exists(os.path.join(src_dir, "manifest.json")):
        return Manifest.load(src_dir), None
    d = load_digits()
    path = os.path.join(work, "digits.npz")
    np.savez(path, images=(d.images * 16).clip(0, 255).astype(np.uint8), labels=d.target)
    return write_shards(path, src_dir, samples_per_shard=500, progress=False), None


def bench_embed(source, workers: int, batch_size: int, work: str, dataset: str) -> dict:
    import torch

    from streamprune.models import build_surrogate, features
    from streamprune.scoring.features import embed_manifest

    torch.manual_seed(0)
    model = build_surrogate("resnet18", source.num_classes).eval()
    cache = tempfile.mkdtemp(prefix="embed_", dir=work)
    t0 = time.perf_counter()
    embed_manifest(source, cache, lambda x: features(model, x), {"bench": time.time()}, input_size=32, batch_size=batch_size, workers=workers, progress=False)
    secs = time.perf_counter() - t0
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    return {"dataset": dataset, "samples": source.num_samples, "seconds": secs, "samples_per_s": source.num_samples / secs,
            "surrogate": "resnet18 (untrained, weights=None)", "input_size": 32, "workers": workers, "batch_size": batch_size,
            "torch_threads": torch.get_num_threads(), "includes": "decode + transform in workers, forward, float16 cache write"}


def bench_lm_vs_epoch(source, target, train_steps: int, work: str) -> dict:
    import math

    from streamprune.scoring import score_source
    from streamprune.train import train_surrogate

    ck = os.path.join(work, "bench_surrogate.pt")
    tr = train_surrogate(source, "resnet18", ck, max_steps=train_steps, batch_size=128, input_size=32, workers=1, progress=False)
    steps_per_epoch = math.ceil(source.num_samples / 128)
    epoch_s = tr["seconds"] / tr["steps"] * steps_per_epoch
    t0 = time.perf_counter()
    r = score_source(source, "lm", [0.7], tempfile.mkdtemp(prefix="lm_", dir=work), target=target, surrogate="resnet18", checkpoint=ck, workers=1, progress=False)
    lm_s = time.perf_counter() - t0
    return {"train_steps_measured": tr["steps"], "train_seconds_measured": tr["seconds"], "steps_per_epoch": steps_per_epoch,
            "epoch_seconds_extrapolated": epoch_s, "batch_size": 128,
            "lm_score_source_seconds": lm_s, "lm_method_seconds": r["seconds"]["score"], "target_samples": target.num_samples,
            "fraction_of_epoch": lm_s / epoch_s,
            "note": f"epoch time extrapolated from {tr['steps']} measured steps (incl. the loader's start-up) to {steps_per_epoch} steps; LM = inference over the target + masks"}


# ------------------------------------------------------------------------------------------ plot


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    b = res.get("kernels")
    if b:
        names = ["Numba", f"torch ({b['torch_best']})", "NumPy (extrap.)"]
        vals = [b["numba_nearest_s"]["median"], b["torch_nearest_s"], b["numpy_nearest_s"]["extrapolated_to_N"]]
        it = [b["numba_kmeans_iter_s"]["median"], b["torch_kmeans_iter_s"]["median"], b["numpy_kmeans_iter_s"]["extrapolated_to_N"]]
        xs = np.arange(3)
        axes[0].bar(xs - 0.2, vals, 0.4, label="nearest centroid")
        axes[0].bar(xs + 0.2, it, 0.4, label="one k-means iteration")
        axes[0].set_yscale("log"); axes[0].set_xticks(xs); axes[0].set_xticklabels(names)
        axes[0].set_ylabel("seconds (log)"); axes[0].legend()
        axes[0].set_title(f"N={b['N']:,} K={b['K']} D={b['D']}")
    c = res.get("fm_rss")
    if c:
        axes[1].bar(["FM k-means peak RSS"], [c["peak_rss_bytes"] / 1e9], color="tab:green")
        axes[1].axhline(2.0, color="red", ls="--", label="target 2 GB")
        axes[1].axhline(c["features_on_disk_bytes"] / 1e9, color="gray", ls=":", label="features on disk")
        axes[1].set_ylabel("GB"); axes[1].legend(); axes[1].set_title(f"{c['N']:,} x {c['D']} float16, K={c['K']}")
    a, d = res.get("embed"), res.get("lm_vs_epoch")
    labels, vals = [], []
    if d:
        labels += ["pretrain epoch\n(extrap.)", "LM scoring"]
        vals += [d["epoch_seconds_extrapolated"], d["lm_score_source_seconds"]]
    if a:
        labels += [f"embed {a['samples']:,}\n({a['samples_per_s']:.0f}/s)"]
        vals += [a["seconds"]]
    if labels:
        axes[2].bar(labels, vals, color="tab:orange"); axes[2].set_ylabel("seconds")
        axes[2].set_title("scoring cost vs one epoch" + (f" (LM = {d['fraction_of_epoch']:.1%})" if d else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure the parts not skipped (``python -m benchmarks score --help``), write ``score_bench.json`` and the plot."""
    ap = common.arg_parser("score", __doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--numpy-rows", type=int, default=2000, help="Rows the NumPy version is timed on (extrapolated to N).")
    ap.add_argument("--cdist-rows", type=int, default=200000, help="Rows torch.cdist is timed on (extrapolated to N).")
    ap.add_argument("--fm-n", type=int, help="Rows for the FM RSS part (default --n).")
    ap.add_argument("--fm-iters", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip", default="", help="Comma-separated parts to skip (a,b,c,d).")
    ap.add_argument("--merge", action="store_true", help="Keep the skipped parts' results from the existing JSON.")
    ap.add_argument("--quick", action="store_true", help="Small sizes (smoke test); results under results/quick.")
    ap.add_argument("--work", default=os.path.join(common.DEFAULT_DATA, "score"))
    ap.add_argument("--out", default=common.DEFAULT_RESULTS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.quick:
        args.n, args.k, args.repeats, args.train_steps = 20000, 100, 1, 5
        args.out = os.path.join(args.out, "quick")
    skip = set(filter(None, args.skip.split(",")))
    os.makedirs(args.work, exist_ok=True)
    res: dict = {"benchmark": "score_bench", "command": common.command_line(), "machine": common.machine_info(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out_json = os.path.join(args.out, "score_bench.json")
    if args.merge and os.path.exists(out_json):  # keep the parts skipped now from an earlier run
        with open(out_json) as fh:
            earlier = json.load(fh)
        res = {**{k: v for k, v in earlier.items() if k in ("embed", "lm_vs_epoch", "kernels", "fm_rss")},
               "earlier_command": earlier.get("command"), **res}
    fashion = os.path.isdir(FASHION)
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
    if "b" not in skip:
        log.info("b: kernels at N=%d K=%d D=%d", args.n, args.k, args.d)
        res["kernels"] = bench_kernels(args.n, args.k, args.d, args.repeats, args.numpy_rows, args.cdist_rows)
        log.info("b: %s", json.dumps(res["kernels"], default=str))
    if "c" not in skip:
        n = args.fm_n or args.n
        log.info("c: FM peak RSS at %d x %d", n, args.d)
        res["fm_rss"] = bench_fm_rss(n, args.k, args.d, args.fm_iters, 10000, 65536, max(50 * args.k, 10000), args.work)
        log.info("c: %s", res["fm_rss"])
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.makedirs(args.out, exist_ok=True)
    common.write_json(out_json, res)
    plot(res, os.path.join(args.out, "score_bench.png"))
    print(json.dumps({k: v.get("targets") for k, v in res.items() if isinstance(v, dict) and "targets" in v}, indent=1))
    return res


def score_targets(results: dict[str, Any]) -> list[Target]:
    """The kernel-speed and FM-memory targets, from the parts' measurements."""
    command = results.get("command")
    out = []
    k = results.get("kernels") or {}
    if k:
        out.append(Target.check("Numba nearest-centroid >= 5x faster than NumPy", round(k.get("speedup_numba_vs_numpy", float("nan")), 2),
                                5.0, ">=", command=command))
        out.append(Target.check("Numba nearest-centroid no slower than torch (CPU)", round(k.get("speedup_numba_vs_torch", float("nan")), 2),
                                1.0, ">=", command=command))
    f = results.get("fm_rss") or {}
    if f:
        gb = f["peak_rss_bytes"] / 1e9
        out.append(Target.check("FM peak RSS < 2 GB for 1M x 512", gb, 2.0, "<", shown=f"{gb:.2f} GB", goal="< 2 GB", command=command))
    return out


def tables(results: dict[str, Any]) -> str:
    """One row per measure: embedding, kernels, FM memory, LM vs an epoch."""
    rows = []
    e = results.get("embed")
    if e:
        rows.append([f"(a) embedding throughput, {e['dataset']} {e['samples']:,}, {e['surrogate']}@{e['input_size']}, {e['workers']} worker(s)",
                     f"{e['samples_per_s']:,.0f} samples/s ({e['seconds']:.1f} s)"])
    k = results.get("kernels")
    if k:
        size = f"{k['N']:,} x {k['K']} x {k['D']}"
        rows.append([f"(b) nearest centroid {size}: Numba", f"{k['numba_nearest_s']['median']:.1f} s"])
        rows.append([f"(b) torch ({k.get('torch_best', 'best')})", f"{k['torch_nearest_s']:.1f} s"])
        rows.append(["(b) NumPy (extrapolated)", f"{k['numpy_nearest_s']['extrapolated_to_N']:.0f} s"])
        rows.append(["(b) one k-means iteration: Numba / torch / NumPy (extrapolated)",
                     (f"{k['numba_kmeans_iter_s']['median']:.1f} s / {k['torch_kmeans_iter_s']['median']:.1f} s / "
                      f"{k['numpy_kmeans_iter_s']['extrapolated_to_N']:.0f} s")])
    f = results.get("fm_rss")
    if f:
        rows.append([f"(c) FM k-means peak RSS, {f['N']:,} x {f['D']} float16, K={f['K']}",
                     f"{f['peak_rss_bytes'] / 1e9:.2f} GB ({f['rss_after_imports_bytes'] / 1e9:.2f} GB after imports), {f['seconds']:.0f} s"])
    d = results.get("lm_vs_epoch")
    if d and "epoch_seconds_extrapolated" in d:
        rows.append(["(d) pretraining epoch (extrapolated) vs LM scoring",
                     (f"{d['epoch_seconds_extrapolated']:.0f} s vs {d['lm_score_source_seconds']:.1f} s = "
                      f"{100 * d['fraction_of_epoch']:.1f}% of an epoch")])
    return common.markdown_table(["measure", "value"], rows, "ll")


class ScoreSuite(Suite):
    """``score``: embedding throughput, k-means kernels, FM peak memory, LM scoring vs a pretraining epoch."""
    name, title = "score", "Scoring costs (embedding, k-means kernels, FM memory, LM)"
    run, targets, tables = staticmethod(run), staticmethod(score_targets), staticmethod(tables)
