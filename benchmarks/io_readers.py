"""io_bench's reader rows (``python -m benchmarks io --only readers``): raw kept samples, three readers.

Each reader reads the raw bytes of the same kept samples (io_bench's sample-level masks,
``random_mask(manifest, r, level="sample", seed=seed + 1)``), in manifest order, in this
process, warm and cold:

  streamprune      ``PrunedWebDataset(manifest, mask_file)``, iterated (io_bench's streamprune rows);
  streamprune_map  ``PrunedMapDataset(manifest, mask_file)`` read the way a batching DataLoader's
                   fetcher reads it: ``ds.__getitems__(batch)`` on consecutive batches of 64 kept
                   indices (each batch is announced with ``WILLNEED``, then read);
  wids             webdataset's indexed reader, configured as its docs recommend: a shard-list
                   JSON (``wids-shard-index-v1``: url, nsamples, filesize per shard) and one
                   persistent ``wids.ShardListDataset`` opened once, read by global index at the
                   same kept samples; ``transformations=[]`` (raw bytes, no decode) and
                   ``cache_dir`` = the shards' folder, so wids reads the very files the other
                   readers read instead of copies in ``/tmp/_wids_cache``.

Every reader's dataset is built once, before the rounds, and each run times one epoch of it
(as a training loop reuses its dataset). What each keeps between epochs differs: wids keeps
the index it built on first access to each shard (a walk of the tar headers through a memory
map; timed and reported on its own, ``wids.open``); ``PrunedMapDataset`` keeps its open shards
and their indexes; ``PrunedWebDataset`` loads each shard's index again every epoch (it keeps
one at a time), and that load is in its epochs.

``raw`` as in io_bench: every ``bytes`` value's length is touched (wids hands out
``io.BytesIO``: ``getvalue()``, which returns its bytes without copying them). Cold runs
evict every file the readers open (io_bench's ``Dataset.all_files``: shards, index sidecars and
companions, manifest, mask); for wids the pages its persistent memory maps hold are dropped
first (``madvise(MADV_DONTNEED)``: mapped pages cannot be evicted), so both arms start from the
same empty cache. The wids index JSON is evicted too.

Rounds are interleaved (every config once per round, shuffled); a reader's speed relative to
wids is ``t(wids) / t(reader)`` of the same (cache, ratio), paired within a round, median with
the min-max over rounds. Results: ``OUT/io_readers.json``; ``IoSuite`` renders them and their
targets beside io_bench's own.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import mmap
import os
import random
import sys
import time
import warnings
from typing import Any

import numpy as np

from . import jpegdata, mdtable, pagecache, provenance, resultsfile, stats
from .suite import Target

READER_ROWS = ("streamprune", "streamprune_verify", "streamprune_map", "wids")
READER_ROW_LABELS = {
    "streamprune": "PrunedWebDataset, iterated",
    "streamprune_verify": "PrunedWebDataset(verify=True): every sample hashed (xxh3_64) and checked against its index checksum",
    "streamprune_map": "PrunedMapDataset, __getitems__ on batches of 64 (a batching DataLoader's fetch)",
    "wids": "wids.ShardListDataset (persistent, shard-list JSON), read by index",
}
MAP_BATCH = 64
RESULTS_NAME = "io_readers.json"
#: Warm raw kept samples at this ratio: both streamprune readers against wids.
TARGET_RATIO = 0.8
TARGET_VS_WIDS = 1.5


def wids_descriptor(manifest, path: str) -> str:
    """Write the wids shard-list JSON for ``manifest`` at ``path`` (urls relative to the shards' folder)."""
    shards = [{"url": os.path.basename(manifest.shard_path(k)), "nsamples": int(s.samples),
               "filesize": int(os.path.getsize(manifest.shard_path(k)))} for k, s in enumerate(manifest.shards)]
    desc = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "io_bench", "shardlist": shards}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(desc, fh, indent=1)
    return path


