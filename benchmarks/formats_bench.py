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
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from streamprune import Manifest, PrunedSource
from streamprune.foreignindex import require_foreign
from streamprune.indexing import index_foreign
from streamprune.masks import random_mask

from . import pagecache, provenance, stats
from .mdtable import fmt_num, markdown_table
from .suite import Suite, Target

log = logging.getLogger(__name__)

RATIO = 0.8
#: Largest fraction of a dataset's pages still cached after eviction for a "cold" read to count.
MAX_RESIDENT = 0.01


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The suite's own options (the base adds ``--quick``, ``--out``, ``--seed``, ``--data-dir``, ...)."""
    p.add_argument("--samples", type=int, default=20_000, help="samples per dataset")
    p.add_argument("--sample-bytes", type=int, default=110_000, help="payload bytes per sample (JPEG-sized)")
    p.add_argument("--rounds", type=int, default=5, help="paired rounds of every arm (default 5)")
    p.add_argument("--shard-bytes", type=int, default=64 << 20, help="MDS size_limit and LitData chunk_bytes (both default to 64 MiB)")


def configure(args: argparse.Namespace) -> argparse.Namespace:
    """``--quick`` sizes."""
    if args.quick:
        args.samples, args.sample_bytes, args.shard_bytes, args.rounds = 1500, 40_000, 8 << 20, 2
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
    resident = None
    if cold:
        pagecache.evict(files)
        resident = pagecache.resident_fraction(files)  # pages a live mapping kept: not a cold read
    before = pagecache.read_bytes()
    t0 = time.perf_counter()
    n = epoch_fn()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "samples": n, "read_bytes": pagecache.read_bytes() - before, "resident_after_evict": resident}


def _peer_dataset(fmt: str, src: str, keep: int | None) -> Any:
    if fmt == "mds":
        from streaming import Stream, StreamingDataset  # deferred: the peers are the optional `formats` extra

        return StreamingDataset(streams=[Stream(local=src, choose=keep)] if keep else None, local=None if keep else src,
                                shuffle=False, batch_size=1)
    import litdata  # deferred: the peers are the optional `formats` extra

    return litdata.StreamingDataset(input_dir=src, subsample=1.0 if keep is None else keep / _count(src))


def _count(src: str) -> int:
    return sum(s.samples for s in require_foreign(src).shards)


#: The arms of one format: (reader, selection, ratio); streamprune with a random per-sample mask
#: against the peer's full data and the subset it selects its own way (same kept count).
ARMS = (("streamprune", "all", 0.0), ("streamprune", "random mask", RATIO), ("peer", "all", 0.0), ("peer", "own subset", RATIO))


def _arm_dataset(fmt: str, arm: tuple[str, str, float], src: str, manifest: str, mask: Any, keep: int) -> Any:
    reader, selection, _ = arm
    if reader == "streamprune":
        return PrunedSource(manifest, mask if selection == "random mask" else None)
    return _peer_dataset(fmt, src, keep if selection == "own subset" else None)


def _arm_epochs(fmt: str, arm: tuple[str, str, float], src: str, manifest: str, keep: int) -> list[dict[str, Any]]:
    """Both epochs of one arm, measured in this (child) process: a cold first and a warm second."""
    files = _files(src)
    mask = random_mask(Manifest.load(manifest), RATIO, level="sample", seed=0) if arm[1] == "random mask" else None
    ds = _arm_dataset(fmt, arm, src, manifest, mask, keep)
    return [{"epoch": epoch, **_measure(files, lambda: sum(1 for _ in ds), cold)} for epoch, cold in ((1, True), (2, False))]


