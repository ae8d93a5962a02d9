"""Transfer benchmark: prune the pretraining source, pretrain faster, and check what is lost downstream.

End to end on real data with streamprune's own pieces:

* **Source**: Fashion-MNIST train (60,000 images, 10 classes, Debian's ``dataset-fashion-mnist``
  at /usr/share/datasets/fashion-mnist), sharded by ``streamprune shard`` (JPEG, 5,000 samples
  per shard, shuffled), cached in ``benchmarks/data/transfer/``.
* **Targets** (never overlapping the source):
  A. the footwear classes (Sandal, Sneaker, Ankle boot) of the Fashion-MNIST **t10k** split,
     ``--shots`` (50) labelled images per class for training, the other 2,850 for testing:
     the *related* target;
  B. scikit-learn's digits (1,797 8x8 images) resized to 28x28 (bilinear), ``--shots``
     images per class for training, the other 1,297 for testing: an *unrelated* target.
  The per-class splits are drawn once (seed 0), the same for every method and seed. Each
  split is written as shards and loaded through ``PrunedWebDataset`` into memory once.
* **Surrogate**: ``nets.surrogate_cnn`` (24k parameters, RGB input through
  ``surrogate_transform(28)``), trained by ``streamprune.train.train_surrogate`` for
  ``--surrogate-steps`` (150) steps of 128 on the full source, seed 0.
* **Scoring** (``streamprune.scoring.score_source``, masks at every ratio):
  ``lm`` and ``fm`` (``--clusters`` K=100 k-means clusters over the surrogate's 64-d features)
  use target A's training images: LM/FM masks are made *for target A*, and target B shows what
  a mask made for another task costs. ``moderate`` (class-blind, same feature cache as FM) is
  scored once; ``random-classes`` and ``random-samples`` are scored once per seed, with the seed.
* **Pretraining**: ``nets.pretrain_cnn`` (98k parameters, 4x the surrogate and one
  stage deeper, grey input) on the kept samples, read by ``PrunedWebDataset(manifest, mask,
  shuffle=True)`` + ``DataLoader(num_workers=--workers)`` with ``set_epoch`` every epoch; JPEG
  decoded by ``torchvision.io.decode_image`` in the worker (about 3x faster than webdataset's
  PIL ``.decode("l")`` and 10x faster than PIL + ``surrogate_transform``; every run measures
  all three on 5,000 source samples, ``setup.decode_samples_per_s``); normalised per batch in
  the main process. The same ``--epochs`` (1) for every config, so a pruned source gets
  proportionally fewer steps: batch ``--batch-size`` 64 (938 steps unpruned, 188 at r=0.8),
  AdamW (weight decay 5e-4), one-cycle learning rate (peak ``--lr`` 3e-3) over those steps.
  Sizing: on the shared 2-core machine an unpruned epoch takes 20-28 s (2.2-3k samples/s at a
  1-minute load average of 2-6), and a seed round is 1 + 5 x (0.6 + 0.4 + 0.2) = 7 unpruned
  epochs' worth, plus 2-8 s of downstream work per model: the default run took 12 min at a
  load average of 2-3.5 and 16.5 min at 5-6. One torch thread (``--threads``): the decode
  worker has the other core, and two OpenMP threads beside other jobs trained several times
  slower than one.
* **Warm-up**: one untimed pretraining on a random 4% of the source before the first round.
* **Configs**: unpruned (ratio 0) + 5 methods x ratios 0.4/0.6/0.8 = 16 pretraining runs per
  seed, seeds 0/1/2 (pretraining initialisation and data order, random masks, finetuning).
  Each seed is one round; within a round the 16 configs run in a shuffled order (seeded), so
  machine noise hits every ratio alike. A ``scratch`` baseline (random initialisation, no
  pretraining) is evaluated once per seed.
* **Timed**: only the pretraining loop: building the reader and loader, and every epoch until the
  last optimizer step (``time.perf_counter``). Reported per config: median over seeds of
  t(config) / t(unpruned of the same round), the kept fraction of samples, and the target
  t(r) / t(0) <= 1.15 x (1 - r). FM keeps whole clusters, so its kept fraction is not exactly
  1 - r; the table shows both. The CPU time of the same loop (main process + the loader worker,
  from ``process_time`` and ``RUSAGE_CHILDREN``) is recorded too and its ratio reported beside:
  other jobs on the shared cores inflate wall times at random, CPU times much less.
* **Downstream** (not timed), for each pretrained model and target:
  ``probe``: frozen penultimate features (``streamprune.models.features``), standardised,
  scikit-learn ``LogisticRegression`` (lbfgs, C=1, max_iter 2000), test accuracy;
  ``finetune``: every weight trained with a new linear head, ``--finetune-steps`` (100) AdamW
  steps of ``--finetune-batch`` (32) at ``--finetune-lr`` (1e-3, cosine decay), test accuracy.
  Reported: mean +- sample std over seeds (percent), and the paired (same seed) difference against
  ratio 0 and against random-classes / random-samples at the same ratio.
* **Targets** (from the issue): pretraining time at ratio r <= 1.15 x (1 - r) of unpruned, for
  every method (the verdict takes the worst method's median); LM and FM on target A within 1
  point of unpruned (mean over seeds) at ratios 0.4 and 0.6; LM and FM at or above
  random-classes and random-samples on target A at every ratio (mean over seeds), for the probe
  and the finetune separately.

Outputs: ``benchmarks/results/transfer_bench.json`` (config, machine, command, date, scoring
provenance, every run, summary, targets) and ``transfer_bench.png``; ``--quick`` (4,000 source
images, 2 seeds, 20 shots, 300 test images per target, K=20, 20 finetuning steps) writes to
``benchmarks/results/quick/``. The tables (``report_markdown``) also go into BENCHMARKS.md
(``python -m benchmarks --report``). Everything is seeded: two default runs gave identical
accuracies; only the times differ.

Run:  python -m benchmarks transfer            (12-17 min on the shared 2 cores)
      python -m benchmarks transfer --quick    (~1-2.5 min)
      python -m benchmarks transfer --plot-only benchmarks/results/transfer_bench.json
          (re-summarise the stored runs, rewrite the file and the plot, print the tables)
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import gc
import itertools
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from streamprune import MaskFile
from streamprune.sources import FASHION_MNIST_DIR

from . import mdtable, provenance, stats
from .finetune import accuracy_percent, train_steps
from .suite import Suite, Target

__all__ = [
    "METHODS",
    "TransferSuite",
    "digits_images",
    "evaluate_targets",
    "report_markdown",
    "split_per_class",
    "summarize",
]

log = logging.getLogger("transfer_bench")

METHODS = ("lm", "fm", "random-classes", "random-samples", "moderate")
TARGETED = ("lm", "fm")
RANDOM = ("random-classes", "random-samples")
TARGETS = ("a", "b")
PROTOCOLS = ("probe", "finetune")
TARGET_NAMES = {
    "a": "A: Fashion-MNIST t10k footwear (Sandal, Sneaker, Ankle boot)",
    "b": "B: scikit-learn digits, 28x28",
}
TARGET_SHORT = {"a": "A: Fashion-MNIST t10k footwear", "b": "B: digits 28x28"}
#: Pretraining time at ratio r may be at most this x (1 - r) of the unpruned time.
TIME_SLACK = 1.15
#: LM/FM at ratios 0.4 and 0.6 may lose at most this many accuracy points against unpruned.
ACC_TOLERANCE = 1.0
#: Ratios at which the "within 1 point of unpruned" target is checked.
ACC_TARGET_RATIOS = (0.4, 0.6)
#: Fashion-MNIST pixel mean and std (on [0, 1]); both targets are normalised with them too.
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530
DATA_VERSION = 1


# --------------------------------------------------------------------------------------------
# arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The suite's own options (``--data-dir``: shards, targets, scores and masks)."""
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds, one round each (default 0-4: fewer than 5 rounds are never 'met')")
    p.add_argument("--ratios", default="0.4,0.6,0.8", help="fractions REMOVED besides 0 (default 0.4,0.6,0.8)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"scoring methods (default {','.join(METHODS)})")
    p.add_argument("--epochs", type=int, default=1, help="pretraining epochs over the kept samples (default 1)")
    p.add_argument("--batch-size", type=int, default=64, help="pretraining batch (default 64)")
    p.add_argument("--lr", type=float, default=3e-3, help="pretraining peak learning rate (default 3e-3)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader decode workers (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the main process (default 1)")
    p.add_argument("--surrogate-steps", type=int, default=150, help="surrogate training steps (default 150)")
    p.add_argument("--clusters", type=int, default=100, help="FM: k-means clusters K (default 100)")
    p.add_argument("--shots", type=int, default=50, help="labelled training images per target class (default 50)")
    p.add_argument("--test-limit", type=int, default=None, help="cap on each target's test images (default: all)")
    p.add_argument("--finetune-steps", type=int, default=100, help="finetuning steps per target (default 100)")
    p.add_argument("--finetune-batch", type=int, default=32, help="finetuning batch (default 32)")
    p.add_argument("--finetune-lr", type=float, default=1e-3, help="finetuning learning rate (default 1e-3)")
    p.add_argument("--source-samples", type=int, default=None, help="use a class-balanced subset of the source (default: all 60,000)")
    p.add_argument("--samples-per-shard", type=int, default=5000, help="source shard size (default 5000)")


def configure(args: argparse.Namespace) -> argparse.Namespace:
    """``--quick`` (4,000 source images, 2 seeds, small targets) and the parsed lists; bad values are usage errors."""
    if args.quick:
        args.seeds = "0,1"
        args.epochs = 1
        args.surrogate_steps = 30
        args.clusters = 20
        args.shots = 20
        args.test_limit = 300 if args.test_limit is None else args.test_limit
        args.finetune_steps = 20
        args.source_samples = 4000 if args.source_samples is None else args.source_samples
        args.samples_per_shard = 1000
    args.seed_list = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    args.ratio_list = sorted({float(r) for r in str(args.ratios).split(",") if r.strip()} - {0.0})
    args.method_list = [m.strip() for m in str(args.methods).split(",") if m.strip()]
    for m in args.method_list:
        if m not in METHODS:
            raise SystemExit(f"python -m benchmarks transfer: --methods: unknown method {m!r}; choose from {', '.join(METHODS)}")
    for r in args.ratio_list:
        if not 0.0 < r < 1.0:
            raise SystemExit(f"python -m benchmarks transfer: --ratios: {r} is not a fraction removed in (0, 1)")
    if not args.seed_list:
        raise SystemExit("python -m benchmarks transfer: --seeds: give at least one seed")
    return args


# --------------------------------------------------------------------------------------------
# data


def split_per_class(labels: np.ndarray, shots: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``shots`` training indices per class; every other index is a test index.

    Args:
        labels: Label of each image.
        shots: Training images per class.
        seed: Seed of the draw.

    Returns:
        ``(train, test)`` index arrays, each sorted ascending.

    Raises:
        ValueError: A class has no more than ``shots`` images (nothing would be left to test).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= shots:
            raise ValueError(f"class {c} has {len(idx)} images; need more than shots={shots}")
        train.append(rng.choice(idx, size=shots, replace=False))
    train_idx = np.sort(np.concatenate(train))
    test_idx = np.setdiff1d(np.arange(len(labels)), train_idx)
    return train_idx, test_idx


def digits_images(size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``uint8 [N, size, size]`` grey images (bilinear resize) and labels."""
    # optional extra: scikit-learn, only this path needs it
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = (digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in small])
    return big, digits.target.astype(np.int64)


def _stratified_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    classes = np.unique(labels)
    per = n // len(classes)
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), size=per, replace=False) for c in classes]))


def prepare_source(data_dir: str, samples: int | None, samples_per_shard: int) -> str:
    """Shard the Fashion-MNIST train split with ``streamprune shard`` (cached); return the manifest path.

    With ``samples`` a class-balanced subset is written as an ``.npz`` first and that is sharded.
    """
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    from streamprune.sources import FASHION_MNIST_CLASSES, idx_source

    tag = "full" if samples is None else f"n{samples}"
    out = os.path.join(data_dir, f"source-{tag}")
    params = {"version": DATA_VERSION, "samples": samples, "samples_per_shard": samples_per_shard, "source": FASHION_MNIST_DIR}
    meta = os.path.join(out, "bench_meta.json")
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(meta) and os.path.exists(manifest):
        with open(meta) as fh:
            if json.load(fh).get("params") == params:
                log.info("reusing source shards in %s", out)
                return manifest
    shutil.rmtree(out, ignore_errors=True)
    src = FASHION_MNIST_DIR
    if samples is not None:
        full = idx_source(FASHION_MNIST_DIR, split="train")
        keep = _stratified_subset(full.labels, samples)
        os.makedirs(data_dir, exist_ok=True)
        src = os.path.join(data_dir, f"source-{tag}.npz")
        np.savez(src, images=full.images[keep], labels=full.labels[keep], class_names=np.array(FASHION_MNIST_CLASSES))
    cmd = [sys.executable, "-m", "streamprune_cli.main", "shard", src, out, "--samples-per-shard", str(samples_per_shard), "--workers", "2", "-q"]
    log.info("$ %s", " ".join(cmd))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    with open(meta, "w") as fh:
        json.dump({"params": params, "command": " ".join(cmd), "seconds": time.perf_counter() - t0}, fh)
    return manifest


def prepare_targets(data_dir: str, shots: int, test_limit: int | None) -> dict[str, dict[str, Any]]:
    """Write targets A and B (train and test splits) as shards; return their manifests and sizes."""
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    from streamprune.demo import FOOTWEAR  # target A: the demo's footwear classes
    from streamprune.sources import FASHION_MNIST_CLASSES, ArraySource, idx_source
    from streamprune.writers import write_shards

    out = os.path.join(data_dir, f"targets-s{shots}-t{test_limit or 'all'}")
    shutil.rmtree(out, ignore_errors=True)
    t10k = idx_source(FASHION_MNIST_DIR, split="t10k")
    keep = np.isin(t10k.labels, FOOTWEAR)
    a_images = t10k.images[keep]
    a_labels = np.searchsorted(np.array(FOOTWEAR), t10k.labels[keep])
    b_images, b_labels = digits_images()
    sets = {
        "a": (a_images, a_labels, [FASHION_MNIST_CLASSES[c] for c in FOOTWEAR]),
        "b": (b_images, b_labels, [str(d) for d in range(10)]),
    }
    info: dict[str, dict[str, Any]] = {}
    for name, (images, labels, classes) in sets.items():
        train_idx, test_idx = split_per_class(labels, shots, seed=0)
        if test_limit is not None and len(test_idx) > test_limit:
            test_idx = np.sort(np.random.default_rng(1).choice(test_idx, size=test_limit, replace=False))
        entry: dict[str, Any] = {"description": TARGET_NAMES[name], "classes": classes}
        for split, idx in (("train", train_idx), ("test", test_idx)):
            src = ArraySource(images[idx], labels[idx], class_names=classes, prefix=f"{name}-{split}-")
            m = write_shards(src, os.path.join(out, f"{name}_{split}"), samples_per_shard=5000, shuffle=False, progress=False)
            entry[split] = m.path
            entry[f"{split}_samples"] = len(idx)
        info[name] = entry
    return info


def decode_gray(data: bytes):
    """Decode an encoded image (JPEG or PNG) to a ``uint8 [1, H, W]`` grey tensor (torchvision)."""
    # heavy import (torch, torchvision), loaded only when this runs: the registry imports every suite
    import torch
    from torchvision.io import ImageReadMode, decode_image

    return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.GRAY)


def measure_decode(manifest: str, samples: int = 5000) -> dict[str, float]:
    """Samples/s of the decode paths on the first ``samples`` source samples (one process, warm cache).

    ``raw``: the reader alone; ``torchvision``: :func:`decode_gray` (what pretraining uses);
    ``webdataset_l``: ``.decode("l")`` (PIL, numpy grey); ``pil_surrogate_transform``:
    ``.decode("pil")`` + ``surrogate_transform(28)`` (what scoring and the surrogate use).
    """

    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    from streamprune import PrunedWebDataset
    from streamprune.models import surrogate_transform

    def pipelines():
        yield "raw", PrunedWebDataset(manifest).to_tuple("jpg;png", "cls")
        yield "torchvision", PrunedWebDataset(manifest).to_tuple("jpg;png", "cls").map_tuple(decode_gray, int)
        yield "webdataset_l", PrunedWebDataset(manifest).decode("l").to_tuple("jpg;png", "cls")
        yield "pil_surrogate_transform", PrunedWebDataset(manifest).decode("pil").to_tuple("jpg;png", "cls").map_tuple(surrogate_transform(28), int)

    decode_gray(next(iter(PrunedWebDataset(manifest).to_tuple("jpg;png")))[0])  # torchvision's one-off set-up cost
    out = {}
    for name, pipeline in pipelines():
        t0 = time.perf_counter()
        n = sum(1 for _ in itertools.islice(pipeline, samples))
        out[name] = n / (time.perf_counter() - t0)
    return out


def load_split(manifest: str):
    """Every sample of a (target) manifest through ``PrunedWebDataset``: ``(uint8 [N,1,H,W], int64 [N])``."""
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    import torch

    from streamprune import PrunedWebDataset

    xs, ys = [], []
    for x, y in PrunedWebDataset(manifest).to_tuple("jpg;png", "cls").map_tuple(decode_gray, int):
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def normalise(x_uint8):
    """``uint8`` images -> normalised float32 (Fashion-MNIST pixel mean/std)."""
    return (x_uint8.float().div_(255.0).sub_(PIXEL_MEAN)).div_(PIXEL_STD)


# --------------------------------------------------------------------------------------------
# surrogate and scoring


def score_all(
    manifest: str, target_train: str, work: str, methods: Sequence[str], ratios: Sequence[float], seeds: Sequence[int],
    surrogate_steps: int, clusters: int, workers: int, progress: bool,
) -> dict[str, Any]:
    """Train the surrogate and score every method; return mask paths, kept fractions and provenance.

    Returns:
        ``{"surrogate": {...}, "methods": {method: {"seeds": {seed|"all": {ratio: {"mask", "kept", "kept_fraction",
        "kept_classes"}}}, "seconds": ...}}}`` (``"all"``: one scoring for every seed).
    """
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    from streamprune.scoring import score_source
    from streamprune.train import train_surrogate

    from .nets import SURROGATE_ENTRY_POINT

    out: dict[str, Any] = {"methods": {}}
    needs_surrogate = any(m in ("lm", "fm", "moderate") for m in methods)
    ckpt = None
    if needs_surrogate:
        t0 = time.perf_counter()
        trained = train_surrogate(
            manifest, SURROGATE_ENTRY_POINT, os.path.join(work, "surrogate.pt"), max_steps=surrogate_steps,
            batch_size=128, input_size=28, workers=workers, seed=0, progress=progress,
        )
        ckpt = trained["checkpoint"]
        out["surrogate"] = {
            "arch": SURROGATE_ENTRY_POINT, "input_size": 28, "steps": trained["steps"], "train_loss": trained["train_loss"],
            "train_accuracy": trained["train_accuracy"], "seconds": round(time.perf_counter() - t0, 3),
        }
        log.info("surrogate: %d steps, train accuracy %.3f, %.1f s", trained["steps"], trained["train_accuracy"], out["surrogate"]["seconds"])
    features = os.path.join(work, "features")
    total = 0
    for method in methods:
        per_seed = method in RANDOM
        entry: dict[str, Any] = {"seeds": {}, "seconds": {}}
        for seed in (seeds if per_seed else [None]):
            key = "all" if seed is None else str(seed)
            kwargs: dict[str, Any] = {}
            if method in ("lm", "fm", "moderate"):
                kwargs.update(surrogate=SURROGATE_ENTRY_POINT, checkpoint=ckpt, input_size=28)
            if method in TARGETED:
                kwargs["target"] = target_train
            if method == "fm":
                kwargs.update(clusters=clusters, feature_dir=features)
            if method == "moderate":
                kwargs["feature_dir"] = features
            t0 = time.perf_counter()
            r = score_source(
                manifest, method, list(ratios), os.path.join(work, f"{method}-{key}"), workers=workers,
                seed=0 if seed is None else seed, progress=progress, **kwargs,
            )
            entry["seconds"][key] = round(time.perf_counter() - t0, 3)
            total += 1
            masks = {}
            for ratio in ratios:
                mf = MaskFile(r["masks"][ratio])
                masks[f"{ratio:g}"] = {
                    "mask": r["masks"][ratio], "kept": int(mf.kept), "kept_fraction": mf.kept / mf.num_samples,
                    "kept_items": [int(c) for c in r["kept"][ratio]],
                }
            entry["seeds"][key] = masks
        out["methods"][method] = entry
        log.info("scored %s in %s s", method, entry["seconds"])
    return out


def mask_for(scoring: dict[str, Any], method: str, ratio: float, seed: int) -> dict[str, Any]:
    """The mask entry of ``method`` at ``ratio`` used in round ``seed``."""
    seeds = scoring["methods"][method]["seeds"]
    return seeds.get(str(seed), seeds.get("all"))[f"{ratio:g}"]


# --------------------------------------------------------------------------------------------
# pretraining and downstream


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pretrain(
    manifest: str, mask: str | None, *, seed: int, epochs: int, batch_size: int, lr: float, workers: int,
    weight_decay: float = 5e-4,
):
    """Pretrain ``pretrain_cnn`` on the kept samples; time the loop. Returns ``(model, record)``."""
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    import torch
    from torch import nn

    from streamprune import PrunedWebDataset
    from streamprune.manifest import open_manifest  # deferred with the pass's other streamprune imports
    from streamprune.masks import kept_counts, open_mask  # deferred with the pass's other streamprune imports

    from .nets import pretrain_cnn  # heavy: torch

    m = open_manifest(manifest)
    kept = int(kept_counts(m, open_mask(mask, m)).sum())
    torch.manual_seed(seed)
    model = pretrain_cnn(m.num_classes)
    steps = epochs * math.ceil(kept / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=steps, pct_start=0.15, anneal_strategy="cos", div_factor=10.0, final_div_factor=1e3
    )
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    load_before = os.getloadavg()[0]
    cpu_main, cpu_children = time.process_time(), _children_cpu()
    start = time.perf_counter()
    ds = PrunedWebDataset(manifest, mask, shuffle=True, seed=seed)
    pipeline = ds.to_tuple("jpg;png", "cls").map_tuple(decode_gray, int)
    loader = torch.utils.data.DataLoader(pipeline, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0)
    done = samples = 0
    loss_sum = correct = seen = 0.0
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        loss_sum = correct = seen = 0.0
        for x, y in loader:
            logits = model(normalise(x))
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if done < steps - 1:  # OneCycleLR raises past its last step
                sched.step()
            done += 1
            n = len(y)
            samples += n
            loss_sum += loss.item() * n
            correct += float((logits.argmax(1) == y).sum())
            seen += n
    seconds = time.perf_counter() - start
    cpu_main = time.process_time() - cpu_main
    del loader  # joins the worker, so its CPU time reaches RUSAGE_CHILDREN
    gc.collect()
    cpu_workers = _children_cpu() - cpu_children
    model.eval()
    return model, {
        "seconds": seconds, "cpu_seconds": cpu_main + cpu_workers, "cpu_seconds_main": cpu_main, "cpu_seconds_workers": cpu_workers,
        "steps": done, "samples": samples, "kept": kept, "train_loss": loss_sum / max(seen, 1),
        "train_accuracy": correct / max(seen, 1), "load_avg_before": load_before, "load_avg_after": os.getloadavg()[0],
    }


def _features(model, x_uint8, batch: int = 1024) -> np.ndarray:
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    import torch

    from streamprune.models import features

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x_uint8), batch):
            out.append(features(model, normalise(x_uint8[i : i + batch])).numpy())
    return np.concatenate(out).astype(np.float64)


def linear_probe(model, data: dict[str, Any]) -> float:
    """Test accuracy (percent) of logistic regression on the model's frozen, standardised features."""
    # optional extra: scikit-learn, only this path needs it
    from sklearn.linear_model import LogisticRegression

    ftr = _features(model, data["x_train"])
    fte = _features(model, data["x_test"])
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=2000)
    clf.fit((ftr - mu) / sd, data["y_train"].numpy())
    return 100.0 * float((clf.predict((fte - mu) / sd) == data["y_test"].numpy()).mean())


def finetune(model, data: dict[str, Any], *, steps: int, batch: int, lr: float, seed: int) -> float:
    """Test accuracy (percent) after training every weight with a new linear head."""
    # heavy import (torch), loaded only when this runs: the registry imports every suite
    import torch
    from torch import nn

    net = copy.deepcopy(model)
    torch.manual_seed(10_000 + seed)
    net[-1] = nn.Linear(net[-1].in_features, int(data["y_train"].max()) + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[Any]:  # epochs of shuffled order; a short tail starts the next epoch
        order = torch.empty(0, dtype=torch.int64)
        for _ in range(steps):
            if len(order) < batch:
                order = torch.cat([order, torch.randperm(len(data["y_train"]), generator=gen)])
            idx, order = order[:batch], order[batch:]
            yield idx

    train_steps(net, opt, sched, normalise(data["x_train"]), data["y_train"], batches())
    return accuracy_percent(net, data["x_test"], data["y_test"], chunk=1024, transform=normalise)


def downstream(model, targets: dict[str, dict[str, Any]], args: argparse.Namespace, seed: int) -> dict[str, dict[str, float]]:
    """Probe and finetune accuracy (percent) on every target.

    BLAS/OpenMP pools are limited to ``args.threads``: scipy's L-BFGS on these tiny problems ran
    ~10x slower with two OpenBLAS threads beside other jobs than with one.
    """
    # heavy import (threadpoolctl), loaded only when this runs: the registry imports every suite
    from threadpoolctl import threadpool_limits

    out = {}
    with threadpool_limits(args.threads):
        for name, data in targets.items():
            out[name] = {
                "probe": linear_probe(model, data),
                "finetune": finetune(model, data, steps=args.finetune_steps, batch=args.finetune_batch, lr=args.finetune_lr, seed=seed),
            }
    return out


# --------------------------------------------------------------------------------------------
# summary and targets (pure functions of the runs)


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _runs_by_seed(runs: Iterable[dict], method: str, ratio: float | None) -> dict[int, dict]:
    return {
        int(r["seed"]): r
        for r in runs
        if r["method"] == method and (ratio is None or abs(float(r["ratio"]) - ratio) < 1e-9)
    }


def fixed_cost_fit(runs: Sequence[dict], ratios: Sequence[float] = (0.4, 0.6, 0.8)) -> dict[str, Any]:
    """Least-squares fit of pretraining time against kept samples: ``t = fixed + per_1000 * kept / 1000``.

    Args:
        runs: The runs (those with ``pretrain`` count).
        ratios: Ratios at which to give the fitted ``t(r)/t(0) = f + (1-f)(1-r)``.

    Returns:
        Per clock (``wall``: ``seconds``, ``cpu``: ``cpu_seconds``): ``fixed_seconds``,
        ``seconds_per_1000_kept``, ``fixed_fraction`` f of the fitted unpruned epoch and
        ``fitted_time_ratio`` by ratio; plus ``runs`` and ``unpruned_kept``. ``{}`` with fewer than two runs.
    """
    timed = [r for r in runs if isinstance(r.get("pretrain"), dict) and "kept" in r["pretrain"]]
    unpruned = [r["pretrain"]["kept"] for r in timed if r.get("method") == "unpruned"]
    if len(timed) < 2 or not unpruned:
        return {}
    kept = np.array([r["pretrain"]["kept"] for r in timed], dtype=np.float64) / 1000.0
    out: dict[str, Any] = {"runs": len(timed), "unpruned_kept": int(unpruned[0])}
    for clock, key in (("wall", "seconds"), ("cpu", "cpu_seconds")):
        if not all(key in r["pretrain"] for r in timed):
            continue
        slope, fixed = np.polyfit(kept, np.array([r["pretrain"][key] for r in timed], dtype=np.float64), 1)
        f = fixed / (fixed + slope * unpruned[0] / 1000.0)
        out[clock] = {"fixed_seconds": float(fixed), "seconds_per_1000_kept": float(slope), "fixed_fraction": float(f),
                      "fitted_time_ratio": {str(r): float(f + (1 - f) * (1 - r)) for r in ratios}}
    return out


def summarize(runs: Sequence[dict], ratios: Sequence[float], methods: Sequence[str] = METHODS) -> dict[str, Any]:
    """Time ratios and accuracy statistics from the runs.

    Every pretrained run is ``{"seed", "method", "ratio", "kept_fraction", "pretrain": {"seconds"},
    "downstream": {target: {protocol: accuracy}}}``; the unpruned run has ``method="unpruned"``,
    ``ratio=0``; the no-pretraining baseline has ``method="scratch"`` and no ``pretrain``.
    Comparisons are paired by seed (only seeds present on both sides count).

    Args:
        runs: The runs.
        ratios: Pruning ratios (fractions removed, > 0).
        methods: Methods to summarise.

    Returns:
        ``{"time": [rows], "accuracy": [rows], "unpruned_seconds_median": float}``. A time row:
        ``method, ratio, seeds, kept_fraction, time_ratio_median/min/max, budget (1-r), limit``.
        An accuracy row: ``target, protocol, method, ratio, seeds, mean, std`` and, for pruned
        methods, ``delta_vs_unpruned_mean/std`` and ``delta_vs_<random method>``.
    """
    base = _runs_by_seed(runs, "unpruned", 0.0)
    time_rows = []
    for method in methods:
        for ratio in ratios:
            cur = _runs_by_seed(runs, method, ratio)
            if not cur:
                continue
            pairs = stats.paired_by_round({s: r["pretrain"]["seconds"] for s, r in cur.items()},
                                          {s: r["pretrain"]["seconds"] for s, r in base.items()}, rounds=sorted(cur))
            cpu = [cur[s]["pretrain"]["cpu_seconds"] / base[s]["pretrain"]["cpu_seconds"] for s in sorted(cur)
                   if s in base and "cpu_seconds" in cur[s]["pretrain"] and "cpu_seconds" in base[s]["pretrain"]]
            time_rows.append({
                "method": method, "ratio": ratio, "seeds": pairs.n,
                "cpu_ratio_median": stats.median(cpu) if cpu else None,
                "kept_fraction": float(np.mean([cur[s]["kept_fraction"] for s in cur])),
                "time_ratio_median": pairs.median, "time_ratio_min": pairs.low,
                "time_ratio_max": pairs.high, "budget": 1.0 - ratio, "limit": TIME_SLACK * (1.0 - ratio),
            })
    acc_rows = []
    targets = sorted({t for r in runs for t in r.get("downstream", {})})
    for target in targets:
        for protocol in PROTOCOLS:
            def acc(run: dict, target: str = target, protocol: str = protocol) -> float:
                return float(run["downstream"][target][protocol])

            for special in ("scratch", "unpruned"):
                cur = _runs_by_seed(runs, special, None)
                if cur:
                    vals = [acc(cur[s]) for s in sorted(cur)]
                    acc_rows.append({"target": target, "protocol": protocol, "method": special, "ratio": 0.0 if special == "unpruned" else None,
                                     "seeds": len(vals), "mean": float(np.mean(vals)), "std": _std(vals)})
            for method in methods:
                for ratio in ratios:
                    cur = _runs_by_seed(runs, method, ratio)
                    if not cur:
                        continue
                    vals = [acc(cur[s]) for s in sorted(cur)]
                    row = {"target": target, "protocol": protocol, "method": method, "ratio": ratio, "seeds": len(vals),
                           "mean": float(np.mean(vals)), "std": _std(vals)}
                    d = [acc(cur[s]) - acc(base[s]) for s in sorted(cur) if s in base]
                    row["delta_vs_unpruned_mean"] = float(np.mean(d)) if d else float("nan")
                    row["delta_vs_unpruned_std"] = _std(d)
                    for other in RANDOM:
                        if other == method:
                            continue
                        ref = _runs_by_seed(runs, other, ratio)
                        d = [acc(cur[s]) - acc(ref[s]) for s in sorted(cur) if s in ref]
                        if d:
                            row[f"delta_vs_{other}"] = float(np.mean(d))
                    acc_rows.append(row)
    return {
        "time": time_rows,
        "accuracy": acc_rows,
        "unpruned_seconds_median": stats.median([base[s]["pretrain"]["seconds"] for s in sorted(base)]),
        "fixed_cost_fit": fixed_cost_fit(runs, ratios),
    }


def _acc(summary: dict[str, Any], target: str, protocol: str, method: str, ratio: float | None) -> dict | None:
    for row in summary["accuracy"]:
        if row["target"] == target and row["protocol"] == protocol and row["method"] == method and (
            (row["ratio"] is None and ratio is None) or (row["ratio"] is not None and ratio is not None and abs(row["ratio"] - ratio) < 1e-9)
        ):
            return row
    return None


def evaluate_targets(summary: dict[str, Any], ratios: Sequence[float], related: str = "a") -> list[dict[str, Any]]:
    """The issue's targets, each a :meth:`Target.to_dict` (``measured`` the text shown, ``value`` the number judged).

    * per ratio: the worst method's median t(r)/t(0) <= 1.15 x (1 - r);
    * LM and FM, each protocol, target ``related``: mean accuracy at ratios 0.4 and 0.6 at most
      1 point below unpruned;
    * LM and FM, each protocol, target ``related``: mean accuracy >= random-classes and >=
      random-samples at every ratio.
    """
    out: list[Target] = []
    for ratio in ratios:
        rows = [r for r in summary["time"] if abs(r["ratio"] - ratio) < 1e-9 and not math.isnan(r["time_ratio_median"])]
        if not rows:
            continue
        worst = max(rows, key=lambda r: r["time_ratio_median"])
        limit = TIME_SLACK * (1.0 - ratio)
        # every method must clear the limit: the range of the largest ratio is [max of the lows, max of the highs]
        interval = (max(r["time_ratio_min"] for r in rows), max(r["time_ratio_max"] for r in rows))
        out.append(Target.check(
            f"pretraining time at r={ratio:g} <= {TIME_SLACK:g} x (1-r) = {limit:.3f} of unpruned (every method)",
            worst["time_ratio_median"], limit, "<=", interval=interval, rounds=min(r["seeds"] for r in rows),
            shown=f"worst {worst['time_ratio_median']:.3f} ({worst['method']}); "
                  + ", ".join(f"{r['method']} {r['time_ratio_median']:.3f}" for r in rows),
        ))
    for method in TARGETED:
        for protocol in PROTOCOLS:
            unpruned = _acc(summary, related, protocol, "unpruned", 0.0)
            checked = [r for r in ratios if any(abs(r - t) < 1e-9 for t in ACC_TARGET_RATIOS)]
            rows = [_acc(summary, related, protocol, method, r) for r in checked]
            if unpruned is None or not checked or any(r is None for r in rows):
                continue
            deltas = [row["mean"] - unpruned["mean"] for row in rows]
            out.append(Target.check(
                f"{method} {protocol} on target {related.upper()} within {ACC_TOLERANCE:g} point of unpruned "
                f"({unpruned['mean']:.2f}) at r={'/'.join(f'{r:g}' for r in checked)}",
                min(deltas), -ACC_TOLERANCE, ">=", shown=" / ".join(f"{d:+.2f}" for d in deltas),
            ))
    for method in TARGETED:
        for protocol in PROTOCOLS:
            for other in RANDOM:
                pairs = []
                for ratio in ratios:
                    a, b = _acc(summary, related, protocol, method, ratio), _acc(summary, related, protocol, other, ratio)
                    if a is not None and b is not None:
                        pairs.append((ratio, a["mean"] - b["mean"]))
                if not pairs:
                    continue
                out.append(Target.check(
                    f"{method} {protocol} on target {related.upper()} >= {other} at every ratio "
                    f"(r={'/'.join(f'{r:g}' for r, _ in pairs)})",
                    min(d for _, d in pairs), 0.0, ">=", shown=" / ".join(f"{d:+.2f}" for _, d in pairs),
                ))
    return [t.to_dict() for t in out]


# --------------------------------------------------------------------------------------------
# tables and plot


def report_markdown(results: dict[str, Any]) -> str:
    """The benchmark's tables as markdown, from a results file's content (used by BENCHMARKS.md)."""
    summary = results["summary"]
    cfg = results["config"]
    ratios = [float(r) for r in cfg["ratios"]]
    methods = list(cfg["methods"])
    lines = []
    setup = results.get("setup", {})
    sur = setup.get("surrogate") or {}
    tgt = setup.get("targets", {})
    lines.append(
        f"Source: Fashion-MNIST train, {setup.get('source_samples', 0):,} images in {setup.get('source_shards', '?')} shards "
        f"(`streamprune shard`). Surrogate `{sur.get('arch', '-')}` trained {sur.get('steps', '-')} steps "
        f"(train accuracy {sur.get('train_accuracy', float('nan')):.3f}). Pretraining `{cfg.get('pretrain_model', 'benchmarks.nets:pretrain_cnn')}`, "
        f"{cfg['epochs']} epoch(s), batch {cfg['batch_size']}, {cfg['workers']} loader worker(s), {cfg['threads']} torch thread(s); "
        f"seeds {', '.join(str(s) for s in cfg['seeds'])}; FM K={cfg['clusters']}."
    )
    if tgt:
        lines.append("")
        lines.append("Targets: " + "; ".join(
            f"{t['description']}: {t['train_samples']} train ({cfg['shots']}/class) / {t['test_samples']} test" for t in tgt.values()
        ) + ". LM and FM masks are scored with target A's training images.")
    dec = setup.get("decode_samples_per_s")
    if dec:
        names = {"raw": "reader only", "torchvision": "torchvision decode (used)", "webdataset_l": "webdataset `.decode(\"l\")`",
                 "pil_surrogate_transform": "PIL + `surrogate_transform`"}
        lines.append("")
        lines.append("Decode throughput, one process, samples/s: " + ", ".join(f"{names.get(k, k)} {v:,.0f}" for k, v in dec.items()) + ".")
    lines.append("")
    lines.append(f"**Pretraining wall time**, median over seeds of t(r)/t(0) paired within a round "
                 f"[min-max]; kept fraction of samples in parentheses. Unpruned: {summary['unpruned_seconds_median']:.1f} s (median).")
    lines.append("")
    headers = ["method"] + [f"r={r:g}" for r in ratios]
    rows = []
    for method in methods:
        row = [method]
        for r in ratios:
            t = next((x for x in summary["time"] if x["method"] == method and abs(x["ratio"] - r) < 1e-9), None)
            row.append("-" if t is None else f"{t['time_ratio_median']:.3f} [{t['time_ratio_min']:.2f}-{t['time_ratio_max']:.2f}] ({t['kept_fraction']:.2f})")
        rows.append(row)
    rows.append(["ideal 1-r"] + [f"{1 - r:.3f}" for r in ratios])
    rows.append([f"limit {TIME_SLACK:g} x (1-r)"] + [f"{TIME_SLACK * (1 - r):.3f}" for r in ratios])
    lines.append(mdtable.markdown_table(headers, rows))
    if any(t.get("cpu_ratio_median") is not None for t in summary["time"]):
        lines.append("")
        lines.append("CPU time of the same loops (main process + loader worker), median of the paired ratio to unpruned: "
                     "what the wall time would be without other jobs competing for the cores.")
        lines.append("")
        rows = []
        for method in methods:
            row = [method]
            for r in ratios:
                t = next((x for x in summary["time"] if x["method"] == method and abs(x["ratio"] - r) < 1e-9), None)
                row.append("-" if t is None or t.get("cpu_ratio_median") is None else f"{t['cpu_ratio_median']:.3f}")
            rows.append(row)
        lines.append(mdtable.markdown_table(headers, rows))
    fit = summary.get("fixed_cost_fit") or fixed_cost_fit(results.get("runs") or [], ratios)
    if fit.get("wall"):
        w, c = fit["wall"], fit.get("cpu")
        lines.append("")
        lines.append(f"Fixed cost per run: a least-squares fit of the {fit['runs']} pretraining runs gives t = {w['fixed_seconds']:.2f} s + "
                     f"{w['seconds_per_1000_kept']:.3f} s per 1,000 kept samples (wall"
                     + (f"; CPU: {c['fixed_seconds']:.2f} s + {c['seconds_per_1000_kept']:.3f} s" if c else "")
                     + f"), so f = {100 * w['fixed_fraction']:.1f}% of an unpruned epoch and t(r)/t(0) = f + (1-f)(1-r) = "
                     + " / ".join(f"{v:.3f}" for v in w["fitted_time_ratio"].values()) + " at r = "
                     + " / ".join(f"{float(r):g}" for r in w["fitted_time_ratio"]) + ".")
    for target in sorted({r["target"] for r in summary["accuracy"]}):
        for protocol in PROTOCOLS:
            lines.append("")
            name = tgt.get(target, {}).get("description", f"target {target}")
            lines.append(f"**{name}, {protocol}**: test accuracy %, mean ± std over seeds "
                         "(paired difference vs unpruned; vs random-classes / random-samples).")
            lines.append("")
            headers = ["method", "r=0"] + [f"r={r:g}" for r in ratios]
            rows = []
            base = _acc(summary, target, protocol, "unpruned", 0.0)
            scratch = _acc(summary, target, protocol, "scratch", None)
            base_cell = "-" if base is None else f"{base['mean']:.2f} ± {base['std']:.2f}"
            for method in methods:
                row = [method, base_cell]
                for r in ratios:
                    a = _acc(summary, target, protocol, method, r)
                    if a is None:
                        row.append("-")
                        continue
                    vs = " / ".join(f"{a[f'delta_vs_{o}']:+.2f}" for o in RANDOM if f"delta_vs_{o}" in a)
                    row.append(f"{a['mean']:.2f} ± {a['std']:.2f} ({a['delta_vs_unpruned_mean']:+.2f}" + (f"; {vs})" if vs else ")"))
                rows.append(row)
            if scratch is not None:
                rows.append(["no pretraining", f"{scratch['mean']:.2f} ± {scratch['std']:.2f}"] + [""] * len(ratios))
            lines.append(mdtable.markdown_table(headers, rows, "l" + "r" * (len(headers) - 1)))
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str) -> None:
    """Pretraining time ratios (wall, CPU) and accuracy against ratio, one row per target."""
    # heavy import, loaded only to draw the plot (the registry imports every suite)
    import matplotlib

    matplotlib.use("Agg")
    # heavy import, loaded only to draw the plot (the registry imports every suite)
    import matplotlib.pyplot as plt

    summary = results["summary"]
    cfg = results["config"]
    ratios = [float(r) for r in cfg["ratios"]]
    targets = sorted({r["target"] for r in summary["accuracy"]})
    nrows = max(1, len(targets))
    fig, axes = plt.subplots(nrows, 1 + len(PROTOCOLS), figsize=(4.3 * (1 + len(PROTOCOLS)), 3.6 * nrows), squeeze=False)
    xs = [0.0] + ratios
    for row_i, (key, title) in enumerate((("time_ratio", "pretraining wall time"), ("cpu_ratio", "pretraining CPU time"))):
        if row_i >= nrows:
            break
        ax = axes[row_i][0]
        ax.plot(xs, [1 - r for r in xs], "k--", lw=1, label="1 - r")
        ax.plot(xs, [TIME_SLACK * (1 - r) for r in xs], "k:", lw=1, label=f"{TIME_SLACK:g} x (1 - r)")
        for method in cfg["methods"]:
            rows = [r for r in summary["time"] if r["method"] == method and r.get(f"{key}_median") is not None]
            if not rows:
                continue
            y = [1.0] + [r[f"{key}_median"] for r in rows]
            if key == "time_ratio":
                err = [[0.0] + [r["time_ratio_median"] - r["time_ratio_min"] for r in rows],
                       [0.0] + [r["time_ratio_max"] - r["time_ratio_median"] for r in rows]]
                ax.errorbar([0.0] + [r["ratio"] for r in rows], y, yerr=err, marker="o", ms=3, capsize=2, label=method)
            else:
                ax.plot([0.0] + [r["ratio"] for r in rows], y, marker="o", ms=3, label=method)
        ax.set_xlabel("ratio removed")
        ax.set_ylabel("time / unpruned (median over seeds)")
        ax.set_title(title + (" [min-max]" if key == "time_ratio" else ""), fontsize=10)
        ax.legend(fontsize=7)
    for row_i, target in enumerate(targets):
        for col, protocol in enumerate(PROTOCOLS, start=1):
            ax = axes[row_i][col]
            base = _acc(summary, target, protocol, "unpruned", 0.0)
            scratch = _acc(summary, target, protocol, "scratch", None)
            for method in cfg["methods"]:
                pts = [(0.0, base)] + [(r, _acc(summary, target, protocol, method, r)) for r in ratios]
                pts = [(r, row) for r, row in pts if row is not None]
                ax.errorbar([r for r, _ in pts], [row["mean"] for _, row in pts], yerr=[row["std"] for _, row in pts],
                            marker="o", ms=3, capsize=2, label=method)
            if scratch is not None:
                ax.axhline(scratch["mean"], color="grey", ls=":", lw=1, label="no pretraining")
            ax.set_xlabel("ratio removed")
            ax.set_ylabel("test accuracy % (mean ± std)")
            ax.set_title(f"{TARGET_SHORT.get(target, 'target ' + target)}: {protocol}", fontsize=10)
            if row_i == 0 and col == 1:
                ax.legend(fontsize=7)
    fig.suptitle(f"transfer_bench {results.get('date', '')[:10]}: {len(cfg['seeds'])} seeds, {cfg['epochs']} epoch(s); "
                 "LM/FM masks scored for target A", fontsize=10)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# main


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole benchmark; return the results dict (the suite base writes it)."""
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    import torch
    from tqdm.auto import tqdm

    from streamprune import Manifest, random_mask

    from .nets import pretrain_cnn  # heavy: torch

    torch.set_num_threads(args.threads)
    progress = not args.quiet
    started = _dt.datetime.now(_dt.timezone.utc)
    t_start = time.perf_counter()
    machine = provenance.machine_info()
    machine["packages"].update(provenance.package_versions(["torchvision", "scikit-learn", "numba"]))
    work = os.path.join(args.data_dir, "run-quick" if args.quick else "run")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    manifest = prepare_source(args.data_dir, args.source_samples, args.samples_per_shard)
    timings["shard source"] = time.perf_counter() - t0
    src = Manifest.load(manifest)
    decode = measure_decode(manifest)
    log.info("decode samples/s: %s", {k: round(v) for k, v in decode.items()})
    t0 = time.perf_counter()
    target_info = prepare_targets(args.data_dir, args.shots, args.test_limit)
    targets = {}
    for name, info in target_info.items():
        x_train, y_train = load_split(info["train"])
        x_test, y_test = load_split(info["test"])
        targets[name] = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    timings["targets"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scoring = score_all(
        manifest, target_info["a"]["train"], work, args.method_list, args.ratio_list, args.seed_list,
        args.surrogate_steps, args.clusters, args.workers, progress,
    )
    timings["surrogate + scoring"] = time.perf_counter() - t0

    # One untimed pretraining on a 4% random sample first: the first DataLoader, kernels and
    # allocator warm-up otherwise land on whichever config happens to run first.
    warm_mask = random_mask(src, 0.96, level="sample", seed=0).save(os.path.join(work, "warmup.spmask"))
    pretrain(manifest, warm_mask, seed=0, epochs=1, batch_size=args.batch_size, lr=args.lr, workers=args.workers)
    configs = [("unpruned", 0.0)] + [(m, r) for m in args.method_list for r in args.ratio_list]
    runs: list[dict[str, Any]] = []
    bar = tqdm(total=len(args.seed_list) * (len(configs) + 1), desc="pretrain + downstream", unit="run", disable=not progress)
    t0 = time.perf_counter()
    with bar:
        for seed in args.seed_list:
            torch.manual_seed(seed)
            scratch = pretrain_cnn(src.num_classes).eval()
            t1 = time.perf_counter()
            runs.append({"seed": seed, "method": "scratch", "ratio": None, "downstream": downstream(scratch, targets, args, seed),
                         "downstream_seconds": time.perf_counter() - t1})
            bar.update(1)
            order = np.random.default_rng(1000 + seed).permutation(len(configs))
            for position, i in enumerate(order):
                method, ratio = configs[i]
                entry = None if method == "unpruned" else mask_for(scoring, method, ratio, seed)
                model, record = pretrain(
                    manifest, None if entry is None else entry["mask"], seed=seed, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, workers=args.workers,
                )
                t1 = time.perf_counter()
                runs.append({
                    "seed": seed, "method": method, "ratio": ratio, "position_in_round": position,
                    "mask": None if entry is None else entry["mask"], "kept": record["kept"],
                    "kept_fraction": record["kept"] / src.num_samples, "pretrain": record,
                    "downstream": downstream(model, targets, args, seed), "downstream_seconds": time.perf_counter() - t1,
                })
                bar.update(1)
                bar.set_postfix_str(f"seed {seed} {method} r={ratio:g}: {record['seconds']:.1f} s")
                log.info("seed %d %s r=%g: kept %d, pretrain %.1f s, %s", seed, method, ratio, record["kept"], record["seconds"], runs[-1]["downstream"])
    timings["pretrain + downstream"] = time.perf_counter() - t0
    summary = summarize(runs, args.ratio_list, args.method_list)
    results = {
        "benchmark": "transfer_bench",
        "command": provenance.command_line(),
        "date": started.isoformat(timespec="seconds"),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "load_avg_at_end": os.getloadavg(),
        "config": {
            "quick": args.quick, "seeds": args.seed_list, "ratios": args.ratio_list, "methods": args.method_list,
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "workers": args.workers, "threads": args.threads,
            "surrogate_steps": args.surrogate_steps, "clusters": args.clusters, "shots": args.shots, "test_limit": args.test_limit,
            "finetune_steps": args.finetune_steps, "finetune_batch": args.finetune_batch, "finetune_lr": args.finetune_lr,
            "source_samples": args.source_samples, "samples_per_shard": args.samples_per_shard,
            "pretrain_model": "benchmarks.nets:pretrain_cnn", "time_slack": TIME_SLACK, "acc_tolerance_points": ACC_TOLERANCE,
        },
        "setup": {
            "source_manifest": manifest, "source_samples": src.num_samples, "source_shards": len(src.shards),
            "targets": {k: {kk: vv for kk, vv in v.items()} for k, v in target_info.items()},
            "surrogate": scoring.get("surrogate"), "scoring": scoring["methods"], "decode_samples_per_s": decode,
            "seconds": {k: round(v, 2) for k, v in timings.items()},
        },
        "method": {
            "timed": "building PrunedWebDataset + DataLoader and every pretraining epoch (perf_counter); model and optimizer built before",
            "time_ratio": "t(config) / t(unpruned) of the same seed round; median [min-max] over seeds",
            "order": "one round per seed, configs in a seeded shuffled order within the round",
            "accuracy": "percent; mean and sample std (ddof=1) over seeds; differences paired by seed",
        },
        "runs": runs,
        "summary": summary,
        "targets": evaluate_targets(summary, args.ratio_list),
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    return results


class TransferSuite(Suite):
    """``transfer``: pretraining wall time and downstream accuracy after pruning the source."""
    name, title = "transfer", "Transfer: pruned pretraining speed and downstream accuracy"
    data_name = "transfer"
    has_plot = True
    measures = ("streamprune/scoring/lm.py", "streamprune/scoring/fm.py", "streamprune/scoring/kmeans.py", "streamprune/selection.py",
                "streamprune/readers/webdataset.py", "streamprune/train.py", "streamprune/masks.py")
    add_arguments, configure, measurement = staticmethod(add_arguments), staticmethod(configure), staticmethod(run)
    tables = staticmethod(report_markdown)

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        """Summary and targets from the stored runs."""
        cfg = results["config"]
        summary = summarize(results["runs"], cfg["ratios"], cfg["methods"])
        return {**results, "summary": summary, "targets": evaluate_targets(summary, cfg["ratios"])}

    def plot(self, results: dict[str, Any], path: str) -> None:
        """Time and accuracy against ratio per method (:func:`plot`)."""
        plot(results, path)