class WidsArm:
    """One persistent ``wids.ShardListDataset`` over the dataset's shards, opened and indexed once."""

    def __init__(self, manifest, desc_path: str) -> None:
        # optional: wids is not a streamprune dependency; this row runs only where it is installed
        import wids

        shard_dir = os.path.dirname(os.path.abspath(manifest.shard_path(0)))
        self.desc_path = desc_path
        self.offsets = manifest.shard_offsets
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it prints its configuration; nothing to report
            self.ds = wids.ShardListDataset(desc_path, base=shard_dir + "/", cache_dir=shard_dir, transformations=[], lru_size=max(10, len(manifest.shards)))
        self.version = getattr(wids, "__version__", provenance.package_versions(["wids"])["wids"])

    def open_all(self) -> dict:
        """Touch one sample of every shard: wids indexes each shard (tar header walk) on first access."""
        io0 = pagecache.proc_io()
        t0 = time.perf_counter()
        for off in self.offsets[:-1].tolist():
            self.ds[int(off)]
        return {"seconds": time.perf_counter() - t0, "read_bytes": pagecache.proc_io()["read_bytes"] - io0["read_bytes"]}

    def release_pages(self) -> None:
        """Unmap the pages wids's memory maps hold, so that evicting the files empties the cache."""
        for shard in self.ds.cache.lru.values():
            shard.reader.mmapped_file.madvise(mmap.MADV_DONTNEED)

    def read(self, indices: list[int]) -> tuple[int, int]:
        n = nbytes = 0
        ds = self.ds
        for i in indices:
            sample = ds[i]
            n += 1
            for value in sample.values():
                if isinstance(value, io.BytesIO):
                    nbytes += len(value.getvalue())
                elif type(value) is bytes:
                    nbytes += len(value)
        return n, nbytes


def build_streamprune(ds, ratio: float, reader: str):
    """The persistent streamprune dataset of one row, built once before the rounds (as wids's is)."""
    # heavy import, deferred: streamprune's readers load torch and webdataset
    from streamprune import PrunedMapDataset, PrunedWebDataset

    if reader == "streamprune":
        return PrunedWebDataset(ds.manifest_path, ds.mask_paths[ratio])
    if reader == "streamprune_verify":
        return PrunedWebDataset(ds.manifest_path, ds.mask_paths[ratio], verify=True)
    return PrunedMapDataset(ds.manifest_path, ds.mask_paths[ratio])


def read_streamprune(pipe) -> tuple[int, int]:
    """One epoch of a ``PrunedWebDataset`` (each shard's index is loaded as the epoch reaches it)."""
    n = nbytes = 0
    for sample in pipe:
        n += 1
        for value in sample.values():
            if type(value) is bytes:
                nbytes += len(value)
    return n, nbytes


def read_map(data) -> tuple[int, int]:
    """One epoch of a ``PrunedMapDataset``, fetched as a batching DataLoader fetches it (``__getitems__``)."""
    n = nbytes = 0
    for lo in range(0, len(data), MAP_BATCH):
        for sample in data.__getitems__(range(lo, min(lo + MAP_BATCH, len(data)))):
            n += 1
            for value in sample.values():
                if type(value) is bytes:
                    nbytes += len(value)
    return n, nbytes


def run_once(reader: str, cache: str, ratio: float, ds, kept_global: dict, wids_arm: WidsArm | None, arms: dict) -> dict:
    files = ds.all_files(ratio) + ([wids_arm.desc_path] if wids_arm is not None else [])
    if cache == "cold":
        if wids_arm is not None:
            wids_arm.release_pages()
        pagecache.evict(files)
    else:
        pagecache.warm(files)
    gc.collect()
    io0 = pagecache.proc_io()
    c0 = time.process_time()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if reader in ("streamprune", "streamprune_verify"):
            n, nbytes = read_streamprune(arms[(reader, ratio)])
        elif reader == "streamprune_map":
            n, nbytes = read_map(arms[(reader, ratio)])
        else:
            n, nbytes = wids_arm.read(kept_global[ratio])  # type: ignore[union-attr]
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    io1 = pagecache.proc_io()
    if n != ds.kept[ratio]:
        raise AssertionError(f"{reader} {cache} r={ratio}: {n} samples, expected {ds.kept[ratio]}")
    return {"reader": reader, "cache": cache, "ratio": ratio, "seconds": seconds, "cpu_seconds": cpu, "samples": n,
            "samples_per_s": n / seconds, "payload_bytes": nbytes, "read_bytes": io1["read_bytes"] - io0["read_bytes"],
            "rchar": io1["rchar"] - io0["rchar"], "syscr": io1["syscr"] - io0["syscr"], "loadavg_1min": os.getloadavg()[0]}


