"""Indexing benchmark: members/s when indexing existing tar shards, warm page cache.

Datasets:
  small  shards written by ``webdataset.TarWriter`` with many small members (default 200k
         members: 100k samples of a ``.txt`` of 100-1000 random bytes + a ``.cls`` label, over
         8 shards), so tar header parsing dominates;
  jpeg   the big JPEG shards of ``io_bench.py`` (~120 KB per image), when present (or
         generated with --jpeg).

Measured, each a median of --repeats runs on a warm page cache (files read beforehand):
  walk          ``tarindex.iter_tar_members`` over every shard (header walk only);
  index_tar     ``tarindex.index_tar(path, label_ext="cls")`` per shard (walk + grouping into
                samples + reading each label);
  index_shards  ``indexing.index_shards(paths, out_dir, checksum=False)``: the user-facing
                call (index_tar + writing index sidecars + manifest);
  index_shards+sha256  the same with ``checksum=True`` (SHA-256 of every shard byte).
  index_shards-wN  ``index_shards(..., checksum=False, workers=N)`` with N = the CPU count
                (shards indexed in parallel processes: what ``streamprune index`` does by
                default).

Target (from the issue): >= 100k members/s warm, checked on index_tar, on index_shards
without checksum in one process, and on index_shards-wN (the CLI default); every mode is
reported.

Run:  python -m benchmarks index          (~1-2 min)
      python -m benchmarks index --quick
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import common
from .suite import Suite, Target, targets_table

GENERATOR_VERSION = 1
TARGET_MEMBERS_PER_S = 100_000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The suite's options (``python -m benchmarks index --help``)."""
    p = common.arg_parser("index", __doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.path.join(common.DEFAULT_DATA, "index_small"), help="where the small-member shards live")
    p.add_argument("--members", type=int, default=200_000, help="members in the small-member dataset (default 200000)")
    p.add_argument("--shards", type=int, default=8, help="shards in the small-member dataset (default 8)")
    p.add_argument(
        "--jpeg-dir",
        default=os.path.join(common.DEFAULT_DATA, "io_jpeg_512mb"),
        help="io_bench's JPEG shards (skipped if missing, unless --jpeg)",
    )
    p.add_argument("--jpeg", action="store_true", help="generate the JPEG shards if missing (512 MiB, ~30 s)")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement (default 3, median reported)")
    p.add_argument("--quick", action="store_true", help="20k members, 2 repeats, no JPEG set: a smoke run")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results, or results/quick with --quick)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.members = min(args.members, 20_000)
        args.shards = min(args.shards, 4)
        args.repeats = min(args.repeats, 2)
        args.data_dir = os.path.join(common.DEFAULT_DATA, "index_small_quick")
        args.jpeg_dir = None
    if args.out is None:
        args.out = os.path.join(common.DEFAULT_RESULTS, "quick") if args.quick else common.DEFAULT_RESULTS
    return args


