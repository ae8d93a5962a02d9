"""MDS and LitData datasets read pruned in place by streamprune, against the peers' own readers on the same files.

One MDS dataset (``streaming.MDSWriter``) and one LitData dataset (``litdata.optimize``) of
random-payload samples (JPEG-sized by default) on local disk. For each: streamprune's
``PrunedSource`` at r=0 and r=0.8 (a random per-sample mask), and the peer's own
``StreamingDataset`` over the full data and over a subset it selects its own way (streaming:
``Stream(choose=...)``; LitData: ``subsample=``), each for a cold first epoch (the files evicted
from the page cache) and a warm second. Rows: seconds, samples, bytes read from storage
(``/proc/self/io``) as a fraction of the dataset. The peers read in this process, with no
DataLoader workers, as streamprune does here.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import time
from typing import Any

import numpy as np

from streamprune import Manifest, PrunedSource
from streamprune.foreignindex import require_foreign
from streamprune.indexing import index_foreign
from streamprune.masks import random_mask

from . import pagecache, provenance
from .mdtable import fmt_num, markdown_table
from .suite import Suite, Target

log = logging.getLogger(__name__)

RATIO = 0.8


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The suite's own options (the base adds ``--quick``, ``--out``, ``--seed``, ``--data-dir``, ...)."""
    p.add_argument("--samples", type=int, default=20_000, help="samples per dataset")
    p.add_argument("--sample-bytes", type=int, default=110_000, help="payload bytes per sample (JPEG-sized)")
    p.add_argument("--shard-bytes", type=int, default=64 << 20, help="MDS size_limit and LitData chunk_bytes (both default to 64 MiB)")


def configure(args: argparse.Namespace) -> argparse.Namespace:
    """``--quick`` sizes."""
    if args.quick:
        args.samples, args.sample_bytes, args.shard_bytes = 1500, 40_000, 8 << 20
    return args


def _payload(i: int, size: int) -> bytes:
    return np.random.default_rng(i).integers(0, 256, size=size, dtype=np.uint8).tobytes()


