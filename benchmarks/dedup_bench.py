"""Deduplication benchmark: SemDeDup and exact dedup on Fashion-MNIST with planted duplicates.

* **Source**: a class-balanced subset of Fashion-MNIST train (``--base`` images, Debian's
  ``dataset-fashion-mnist``), JPEG quality 95, plus planted copies of ``--copies`` (per kind)
  distinct base images for each of four kinds: ``jpeg-q50`` (the same pixels re-encoded at JPEG
  quality 50), ``hflip`` (mirrored), ``crop`` (2 pixels cut from every side, resized back to
  28x28, bilinear) and ``exact`` (the base sample's bytes, byte for byte). Sharded with
  ``streamprune.writers.write_shards`` (1,000 per shard, shuffled, seed 0).
* **Surrogate**: ``nets.surrogate_cnn`` trained on the source by ``train_surrogate`` (one
  epoch of batch 128, at most ``--surrogate-steps`` steps: 68 steps at 8,600 samples; seed 0);
  its 64-d penultimate features feed SemDeDup. A classifier this briefly trained maps many
  same-class images close together, which is what limits SemDeDup's precision here.
* **SemDeDup** (``score_source(method="semdedup", clusters=--clusters)``): the scores hold
  ``M`` (max cosine similarity to an earlier member of the cluster), which does not depend on
  eps, so one pass gives every eps row. A removed sample is a *true positive* when it belongs
  to a planted pair (base or copy); precision = true positives / removed, recall = planted
  pairs with at least one member removed / planted pairs (per kind too). Fashion-MNIST's own
  near-identical images count as false positives.
* **Time per million samples, extrapolated** (not measured at that size): embedding seconds
  and SemDeDup seconds (k-means + within-cluster walk, on the cached features) per sample of
  the real run x 1e6; and the SemDeDup step again on ``--scale-rows`` synthetic rows (the real
  features tiled with small noise) at the same mean cluster size, whose per-sample cost x 1e6
  is the second estimate. With K growing with N (fixed mean cluster size) the walk is linear
  in N; the k-means step is O(N K iters), so at a fixed cluster size it grows with N^2 / size:
  both estimates assume the cluster size stays as here.
* **Exact dedup** (``exact-dedup``): found duplicates against the planted ``exact`` copies,
  its time, and how many candidate bytes it read.
* **Transfer, reduced**: the transfer suite's machinery is too slow for this budget, so this
  is a reduced version: target A (Fashion-MNIST t10k footwear, 50 training images per class),
  the LM mask (``lm``, ratio ``--lm-ratio``, surrogate as above) against LM AND the SemDeDup
  mask at ``--transfer-eps`` (``combine_masks("and", ...)``). For each, ``pretrain_cnn`` is
  trained on the kept samples, loaded once into memory through ``PrunedWebDataset`` (no
  streaming during training), ``--epochs`` epochs of batch 64, AdamW one-cycle (peak 3e-3),
  then a linear probe (standardised frozen features, logistic regression) is tested on 600
  target A test images; ``--seeds`` seeds, paired difference reported. No finetuning protocol
  and no target B (the transfer suite has both).

Outputs ``benchmarks/results/dedup_bench.json`` (``--quick``: ``results/quick/``).

Run:  python -m benchmarks dedup            (~5-8 min on the shared 2 cores)
      python -m benchmarks dedup --quick    (~1.5 min)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamprune.sources import FASHION_MNIST_DIR

from . import mdtable, provenance
from .suite import Suite, Target

__all__ = ["DedupSuite", "KINDS", "planted_metrics", "report_markdown"]

log = logging.getLogger("dedup_bench")

KINDS = ("jpeg-q50", "hflip", "crop", "exact")
EPS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The suite's own options (the base adds ``--quick``, ``--out``, ``--seed``, ``--data-dir``, ...)."""
    p.add_argument("--base", type=int, default=8000, help="base images (class-balanced subset of Fashion-MNIST train)")
    p.add_argument("--copies", type=int, default=150, help="planted copies per kind")
    p.add_argument("--clusters", type=int, default=20, help="SemDeDup k-means clusters")
    p.add_argument("--surrogate-steps", type=int, default=150)
    p.add_argument("--eps", default=",".join(f"{e:g}" for e in EPS), help="comma-separated eps values")
    p.add_argument("--transfer-eps", type=float, default=0.005)
    p.add_argument("--lm-ratio", type=float, default=0.4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", default="0,1,2,3,4", help="seeds, one round each (default 0-4: fewer than 5 rounds are never 'met')")
    p.add_argument("--scale-rows", type=int, default=100_000, help="synthetic rows for the SemDeDup scaling measurement")


def configure(args: argparse.Namespace) -> argparse.Namespace:
    """``--quick`` sizes and the parsed lists."""
    if args.quick:
        args.base, args.copies, args.surrogate_steps, args.seeds, args.scale_rows, args.epochs = 2000, 40, 40, "0", 40_000, 2
    args.eps_list = [float(e) for e in args.eps.split(",")]
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    return args


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    # heavy import (PIL), loaded only when this runs: the registry imports every suite
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _crop(img: np.ndarray, px: int = 2) -> np.ndarray:
    # heavy import (PIL), loaded only when this runs: the registry imports every suite
    from PIL import Image

    h, w = img.shape
    return np.asarray(Image.fromarray(img[px : h - px, px : w - px]).resize((w, h), Image.BILINEAR))


def _planted_copy(kind: str, img: np.ndarray, encoded: bytes) -> bytes:
    """The encoded copy of one base image for a planted-duplicate kind."""
    if kind == "jpeg-q50":
        return _jpeg(img, 50)
    if kind == "hflip":
        return _jpeg(np.ascontiguousarray(img[:, ::-1]), 95)
    if kind == "crop":
        return _jpeg(_crop(img), 95)
    return encoded  # exact: the base sample's bytes


def build_source(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Shard the base subset plus the planted copies; return ``(manifest, planted info)``."""
    # heavy import, deferred: streamprune's writers load PIL and webdataset, and the registry imports every suite
    from streamprune.sources import FASHION_MNIST_CLASSES, idx_source
    from streamprune.writers import write_shards

    full = idx_source(FASHION_MNIST_DIR, split="train")
    rng = np.random.default_rng(0)
    per_class = args.base // 10
    base = np.sort(np.concatenate([rng.choice(np.flatnonzero(full.labels == c), per_class, replace=False) for c in range(10)]))
    samples = []
    encoded = {}
    for j, i in enumerate(base.tolist()):
        encoded[j] = _jpeg(full.images[i], 95)
        samples.append((f"b{j:05d}", {"jpg": encoded[j]}, int(full.labels[i])))
    chosen = rng.choice(len(base), len(KINDS) * args.copies, replace=False).reshape(len(KINDS), args.copies)
    pairs = []
    for kind, picks in zip(KINDS, chosen):
        for j in picks.tolist():
            data = _planted_copy(kind, full.images[base[j]], encoded[j])
            key = f"c-{kind}-{j:05d}"
            samples.append((key, {"jpg": data}, int(full.labels[base[j]])))
            pairs.append((f"b{j:05d}", key, kind))
    out = os.path.join(args.data_dir, "source-quick" if args.quick else "source")
    shutil.rmtree(out, ignore_errors=True)
    manifest = write_shards(samples, out, samples_per_shard=1000, shuffle=True, seed=0, class_names=FASHION_MNIST_CLASSES, progress=False)
    return manifest, {"pairs": pairs, "base": len(base), "copies_per_kind": args.copies}


def planted_metrics(keys: Sequence[str], removed: np.ndarray, pairs: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """Precision and recall of a removal set against the planted pairs (module docstring).

    Args:
        keys: Sample keys, manifest order.
        removed: ``bool[N]``, the samples removed.
        pairs: ``(base key, copy key, kind)``.

    Returns:
        ``{"removed", "true_positives", "precision", "recall", "recall_by_kind", "both_removed"}``.
    """
    pos = {k: i for i, k in enumerate(keys)}
    planted = np.zeros(len(keys), dtype=bool)
    hit_by_kind: dict[str, list[bool]] = {}
    both = 0
    for a, b, kind in pairs:
        ia, ib = pos[a], pos[b]
        planted[ia] = planted[ib] = True
        hit_by_kind.setdefault(kind, []).append(bool(removed[ia] or removed[ib]))
        both += int(removed[ia] and removed[ib])
    n_removed = int(removed.sum())
    tp = int((removed & planted).sum())
    hits = [h for v in hit_by_kind.values() for h in v]
    return {
        "removed": n_removed, "true_positives": tp, "precision": tp / n_removed if n_removed else float("nan"),
        "recall": sum(hits) / len(hits), "recall_by_kind": {k: sum(v) / len(v) for k, v in hit_by_kind.items()},
        "both_removed": both,
    }


def _load_kept(manifest: Any, mask: Any):
    """Kept samples as grey uint8 ``[n, 1, 28, 28]`` and labels, read once through ``PrunedWebDataset``."""
    # heavy import (torch, torchvision, webdataset), loaded only when this runs: the registry imports every suite
    import torch
    from torchvision.io import ImageReadMode, decode_image

    from streamprune import PrunedWebDataset

    xs, ys = [], []
    for img, label in PrunedWebDataset(manifest, mask, shuffle=False).to_tuple("jpg", "cls"):
        xs.append(decode_image(torch.frombuffer(bytearray(img), dtype=torch.uint8), mode=ImageReadMode.GRAY))
        ys.append(int(label))
    return torch.stack(xs), torch.tensor(ys)


def _normalise(x):
    return (x.float() / 255.0 - 0.2860) / 0.3530


def _pretrain_and_probe(x, y, target: dict[str, Any], num_classes: int, epochs: int, seed: int) -> dict[str, float]:
    # heavy import (torch, scikit-learn), loaded only when this runs: the registry imports every suite
    import torch
    from sklearn.linear_model import LogisticRegression

    from streamprune.models import features

    from .nets import pretrain_cnn  # heavy: torch

    torch.manual_seed(seed)
    model = pretrain_cnn(num_classes)
    batch = 64
    steps = epochs * math.ceil(len(y) / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    done = 0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch):
            idx = order[i : i + batch]
            loss = torch.nn.functional.cross_entropy(model(_normalise(x[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done < steps:
                sched.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        ftr = features(model, _normalise(target["x_train"])).numpy().astype(np.float64)
        fte = features(model, _normalise(target["x_test"])).numpy().astype(np.float64)
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=2000).fit((ftr - mu) / sd, target["y_train"].numpy())
    acc = 100.0 * float((clf.predict((fte - mu) / sd) == target["y_test"].numpy()).mean())
    return {"probe_accuracy": acc, "pretrain_seconds": seconds, "steps": done}


def _target_a(data_dir: str) -> tuple[dict[str, Any], str]:
    """Target A: t10k footwear, 50 training images per class, 600 test images; ``(arrays, train manifest path)``."""
    # heavy import (torch, streamprune writers), loaded only when this runs: the registry imports every suite
    import torch

    from streamprune.demo import FOOTWEAR  # target A: the demo's footwear classes
    from streamprune.sources import FASHION_MNIST_CLASSES, ArraySource, idx_source
    from streamprune.writers import write_shards

    t10k = idx_source(FASHION_MNIST_DIR, split="t10k")
    keep = np.flatnonzero(np.isin(t10k.labels, FOOTWEAR))
    labels = np.searchsorted(np.array(FOOTWEAR), t10k.labels[keep])
    rng = np.random.default_rng(0)
    train = np.concatenate([rng.choice(np.flatnonzero(labels == c), 50, replace=False) for c in range(3)])
    rest = np.setdiff1d(np.arange(len(keep)), train)
    test = np.sort(rng.choice(rest, 600, replace=False))
    classes = [FASHION_MNIST_CLASSES[c] for c in FOOTWEAR]
    m = write_shards(ArraySource(t10k.images[keep][train], labels[train], class_names=classes, prefix="a-train-"),
                     os.path.join(data_dir, "target_a_train"), samples_per_shard=5000, shuffle=False, progress=False,
                     overwrite=True)
    as_t = lambda idx: torch.from_numpy(t10k.images[keep][idx][:, None].copy())  # noqa: E731
    arrays = {"x_train": as_t(train), "y_train": torch.from_numpy(labels[train]), "x_test": as_t(test), "y_test": torch.from_numpy(labels[test])}
    return arrays, m.path


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; return the results dict."""
    # heavy import, deferred: streamprune's scoring/train load torch, numba and webdataset, and the registry imports every suite
    import torch

    from streamprune.masks import combine_masks
    from streamprune.scores import ScoreFile
    from streamprune.scoring import score_source  # heavy: torch
    from streamprune.scoring.dedup import mask_from_duplicates, semdedup_arrays  # heavy: torch
    from streamprune.selection import mask_from_scores  # heavy: torch
    from streamprune.train import train_surrogate  # heavy: torch

    from .nets import SURROGATE_ENTRY_POINT  # heavy: torch

    torch.set_num_threads(1)
    started = _dt.datetime.now(_dt.timezone.utc)
    t_start = time.perf_counter()
    os.makedirs(args.data_dir, exist_ok=True)
    work = os.path.join(args.data_dir, "run-quick" if args.quick else "run")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    t0 = time.perf_counter()
    manifest, planted = build_source(args)
    shard_s = time.perf_counter() - t0
    keys = manifest.keys()
    n = manifest.num_samples
    log.info("source: %d samples (%d planted pairs) in %.1f s", n, len(planted["pairs"]), shard_s)

    t0 = time.perf_counter()
    trained = train_surrogate(manifest, SURROGATE_ENTRY_POINT, os.path.join(work, "surrogate.pt"), max_steps=args.surrogate_steps,
                              batch_size=128, input_size=28, workers=1, seed=0, progress=False)
    surrogate_s = time.perf_counter() - t0
    common_kw = {"surrogate": SURROGATE_ENTRY_POINT, "checkpoint": trained["checkpoint"], "input_size": 28, "progress": False}

    # exact dedup
    ex = score_source(manifest, "exact-dedup", [0.0], os.path.join(work, "exact"), progress=False)
    ex_scores = ScoreFile.load(ex["scores"])
    exact_pairs = [p for p in planted["pairs"] if p[2] == "exact"]
    exact = {**planted_metrics(keys, ex_scores.extra["duplicate"] > 0, exact_pairs), **{k: ex_scores.params[k] for k in (
        "candidates", "duplicates", "collisions", "bytes_read", "seconds")}}
    exact["seconds_per_million_extrapolated"] = ex_scores.params["seconds"] / n * 1e6

    # SemDeDup: one pass, every eps from the stored M
    sd = score_source(manifest, "semdedup", [0.0], os.path.join(work, "semdedup"), eps=args.transfer_eps, clusters=args.clusters,
                      **common_kw)
    sd_scores = ScoreFile.load(sd["scores"])
    m_sim = sd_scores.scores
    rows = []
    for eps in args.eps_list:
        row = {"eps": eps, **planted_metrics(keys, m_sim > 1.0 - eps, planted["pairs"])}
        rows.append(row)
        log.info("eps %g: removed %d, precision %.3f, recall %.3f %s", eps, row["removed"], row["precision"], row["recall"], row["recall_by_kind"])
    params = sd_scores.params
    timing = {
        "samples": n, "clusters": params["clusters"], "embed_seconds": params["embed_seconds"], "dedup_seconds": params["dedup_seconds"],
        "embed_per_million_extrapolated": params["embed_seconds"] / n * 1e6,
        "dedup_per_million_extrapolated": params["dedup_seconds"] / n * 1e6,
    }
    # scaling: the SemDeDup step on synthetic rows at the same mean cluster size
    feats = np.load(os.path.join(params["feature_dir"], "shard-000000.f16.npy")).astype(np.float32)
    reps = math.ceil(args.scale_rows / len(feats))
    rng = np.random.default_rng(0)
    big = np.tile(feats, (reps, 1))[: args.scale_rows]
    big += rng.normal(scale=0.05 * float(feats.std()), size=big.shape).astype(np.float32)
    k_big = max(1, round(args.scale_rows * params["clusters"] / n))
    t0 = time.perf_counter()
    semdedup_arrays(big, k_big, args.transfer_eps, kmeans_iters=20, seed=0)
    big_s = time.perf_counter() - t0
    timing.update({"scale_rows": args.scale_rows, "scale_clusters": k_big, "scale_dedup_seconds": big_s,
                   "scale_dedup_per_million_extrapolated": big_s / args.scale_rows * 1e6})
    del big

    # transfer, reduced: LM-kept vs LM-kept AND deduplicated
    target, target_train = _target_a(work)
    lm = score_source(manifest, "lm", [args.lm_ratio], os.path.join(work, "lm"), target=target_train, **common_kw)
    lm_mask = mask_from_scores(manifest, ScoreFile.load(lm["scores"]), args.lm_ratio)
    dedup_mask = mask_from_duplicates(manifest, sd_scores)
    both = combine_masks("and", [lm_mask, dedup_mask])
    both.save(os.path.join(work, "lm-and-semdedup.spmask"))
    configs = {"lm": lm_mask, "lm_and_semdedup": both}
    data = {name: _load_kept(manifest, mask) for name, mask in configs.items()}
    runs = []
    for seed in args.seed_list:
        for name, (x, y) in data.items():
            r = _pretrain_and_probe(x, y, target, manifest.num_classes, args.epochs, seed)
            runs.append({"config": name, "seed": seed, "kept": len(y), **r})
            log.info("seed %d %s: kept %d, probe %.2f%%, %.1f s", seed, name, len(y), r["probe_accuracy"], r["pretrain_seconds"])
    acc = {c: [r["probe_accuracy"] for r in runs if r["config"] == c] for c in configs}
    diffs = [b - a for a, b in zip(acc["lm"], acc["lm_and_semdedup"])]
    transfer = {
        "lm_ratio": args.lm_ratio, "eps": args.transfer_eps, "kept": {c: int(m.kept) for c, m in configs.items()},
        "probe_mean": {c: float(np.mean(v)) for c, v in acc.items()},
        "probe_std": {c: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for c, v in acc.items()},
        "paired_difference_mean": float(np.mean(diffs)), "paired_differences": diffs,
    }
    return {
        "benchmark": "dedup_bench", "command": provenance.command_line(), "date": started.isoformat(timespec="seconds"),
        "machine": provenance.machine_info(), "load_avg_at_end": os.getloadavg(),
        "config": {k: v for k, v in vars(args).items() if k not in ("eps", "seeds")},
        "setup": {"samples": n, "base": planted["base"], "copies_per_kind": planted["copies_per_kind"], "kinds": list(KINDS),
                  "shard_seconds": shard_s, "surrogate_seconds": surrogate_s, "surrogate_train_accuracy": trained["train_accuracy"]},
        "semdedup": rows, "semdedup_timing": timing, "exact": exact, "transfer": transfer, "transfer_runs": runs,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }


def dedup_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Exact dedup's recall and precision on the planted copies; SemDeDup's best recall at precision >= 0.9."""
    rows, exact = results["semdedup"], results["exact"]
    best = max(rows, key=lambda r: (r["recall"] if r["precision"] >= 0.9 else -1, r["precision"]))
    return [
        Target.check("exact dedup finds every planted byte-identical copy (recall)", exact["recall"], 1.0, ">=").to_dict(),
        Target.check("exact dedup removes nothing else (precision)", exact["precision"], 1.0, ">=").to_dict(),
        Target.check(f"SemDeDup recall at precision >= 0.9 (eps {best['eps']:g})", best["recall"], 0.5, ">=").to_dict(),
    ]


def report_markdown(results: dict[str, Any]) -> str:
    """The suite's tables."""
    f = mdtable.fmt_num
    rows = [[f(r["eps"], 4), r["removed"], r["true_positives"], f(r["precision"]), f(r["recall"])]
            + [f(r["recall_by_kind"].get(k, float("nan"))) for k in KINDS] for r in results["semdedup"]]
    out = [f"SemDeDup on {results['setup']['samples']:,} samples ({results['setup']['copies_per_kind']} planted copies per kind, "
           f"K={results['semdedup_timing']['clusters']}):", "",
           mdtable.markdown_table(["eps", "removed", "true pos.", "precision", "recall"] + [f"recall {k}" for k in KINDS], rows)]
    t = results["semdedup_timing"]
    out += ["", "Time per million samples (extrapolated from the measured runs, not measured at 1M):", "",
            mdtable.markdown_table(["step", "measured on", "seconds", "s per 1M (extrapolated)"], [
                ["embedding (surrogate, CPU)", f"{t['samples']:,}", f(t["embed_seconds"]), f(t["embed_per_million_extrapolated"])],
                ["SemDeDup (k-means + walk)", f"{t['samples']:,} (K={t['clusters']})", f(t["dedup_seconds"]), f(t["dedup_per_million_extrapolated"])],
                ["SemDeDup (k-means + walk)", f"{t['scale_rows']:,} synthetic (K={t['scale_clusters']})", f(t["scale_dedup_seconds"]),
                 f(t["scale_dedup_per_million_extrapolated"])],
                ["exact dedup", f"{t['samples']:,}", f(results["exact"]["seconds"]), f(results["exact"]["seconds_per_million_extrapolated"])],
            ])]
    e = results["exact"]
    out += ["", f"Exact dedup: {e['duplicates']} removed, precision {f(e['precision'])}, recall {f(e['recall'])} on the planted exact "
            f"copies; {e['candidates']} candidates, {e['collisions']} checksum collisions, {e['bytes_read']:,} bytes read."]
    tr = results["transfer"]
    out += ["", f"Transfer (reduced; target A probe accuracy, %): LM r={tr['lm_ratio']:g} vs LM AND SemDeDup eps={tr['eps']:g}", "",
            mdtable.markdown_table(["config", "kept", "probe mean", "std"], [
                [c, tr["kept"][c], f(tr["probe_mean"][c], 2), f(tr["probe_std"][c], 2)] for c in tr["kept"]]),
            "", f"Paired difference (LM AND SemDeDup minus LM): {tr['paired_difference_mean']:+.2f} points."]
    return "\n".join(out)


class DedupSuite(Suite):
    """``dedup``: SemDeDup precision/recall on planted duplicates, its cost, exact dedup, reduced transfer."""

    name, title = "dedup", "Deduplication: SemDeDup and exact dedup on planted duplicates"
    data_name = "dedup"
    measures = ("streamprune/scoring/dedup.py", "streamprune/scoring/kmeans.py", "streamprune/scoring/features.py",
                "streamprune/kernels.py")
    add_arguments, configure, measurement = staticmethod(add_arguments), staticmethod(configure), staticmethod(run)
    tables = staticmethod(report_markdown)

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        """The targets from the stored SemDeDup rows and exact-dedup counts (:func:`dedup_targets`)."""
        return {**results, "targets": dedup_targets(results)}
