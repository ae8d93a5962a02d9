"""Warm local reads through the reader core, measured for two source trees side by side.

Not a registered suite (no targets, no report section): the before/after check behind a change
to the local read path (``streamprune.readers.byterange``: ``read_runs``, ``read_sample``,
the scheduler's per-request slicing), which was tuned for per-sample Python work (see
benchmarks/README.md, "per-sample work out of read_runs"). Each tree is a checkout of
streamprune (``--tree NAME=PATH``); every round runs each tree once, in a fresh interpreter
with ``PYTHONPATH=PATH``, in shuffled order, so both see the same machine load.

One run reads, in this process, warm (every file read once first; one untimed epoch of each
reader before its timed one):

  iterable   ``PrunedSource(manifest, mask)`` iterated (``read_runs``);
  iterable4  ``PrunedSource(manifest, mask, io_depth=4)`` (the scheduler on local files);
  map        ``PrunedMapDataset(manifest, mask).__getitems__`` on consecutive batches of 64
             kept indices (``read_sample``);

over two datasets: ``jpeg``, ``--jpeg-mb`` MiB of ~120 KB synthetic JPEG samples
(``benchmarks.jpegdata.make_jpeg_shards``: members of that size are read one by one into their
values), and ``small``, ``--small-mb`` MiB of 6-10 KB samples (coalesced runs, sliced), each at
``r = 0`` and ``r = 0.8`` (``random_mask(..., level="sample", seed=1)``). Every bytes value's
length is touched. Times: wall and CPU (``time.process_time``: less sensitive to other jobs
on a shared machine) of an epoch, the fastest of ``--epochs`` in a row (the one least
disturbed by other jobs); results are the median (and the minimum) of that over ``--repeats``
rounds.

On a machine shared with other jobs, epochs of different interpreters vary by tens of percent
from one round to the next, more than a change to the per-sample work. So ``micro`` rows
measure that work in one process: the first tree's ``streamprune/readers/byterange.py`` is
loaded beside the last tree's (it must import against the last tree's lower modules), and the
two read the same open shards alternately, ``--micro-repeats`` times, CPU time of each:
``read_sample`` of every sample, and ``read_runs`` of every sample (``keep 1.0``) and of a
random fifth (``keep 0.2``, ascending), over every shard of each dataset; the minimum and the
quartiles are kept (the minimum is the run least disturbed by other jobs).

Run:  python -m benchmarks.reader_core_measure --tree before=/tmp/old-checkout --tree after=. [--repeats 5]
Results: ``benchmarks/results/reader_core.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["main", "measure"]

READERS = ("iterable", "iterable4", "map")
RATIOS = (0.0, 0.8)


def _small_samples(n: int, seed: int = 0):
    """``n`` samples of 6-10 KB random bytes with a label, deterministic."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        size = int(rng.integers(6000, 10000))
        yield f"s{i:08d}", {"bin": rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()}, i % 10


def make_small_shards(out_dir: str, total_mb: float) -> str:
    """Write (or reuse) ``total_mb`` MiB of small samples in ``out_dir``; returns ``out_dir``."""
    # heavy import, deferred: writers load PIL and numba; the parent builds data, workers only read
    from streamprune.writers import write_shards

    marker = os.path.join(out_dir, "bench_meta.json")
    params = {"total_mb": total_mb, "kind": "small-v1"}
    if os.path.exists(marker) and json.load(open(marker)).get("params") == params:
        return out_dir
    n = int(total_mb * 2**20 / (8000 + 1536))
    write_shards(list(_small_samples(n)), out_dir, samples_per_shard=2000, shuffle=False, progress=False,
                 class_names=[str(c) for c in range(10)])
    with open(marker, "w") as fh:
        json.dump({"params": params, "samples": n}, fh)
    return out_dir


def _touch(sample: dict) -> int:
    return sum(len(v) for k, v in sample.items() if not k.startswith("__"))


