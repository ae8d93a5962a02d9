"""The kept-bytes cache measured: serving cached kept samples vs reading them from a local shard.

Not a registered suite (no targets, no report section): a script behind the numbers quoted
for :mod:`streamprune.readers.keptcache`. It writes ``--shards`` tar shards of ``--samples``
samples each, every sample a ``--sample-kb`` KB (+-10 %) ``.bin`` member and a ``.cls``
label, keeps a random ``1 - --ratio`` of each shard, fills a :class:`KeptCache` with the kept
samples (the first epoch's writes, timed) and then times, per run, one pass over every kept
sample of every shard by two readers that end the same way, with each member's bytes
(``bytes``, as the readers yield them):

* ``pread``: the local-disk reader: ``os.pread`` of the sample's range from the shard file,
  members sliced out of it;
* ``cache``: a new ``KeptCache`` per pass (a process's first cached epoch: non-persistent
  DataLoader workers), ``KeptCache.shard(...)`` per shard (lists its chunk files, maps and
  validates them: footer digest, header, ranges), ``ShardCache.get(pos)`` per sample (each
  sample checked against its digest, ``verify="read"``), members sliced out of the view;
* ``cache-noverify``: the same with ``verify="none"`` (a reader that checks samples against
  the index's checksums itself);
* ``cache-reused``: one ``KeptCache`` for every pass (persistent workers, later epochs: the
  chunks stay mapped and checked; warm page cache only, since a mapped page cannot be
  dropped from the page cache).

Samples are visited in shard order (``sorted``) and in a random order per shard
(``shuffled``), with a warm page cache (``warm``: every file read once before) and a cold one
(``cold``: shards and chunk files dropped from the page cache with ``POSIX_FADV_DONTNEED``
before each run). The readers alternate; each row has the median and the fastest of
``--repeats`` runs (on a shared machine the fastest is the least disturbed by other load).

Run:  python -m benchmarks.keptcache_measure [--shards 4 --samples 256 --sample-kb 120 --ratio 0.5 --repeats 15]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

from streamprune.readers.keptcache import CHUNK_SUFFIX, KeptCache
from streamprune.shardindex import ShardIndex
from streamprune.tarindex import index_tar
from streamprune.writers import write_shards

from . import pagecache, provenance, resultsfile

__all__ = ["main"]

DATASET_ID = "keptcache-measure"


def _samples(shards: int, samples: int, sample_kb: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    size = sample_kb * 1000
    return [(f"s{i:06d}", {"bin": rng.bytes(int(rng.integers(size * 9 // 10, size * 11 // 10)))}, i % 10)
            for i in range(shards * samples)]


def _members(index: ShardIndex, pos: int) -> list[tuple[int, int]]:
    """``(offset in the sample's bytes, size)`` of each member."""
    lo = int(index.start[pos])
    return [(off - lo, size) for _, off, size in index.members[pos]]


def _read_pread(paths: list[str], orders: list[list[int]], indexes: list[ShardIndex]) -> int:
    total = 0
    for path, order, index in zip(paths, orders, indexes):
        fd = os.open(path, os.O_RDONLY)
        try:
            start, end = index.start.tolist(), index.end.tolist()
            for pos in order:
                view = memoryview(os.pread(fd, end[pos] - start[pos], start[pos]))
                for off, size in _members(index, pos):
                    total += len(bytes(view[off : off + size]))
        finally:
            os.close(fd)
    return total


def _read_cache(cache: KeptCache, paths: list[str], orders: list[list[int]], indexes: list[ShardIndex]) -> int:
    total = 0
    for path, order, index in zip(paths, orders, indexes):
        with cache.shard(DATASET_ID, path, os.path.getsize(path), "", index) as sc:
            for pos in order:
                view = sc.get(pos)
                if view is None:
                    raise RuntimeError(f"{path}: sample {pos} is not cached")
                for off, size in _members(index, pos):
                    total += len(bytes(view[off : off + size]))
    return total


def _fresh(cache_dir: str, limit: int, verify: str, paths: list[str], orders: list[list[int]], indexes: list[ShardIndex]) -> int:
    cache = KeptCache(cache_dir, limit_bytes=limit, verify=verify)
    try:
        return _read_cache(cache, paths, orders, indexes)
    finally:
        cache.close()


def _timed(fn: Callable[[], int], before: Callable[[], None]) -> tuple[float, int]:
    before()
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def main(argv: Sequence[str] | None = None) -> dict:
    """Write the shards, fill the cache, time both readers; print a table and write the results JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--samples", type=int, default=256, help="samples per shard")
    p.add_argument("--sample-kb", type=int, default=120, help="average sample size, KB")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of each shard pruned (not cached, not read)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--dir", default=None, help="where to write shards and cache (default: a temporary directory)")
    p.add_argument("--out", default=os.path.join(resultsfile.DEFAULT_RESULTS, "keptcache.json"), help="results JSON")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    provenance.set_command("python -m benchmarks.keptcache_measure", argv)
    tmp = tempfile.mkdtemp(prefix="streamprune-keptcache-", dir=args.dir)
    try:
        data, cache_dir = os.path.join(tmp, "data"), os.path.join(tmp, "cache")
        manifest = write_shards(_samples(args.shards, args.samples, args.sample_kb), data, samples_per_shard=args.samples,
                                shuffle=False, progress=False)
        paths = [manifest.shard_path(k) for k in range(args.shards)]
        indexes = [index_tar(path, label_ext="cls") for path in paths]
        rng = np.random.default_rng(1)
        kept = [np.flatnonzero(rng.random(len(ix)) >= args.ratio) for ix in indexes]
        kept_bytes = sum(int((ix.end - ix.start)[k].sum()) for ix, k in zip(indexes, kept))
        member_bytes = sum(size for ix, k in zip(indexes, kept) for pos in k.tolist() for _, size in _members(ix, pos))
        limit = 4 * kept_bytes + (1 << 20)

        # epoch 1: the reader adds the kept samples it fetched (here: read from the shard) and commits per shard
        cache = KeptCache(cache_dir, limit_bytes=limit)
        t0 = time.perf_counter()
        for path, index, k in zip(paths, indexes, kept):
            with open(path, "rb") as fh, cache.shard(DATASET_ID, path, os.path.getsize(path), "", index) as sc:
                for pos in k.tolist():
                    fh.seek(int(index.start[pos]))
                    sc.add(pos, fh.read(int(index.end[pos] - index.start[pos])))
        fill_seconds = time.perf_counter() - t0
        fill = {"seconds": round(fill_seconds, 3), **cache.stats()}
        cache_bytes = cache.total_bytes()
        chunk_files = glob.glob(os.path.join(glob.escape(cache_dir), "*", "*", "*" + CHUNK_SUFFIX))
        allocated = sum(os.stat(f).st_blocks * 512 for f in chunk_files)
        cache.close()

        files = paths + chunk_files
        reused = KeptCache(cache_dir, limit_bytes=limit)
        readers: dict[str, Callable[[list[list[int]]], int]] = {
            "pread": lambda orders: _read_pread(paths, orders, indexes),
            "cache": lambda orders: _fresh(cache_dir, limit, "read", paths, orders, indexes),
            "cache-noverify": lambda orders: _fresh(cache_dir, limit, "none", paths, orders, indexes),
            "cache-reused": lambda orders: _read_cache(reused, paths, orders, indexes),
        }
        rows = []
        for mode in ("warm", "cold"):
            before = (lambda: None) if mode == "warm" else (lambda: pagecache.evict(files))
            for order_name in ("sorted", "shuffled"):
                if order_name == "sorted":
                    orders = [k.tolist() for k in kept]
                else:
                    orders = [rng.permutation(k).tolist() for k in kept]
                names = [name for name in readers if mode == "warm" or name != "cache-reused"]
                if mode == "warm":
                    pagecache.warm(files)
                    readers["cache-reused"](orders)  # its first pass maps and checks; the timed ones are later epochs
                else:
                    reused.close()  # unmapped, so the pages can be dropped
                runs: dict[str, list[float]] = {name: [] for name in names}
                for _ in range(args.repeats):
                    for name in names:
                        seconds, n = _timed(lambda fn=readers[name], orders=orders: fn(orders), before)
                        assert n == member_bytes, (name, n, member_bytes)
                        runs[name].append(seconds)
                for name, secs in runs.items():
                    med = statistics.median(secs)
                    rows.append({"page_cache": mode, "order": order_name, "reader": name, "samples": int(sum(map(len, kept))),
                                 "seconds": round(med, 5), "min_seconds": round(min(secs), 5), "runs": [round(s, 5) for s in secs],
                                 "kept_MBps": round(kept_bytes / med / 1e6, 1)})
        ratios: dict[str, dict[str, dict[str, float]]] = {"median": {}, "min": {}}
        for stat, key in (("median", "seconds"), ("min", "min_seconds")):
            for mode in ("warm", "cold"):
                for order_name in ("sorted", "shuffled"):
                    by = {r["reader"]: r[key] for r in rows if r["page_cache"] == mode and r["order"] == order_name}
                    for name in by:
                        if name != "pread":  # > 1: the cache is faster
                            ratios[stat].setdefault(name, {})[f"{mode}/{order_name}"] = round(by["pread"] / by[name], 3)
        space = {"kept_bytes": kept_bytes, "cache_bytes": cache_bytes, "allocated_bytes": allocated,
                 "overhead": round(cache_bytes / kept_bytes - 1, 6), "allocated_overhead": round(allocated / kept_bytes - 1, 6),
                 "chunk_files": len(chunk_files)}
        print("| page cache | order | reader | samples | seconds (median) | seconds (min) | kept MB/s (median) |")
        print("|---|---|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['page_cache']} | {r['order']} | {r['reader']} | {r['samples']} | {r['seconds']:.4f} | "
                  f"{r['min_seconds']:.4f} | {r['kept_MBps']:,.0f} |")
        for stat in ("median", "min"):
            print(f"speed relative to pread ({stat}: pread seconds / reader seconds):", json.dumps(ratios[stat]))
        print("space:", json.dumps(space))
        print("fill (epoch 1 writes):", json.dumps(fill))
        results = {**provenance.provenance(),
                   "setup": vars(args) | {"kept_samples": int(sum(map(len, kept))), "shard_bytes": [os.path.getsize(x) for x in paths]},
                   "rows": rows, "speed_vs_pread": ratios, "space": space, "fill": fill}
        resultsfile.write_json(args.out, results)
        return results
    finally:
        provenance.clear_command()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