def summarize(runs: list[dict], data_bytes: int, kept_bytes: dict) -> list[dict]:
    """One row per (reader, cache, ratio): medians, read fraction, and time relative to wids paired per round."""
    rows = []
    by = {}
    for r in runs:
        by.setdefault((r["reader"], r["cache"], r["ratio"]), {})[r["round"]] = r
    for (reader, cache, ratio), reps in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2], READER_ROWS.index(kv[0][0]))):
        values = list(reps.values())
        rb = stats.median([r["read_bytes"] for r in values])
        row = {"reader": reader, "cache": cache, "ratio": ratio, "repeats": len(values), "samples": values[0]["samples"],
               "median_seconds": stats.median([r["seconds"] for r in values]),
               "median_cpu_seconds": stats.median([r["cpu_seconds"] for r in values]),
               "median_samples_per_s": stats.median([r["samples_per_s"] for r in values]),
               "median_read_bytes": rb, "read_fraction_of_data": rb / data_bytes,
               "kept_fraction_of_data_bytes": kept_bytes[ratio] / data_bytes}
        plain = by.get(("streamprune", cache, ratio), {})
        if reader == "streamprune_verify" and plain:
            # the cost of verification: t(verify) / t(plain), paired per round
            cost = stats.paired_by_round({k: r["seconds"] for k, r in reps.items()}, {k: p["seconds"] for k, p in plain.items()},
                                         rounds=sorted(reps))
            row.update({"verify_cost": cost.median, "verify_cost_min": cost.low, "verify_cost_max": cost.high})
        ref = by.get(("wids", cache, ratio), {})
        if reader != "wids" and ref:
            rel = stats.paired_by_round({k: w["seconds"] for k, w in ref.items()}, {k: r["seconds"] for k, r in reps.items()},
                                        rounds=sorted(reps))
            cpu = stats.paired_by_round({k: w["cpu_seconds"] for k, w in ref.items()}, {k: r["cpu_seconds"] for k, r in reps.items()},
                                        rounds=sorted(reps))
            row.update({"vs_wids": rel.median, "vs_wids_min": rel.low, "vs_wids_max": rel.high, "vs_wids_rounds": rel.n,
                        "cpu_vs_wids": cpu.median, "cpu_vs_wids_min": cpu.low, "cpu_vs_wids_max": cpu.high})
        rows.append(row)
    return rows


def evaluate_targets(rows: list[dict], command: str | None = None) -> list[dict]:
    """Warm raw r=0.8 ≥ 1.5× wids for both streamprune readers; cold bytes ≤ (1-r) + 5 % for both."""
    out = []
    for reader in ("streamprune", "streamprune_map"):
        row = next((r for r in rows if r["reader"] == reader and r["cache"] == "warm" and r["ratio"] == TARGET_RATIO), None)
        if row and "vs_wids" in row:
            out.append(Target.check(f"{reader} warm raw kept samples at r={TARGET_RATIO:g}: samples/s >= {TARGET_VS_WIDS:g} x wids",
                                    row["vs_wids"], TARGET_VS_WIDS, interval=(row["vs_wids_min"], row["vs_wids_max"]),
                                    command=command, repeats=row["repeats"], rounds=row.get("vs_wids_rounds", row["repeats"])))
    for reader in ("streamprune", "streamprune_map"):
        for row in rows:
            if row["reader"] == reader and row["cache"] == "cold" and row["ratio"] > 0:
                limit = (1 - row["ratio"]) + 0.05
                out.append(Target.check(f"{reader} cold bytes read at r={row['ratio']:g} <= (1-r) + 5% = {limit:.2f} of the shards",
                                        row["read_fraction_of_data"], limit, "<=", command=command))
    return [t.to_dict() for t in out]


