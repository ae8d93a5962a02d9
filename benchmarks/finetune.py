"""The finetuning pieces the downstream and DLC suites share: the backbone, decoding, the finetune.

``pretrain_backbone`` shards Fashion-MNIST TRAIN and trains ``benchmarks.nets:small_cnn`` on it
(cached under the data directory); ``decode_all`` decodes a manifest once through the product's
reader; ``head_init_state`` / ``write_init_checkpoint`` give the backbone a new seeded head;
``finetune_accuracy`` trains for a fixed number of steps on a subset (``batch_stream``) and
returns the test accuracy. The recipe is documented in ``benchmarks/downstream_bench.py``.
``train_steps`` and ``accuracy_percent`` are its training loop and its test, which the transfer
suite's finetune shares.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from streamprune.sources import FASHION_MNIST_DIR

from . import resultsfile

__all__ = ["ARCH", "FASHION", "INPUT_SIZE", "accuracy_percent", "batch_stream", "cache_matches", "decode_all", "finetune_accuracy",
           "head_init_state", "mark_cache", "pretrain_backbone", "train_steps", "write_init_checkpoint"]

log = logging.getLogger("downstream_bench")

FASHION = FASHION_MNIST_DIR  # the one location: streamprune.sources
ARCH = "benchmarks.nets:small_cnn"  # = nets.ENTRY_POINT (not imported here: nets imports torch)
INPUT_SIZE = 28


def batch_stream(kept: np.ndarray, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """``steps`` batches of exactly ``batch_size`` ids: consecutive slices of seeded permutations.

    Every permutation is a pass over ``kept``; passes are concatenated, so a batch may span two
    passes (and a subset smaller than a batch repeats within one).

    Args:
        kept: Kept sample ids (at least one).
        batch_size: Samples per step.
        steps: Optimizer steps.
        seed: Seed of the permutations.

    Returns:
        The batches.
    """
    kept = np.asarray(kept, dtype=np.int64)
    if not len(kept):
        raise ValueError("batch_stream: no kept samples")
    rng = np.random.default_rng(seed)
    need = batch_size * steps
    passes = []
    have = 0
    while have < need:
        passes.append(kept[rng.permutation(len(kept))])
        have += len(kept)
    flat = np.concatenate(passes)[:need]
    return [flat[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def cache_matches(directory: str, params: dict) -> bool:
    """Whether ``directory`` holds a cache made with exactly ``params`` (its ``bench_meta.json``)."""
    meta = os.path.join(directory, "bench_meta.json")
    if not os.path.exists(meta):
        return False
    with open(meta) as fh:
        return json.load(fh).get("params") == params


def mark_cache(directory: str, params: dict, **extra: Any) -> None:
    """Record ``params`` (and ``extra``) as what ``directory``'s cache was made with."""
    resultsfile.write_json(os.path.join(directory, "bench_meta.json"), {"params": params, **extra})


def pretrain_backbone(data_dir: str, cfg: dict, progress: bool) -> dict:
    """Shard Fashion-MNIST TRAIN and train the backbone on it (cached)."""
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    from streamprune import Manifest, write_shards
    from streamprune.models import checkpoint_info
    from streamprune.sources import idx_source
    from streamprune.sources.arrays import FASHION_MNIST_CLASSES, ArraySource  # deferred with the rest of this block
    from streamprune.train import train_surrogate  # heavy: torch

    params = {"arch": ARCH, "subset": cfg["pretrain_subset"], "epochs": cfg["pretrain_epochs"], "batch_size": 128,
              "optimizer": "adam", "input_size": INPUT_SIZE, "seed": 0, "version": 1}
    root = os.path.join(data_dir, "pretrain" + ("-quick" if cfg["quick"] else ""))
    shards = os.path.join(root, "fashion_train")
    ckpt = os.path.join(root, "backbone.pt")
    if cache_matches(root, params) and os.path.exists(ckpt) and os.path.exists(os.path.join(shards, "manifest.json")):
        log.info("reusing the pretrained backbone %s", ckpt)
        with open(os.path.join(root, "bench_meta.json")) as fh:
            return {**json.load(fh)["trained"], "checkpoint": ckpt, "cached": True, "shards": shards}
    src = idx_source(FASHION, split="train")
    if cfg["pretrain_subset"]:
        idx = np.random.default_rng(0).permutation(len(src))[: cfg["pretrain_subset"]]
        src = ArraySource(src.images[idx], src.labels[idx], FASHION_MNIST_CLASSES, prefix="train_")
    t0 = time.perf_counter()
    write_shards(src, shards, samples_per_shard=5000, workers=2, progress=progress, overwrite=True)
    shard_s = time.perf_counter() - t0
    log.info("pretraining %s on %d Fashion-MNIST train images (%d epochs)", ARCH, len(src), cfg["pretrain_epochs"])
    trained = train_surrogate(Manifest.load(shards), ARCH, ckpt, epochs=cfg["pretrain_epochs"], batch_size=128, optimizer="adam",
                              input_size=INPUT_SIZE, workers=1, seed=0, progress=progress)
    trained = {k: v for k, v in trained.items() if k != "checkpoint"}
    trained.update(images=len(src), shard_seconds=round(shard_s, 2), sha256=checkpoint_info(ckpt)["checkpoint_sha256"])
    mark_cache(root, params, trained=trained)
    return {**trained, "checkpoint": ckpt, "cached": False, "shards": shards}


