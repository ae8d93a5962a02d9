"""Train a surrogate classifier briefly on a (pruned) sharded dataset, and evaluate it.

The surrogate only has to rank classes (LM) or embed samples (FM), so a short run is enough:
``max_steps`` caps training, the learning rate follows a one-cycle schedule over the steps
actually run, and inputs use the same deterministic transform as scoring
(:func:`~streamprune.models.surrogate_transform`, no augmentation).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import numpy as np
import torch

from .errors import StreamPruneError
from .models import (
    DEFAULT_INPUT_SIZE,
    build_surrogate,
    cpu_threads_beside_workers,
    infer,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    surrogate_transform,
)
from .readers import PrunedWebDataset
from .readers.webdataset import ManifestLike, MaskLike, open_manifest

__all__ = ["train_surrogate", "evaluate_surrogate", "OPTIMIZERS", "SCHEDULES", "make_optimizer", "make_schedule", "training_loader"]

log = logging.getLogger(__name__)

#: Optimizers :func:`train_surrogate` accepts, with their default peak learning rate.
OPTIMIZERS = {"adam": 2e-3, "sgd": 0.05}
#: Learning-rate schedules :func:`make_schedule` builds.
SCHEDULES = ("onecycle", "constant")


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (``"adam"``) or SGD with Nesterov momentum 0.9 (``"sgd"``).

    Args:
        name: ``"adam"`` or ``"sgd"``.
        params: Model parameters.
        lr: (Peak) learning rate.
        weight_decay: Weight decay (decoupled for AdamW).

    Returns:
        The optimizer.

    Raises:
        ValueError: Unknown name.
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer={name!r}: must be one of {sorted(OPTIMIZERS)}")


def make_schedule(opt: torch.optim.Optimizer, peak: float, total_steps: int, kind: str = "onecycle") -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step learning-rate schedule.

    Args:
        opt: The optimizer.
        peak: Peak learning rate.
        total_steps: Optimizer steps the schedule spans.
        kind: ``"onecycle"`` (warm-up over the first 15% of steps from ``peak / 10``, cosine
            decay to ``peak / 1e4``) or ``"constant"`` (``peak`` throughout).

    Returns:
        A scheduler to step after every optimizer step.

    Raises:
        ValueError: Unknown ``kind``.
    """
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=peak, total_steps=max(1, total_steps), pct_start=0.15, anneal_strategy="cos", div_factor=10.0, final_div_factor=1e3
        )
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)
    raise ValueError(f"schedule={kind!r}: must be one of {list(SCHEDULES)}")


def training_loader(
    manifest: ManifestLike,
    mask: MaskLike,
    *,
    input_size: int,
    batch_size: int,
    workers: int,
    seed: int,
    with_keys: bool = False,
    **source_options: Any,
) -> tuple[PrunedWebDataset, torch.utils.data.DataLoader]:
    """A shuffled pruned reader and its DataLoader of ``(images, labels)`` or ``(keys, images, labels)``.

    Call ``dataset.set_epoch(epoch)`` before each epoch: it reseeds the shard order and the
    order within shards. Images go through :func:`~streamprune.models.surrogate_transform`.

    Args:
        manifest: Labelled dataset.
        mask: Keep mask or ``None``.
        input_size: Side of the square network input.
        batch_size: Samples per batch (the last batch may be smaller).
        workers: DataLoader worker processes.
        seed: Seed of the data order.
        with_keys: Also yield each sample's ``__key__``.
        **source_options: Passed to :class:`~streamprune.readers.PrunedWebDataset` (``rank``, ``world_size``, ...).

    Returns:
        ``(dataset, loader)``.
    """
    ds = PrunedWebDataset(manifest, mask, shuffle=True, seed=seed, **source_options)
    transform = surrogate_transform(input_size)
    if with_keys:
        pipeline = ds.decode("pil").to_tuple("__key__", "jpg;png", "cls").map_tuple(str, transform, int)
    else:
        pipeline = ds.decode("pil").to_tuple("jpg;png", "cls").map_tuple(transform, int)
    loader = torch.utils.data.DataLoader(pipeline, batch_size=batch_size, num_workers=workers, drop_last=False)
    return ds, loader


