"""Scale-out benchmark: per-shard passes on the local engine and on Ray, at 1 and 2 workers.

Passes, on the same data, each with four engines:
  embed  FM's embedding pass: ``embed_manifest`` with the scoring surrogate
         (``benchmarks.nets:surrogate_cnn``, 64-d features) over png shards, one task per
         shard, into a fresh feature cache each run;
  index  ``index_shards(..., checksum=True)`` over small-member tar shards (index_bench's
         generator), one task per shard, into a fresh directory each run.
Engines: ``local-1`` (this process, 1 torch thread), ``local-2`` (2 forked processes, 1 thread
each), ``ray-1`` / ``ray-2`` (1 / 2 Ray actors with ``num_cpus=1``) on one local Ray instance
started once (``ray.init(num_cpus=2)``; its start-up is not timed, each pass's actor start-up
is). Runs are interleaved: every repeat runs all engines of a pass, in a rotated order, so a
load change on the shared machine hits all engines alike; the median over repeats is
reported with the [min, max] range, and ratios are taken per repeat (paired) before the
median.

Targets (from the issue): embed ray-2 >= 1.7x ray-1; Ray's overhead over the local engine at
the same parallelism <= 10% (each pass, 1 and 2 workers). A ratio whose range over repeats
straddles the threshold is "inconclusive".

Run:  python -m benchmarks scale          (~6-8 min on 2 cores)
      python -m benchmarks scale --quick
      python -m benchmarks scale_sim      (the simulation at N = 1e6..1e7: benchmarks/scale_sim.py)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import pickle
import resource
import shutil
import time
from typing import Any

import numpy as np

from . import mdtable, pagecache, provenance, resultsfile, stats
from .suite import Suite, Target

ENGINES = ("local-1", "local-2", "ray-1", "ray-2")
TARGET_SPEEDUP = 1.7
TARGET_OVERHEAD = 0.10


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The suite's own options (``python -m benchmarks scale --help``)."""
    p.add_argument("--samples", type=int, default=16_000, help="images in the embedding set (default 16000)")
    p.add_argument("--shards", type=int, default=32, help="shards of the embedding set (default 32)")
    p.add_argument("--members", type=int, default=400_000, help="tar members in the index set (default 400000)")
    p.add_argument("--index-shards", type=int, default=16, help="shards of the index set (default 16)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5, median reported)")