def _round_rows(fmt: str, src: str, manifest: str, round_no: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """One round of a format: every arm, in a seeded order, for a cold first epoch and a warm second.

    Each arm runs in a forked process of its own, which exits before the next arm's eviction:
    a reader that keeps the files mapped after its dataset is gone (LitData's did, leaving 23% of
    the chunks cached for every later "cold" read) cannot warm another arm. Both sides pay the
    same: the fork is not timed, the epochs are timed and counted (``/proc/self/io``) inside it.
    """
    total = sum(os.path.getsize(f) for f in _files(src))
    keep = int(round(_count(src) * (1 - RATIO)))
    fork = multiprocessing.get_context("fork")  # explicit: litdata.optimize sets the default start method to spawn
    rows = []
    for a in rng.permutation(len(ARMS)).tolist():  # arms interleaved, a new order each round: drift is shared
        reader, selection, ratio = ARMS[a]
        with ProcessPoolExecutor(max_workers=1, mp_context=fork) as pool:
            epochs = pool.submit(_arm_epochs, fmt, ARMS[a], src, manifest, keep).result()
        for m in epochs:
            rows.append({"format": fmt, "round": round_no, "reader": reader, "selection": selection, "ratio": ratio,
                         **m, "read_fraction": m["read_bytes"] / total, "dataset_bytes": total})
            log.info("round %d %s %s %s epoch %d: %.2f s, %d samples, %.3f of the bytes", round_no, fmt, reader, selection,
                     m["epoch"], m["seconds"], m["samples"], m["read_bytes"] / total)
    return rows


def _arm_values(rows: list[dict[str, Any]], fmt: str, reader: str, selection: str, epoch: int, key: str) -> list[float | None]:
    """``key`` of one arm and epoch, one value per round in round order (``None`` where the round lacks it)."""
    by_round = {r["round"]: r[key] for r in rows
                if (r["format"], r["reader"], r["selection"], r["epoch"]) == (fmt, reader, selection, epoch)}
    rounds = sorted({r["round"] for r in rows})
    return [by_round.get(k) for k in rounds]


def formats_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per format, arm and epoch: the median and min-max over rounds of seconds and bytes read."""
    out = []
    for fmt in sorted({r["format"] for r in rows}):
        for reader, selection, ratio in ARMS:
            for epoch in (1, 2):
                seconds = [v for v in _arm_values(rows, fmt, reader, selection, epoch, "seconds") if v is not None]
                fraction = [v for v in _arm_values(rows, fmt, reader, selection, epoch, "read_fraction") if v is not None]
                samples = _arm_values(rows, fmt, reader, selection, epoch, "samples")
                if seconds:
                    out.append({"format": fmt, "reader": reader, "selection": selection, "ratio": ratio, "epoch": epoch,
                                "rounds": len(seconds), "samples": samples[0], "seconds": float(np.median(seconds)),
                                "seconds_min": min(seconds), "seconds_max": max(seconds),
                                "read_fraction": float(np.median(fraction)), "read_fraction_max": max(fraction),
                                "resident_after_evict_max": max((v for v in _arm_values(rows, fmt, reader, selection, epoch,
                                                                                        "resident_after_evict") if v is not None),
                                                                default=None)})
    return out


def formats_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bytes at r=0.8 (every round) and streamprune's pruned epochs against the peer's, paired per round."""
    command = "python -m benchmarks formats"
    targets = []
    for fmt in sorted({r["format"] for r in rows}):
        values = _arm_values(rows, fmt, "streamprune", "random mask", 1, "read_fraction")
        residents = _arm_values(rows, fmt, "streamprune", "random mask", 1, "resident_after_evict")
        # a round whose eviction left pages cached did not read cold: reported, not counted
        fractions = [v for v, res in zip(values, residents) if v is not None and (res or 0.0) <= MAX_RESIDENT]
        not_counted = sum(1 for v in values if v is not None) - len(fractions)
        targets.append(Target.check(f"{fmt}: cold bytes read at r={RATIO} (fraction of the dataset) <= 0.25",
                                    float(np.median(fractions)) if fractions else float("nan"), 0.25, "<=",
                                    interval=(min(fractions), max(fractions)) if fractions else None, valid=bool(fractions),
                                    rounds=len(fractions), command=command, format=fmt, not_counted=not_counted).to_dict())
        ours = {e: _arm_values(rows, fmt, "streamprune", "random mask", e, "seconds") for e in (1, 2)}
        for selection, what in (("all", "full data"), ("own subset", "its own subset")):
            for epoch in (1, 2):
                peer = _arm_values(rows, fmt, "peer", selection, epoch, "seconds")
                state = "cold" if epoch == 1 else "warm"
                ratio = stats.paired_ratio(peer, ours[epoch])
                targets.append(Target.check(
                    f"{fmt}: pruned epoch {epoch} ({state}) at r={RATIO} no slower than the peer's on {what}: t(peer) / t(streamprune) >= 1",
                    None, 1.0, ">=", paired=ratio, command=command, format=fmt, epoch=epoch).to_dict())
    return targets


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build (or reuse) both datasets, then ``--rounds`` rounds of every arm of both formats."""
    t0 = time.perf_counter()
    paths = build(args)
    rng = np.random.default_rng([args.seed, 0xF0])
    rows = []
    for round_no in range(args.rounds):
        for fmt in ("mds", "litdata"):
            rows += _round_rows(fmt, paths[fmt], paths[f"sp-{fmt}"], round_no, rng)
    return {"setup": {"samples": args.samples, "sample_bytes": args.sample_bytes, "ratio": RATIO, "rounds": args.rounds,
                      "quick": args.quick},
            "rows": rows, "summary": formats_summary(rows), "targets": formats_targets(rows),
            "versions": provenance.package_versions(["mosaicml-streaming", "litdata", "torch"]),
            "total_seconds": time.perf_counter() - t0}


def report_markdown(results: dict[str, Any]) -> str:
    """The suite's table: per format, arm and epoch, medians and min-max over the rounds."""
    f = fmt_num
    s = results["setup"]
    summary = results.get("summary") or formats_summary(results["rows"])
    rows = [[r["format"], r["reader"], r["selection"], r["epoch"], r["samples"],
             f"{f(r['seconds'])} [{f(r['seconds_min'])}-{f(r['seconds_max'])}]", f(r["read_fraction"]),
             "" if r.get("resident_after_evict_max") is None else f(r["resident_after_evict_max"])] for r in summary]
    return "\n".join([
        f"{s['samples']:,} samples of {s['sample_bytes']:,} bytes per format, local disk, one process, no DataLoader workers; "
        f"epoch 1 cold (files evicted), epoch 2 warm; median [min-max] over {s.get('rounds', 1)} round(s), arms interleaved. "
        "The peer's own subset: streaming's `Stream(choose=k)`, LitData's `subsample=k/N`, k the mask's kept count.", "",
        markdown_table(["format", "reader", "selection", "epoch", "samples", "seconds", "bytes read / dataset",
                        "cached after eviction (max)"], rows)])


class FormatsSuite(Suite):
    """``formats``: MDS and LitData read pruned in place vs the peers' own readers, full and own subset."""

    name, title = "formats", "MDS and LitData in place: streamprune pruned reads vs the peers' own readers"
    data_name = "formats"
    measures = ("streamprune/foreignindex.py", "streamprune/sampleformats.py", "streamprune/readers")
    add_arguments, configure, measurement = staticmethod(add_arguments), staticmethod(configure), staticmethod(run)
    tables = staticmethod(report_markdown)

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        """The summary and targets from the stored rows (:func:`formats_summary`, :func:`formats_targets`)."""
        return {**results, "summary": formats_summary(results["rows"]), "targets": formats_targets(results["rows"])}