def run_reader_rows(args: argparse.Namespace, prepare_dataset) -> dict[str, Any]:
    """``--only readers``: measure; the results (the io suite writes them to ``OUT/io_readers.json``).

    Args:
        args: io_bench's parsed options (data, ratios, ``raw_repeats``, caches, seed, out, quick).
        prepare_dataset: io_bench's ``prepare_dataset`` (the masks of its other rows).
    """
    t_start = time.perf_counter()
    machine = provenance.machine_info()
    machine["packages"].update(provenance.package_versions(["wids"]))
    manifest = jpegdata.make_jpeg_shards(args.data_dir, args.total_mb, args.samples_per_shard, args.seed, args.workers)
    ds = prepare_dataset("full", manifest, args.ratios, args.seed, os.path.join(args.data_dir, "masks"))
    kept_global = {r: np.flatnonzero(ds.masks[r].keep).tolist() for r in args.ratios}
    readers = list(READER_ROWS)
    skipped = {}
    wids_arm = None
    wids_meta = None
    try:
        wids_arm = WidsArm(manifest, wids_descriptor(manifest, os.path.join(args.data_dir, "wids_index.json")))
    except ImportError:
        skipped["wids"] = "wids not installed (pip install wids)"
        readers.remove("wids")
        print("wids not installed: its rows are skipped (pip install wids)", file=sys.stderr)
    if wids_arm is not None:
        wids_arm.release_pages()
        pagecache.evict(ds.all_files(0.0) + [wids_arm.desc_path])
        cold_open = wids_arm.open_all()
        wids_meta = {"version": wids_arm.version, "descriptor": wids_arm.desc_path,
                     "dataset": "wids.ShardListDataset(descriptor, base=<shard dir>, cache_dir=<shard dir>, transformations=[], "
                                f"lru_size={wids_arm.ds.cache.lru.capacity}): persistent, opened once",
                     "open": {"what": "first access to each shard: wids opens it, memory-maps it and walks its tar headers "
                                      "(its index); untimed in the epochs", "cold": cold_open},
                     "cold_runs": "madvise(MADV_DONTNEED) on wids's memory maps, then the same files evicted as for streamprune"}
        print(f"wids {wids_arm.version}: opened and indexed {len(manifest.shards)} shards in {cold_open['seconds']:.2f} s cold "
              f"({cold_open['read_bytes'] / 2**20:.1f} MiB read); not counted in its epochs")
    # untimed check: all three readers yield the same keys and bytes at one pruned ratio
    check_ratio = max(args.ratios)
    keys = {}
    # heavy import, deferred: streamprune's readers load torch and webdataset
    from streamprune import PrunedMapDataset, PrunedWebDataset

    keys["streamprune"] = [(s["__key__"], s["jpg"]) for s in PrunedWebDataset(ds.manifest_path, ds.mask_paths[check_ratio])]
    mds = PrunedMapDataset(ds.manifest_path, ds.mask_paths[check_ratio])
    keys["streamprune_map"] = [(s["__key__"], s["jpg"]) for s in mds.__getitems__(range(len(mds)))]
    if wids_arm is not None:
        keys["wids"] = [(s["__key__"], s[".jpg"].getvalue()) for s in (wids_arm.ds[i] for i in kept_global[check_ratio])]
    same = all(v == keys["streamprune"] for v in keys.values())
    if not same:
        raise AssertionError(f"the readers yield different samples at r={check_ratio}")
    del keys, mds
    print(f"checked: {', '.join(readers)} yield the same {ds.kept[check_ratio]} keys and jpg bytes at r={check_ratio:g}")

    arms = {}
    built = {}
    for reader in ("streamprune", "streamprune_verify", "streamprune_map"):
        t0 = time.perf_counter()
        for ratio in args.ratios:
            arms[(reader, ratio)] = build_streamprune(ds, ratio, reader)
        built[reader] = (time.perf_counter() - t0) / len(args.ratios)
    print("built once, before the rounds: " + ", ".join(f"{r} {t * 1e3:.1f} ms" for r, t in built.items()) + " per dataset")
    configs = [(reader, cache, ratio) for reader in readers for cache in args.caches for ratio in args.ratios]
    rounds = args.raw_repeats
    invocation = time.strftime("%Y-%m-%dT%H:%M:%S")
    load_start = os.getloadavg()
    runs = []
    rng = random.Random(args.seed)
    for rnd in range(rounds):
        todo = list(configs)
        rng.shuffle(todo)
        t_round = time.perf_counter()
        for reader, cache, ratio in todo:
            res = run_once(reader, cache, ratio, ds, kept_global, wids_arm if reader == "wids" or cache == "cold" else None, arms)
            res["round"] = rnd
            runs.append(res)
        print(f"round {rnd + 1}/{rounds}: {len(todo)} runs in {time.perf_counter() - t_round:.1f} s (load avg {os.getloadavg()[0]:.1f})",
              flush=True)
    command = provenance.command_line()
    rows = summarize(runs, ds.data_bytes, ds.kept_bytes)
    targets = evaluate_targets(rows, command)
    results = {
        "suite": "io", "part": "reader rows", "command": command, "at": invocation, "machine": machine,
        "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
        "data": {"dir": os.path.abspath(args.data_dir), "samples": ds.samples, "shards": len(ds.urls), "data_bytes": ds.data_bytes,
                 "kept": {str(r): v for r, v in ds.kept.items()}, "kept_bytes": {str(r): v for r, v in ds.kept_bytes.items()},
                 "masks": "random_mask(manifest, r, level='sample', seed=seed + 1): io_bench's masks"},
        "readers": {r: READER_ROW_LABELS[r] for r in readers}, "skipped": skipped, "wids": wids_meta,
        "built_seconds": built, "map_batch": MAP_BATCH, "rounds": rounds, "caches": args.caches, "ratios": args.ratios,
        "method": {"timed": "one epoch of a dataset built once before the rounds, for all three readers (PrunedWebDataset loads each "
                            "shard's index again every epoch, as the epoch reaches it; PrunedMapDataset keeps its open shards' "
                            "indexes; wids keeps the index it built on first access); building is reported apart (built_seconds, wids.open)",
                   "vs_wids": "t(wids) / t(reader), same cache and ratio, paired within a round; median [min-max]",
                   "cpu_vs_wids": "the same with process CPU time (robust to other jobs' load when the epoch is CPU-bound)",
                   "cold": "every file the readers open evicted (POSIX_FADV_DONTNEED) right before the run; wids's maps unmapped first",
                   "warm": "every such file read completely right before the run",
                   "read_fraction_of_data": "median /proc/self/io read_bytes / the shards' bytes"},
        "summary": rows, "targets": targets, "runs": runs, "total_seconds": time.perf_counter() - t_start,
    }
    return results