def measure(datasets: dict[str, str], epochs: int = 1) -> list[dict[str, Any]]:
    """Warm epochs per (dataset, ratio, reader) with the streamprune the interpreter imports; rows of the fastest's times."""
    # imported here: this runs in a worker interpreter whose PYTHONPATH picks the tree measured
    from streamprune.manifest import Manifest
    from streamprune.masks import random_mask
    from streamprune.readers.mapstyle import PrunedMapDataset
    from streamprune.readers.webdataset import PrunedSource

    rows = []
    for name, path in datasets.items():
        manifest = Manifest.load(path)
        for k in range(len(manifest.shards)):  # warm: every shard and index file in the page cache
            for f in (manifest.shard_path(k), manifest.resolve(manifest.shards[k].index)):
                with open(f, "rb") as fh:
                    while fh.read(8 << 20):
                        pass
        for ratio in RATIOS:
            mask = random_mask(manifest, ratio, level="sample", seed=1)
            for reader in READERS:
                if reader == "map":
                    ds = PrunedMapDataset(path, mask)

                    def epoch(ds=ds):
                        total = n = 0
                        for start in range(0, len(ds), 64):
                            for s in ds.__getitems__(list(range(start, min(len(ds), start + 64)))):
                                total += _touch(s)
                                n += 1
                        return n, total
                else:
                    src = PrunedSource(path, mask, io_depth=4 if reader == "iterable4" else 1)

                    def epoch(src=src):
                        total = n = 0
                        for s in src:
                            total += _touch(s)
                            n += 1
                        return n, total

                epoch()  # untimed: indexes loaded, shards opened once
                walls, cpus = [], []
                for _ in range(epochs):
                    w0, c0 = time.perf_counter(), time.process_time()
                    n, total = epoch()
                    walls.append(time.perf_counter() - w0)
                    cpus.append(time.process_time() - c0)
                rows.append({"dataset": name, "ratio": ratio, "reader": reader, "samples": n, "bytes": total,
                             "wall_s": min(walls), "cpu_s": min(cpus)})
    return rows