def train_surrogate(
    manifest: ManifestLike,
    arch: str,
    out: str | os.PathLike,
    *,
    epochs: int = 1,
    mask: MaskLike = None,
    max_steps: int | None = None,
    batch_size: int = 128,
    lr: float | None = None,
    optimizer: str = "adam",
    weight_decay: float = 5e-4,
    input_size: int = DEFAULT_INPUT_SIZE,
    workers: int = 1,
    device: str | None = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a surrogate on a sharded dataset and write its checkpoint atomically.

    Reads through :class:`~streamprune.readers.PrunedWebDataset` with ``shuffle=True`` and
    ``set_epoch(epoch)`` every epoch (shard order and order within shards change per epoch).
    Cross-entropy loss, AdamW or SGD (Nesterov momentum 0.9), a one-cycle learning-rate
    schedule (warm-up over the first 15% of steps, cosine decay to zero) over
    ``min(max_steps, epochs * steps_per_epoch)`` steps.

    Args:
        manifest: Training set (manifest path or object); its labels are the classes.
        arch: torchvision architecture name or ``"package.module:function"`` entry point.
        out: Checkpoint file to write (see :func:`~streamprune.models.save_checkpoint`).
        epochs: Passes over the (kept) samples.
        mask: Keep mask restricting the training samples, or ``None``.
        max_steps: Stop after this many optimizer steps (``None``: no cap).
        batch_size: Samples per step.
        lr: Peak learning rate (default: 2e-3 for Adam, 0.05 for SGD).
        optimizer: ``"adam"`` (AdamW; the default: it reaches a usable surrogate in fewer
            steps) or ``"sgd"``.
        weight_decay: Weight decay.
        input_size: Side of the square network input.
        workers: DataLoader worker processes decoding images.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        seed: Seed of the weight initialisation and the data order.
        progress: Show a progress bar.

    Returns:
        ``{"checkpoint", "steps", "epochs", "samples", "seconds", "train_loss",
        "train_accuracy"}`` (loss and accuracy averaged over the last epoch run).

    Raises:
        ValueError: Bad argument.
        StreamPruneError: Unlabelled dataset, or an empty mask.
    """
    from tqdm.auto import tqdm

    if epochs < 1:
        raise ValueError(f"epochs={epochs}: must be at least 1")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps={max_steps}: must be at least 1")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r}: must be one of {sorted(OPTIMIZERS)}")
    m = open_manifest(manifest)
    if m.label_ext is None:
        raise StreamPruneError(f"{m.path}: dataset has no labels; a surrogate classifier needs them")
    num_classes = m.num_classes
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = build_surrogate(arch, num_classes).to(dev)

    ds, loader = training_loader(m, mask, input_size=input_size, batch_size=batch_size, workers=workers, seed=seed)
    if len(ds) == 0:
        raise StreamPruneError(f"{m.path}: the mask keeps no samples to train on")
    steps_per_epoch = math.ceil(len(ds) / batch_size)
    total_steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    peak = OPTIMIZERS[optimizer] if lr is None else float(lr)
    opt = make_optimizer(optimizer, model.parameters(), peak, weight_decay)
    sched = make_schedule(opt, peak, total_steps, "onecycle")
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    step = 0
    epochs_run = 0
    samples = 0
    loss_sum = correct = seen = 0.0
    bar = tqdm(total=total_steps, desc=f"train {arch}", unit="step", disable=not progress)
    model.train()
    with bar, cpu_threads_beside_workers(workers, dev):
        for epoch in range(epochs):
            if step >= total_steps:
                break
            ds.set_epoch(epoch)
            epochs_run += 1
            loss_sum = correct = seen = 0.0
            for images, labels in loader:
                x, y = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
                logits = model(x)
                loss = loss_fn(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                n = len(y)
                loss_sum += loss.item() * n
                correct += float((logits.argmax(1) == y).sum())
                seen += n
                samples += n
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
                if step >= total_steps:
                    break
    seconds = time.perf_counter() - start
    summary = {
        "steps": step,
        "epochs": epochs_run,
        "samples": samples,
        "seconds": round(seconds, 3),
        "train_loss": loss_sum / seen if seen else float("nan"),
        "train_accuracy": correct / seen if seen else float("nan"),
    }
    model.eval()
    path = save_checkpoint(
        out,
        model,
        arch,
        num_classes,
        input_size=input_size,
        classes=list(m.classes),
        manifest=m.path,
        manifest_fingerprint=m.fingerprint,
        mask=os.path.abspath(os.fspath(mask)) if isinstance(mask, (str, os.PathLike)) else None,
        optimizer=optimizer,
        lr=peak,
        batch_size=batch_size,
        seed=seed,
        **summary,
    )
    log.info("trained %s for %d steps in %.1f s -> %s", arch, step, seconds, path)
    return {"checkpoint": path, **summary}


def evaluate_surrogate(
    checkpoint: str | os.PathLike,
    manifest: ManifestLike,
    mask: MaskLike = None,
    *,
    arch: str | None = None,
    batch_size: int = 256,
    workers: int = 0,
    device: str | None = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Top-1 accuracy of a surrogate checkpoint on a labelled sharded dataset.

    Args:
        checkpoint: Checkpoint written by :func:`train_surrogate`.
        manifest: Evaluation set, labelled with the same class ids.
        mask: Optional keep mask restricting the evaluation samples.
        arch: Architecture (default: the one the checkpoint records).
        batch_size: Samples per forward pass.
        workers: DataLoader worker processes.
        device: Torch device.
        progress: Show a progress bar.

    Returns:
        ``{"accuracy", "samples", "per_class_accuracy": [...], "seconds"}``.

    Raises:
        StreamPruneError: The checkpoint carries no architecture and none was given.
    """
    ckpt = load_checkpoint(checkpoint)
    arch = arch or ckpt.get("arch")
    if not arch:
        raise StreamPruneError(f"{checkpoint}: checkpoint records no architecture; pass arch=")
    num_classes = int(ckpt.get("num_classes") or open_manifest(manifest).num_classes)
    model = build_surrogate(arch, num_classes, checkpoint)
    start = time.perf_counter()
    out = infer(
        model, manifest, mask, input_size=int(ckpt.get("input_size", DEFAULT_INPUT_SIZE)), batch_size=batch_size,
        workers=workers, device=device, progress=progress, desc="evaluate",
    )
    pred = out["logits"].argmax(1)
    labels = out["labels"]
    ok = pred == labels
    per_class = [float(ok[labels == c].mean()) if np.any(labels == c) else None for c in range(num_classes)]
    return {
        "accuracy": float(ok.mean()),
        "samples": int(len(labels)),
        "per_class_accuracy": per_class,
        "seconds": round(time.perf_counter() - start, 3),
    }