def _rel(row: dict, key: str) -> str:
    if key not in row:
        return "-"
    return f"{row[key]:.2f} [{row[key + '_min']:.2f}-{row[key + '_max']:.2f}]"


def readers_table(results: dict[str, Any]) -> str:
    """The reader rows as a markdown table."""
    headers = ["cache", "ratio", "reader", "samples", "samples/s", "t (s)", "CPU s", "vs wids (time)", "vs wids (CPU)", "bytes read / shards",
               "t(verify) / t(plain)"]
    rows = []
    for r in results["summary"]:
        rows.append([r["cache"], f"{r['ratio']:g}", r["reader"], r["samples"], mdtable.fmt_num(r["median_samples_per_s"], 0),
                     f"{r['median_seconds']:.3f}", f"{r['median_cpu_seconds']:.3f}", _rel(r, "vs_wids"), _rel(r, "cpu_vs_wids"),
                     f"{r['read_fraction_of_data']:.3f}" if r["cache"] == "cold" else "-", _rel(r, "verify_cost")])
    opened = (results.get("wids") or {}).get("open", {}).get("cold")
    note = (f"; wids opened and indexed the shards once, cold, in {opened['seconds']:.2f} s ({opened['read_bytes'] / 2**20:.1f} MiB read), "
            "not counted in its epochs" if opened else "")
    d = results["data"]
    return (f"Reader rows (raw kept samples; {d['samples']} samples, {d['data_bytes'] / 2**20:.0f} MiB in {d['shards']} shards; "
            f"median of {results['rounds']} interleaved rounds{note}). vs wids = t(wids)/t(reader), paired per round, median [min-max].\n\n"
            + mdtable.markdown_table(headers, rows, "lrlrrrrrrrr"))


def load(results_dir: str, quick: bool = False) -> dict[str, Any] | None:
    """The latest ``io_readers.json`` (``None`` when the rows have not been run)."""
    return resultsfile.load_json(os.path.join(results_dir, *(["quick"] if quick else []), RESULTS_NAME))