def decode_all(manifest: Any) -> tuple[Any, np.ndarray]:
    """Every sample of a manifest through the reader and the eval transform, in manifest order.

    Returns:
        ``(float32 tensor [N, 3, 28, 28], int64 labels [N])``.
    """
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    import torch

    from streamprune.models import surrogate_transform
    from streamprune.readers import PrunedWebDataset

    ds = PrunedWebDataset(manifest, None, shuffle=False, rank=0, world_size=1)
    position_of = {k: i for i, k in enumerate(ds.source.manifest.keys())}
    pipe = ds.decode("pil").to_tuple("__key__", "jpg;png", "cls").map_tuple(str, surrogate_transform(INPUT_SIZE), int)
    n = ds.source.manifest.num_samples
    x = torch.empty(n, 3, INPUT_SIZE, INPUT_SIZE)
    y = np.full(n, -1, dtype=np.int64)
    for key, img, label in pipe:
        i = position_of[key]
        x[i] = img
        y[i] = label
    if (y < 0).any():
        raise RuntimeError(f"{ds.source.manifest.path}: {int((y < 0).sum())} samples were not decoded")
    return x, y


def head_init_state(backbone_ckpt: str, num_classes: int, seed: int) -> dict:
    """State dict of the backbone with a new, seeded head for ``num_classes`` classes."""
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    import torch

    from streamprune.models import build_surrogate, head_module, load_checkpoint

    torch.manual_seed(seed)
    fresh = build_surrogate(ARCH, num_classes)
    head_names = {n for n, p in fresh.named_parameters() if any(p is q for q in head_module(fresh).parameters())}
    pre = load_checkpoint(backbone_ckpt)["state_dict"]
    state = fresh.state_dict()
    for k, v in pre.items():
        if k not in head_names:
            state[k] = v.clone()
    return state


def write_init_checkpoint(path: str, state: dict, num_classes: int, classes: list[str], backbone: str, seed: int) -> str:
    """The downstream starting point (backbone + new head) as a streamprune checkpoint."""
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    from streamprune.models import build_surrogate, save_checkpoint

    model = build_surrogate(ARCH, num_classes)
    model.load_state_dict(state)
    return save_checkpoint(path, model, ARCH, num_classes, input_size=INPUT_SIZE, classes=classes, backbone=os.path.abspath(backbone), head_seed=seed)


def finetune_accuracy(state: dict, num_classes: int, x: Any, y: np.ndarray, kept: np.ndarray, x_test: Any, y_test: np.ndarray,
                      cfg: dict, steps: int, seed: int) -> float:
    """Finetune from ``state`` on ``x[kept]`` for ``steps`` steps; top-1 test accuracy in percent."""
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    import torch

    from streamprune.models import build_surrogate
    from streamprune.train import make_optimizer, make_schedule  # heavy: torch

    torch.manual_seed(seed)
    model = build_surrogate(ARCH, num_classes)
    model.load_state_dict(state)
    opt = make_optimizer("sgd", model.parameters(), cfg["lr"], cfg["weight_decay"])
    sched = make_schedule(opt, cfg["lr"], steps, "onecycle")
    train_steps(model, opt, sched, x, torch.as_tensor(y), batch_stream(kept, cfg["batch_size"], steps, seed))
    return accuracy_percent(model, x_test, y_test, chunk=1000)


def train_steps(model: Any, opt: Any, sched: Any, x: Any, y: Any, batches: Iterable[Any]) -> None:
    """Train ``model`` one step per batch of row ids: cross-entropy on ``x[ids]``, ``y[ids]``; ``sched`` steps after ``opt``.

    Args:
        model: The classifier (left in training mode).
        opt: Its optimizer.
        sched: Its learning-rate schedule.
        x: Training inputs (a tensor).
        y: Training labels (an int64 tensor).
        batches: Row ids of each step (arrays or tensors), read as they are needed.
    """
    # heavy import, deferred: torch, and the registry imports every suite
    import torch
    import torch.nn.functional as F

    model.train()
    for ids in batches:
        ii = torch.as_tensor(ids)
        loss = F.cross_entropy(model(x[ii]), y[ii])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def accuracy_percent(model: Any, x_test: Any, y_test: Any, chunk: int, transform: Callable[[Any], Any] | None = None) -> float:
    """Top-1 accuracy (percent) of ``model`` in eval mode on ``x_test``, ``chunk`` rows per forward pass.

    Args:
        model: The classifier (left in eval mode).
        x_test: Test inputs (a tensor).
        y_test: Test labels (an array or a tensor).
        chunk: Rows per forward pass.
        transform: Applied to each chunk of inputs before the forward pass (``None``: as they are).
    """
    # heavy import, deferred: torch, and the registry imports every suite
    import torch

    labels = torch.as_tensor(y_test)
    model.eval()
    correct = 0
    with torch.no_grad():
        for lo in range(0, len(labels), chunk):
            inputs = x_test[lo : lo + chunk]
            pred = model(inputs if transform is None else transform(inputs)).argmax(1)
            correct += int((pred == labels[lo : lo + chunk]).sum())
    return 100.0 * correct / len(labels)