def make_small_shards(out_dir: str, members: int, shards: int, seed: int) -> list[str]:
    """Write ``members`` members (txt + cls per sample) with webdataset.TarWriter, or reuse them."""
    import webdataset as wds

    params = {"generator_version": GENERATOR_VERSION, "members": members, "shards": shards, "seed": seed}
    meta_path = os.path.join(out_dir, "bench_meta.json")
    paths = [os.path.join(out_dir, "tars", f"small-{k:04d}.tar") for k in range(shards)]
    if os.path.exists(meta_path) and all(os.path.exists(p) for p in paths):
        with open(meta_path) as fh:
            if json.load(fh).get("params") == params:
                print(f"reusing {out_dir}")
                return paths
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(os.path.join(out_dir, "tars"))
    rng = np.random.default_rng(seed)
    samples = members // 2
    sizes = rng.integers(100, 1001, samples)
    blob = rng.integers(32, 127, int(sizes.max()) + 4096, dtype=np.uint8).tobytes()
    per_shard = -(-samples // shards)
    t0 = time.perf_counter()
    i = 0
    for k, path in enumerate(paths):
        with wds.TarWriter(path) as sink:
            for _ in range(min(per_shard, samples - i)):
                off = int(rng.integers(0, 4096))
                sink.write({"__key__": f"s{i:09d}", "txt": blob[off : off + int(sizes[i])], "cls": str(int(i % 1000)).encode()})
                i += 1
    os.sync()
    with open(meta_path, "w") as fh:
        json.dump({"params": params}, fh)
    print(f"wrote {i} samples ({2 * i} members) in {shards} shards with webdataset.TarWriter in {time.perf_counter() - t0:.1f} s")
    return paths


def count_members(paths) -> int:
    from streamprune.tarindex import iter_tar_members

    return sum(1 for p in paths for _ in iter_tar_members(p))


def measure(name: str, fn, paths, repeats: int, members: int) -> dict:
    times = []
    for _ in range(repeats):
        common.warm(paths)
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = common.median(times)
    nbytes = sum(os.path.getsize(p) for p in paths)
    return {
        "mode": name,
        "seconds": times,
        "median_seconds": med,
        "members": members,
        "members_per_s": members / med,
        "MB_per_s": nbytes / med / 1e6,
    }


def bench_dataset(label: str, paths: list[str], work_dir: str, repeats: int) -> dict:
    from streamprune.indexing import index_shards
    from streamprune.tarindex import index_tar, iter_tar_members

    members = count_members(paths)
    nbytes = sum(os.path.getsize(p) for p in paths)
    out_dir = os.path.join(work_dir, f"index_out_{label}")

    def walk():
        for p in paths:
            for _ in iter_tar_members(p):
                pass

    def tar():
        for p in paths:
            index_tar(p, label_ext="cls")

    def shards(checksum, workers=1):
        def run():
            shutil.rmtree(out_dir, ignore_errors=True)
            index_shards(paths, out_dir, label_ext="cls", checksum=checksum, progress=False, workers=workers)

        return run

    cores = os.cpu_count() or 1
    modes = [("walk", walk), ("index_tar", tar), ("index_shards", shards(False)), ("index_shards+sha256", shards(True)),
             (f"index_shards-w{cores}", shards(False, cores))]
    rows = []
    for name, fn in modes:
        row = measure(name, fn, paths, repeats, members)
        row["dataset"] = label
        rows.append(row)
        print(f"  {label:6s} {name:20s} {row['members_per_s'] / 1e3:8.1f}k members/s  {row['MB_per_s']:8.1f} MB/s  "
              f"(median {row['median_seconds']:.3f} s of {', '.join(f'{t:.3f}' for t in row['seconds'])})", flush=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"dataset": label, "shards": len(paths), "members": members, "bytes": nbytes, "mean_member_bytes": nbytes / max(members, 1), "rows": rows}


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure (options as :func:`parse_args`), write ``index_bench.json``, print the tables; return the results."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    machine = common.machine_info()
    print(f"index_bench: {machine['cpu_count']} cores, python {machine['python']}")
    small = make_small_shards(args.data_dir, args.members, args.shards, args.seed)
    results = [bench_dataset("small", small, args.data_dir, args.repeats)]
    if args.jpeg_dir:
        if args.jpeg and not os.path.exists(os.path.join(args.jpeg_dir, "manifest.json")):
            common.make_jpeg_shards(args.jpeg_dir, 512, 1000)
        if os.path.exists(os.path.join(args.jpeg_dir, "manifest.json")):
            from streamprune import Manifest

            m = Manifest.load(args.jpeg_dir)
            jpeg_paths = [m.shard_path(k) for k in range(len(m.shards))]
            results.append(bench_dataset("jpeg", jpeg_paths, os.path.join(common.DEFAULT_DATA, "index_jpeg_tmp"), args.repeats))
            shutil.rmtree(os.path.join(common.DEFAULT_DATA, "index_jpeg_tmp"), ignore_errors=True)
        else:
            print(f"no JPEG shards in {args.jpeg_dir}: run io_bench.py first or pass --jpeg")
    targets = []
    for res in results:
        for row in res["rows"]:
            if row["mode"] == "index_tar" or row["mode"].startswith("index_shards") and "sha256" not in row["mode"]:
                what = {
                    "index_tar": "index_tar (walk + samples + labels)",
                    "index_shards": "index_shards (no checksum; + sidecars, manifest)",
                }.get(row["mode"], f"{row['mode']} (no checksum, {row['mode'].rsplit('-w', 1)[-1]} processes)")
                targets.append(Target.check(
                    f"{res['dataset']} shards: {what} >= 100k members/s warm", round(row["members_per_s"]), TARGET_MEMBERS_PER_S,
                ).to_dict())
    out = {
        "benchmark": "index_bench",
        "command": common.command_line(),
        "args": vars(args),
        "machine": machine,
        "cache": "warm (every shard read completely before each run)",
        "datasets": results,
        "targets": targets,
        "total_seconds": time.perf_counter() - t_start,
    }
    path = os.path.join(args.out, "index_bench.json")
    common.write_json(path, out)
    print()
    table = []
    for res in results:
        for row in res["rows"]:
            table.append([
                res["dataset"],
                row["mode"],
                f"{res['members']}",
                f"{res['mean_member_bytes']:.0f}",
                f"{row['median_seconds']:.3f}",
                f"{row['members_per_s'] / 1e3:.1f}k",
                f"{row['MB_per_s']:.0f}",
            ])
    print(common.markdown_table(["dataset", "mode", "members", "bytes/member", "t (s)", "members/s", "MB/s"], table, "llrrrrr"))
    print()
    print(targets_table([Target.from_dict(t) for t in targets]))
    print(f"\nwrote {path}  (total {out['total_seconds']:.0f} s)")
    return out


def tables(results: dict[str, Any]) -> str:
    """Members/s per dataset and mode."""
    rows = []
    for ds in results["datasets"]:
        for row in ds["rows"]:
            rows.append([ds["dataset"], row["mode"], common.fmt_num(row["members"]), f"{row['median_seconds']:.3f}",
                         f"{row['members_per_s'] / 1e3:.1f}k"])
    return f"Cache: {results.get('cache', 'warm')}.\n\n" + common.markdown_table(
        ["dataset", "mode", "members", "t (s)", "members/s"], rows, "llrrr")


class IndexSuite(Suite):
    """``index``: members/s of ``index_tar`` / ``index_shards`` on existing tar shards (warm cache)."""
    name, title = "index", "Indexing existing tar shards"
    run, tables = staticmethod(run), staticmethod(tables)