def make_embed_set(out_dir: str, samples: int, shards: int, seed: int):
    """``samples`` 28x28 grey png images (10 classes) in ``shards`` shards, or the ones already there."""
    # deferred: the suites' registry imports every suite, and these pull in torch and the codecs
    from streamprune import Manifest
    from streamprune.writers import write_shards

    if os.path.exists(os.path.join(out_dir, "manifest.json")):
        m = Manifest.load(out_dir)
        if m.num_samples == samples and len(m.shards) == shards:
            return m
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (samples, 28, 28), dtype=np.uint8)
    npz = os.path.join(out_dir, "images.npz")
    np.savez(npz, images=images, labels=np.arange(samples) % 10)
    return write_shards(npz, out_dir, samples_per_shard=-(-samples // shards), image_format="png", progress=False, workers=2)


def make_small_shards(out_dir: str, members: int, shards: int, seed: int) -> list[str]:
    """Tar shards of many small members (a ~500-byte ``.txt`` and a ``.cls`` per sample), or the ones already there."""
    from streamprune.writers.tar import TarShardWriter  # deferred with the other library imports of this suite

    paths = [os.path.join(out_dir, f"small-{k:04d}.tar") for k in range(shards)]
    stamp = os.path.join(out_dir, f"done-{members}-{shards}-{seed}")
    if os.path.exists(stamp) and all(os.path.exists(p) for p in paths):
        return paths
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    rng = np.random.default_rng(seed)
    samples = members // 2
    blob = rng.integers(32, 127, 5096, dtype=np.uint8).tobytes()
    per_shard = -(-samples // shards)
    for k, path in enumerate(paths):
        with TarShardWriter(path, label_ext="cls") as writer:
            for i in range(k * per_shard, min(samples, (k + 1) * per_shard)):
                off = int(rng.integers(0, 4096))
                writer.write(f"s{i:09d}", {"txt": blob[off : off + int(rng.integers(100, 1001))]}, i % 1000)
            writer.close(checksum=False)
    open(stamp, "w").close()
    return paths


@contextlib.contextmanager
def torch_threads(n: int):
    """Torch CPU threads in this process set to ``n`` for the block (local-1 runs like one worker)."""
    import torch  # deferred: heavy, and only the timed runs need it

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_engines():
    """The four engines by name (the Ray ones share the running Ray instance)."""
    from streamprune.engine import LocalEngine, RayEngine  # deferred like the other library imports of this suite

    return {"local-1": LocalEngine(1), "local-2": LocalEngine(2), "ray-1": RayEngine(workers=1), "ray-2": RayEngine(workers=2)}


def run_pass(name: str, fn, engines: dict, repeats: int) -> dict[str, Any]:
    """Time ``fn(engine)`` for every engine, interleaved over ``repeats`` rotated rounds."""
    times: dict[str, list[float]] = {e: [] for e in ENGINES}
    for r in range(repeats):
        order = ENGINES[r % len(ENGINES):] + ENGINES[: r % len(ENGINES)]
        for e in order:
            gc.collect()
            with torch_threads(1) if e == "local-1" else contextlib.nullcontext():
                t0 = time.perf_counter()
                fn(engines[e])
                dt = time.perf_counter() - t0
            times[e].append(dt)
            print(f"  {name:5s} round {r + 1}  {e:8s} {dt:7.2f} s  (load {os.getloadavg()[0]:.1f})", flush=True)
    return {
        "pass": name,
        "seconds": times,
        "median_seconds": {e: stats.median(t) for e, t in times.items()},
        "range_seconds": {e: [min(t), max(t)] for e, t in times.items()},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure (options as :func:`add_arguments`); the results, summarised by :func:`summarise`."""
    if args.quick:
        args.samples, args.shards, args.members, args.index_shards, args.repeats = 1200, 6, 20_000, 4, 1
    import ray  # the ray extra: this suite measures the Ray engine

    # deferred: the scoring modules and the nets import torch, not wanted when the registry is listed
    from streamprune.indexing import index_shards
    from streamprune.scoring.features import embed_manifest, surrogate_embed
    from streamprune.scoring.request import ScoreRequest

    from .nets import SURROGATE_ENTRY_POINT  # deferred: imports torch

    t_start = time.perf_counter()
    machine = provenance.machine_info()
    load_before = os.getloadavg()
    print(f"scale_bench: {machine['cpu_count']} cores, load {load_before[0]:.1f}, ray {ray.__version__}")
    data = args.data_dir or os.path.join(resultsfile.DEFAULT_DATA, f"scale_{'quick' if args.quick else 'full'}")
    m = make_embed_set(os.path.join(data, "embed"), args.samples, args.shards, args.seed)
    tars = make_small_shards(os.path.join(data, "index"), args.members, args.index_shards, args.seed)
    work = os.path.join(data, "work")
    root = os.path.dirname(resultsfile.HERE)
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    ray_start = time.perf_counter() - t0
    engines = make_engines()
    ident = {"bench": "scale", "arch": SURROGATE_ENTRY_POINT}
    request_kw = dict(source=m, surrogate=SURROGATE_ENTRY_POINT, input_size=28, device="cpu", seed=0, progress=False)
    summaries: dict[str, int] = {}

    def embed(engine):
        out = os.path.join(work, "features")
        shutil.rmtree(out, ignore_errors=True)
        factory = functools.partial(surrogate_embed, ScoreRequest(**request_kw))
        embed_manifest(m, out, None, ident, input_size=28, batch_size=256, progress=False, engine=engine, embed_factory=factory)

    def index(engine):
        out = os.path.join(work, "index")
        shutil.rmtree(out, ignore_errors=True)
        index_shards(tars, out, label_ext="cls", checksum=True, progress=False, engine=engine)

    try:
        pagecache.warm([m.shard_path(k) for k in range(len(m.shards))] + tars)
        print("warm-up (not timed)")
        embed(engines["ray-2"])
        index(engines["ray-2"])
        results = [run_pass("embed", embed, engines, args.repeats), run_pass("index", index, engines, args.repeats)]
        # what one task sends back to the driver, pickled (the summaries the driver gathers)
        from streamprune.indexfile import load_index  # deferred with the other library imports

        summaries["index"] = len(pickle.dumps(load_index(os.path.join(work, "index", os.path.basename(tars[0]) + ".index.json"))))
        summaries["embed"] = len(pickle.dumps({"shard": m.shards[0].name, "samples": m.shards[0].samples, "dim": 64}))
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    out = {
        "benchmark": "scale_bench",
        "command": provenance.command_line(),
        "args": vars(args),
        "machine": machine,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "data": {
            "embed": {"samples": m.num_samples, "shards": len(m.shards), "bytes": m.total_bytes, "dim": 64},
            "index": {"members": args.members, "shards": len(tars), "bytes": sum(os.path.getsize(p) for p in tars)},
        },
        "ray_start_seconds": ray_start,
        "summary_bytes_per_task": summaries,
        "driver_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "passes": results,
        "total_seconds": time.perf_counter() - t_start,
    }
    return out


def summarise(out: dict[str, Any]) -> dict[str, Any]:
    """Paired ratios per pass (Ray over local, 2 workers over 1) and the targets, from the stored seconds."""
    results = [dict(p) for p in out["passes"]]
    targets = []
    for res in results:
        res["ratios"] = {}
        for n in ("1", "2"):
            ratio = stats.paired_ratio(res["seconds"][f"ray-{n}"], res["seconds"][f"local-{n}"])
            res["ratios"][f"ray_over_local_{n}"] = {"median": ratio.median, "range": [ratio.low, ratio.high], "rounds": ratio.n}
            targets.append(Target.check(
                f"{res['pass']}: Ray overhead over local at {n} worker(s) <= 10%", round(ratio.median - 1, 3), TARGET_OVERHEAD, "<=",
                interval=[ratio.low - 1, ratio.high - 1], rounds=ratio.n, **{"pass": res["pass"]},
            ).to_dict())
        for kind in ("ray", "local"):
            ratio = stats.paired_ratio(res["seconds"][f"{kind}-1"], res["seconds"][f"{kind}-2"])
            res["ratios"][f"speedup_{kind}"] = {"median": ratio.median, "range": [ratio.low, ratio.high], "rounds": ratio.n}
        if res["pass"] == "embed":
            s = res["ratios"]["speedup_ray"]
            targets.insert(0, Target.check("embed: Ray 2 workers >= 1.7x Ray 1 worker", round(s["median"], 3), TARGET_SPEEDUP,
                                           interval=s["range"], rounds=s["rounds"], **{"pass": "embed"}).to_dict())
    return {**out, "passes": results, "targets": targets}


def plot(res: dict, path: str) -> None:
    """Median seconds per engine and pass, with the [min, max] range over rounds."""
    import matplotlib  # plotting only; the dev extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the headless backend

    fig, axes = plt.subplots(1, len(res["passes"]), figsize=(5 * len(res["passes"]), 3.5))
    for ax, p in zip(np.atleast_1d(axes), res["passes"]):
        med = [p["median_seconds"][e] for e in ENGINES]
        lo = [med[i] - p["range_seconds"][e][0] for i, e in enumerate(ENGINES)]
        hi = [p["range_seconds"][e][1] - med[i] for i, e in enumerate(ENGINES)]
        ax.bar(ENGINES, med, yerr=[lo, hi], capsize=4, color=["tab:blue", "tab:blue", "tab:orange", "tab:orange"])
        ax.set_ylabel("seconds (median, min-max)")
        ax.set_title(f"{p['pass']} pass")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tables(results: dict[str, Any]) -> str:
    """Seconds per pass and engine, and the paired ratios."""
    rows = []
    for p in results["passes"]:
        for e in ENGINES:
            lo, hi = p["range_seconds"][e]
            rows.append([p["pass"], e, f"{p['median_seconds'][e]:.2f}", f"{lo:.2f}-{hi:.2f}"])
    ratio_rows = []
    for p in results["passes"]:
        for name, r in p.get("ratios", {}).items():
            ratio_rows.append([p["pass"], name, f"{r['median']:.3f}", f"{r['range'][0]:.3f}-{r['range'][1]:.3f}"])
    d = results["data"]
    head = (
        f"Data: embed {d['embed']['samples']:,} png images in {d['embed']['shards']} shards; index {d['index']['members']:,} "
        f"members in {d['index']['shards']} shards. Ray start-up (not timed): {results['ray_start_seconds']:.1f} s. "
        f"Load average before/after: {results['load_before'][0]:.1f} / {results['load_after'][0]:.1f}."
    )
    return "\n\n".join([
        head,
        mdtable.markdown_table(["pass", "engine", "median s", "range s"], rows, "llrr"),
        mdtable.markdown_table(["pass", "ratio (paired per round)", "median", "range"], ratio_rows, "llrr"),
    ])


class ScaleSuite(Suite):
    """``scale``: the local engine vs Ray at 1 and 2 workers on the embedding and index passes."""
    name, title = "scale", "Scale-out: local processes vs Ray"
    has_plot = True
    measures = ("streamprune/engine.py", "streamprune/scoring/features.py", "streamprune/indexing.py")
    add_arguments, measurement, tables = staticmethod(add_arguments), staticmethod(run), staticmethod(tables)

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        """Ratios and targets from the stored seconds (:func:`summarise`)."""
        return summarise(results)

    def plot(self, results: dict[str, Any], path: str) -> None:
        """Seconds per engine and pass (:func:`plot`)."""
        plot(results, path)