class _Rows:
    """``litdata.optimize``'s function (picklable: its worker processes call it)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, i: int) -> dict:
        # a numpy payload: LitData keeps samples with an array field at their own byte ranges (a
        # bytes-and-int-only dataset goes to its Arrow row footer, which cannot be range-read)
        return {"data": np.frombuffer(_payload(i, self.size), dtype=np.uint8), "label": i % 10}


def build(args: argparse.Namespace) -> dict[str, str]:
    """The two datasets (kept between runs of the same size) and their streamprune manifests."""
    # deferred: the peers are the optional `formats` extra
    import litdata
    import streaming

    tag = f"{args.samples}x{args.sample_bytes}-{args.shard_bytes}"
    root = os.path.join(args.data_dir, tag)
    mds, lit = os.path.join(root, "mds"), os.path.join(root, "litdata")
    if not os.path.exists(os.path.join(mds, "index.json")):
        shutil.rmtree(mds, ignore_errors=True)
        with streaming.MDSWriter(out=mds, columns={"data": "bytes", "cls": "int"}, size_limit=args.shard_bytes) as writer:
            for i in range(args.samples):
                writer.write({"data": _payload(i, args.sample_bytes), "cls": i % 10})
    if not os.path.exists(os.path.join(lit, "index.json")):
        shutil.rmtree(lit, ignore_errors=True)
        method = multiprocessing.get_start_method(allow_none=True)  # optimize forces "spawn" process-wide
        try:
            litdata.optimize(fn=_Rows(args.sample_bytes), inputs=list(range(args.samples)), output_dir=lit,
                             chunk_bytes=args.shard_bytes, num_workers=1)
        finally:
            multiprocessing.set_start_method(method, force=True)
    out = {"mds": mds, "litdata": lit}
    for fmt, src in list(out.items()):
        sp = os.path.join(root, f"sp-{fmt}")
        if not os.path.exists(os.path.join(sp, "manifest.json")):
            index_foreign(src, sp, progress=False)
        out[f"sp-{fmt}"] = sp
    return out


def _files(src: str) -> list[str]:
    return [os.path.join(src, n) for n in sorted(os.listdir(src)) if n.endswith((".mds", ".bin"))]


def _measure(files: list[str], epoch_fn, cold: bool) -> dict[str, Any]:
    if cold:
        pagecache.evict(files)
    before = pagecache.read_bytes()
    t0 = time.perf_counter()
    n = epoch_fn()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "samples": n, "read_bytes": pagecache.read_bytes() - before}


def _peer_dataset(fmt: str, src: str, keep: int | None) -> Any:
    if fmt == "mds":
        from streaming import Stream, StreamingDataset  # deferred: the peers are the optional `formats` extra

        return StreamingDataset(streams=[Stream(local=src, choose=keep)] if keep else None, local=None if keep else src,
                                shuffle=False, batch_size=1)
    import litdata  # deferred: the peers are the optional `formats` extra

    return litdata.StreamingDataset(input_dir=src, subsample=1.0 if keep is None else keep / _count(src))


def _count(src: str) -> int:
    return sum(s.samples for s in require_foreign(src).shards)


def _rows_for(fmt: str, src: str, manifest: str) -> list[dict[str, Any]]:
    files = _files(src)
    total = sum(os.path.getsize(f) for f in files)
    n = _count(src)
    keep = int(round(n * (1 - RATIO)))
    rows = []

    def add(reader: str, selection: str, ratio: float, make) -> None:
        ds = make()
        for epoch, cold in ((1, True), (2, False)):
            m = _measure(files, lambda ds=ds: sum(1 for _ in ds), cold)
            rows.append({"format": fmt, "reader": reader, "selection": selection, "ratio": ratio, "epoch": epoch, **m,
                         "read_fraction": m["read_bytes"] / total, "dataset_bytes": total})
            log.info("%s %s %s epoch %d: %.2f s, %d samples, %.3f of the bytes", fmt, reader, selection, epoch, m["seconds"],
                     m["samples"], m["read_bytes"] / total)

    add("streamprune", "all", 0.0, lambda: PrunedSource(manifest))
    mask = random_mask(Manifest.load(manifest), RATIO, level="sample", seed=0)
    add("streamprune", "random mask", RATIO, lambda: PrunedSource(manifest, mask))
    add("peer", "all", 0.0, lambda: _peer_dataset(fmt, src, None))
    add("peer", "own subset (choose)" if fmt == "mds" else "own subset (subsample)", RATIO, lambda: _peer_dataset(fmt, src, keep))
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    paths = build(args)
    rows = []
    for fmt in ("mds", "litdata"):
        rows += _rows_for(fmt, paths[fmt], paths[f"sp-{fmt}"])
    targets = []
    for fmt in ("mds", "litdata"):
        ours = next(r for r in rows if r["format"] == fmt and r["reader"] == "streamprune" and r["ratio"] == RATIO and r["epoch"] == 1)
        targets.append(Target.check(f"{fmt}: cold bytes read at r={RATIO} (fraction of the dataset) <= 0.25", ours["read_fraction"],
                                    0.25, "<=").to_dict())
    return {"setup": {"samples": args.samples, "sample_bytes": args.sample_bytes, "ratio": RATIO, "quick": args.quick},
            "rows": rows, "targets": targets,
            "versions": provenance.package_versions(["mosaicml-streaming", "litdata", "torch"]),
            "total_seconds": time.perf_counter() - t0}


def report_markdown(results: dict[str, Any]) -> str:
    """The suite's table."""
    f = fmt_num
    s = results["setup"]
    rows = [[r["format"], r["reader"], r["selection"], r["epoch"], r["samples"], f(r["seconds"]), f(r["read_fraction"])]
            for r in results["rows"]]
    return "\n".join([
        f"{s['samples']:,} samples of {s['sample_bytes']:,} bytes per format, local disk, one process, no DataLoader workers; "
        "epoch 1 cold (files evicted), epoch 2 warm.", "",
        markdown_table(["format", "reader", "selection", "epoch", "samples", "seconds", "bytes read / dataset"], rows)])


class FormatsSuite(Suite):
    """``formats``: MDS and LitData read pruned in place vs the peers' own readers, full and own subset."""

    name, title = "formats", "MDS and LitData in place: streamprune pruned reads vs the peers' own readers"
    data_name = "formats"
    measures = ("streamprune/foreignindex.py", "streamprune/sampleformats.py", "streamprune/readers")
    add_arguments, configure, measurement = staticmethod(add_arguments), staticmethod(configure), staticmethod(run)
    tables = staticmethod(report_markdown)