def measure_micro(datasets: dict[str, str], baseline_byterange: str, repeats: int) -> list[dict[str, Any]]:
    """The ``micro`` rows (see the module docstring): baseline vs this interpreter's ``byterange``, alternating."""
    # imported here: this runs in a worker interpreter whose PYTHONPATH picks the tree measured
    import streamprune.readers.byterange as current
    from streamprune.manifest import Manifest

    spec = importlib.util.spec_from_file_location("streamprune.readers._baseline_byterange", baseline_byterange)
    baseline = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = baseline  # type: ignore[union-attr]
    spec.loader.exec_module(baseline)  # type: ignore[union-attr]
    modules = {"baseline": baseline, "current": current}
    rows = []
    for name, path in datasets.items():
        manifest = Manifest.load(path)
        parts = []
        for k in range(len(manifest.shards)):
            index = manifest.index(k)
            n = len(index)
            fifth = np.sort(np.random.default_rng(k).choice(n, max(1, n // 5), replace=False))
            parts.append((manifest.shard_path(k), index, np.arange(n), fifth))
        shards = {key: [mod.ShardFile(p, index) for p, index, _, _ in parts] for key, mod in modules.items()}

        def run(mod, files, work, parts=parts):
            count = 0
            for shard, (_, _, everything, fifth) in zip(files, parts):
                if work == "read_sample":
                    for pos in range(len(everything)):
                        count += len(mod.read_sample(shard, pos, "u"))
                else:
                    for sample in mod.read_runs(shard, everything if work == "read_runs keep 1.0" else fifth, "u"):
                        count += len(sample)
            return count

        for work in ("read_sample", "read_runs keep 1.0", "read_runs keep 0.2"):
            assert run(baseline, shards["baseline"], work) == run(current, shards["current"], work)
            times: dict[str, list[float]] = {"baseline": [], "current": []}
            gc.disable()
            for _ in range(repeats):
                for key, mod in modules.items():
                    c0 = time.process_time()
                    run(mod, shards[key], work)
                    times[key].append(time.process_time() - c0)
            gc.enable()
            row = {"dataset": name, "work": work}
            for key, values in times.items():
                values.sort()
                row[key] = {"min_s": values[0], "p25_s": values[len(values) // 4], "median_s": values[len(values) // 2]}
            rows.append(row)
        for files in shards.values():
            for shard in files:
                shard.close()
    return rows


def _commit(tree: str) -> str:
    """``git rev-parse HEAD`` of ``tree`` (``+dirty`` with uncommitted changes), or ``"unknown"``."""
    try:
        head = subprocess.run(["git", "-C", tree, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", tree, "status", "--porcelain", "streamprune"], capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        meta = os.path.join(tree, "COMMIT")  # an exported tree (git archive) records it here
        return open(meta).read().strip() if os.path.exists(meta) else "unknown"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the rounds and write the results (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reader_core_measure", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of a streamprune checkout (repeatable)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per reader and round (the fastest counts)")
    parser.add_argument("--jpeg-mb", type=float, default=256)
    parser.add_argument("--small-mb", type=float, default=64)
    parser.add_argument("--data", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "streamprune-reader-core"))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "reader_core.json"))
    parser.add_argument("--micro-repeats", type=int, default=60)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON {name: dataset dir}: measure once, print rows
    parser.add_argument("--micro-baseline", help=argparse.SUPPRESS)  # with --worker: the micro rows against this byterange.py
    args = parser.parse_args(argv)
    if args.worker:
        datasets = json.loads(args.worker)
        rows = measure_micro(datasets, args.micro_baseline, args.micro_repeats) if args.micro_baseline else measure(datasets, args.epochs)
        print(json.dumps(rows))
        return {}
    # deferred: the worker mode above must not import this tree's streamprune
    from . import jpegdata, provenance, resultsfile, stats

    provenance.set_command("python -m benchmarks.reader_core_measure", sys.argv[1:] if argv is None else argv)

    trees = dict(t.split("=", 1) for t in args.tree) or {"this": os.getcwd()}
    manifest = jpegdata.make_jpeg_shards(os.path.join(args.data, "jpeg"), args.jpeg_mb, log=lambda *a: print(*a, file=sys.stderr))
    datasets = {"jpeg": os.path.dirname(manifest.path), "small": make_small_shards(os.path.join(args.data, "small"), args.small_mb)}
    script = os.path.abspath(__file__)
    runs: dict[str, list[list[dict]]] = {name: [] for name in trees}
    loads = []
    for round_ in range(args.repeats):
        order = list(trees)
        random.Random(round_).shuffle(order)
        for name in order:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(trees[name]))
            out = subprocess.run([sys.executable, script, "--worker", json.dumps(datasets), "--epochs", str(args.epochs)], env=env, capture_output=True,
                                 text=True, check=True, cwd=os.path.abspath(trees[name]))
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            loads.append(os.getloadavg())
            print(f"round {round_ + 1}/{args.repeats}: {name} done", file=sys.stderr)
    rows = []
    for name, per_round in runs.items():
        for j, first in enumerate(per_round[0]):
            wall = [r[j]["wall_s"] for r in per_round]
            cpu = [r[j]["cpu_s"] for r in per_round]
            rows.append({"tree": name, **{k: first[k] for k in ("dataset", "ratio", "reader", "samples", "bytes")},
                         "wall_s_median": stats.median(wall), "cpu_s_median": stats.median(cpu),
                         "wall_s": wall, "cpu_s": cpu})
    micro = []
    if len(trees) >= 2 and args.micro_repeats > 0:
        base, last = list(trees.values())[0], list(trees.values())[-1]
        env = dict(os.environ, PYTHONPATH=os.path.abspath(last))
        out = subprocess.run([sys.executable, script, "--worker", json.dumps(datasets), "--micro-repeats", str(args.micro_repeats),
                              "--micro-baseline", os.path.join(os.path.abspath(base), "streamprune", "readers", "byterange.py")],
                             env=env, capture_output=True, text=True, check=True, cwd=os.path.abspath(last))
        micro = json.loads(out.stdout.strip().splitlines()[-1])
        for row in micro:
            row["current_over_baseline_min"] = row["current"]["min_s"] / row["baseline"]["min_s"]
            row["current_over_baseline_p25"] = row["current"]["p25_s"] / row["baseline"]["p25_s"]
        loads.append(os.getloadavg())
    # the commit of this checkout (the harness), and of each measured tree
    results = {**provenance.provenance(), "setup": vars(args) | {"datasets": datasets},
               "commits": {name: _commit(path) for name, path in trees.items()},
               "loadavg": loads, "rows": rows,
               "micro": {"baseline": list(trees)[0], "current": list(trees)[-1], "rows": micro}}
    resultsfile.write_json(args.out, results)
    for row in rows:
        print(f"{row['tree']:>8} {row['dataset']:>6} r={row['ratio']:.1f} {row['reader']:>9}: "
              f"wall {row['wall_s_median'] * 1e3:7.1f} ms (min {min(row['wall_s']) * 1e3:7.1f})  "
              f"cpu {row['cpu_s_median'] * 1e3:7.1f} ms (min {min(row['cpu_s']) * 1e3:7.1f})  ({row['samples']} samples)")
    for row in micro:
        print(f"micro {row['dataset']:>6} {row['work']:>18}: {list(trees)[0]} min {row['baseline']['min_s'] * 1e3:7.2f} ms, "
              f"{list(trees)[-1]} min {row['current']['min_s'] * 1e3:7.2f} ms: x{row['current_over_baseline_min']:.3f} "
              f"(p25 x{row['current_over_baseline_p25']:.3f})")
    return results


if __name__ == "__main__":
    main()
