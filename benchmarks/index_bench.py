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
reported. (index_tar and index_shards now also compute each sample's checksum.)

Also measured (issue 10, items 2 and 22):
  hashes     per-sample checksum candidates (xxh3_64, xxh64, CRC32C when the ``crc32c``
             package is installed, zlib.crc32) on payloads of 1 KB, 100 KB and 1 MB: one call
             on the payload, and the per-sample form the readers use (a streaming hash over the
             payload + a 1-byte label member); GB/s, median of --repeats rounds;
  sidecars   per shard of the small set: bytes per sample of the JSON sidecar (before: without
             checksums, after: with) and of the binary companion (before: the version-1 layout,
             int64 columns, rebuilt here from a frozen copy of its writer and loader; after:
             version 2); and ``load_index`` ms per shard with each (JSON read + SHA-256 +
             companion), and from the JSON alone; median over shards of the median of repeats.

Run:  python -m benchmarks index          (~1-2 min)
      python -m benchmarks index --quick
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import time
import zlib
from typing import Any

import numpy as np

from . import jpegdata, mdtable, pagecache, provenance, resultsfile, stats
from .suite import Suite, Target

GENERATOR_VERSION = 1
TARGET_MEMBERS_PER_S = 100_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The suite's own options (``python -m benchmarks index --help``; ``--data-dir``: the small-member shards)."""
    p.add_argument("--members", type=int, default=200_000, help="members in the small-member dataset (default 200000)")
    p.add_argument("--shards", type=int, default=8, help="shards in the small-member dataset (default 8)")
    p.add_argument(
        "--jpeg-dir",
        default=os.path.join(resultsfile.DEFAULT_DATA, "io_jpeg_512mb"),
        help="io_bench's JPEG shards (skipped if missing, unless --jpeg)",
    )
    p.add_argument("--jpeg", action="store_true", help="generate the JPEG shards if missing (512 MiB, ~30 s)")
    p.add_argument("--repeats", type=int, default=5, help="runs per measurement (default 5, median reported; fewer are never 'met')")


def configure(args: argparse.Namespace) -> argparse.Namespace:
    """``--quick``: 20k members, 2 repeats, no JPEG set."""
    if args.quick:
        args.members = min(args.members, 20_000)
        args.shards = min(args.shards, 4)
        args.repeats = min(args.repeats, 2)
        args.data_dir = os.path.join(resultsfile.DEFAULT_DATA, "index_small_quick")
        args.jpeg_dir = None
    return args


def make_small_shards(out_dir: str, members: int, shards: int, seed: int) -> list[str]:
    """Write ``members`` members (txt + cls per sample) with webdataset.TarWriter, or reuse them."""
    import webdataset as wds  # deferred: only the data generator needs webdataset

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
    for path in paths:
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
    from streamprune.tarindex import iter_tar_members  # deferred: the suite registry imports this module cheaply

    return sum(1 for p in paths for _ in iter_tar_members(p))


def measure(name: str, fn, paths, repeats: int, members: int) -> dict:
    times = []
    for _ in range(repeats):
        pagecache.warm(paths)
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = stats.median(times)
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
    from streamprune.indexing import index_shards  # deferred: the suite registry imports this module cheaply
    from streamprune.tarindex import index_tar, iter_tar_members  # deferred: as above

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

    def tar_headers_only():
        # without per-sample checksums: the walk never touches member data (the cost of checksums
        # is the difference to index_tar)
        for p in paths:
            index_tar(p, label_ext="cls", sample_checksums=False)

    def shards(checksum, workers=1):
        def run():
            shutil.rmtree(out_dir, ignore_errors=True)
            index_shards(paths, out_dir, label_ext="cls", checksum=checksum, progress=False, workers=workers)

        return run

    cores = os.cpu_count() or 1
    modes = [("walk", walk), ("index_tar", tar), ("index_tar-no-sample-checksums", tar_headers_only), ("index_shards", shards(False)),
             ("index_shards+sha256", shards(True)),
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


HASH_SIZES = (1_000, 100_000, 1_000_000)


def hash_candidates() -> dict[str, Any]:
    """Name -> ``(one_shot(data) -> int, new_streaming_hasher or None)`` for each installed candidate."""
    import xxhash  # deferred: a dependency of streamprune, but only this section needs it here

    out: dict[str, Any] = {
        "xxh3_64": (xxhash.xxh3_64_intdigest, xxhash.xxh3_64),
        "xxh64": (xxhash.xxh64_intdigest, xxhash.xxh64),
        "zlib.crc32": (zlib.crc32, None),
    }
    try:
        import crc32c  # deferred and optional: measured when installed, never required
    except ImportError:
        print("crc32c not installed: CRC32C not measured (pip install crc32c)")
    else:
        out["crc32c"] = (crc32c.crc32c, None)
    return out


def bench_hashes(repeats: int) -> list[dict]:
    """GB/s of each checksum candidate, one call and per sample (payload + 1-byte label member)."""
    rows = []
    rng = np.random.default_rng(0)
    for size in HASH_SIZES:
        parts = [rng.integers(0, 256, size, dtype=np.uint8).tobytes(), b"7"]
        calls = max(20, 20_000_000 // size)
        for name, (one, new) in hash_candidates().items():
            if new is not None:
                def per_sample(parts=parts, new=new):
                    h = new()
                    for p in parts:
                        h.update(p)
                    return h.intdigest()
            else:
                def per_sample(parts=parts, one=one):
                    v = 0
                    for p in parts:
                        v = one(p, v)
                    return v
            row = {"algorithm": name, "payload_bytes": size}
            for mode, fn, arg in (("one_call", one, parts[0]), ("per_sample", per_sample, None)):
                times = []
                for _ in range(max(repeats, 3)):
                    t0 = time.perf_counter()
                    if arg is None:
                        for _ in range(calls):
                            fn()
                    else:
                        for _ in range(calls):
                            fn(arg)
                    times.append((time.perf_counter() - t0) / calls)
                med = stats.median(times)
                row[f"{mode}_GB_per_s"] = size / med / 1e9
                row[f"{mode}_us"] = med * 1e6
            rows.append(row)
            print(f"  hash {name:10s} {size:>9,d} B  {row['one_call_GB_per_s']:6.2f} GB/s one call, "
                  f"{row['per_sample_GB_per_s']:6.2f} GB/s per sample ({row['per_sample_us']:.2f} us)", flush=True)
    return rows


def save_companion_v1(index: Any, path: str, json_sha256: str) -> None:
    """The version-1 companion writer (int64 columns), frozen here to measure "before"."""
    extensions: list[str] = []
    counts, ext_col, offset_col, size_col = [], [], [], []
    for group in index.members:
        counts.append(len(group))
        for ext, offset, size in group:
            if ext not in extensions:
                extensions.append(ext)
            ext_col.append(extensions.index(ext))
            offset_col.append(offset)
            size_col.append(size)
    first = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=first[1:])
    meta = {"format": "streamprune-index-companion", "version": 1, "json_sha256": json_sha256, "shard": index.shard,
            "shard_bytes": int(index.shard_bytes), "sha256": index.sha256, "extensions": extensions, "num_samples": len(index)}
    with open(path, "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta)), keys=np.frombuffer("\0".join(index.keys).encode(), dtype=np.uint8),
                 labels=np.asarray(index.labels, dtype=np.int64), start=np.asarray(index.start, dtype=np.int64),
                 end=np.asarray(index.end, dtype=np.int64), member_first=first, member_ext=np.asarray(ext_col, dtype=np.int32),
                 member_offset=np.asarray(offset_col, dtype=np.int64), member_size=np.asarray(size_col, dtype=np.int64))


def load_index_v1(json_path: str, companion: str) -> Any:
    """``load_index`` as it was with a version-1 companion (JSON read + SHA-256 + int64 columns), frozen."""
    from streamprune.shardindex import MemberTable, ShardIndex  # deferred: the suite registry imports this module cheaply

    with open(json_path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    with np.load(companion, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        assert meta["json_sha256"] == digest
        a = {n: z[n] for n in ("keys", "labels", "start", "end", "member_first", "member_ext", "member_offset", "member_size")}
    keys = a["keys"].tobytes().decode("utf-8").split("\0") if meta["num_samples"] else []
    return ShardIndex(meta["shard"], int(meta["shard_bytes"]), keys, a["labels"], a["start"], a["end"],
                      MemberTable(a["member_first"], a["member_ext"], a["member_offset"], a["member_size"], meta["extensions"]))


def bench_sidecars(paths: list[str], work_dir: str, repeats: int) -> dict:
    """Bytes per sample and load ms per shard of the index sidecars, before (v1) and after (v2)."""
    from streamprune.atomic import file_sha256  # deferred: as above
    from streamprune.indexfile import companion_path, load_index, save_index  # deferred: as above
    from streamprune.tarindex import index_tar  # deferred: as above

    out_dir = os.path.join(work_dir, "sidecars")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(os.path.join(out_dir, "before"))
    os.makedirs(os.path.join(out_dir, "after"))
    per_shard = []
    for p in paths:
        index = index_tar(p, label_ext="cls")
        name = os.path.basename(p) + ".index.json"
        after_json = os.path.join(out_dir, "after", name)
        save_index(index, after_json)
        before_json = os.path.join(out_dir, "before", name)
        index.checksums, index.checksum_algorithm = None, ""
        digest = save_index(index, before_json, companion=False)
        save_companion_v1(index, companion_path(before_json), digest)
        n = len(index)
        times: dict[str, list[float]] = {"before": [], "after": [], "bound": [], "json_only": []}
        bound_digest = file_sha256(companion_path(after_json))  # as the manifest records it (companion_sha256)
        json_only = os.path.join(out_dir, "after", "json-only-" + name)  # no companion beside it: the JSON is parsed
        shutil.copyfile(after_json, json_only)
        loaders = {"before": (load_index_v1, (before_json, companion_path(before_json))),
                   "after": (load_index, (after_json,)),
                   "bound": (lambda path, digest: load_index(path, companion_sha256=digest), (after_json, bound_digest)),
                   "json_only": (load_index, (json_only,))}
        assert load_index(after_json).keys == load_index_v1(before_json, companion_path(before_json)).keys
        for _ in range(max(repeats, 5)):
            for mode, (fn, fn_args) in loaders.items():
                gc.collect()
                t0 = time.perf_counter()
                fn(*fn_args)
                times[mode].append(time.perf_counter() - t0)
        per_shard.append({
            "shard": os.path.basename(p),
            "samples": n,
            "json_bytes_per_sample": {"before": os.path.getsize(before_json) / n, "after": os.path.getsize(after_json) / n},
            "companion_bytes_per_sample": {"before": os.path.getsize(companion_path(before_json)) / n,
                                           "after": os.path.getsize(companion_path(after_json)) / n},
            "load_ms": {mode: stats.median(ts) * 1e3 for mode, ts in times.items()},
            # what an epoch start reads per sample: the JSON and the companion (bound by the JSON's
            # digest), or the companion alone when the manifest binds it
            "read_bytes_per_sample": {
                "before": (os.path.getsize(before_json) + os.path.getsize(companion_path(before_json))) / n,
                "after": (os.path.getsize(after_json) + os.path.getsize(companion_path(after_json))) / n,
                "bound": os.path.getsize(companion_path(after_json)) / n,
            },
        })
    shutil.rmtree(out_dir, ignore_errors=True)
    keys_bytes = sum(len(k.encode()) + 1 for k in load_index_keys(paths[0])) / max(per_shard[0]["samples"], 1)

    def med(field: str, mode: str) -> float:
        return stats.median([row[field][mode] for row in per_shard])

    summary = {
        "samples_per_shard": stats.median([row["samples"] for row in per_shard]),
        "key_bytes_per_sample": keys_bytes,
        "json_bytes_per_sample": {m: med("json_bytes_per_sample", m) for m in ("before", "after")},
        "companion_bytes_per_sample": {m: med("companion_bytes_per_sample", m) for m in ("before", "after")},
        "load_ms_per_shard": {m: med("load_ms", m) for m in ("before", "after", "bound", "json_only")},
        "read_bytes_per_sample": {m: med("read_bytes_per_sample", m) for m in ("before", "after", "bound")},
    }
    print(f"  sidecars: JSON {summary['json_bytes_per_sample']['before']:.1f} -> {summary['json_bytes_per_sample']['after']:.1f} B/sample, "
          f"companion {summary['companion_bytes_per_sample']['before']:.1f} -> {summary['companion_bytes_per_sample']['after']:.1f} "
          f"B/sample (keys {keys_bytes:.1f}); load_index {summary['load_ms_per_shard']['before']:.2f} -> "
          f"{summary['load_ms_per_shard']['after']:.2f} ms/shard (JSON alone {summary['load_ms_per_shard']['json_only']:.2f})", flush=True)
    return {"summary": summary, "shards": per_shard}


def load_index_keys(path: str) -> list[str]:
    """The keys of one shard (for the key bytes per sample)."""
    from streamprune.tarindex import index_tar  # deferred: the suite registry imports this module cheaply

    return index_tar(path, sample_checksums=False).keys


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure (options as :func:`add_arguments`, after :func:`configure`); the results, targets by :func:`index_targets`."""
    t_start = time.perf_counter()
    machine = provenance.machine_info()
    print(f"index_bench: {machine['cpu_count']} cores, python {machine['python']}")
    small = make_small_shards(args.data_dir, args.members, args.shards, args.seed)
    hashes = bench_hashes(args.repeats)
    sidecars = bench_sidecars(small, args.data_dir, args.repeats)
    results = [bench_dataset("small", small, args.data_dir, args.repeats)]
    if args.jpeg_dir:
        if args.jpeg and not os.path.exists(os.path.join(args.jpeg_dir, "manifest.json")):
            jpegdata.make_jpeg_shards(args.jpeg_dir, 512, 1000)
        if os.path.exists(os.path.join(args.jpeg_dir, "manifest.json")):
            from streamprune import Manifest  # deferred: the suite registry imports this module cheaply

            m = Manifest.load(args.jpeg_dir)
            jpeg_paths = [m.shard_path(k) for k in range(len(m.shards))]
            results.append(bench_dataset("jpeg", jpeg_paths, os.path.join(resultsfile.DEFAULT_DATA, "index_jpeg_tmp"), args.repeats))
            shutil.rmtree(os.path.join(resultsfile.DEFAULT_DATA, "index_jpeg_tmp"), ignore_errors=True)
        else:
            print(f"no JPEG shards in {args.jpeg_dir}: run io_bench.py first or pass --jpeg")
    out = {
        "benchmark": "index_bench",
        "command": provenance.command_line(),
        "args": vars(args),
        "machine": machine,
        "cache": "warm (every shard read completely before each run)",
        "datasets": results,
        "hashes": hashes,
        "sidecars": sidecars,
        "total_seconds": time.perf_counter() - t_start,
    }
    return out


def index_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Members/s of the indexing modes against 100k/s, judged on the range over the repeats."""
    targets = []
    for res in results["datasets"]:
        for row in res["rows"]:
            if row["mode"] == "index_tar" or row["mode"].startswith("index_shards") and "sha256" not in row["mode"]:
                what = {
                    "index_tar": "index_tar (walk + samples + labels)",
                    "index_shards": "index_shards (no checksum; + sidecars, manifest)",
                }.get(row["mode"], f"{row['mode']} (no checksum, {row['mode'].rsplit('-w', 1)[-1]} processes)")
                runs = [row["members"] / s for s in row.get("seconds") or [] if s > 0]
                targets.append(Target.check(
                    f"{res['dataset']} shards: {what} >= 100k members/s warm", round(row["members_per_s"]), TARGET_MEMBERS_PER_S,
                    interval=(min(runs), max(runs)) if len(runs) > 1 else None, rounds=len(runs) or None,
                ).to_dict())
    return targets


def hash_table(rows: list[dict]) -> str:
    """GB/s per checksum candidate and payload size."""
    return mdtable.markdown_table(
        ["algorithm", "payload", "one call GB/s", "per sample GB/s", "per sample us"],
        [[r["algorithm"], f"{r['payload_bytes']:,d} B", f"{r['one_call_GB_per_s']:.2f}", f"{r['per_sample_GB_per_s']:.2f}",
          f"{r['per_sample_us']:.2f}"] for r in rows], "lrrrr")


def sidecar_table(sidecars: dict) -> str:
    """Index sidecar bytes per sample and load time per shard, before and after."""
    s = sidecars["summary"]
    rows = [
        ["JSON sidecar bytes/sample", f"{s['json_bytes_per_sample']['before']:.1f}", f"{s['json_bytes_per_sample']['after']:.1f}"],
        ["companion bytes/sample", f"{s['companion_bytes_per_sample']['before']:.1f}", f"{s['companion_bytes_per_sample']['after']:.1f}"],
        ["load_index ms/shard", f"{s['load_ms_per_shard']['before']:.2f}", f"{s['load_ms_per_shard']['after']:.2f}"],
        ["load_index ms/shard, JSON alone", "", f"{s['load_ms_per_shard']['json_only']:.2f}"],
    ]
    if "bound" in s["load_ms_per_shard"]:  # results from before the manifest bound the companion lack it
        rows += [
            ["load_index ms/shard, companion bound by the manifest", "", f"{s['load_ms_per_shard']['bound']:.2f}"],
            ["bytes read per sample at an epoch start", f"{s['read_bytes_per_sample']['before']:.1f}",
             f"{s['read_bytes_per_sample']['after']:.1f} (bound: {s['read_bytes_per_sample']['bound']:.1f})"],
        ]
    return (f"{s['samples_per_shard']:.0f} samples per shard, {s['key_bytes_per_sample']:.1f} key bytes per sample "
            "(before: JSON without checksums, companion v1; after: JSON with checksums, companion v2)\n\n"
            + mdtable.markdown_table(["", "before", "after"], rows, "lrr"))


def tables(results: dict[str, Any]) -> str:
    """Members/s per dataset and mode; checksum throughput; sidecar sizes and load times."""
    rows = []
    for ds in results["datasets"]:
        for row in ds["rows"]:
            rows.append([ds["dataset"], row["mode"], mdtable.fmt_num(row["members"]), f"{ds['mean_member_bytes']:.0f}",
                         f"{row['median_seconds']:.3f}", f"{row['members_per_s'] / 1e3:.1f}k", f"{row['MB_per_s']:.0f}"])
    out = f"Cache: {results.get('cache', 'warm')}.\n\n" + mdtable.markdown_table(
        ["dataset", "mode", "members", "bytes/member", "t (s)", "members/s", "MB/s"], rows, "llrrrrr")
    if results.get("hashes"):
        out += "\n\nPer-sample checksum candidates:\n\n" + hash_table(results["hashes"])
    if results.get("sidecars"):
        out += "\n\nIndex sidecars:\n\n" + sidecar_table(results["sidecars"])
    return out


class IndexSuite(Suite):
    """``index``: members/s of ``index_tar`` / ``index_shards`` on existing tar shards (warm cache)."""
    name, title = "index", "Indexing existing tar shards"
    data_name = "index_small"
    measures = ("streamprune/tarindex.py", "streamprune/indexing.py", "streamprune/indexfile.py", "streamprune/shardindex.py",
                "streamprune/kernels.py")
    add_arguments, configure, measurement = staticmethod(add_arguments), staticmethod(configure), staticmethod(run)
    tables = staticmethod(tables)

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        """The targets from the stored rows (:func:`index_targets`)."""
        return {**results, "targets": index_targets(results)}
