"""Training a classifier on a (pruned) sharded dataset: the one loop, and the surrogate trainer.

:func:`fit` is the only training loop: :func:`train_surrogate` (``streamprune
train-surrogate``) and the dynamics recorder (:func:`streamprune.dynamics.record_dynamics`)
both run it, the recorder hooking each batch's training forward pass.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .decode import DecoderLike, as_decoder, image_key
from .errors import ArgumentError, StreamPruneError
from .infer import infer
from .manifest import ManifestLike, open_manifest
from .masks import MaskLike
from .models import (
    DEFAULT_INPUT_SIZE,
    build_surrogate,
    cpu_threads_beside_workers,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    surrogate_transform,
)
from .readers import PrunedWebDataset

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "BatchOutput",
    "TrainConfig",
    "EpochStats",
    "FitResult",
    "evaluate_surrogate",
    "fit",
    "make_optimizer",
    "make_schedule",
    "train_surrogate",
    "training_loader",
]

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
    raise ArgumentError(f"optimizer={name!r}: must be one of {sorted(OPTIMIZERS)}")


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
    raise ArgumentError(f"schedule={kind!r}: must be one of {list(SCHEDULES)}")


@dataclass(frozen=True)
class TrainConfig:
    """How a classifier is trained: checked once, and the one place its optimizer and schedule are built.

    :func:`train_surrogate` and :func:`streamprune.dynamics.record_dynamics` both build one
    from their arguments (with their own defaults: Adam for a surrogate, SGD for dynamics).

    Attributes:
        epochs: Passes over the (kept) samples.
        batch_size: Samples per optimizer step.
        optimizer: ``"adam"`` (AdamW) or ``"sgd"`` (Nesterov momentum 0.9).
        lr: Peak learning rate; ``None``: the optimizer's default (:data:`OPTIMIZERS`).
        weight_decay: Weight decay.
        schedule: ``"onecycle"`` or ``"constant"`` (:func:`make_schedule`).
        max_steps: Stop after this many optimizer steps (``None``: no cap).

    Raises:
        ValueError: A bad value, naming the argument.
    """

    epochs: int = 1
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float | None = None
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ArgumentError(f"epochs={self.epochs}: must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ArgumentError(f"max_steps={self.max_steps}: must be at least 1")
        if self.batch_size < 1:
            raise ArgumentError(f"batch_size={self.batch_size}: must be at least 1")
        if self.optimizer not in OPTIMIZERS:
            raise ArgumentError(f"optimizer={self.optimizer!r}: must be one of {sorted(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ArgumentError(f"schedule={self.schedule!r}: must be one of {list(SCHEDULES)}")
        if self.lr is not None and (not math.isfinite(self.lr) or self.lr < 0):
            raise ArgumentError(f"lr={self.lr}: must be a finite number >= 0")

    @property
    def peak_lr(self) -> float:
        """The peak learning rate: ``lr``, else the optimizer's default."""
        return OPTIMIZERS[self.optimizer] if self.lr is None else float(self.lr)

    def total_steps(self, samples: int) -> int:
        """Optimizer steps of a run over ``samples`` kept samples: ``epochs * ceil(samples / batch_size)``, capped by ``max_steps``.

        Args:
            samples: Samples per epoch.

        Returns:
            The step count the schedule spans.
        """
        steps = self.epochs * math.ceil(samples / self.batch_size)
        return steps if self.max_steps is None else min(self.max_steps, steps)

    def build(self, params: Any, samples: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The optimizer over ``params`` and its per-step schedule over :meth:`total_steps`.

        Args:
            params: Model parameters.
            samples: Samples per epoch.

        Returns:
            ``(optimizer, schedule)``.
        """
        opt = make_optimizer(self.optimizer, params, self.peak_lr, self.weight_decay)
        return opt, make_schedule(opt, self.peak_lr, self.total_steps(samples), self.schedule)

    def describe(self, samples: int) -> dict[str, Any]:
        """The settings as recorded beside a result (name, lr, weight decay, schedule, batch size, steps)."""
        return {
            "name": self.optimizer, "lr": self.peak_lr, "weight_decay": self.weight_decay, "schedule": self.schedule,
            "batch_size": self.batch_size, "steps": self.total_steps(samples),
        }


@dataclass(frozen=True)
class BatchOutput:
    """One training step, as :func:`fit` hands it to ``on_batch`` after the optimizer step.

    Attributes:
        epoch: Epoch of the batch (from 0).
        step: Optimizer steps taken so far, this batch's included.
        keys: Sample keys, when the loader yields ``(keys, images, labels)``; else ``None``.
        indices: ``int64[B]`` manifest positions of the samples, when ``fit`` was given
            ``index_of`` and the loader yields keys; else ``None``.
        labels: ``int64[B]`` labels, on the training device.
        logits: ``[B, C]`` logits of the training forward pass (computed before the step), detached.
        losses: ``[B]`` per-sample cross-entropy of that pass, detached.
    """

    epoch: int
    step: int
    keys: Sequence[str] | None
    indices: np.ndarray | None
    labels: torch.Tensor
    logits: torch.Tensor
    losses: torch.Tensor


@dataclass(frozen=True)
class EpochStats:
    """One epoch's totals, as :func:`fit` hands them to ``on_epoch_end``.

    Attributes:
        epoch: The epoch (from 0).
        samples: Samples trained on in this epoch.
        loss: Mean per-sample cross-entropy over the epoch (NaN if it saw no sample).
        accuracy: Fraction of samples whose training forward pass was right (NaN if none).
        seconds: Wall time of the epoch's batches (``on_epoch_end`` not included).
    """

    epoch: int
    samples: int
    loss: float
    accuracy: float
    seconds: float


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes:
        steps: Optimizer steps taken.
        epochs: Epochs started (fewer than asked when ``max_steps`` stopped training).
        samples: Samples trained on, over all epochs.
        seconds: Wall time of the whole loop, callbacks included.
        epoch_seconds: Per epoch, as :attr:`EpochStats.seconds`.
        train_loss: Per epoch, as :attr:`EpochStats.loss`.
        train_accuracy: Per epoch, as :attr:`EpochStats.accuracy`.
    """

    steps: int = 0
    epochs: int = 0
    samples: int = 0
    seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)


def _planned_steps(loader: Any, epochs: int, max_steps: int | None) -> int | None:
    try:
        planned = epochs * len(loader)
    except TypeError:  # an iterable pipeline may not know its length
        planned = None
    if max_steps is None:
        return planned
    return max_steps if planned is None else min(planned, max_steps)


def _check_labels(y: torch.Tensor, num_classes: int, keys: Sequence[str] | None, desc: str) -> None:
    bad = (y < 0) | (y >= num_classes)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        which = repr(keys[i]) if keys is not None else f"#{i} of a batch"
        raise StreamPruneError(f"{desc}: sample {which} has a label outside 0..{num_classes - 1}")


def fit(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: torch.device,
    max_steps: int | None = None,
    index_of: Mapping[str, int] | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    on_batch: Callable[[BatchOutput], None] | None = None,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    loss_weights: Callable[[int, np.ndarray], Any] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> FitResult:
    """The one classifier training loop: cross-entropy, one optimizer step per batch.

    For each epoch: ``on_epoch_start(epoch)`` (reseed the data order there, e.g.
    ``dataset.set_epoch``), the model is put in training mode, then for each batch: forward,
    per-sample cross-entropy, the mean's backward pass, ``optimizer.step()``,
    ``schedule.step()``, and ``on_batch`` with the batch's logits and losses (the training
    forward pass, as forgetting and AUM are defined). After the epoch's last batch,
    ``on_epoch_end`` gets its totals. Training stops after ``epochs`` epochs or
    ``max_steps`` steps, whichever comes first. An exception in a callback ends the loop
    and propagates.

    Args:
        model: Classifier, already on ``device``.
        loader: Yields ``(images, labels)`` or ``(keys, images, labels)`` batches.
        epochs: Epochs to run.
        optimizer: Optimizer over the model's parameters.
        schedule: Learning-rate scheduler stepped after every optimizer step, or ``None``.
        device: Where batches are moved.
        max_steps: Stop after this many optimizer steps (``None``: no cap).
        index_of: Manifest position of each sample key, for :attr:`BatchOutput.indices`.
        on_epoch_start: Called with the epoch number before its first batch.
        on_batch: Called with a :class:`BatchOutput` after each optimizer step.
        on_epoch_end: Called with the :class:`EpochStats` after each epoch.
        loss_weights: ``(epoch, indices) -> [B]`` per-sample weights of the loss (e.g. InfoBatch's
            rescaling, :class:`streamprune.schedules.InfoBatch`); the step minimises
            ``mean(weights * losses)``. Needs ``index_of`` and keyed batches. Hooks still see
            the unweighted losses.
        progress: Show a progress bar over steps.
        desc: Progress bar label, and prefix of error messages.

    Returns:
        The :class:`FitResult`.

    Raises:
        StreamPruneError: A label outside ``0..C-1`` for the model's ``C`` outputs.
    """
    result = FitResult()
    start = time.perf_counter()
    with tqdm(total=_planned_steps(loader, epochs, max_steps), desc=desc, unit="step", disable=not progress) as bar:
        for epoch in range(epochs):
            if max_steps is not None and result.steps >= max_steps:
                break
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            model.train()
            result.epochs += 1
            t0 = time.perf_counter()
            loss_sum = correct = 0.0
            seen = 0
            for batch in loader:
                keys, images, labels = batch if len(batch) == 3 else (None, *batch)
                x, y = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                logits = model(x)
                _check_labels(y, logits.shape[1], keys, desc)
                losses = F.cross_entropy(logits, y, reduction="none")
                indices = None
                if index_of is not None and keys is not None:
                    indices = np.fromiter((index_of[k] for k in keys), dtype=np.int64, count=len(keys))
                objective = losses.mean()
                if loss_weights is not None:
                    if indices is None:
                        raise StreamPruneError(f"{desc}: loss_weights needs index_of and a loader that yields (keys, images, labels)")
                    weights = torch.as_tensor(loss_weights(epoch, indices), dtype=losses.dtype, device=losses.device)
                    objective = (losses * weights).mean()
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                result.steps += 1
                logits, losses = logits.detach(), losses.detach()
                seen += len(y)
                loss_sum += float(losses.sum())
                correct += float((logits.argmax(1) == y).sum())
                if on_batch is not None:
                    on_batch(BatchOutput(epoch, result.steps, keys, indices, y, logits, losses))
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
                if max_steps is not None and result.steps >= max_steps:
                    break
            stats = EpochStats(
                epoch, seen, loss_sum / seen if seen else float("nan"), correct / seen if seen else float("nan"),
                round(time.perf_counter() - t0, 3),
            )
            result.samples += seen
            result.epoch_seconds.append(stats.seconds)
            result.train_loss.append(stats.loss)
            result.train_accuracy.append(stats.accuracy)
            if on_epoch_end is not None:
                on_epoch_end(stats)
    result.seconds = time.perf_counter() - start
    return result


def training_loader(
    manifest: ManifestLike,
    mask: MaskLike,
    *,
    input_size: int,
    batch_size: int,
    workers: int,
    seed: int,
    with_keys: bool = False,
    decoder: DecoderLike = "auto",
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
        decoder: JPEG decoder: ``"auto"`` (fastest installed, PIL if none), a backend name
            (decoding at a reduced scale whose sides stay at least ``input_size``: the
            transform resizes to ``input_size``) or an :class:`~streamprune.decode.ImageDecoder`
            used as it is.
        **source_options: Passed to :class:`~streamprune.readers.PrunedWebDataset` (``rank``, ``world_size``, ...).

    Returns:
        ``(dataset, loader)``.

    Raises:
        StreamPruneError: The samples hold no image member.
    """
    ds = PrunedWebDataset(manifest, mask, shuffle=True, seed=seed, **source_options)
    image = image_key(ds.source.manifest)
    images = as_decoder(decoder, size=input_size)
    transform = surrogate_transform(input_size)
    if with_keys:
        pipeline = ds.decode(images).to_tuple("__key__", image, "cls").map_tuple(str, transform, int)
    else:
        pipeline = ds.decode(images).to_tuple(image, "cls").map_tuple(transform, int)
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
    decoder: DecoderLike = "auto",
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train a surrogate on a sharded dataset and write its checkpoint atomically.

    Reads through :class:`~streamprune.readers.PrunedWebDataset` with ``shuffle=True`` and
    ``set_epoch(epoch)`` every epoch (shard order and order within shards change per epoch),
    and trains with :func:`fit`: cross-entropy loss, AdamW or SGD (Nesterov momentum 0.9), a
    one-cycle learning-rate schedule (warm-up over the first 15% of steps, cosine decay to
    zero) over ``min(max_steps, epochs * steps_per_epoch)`` steps.

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
        decoder: JPEG decoder (see :func:`training_loader`).
        cache_dir: Kept-bytes cache for remote shards (epochs after the first read locally;
            see :class:`~streamprune.readers.PrunedSource`).

    Returns:
        ``{"checkpoint", "steps", "epochs", "samples", "seconds", "train_loss",
        "train_accuracy"}`` (loss and accuracy averaged over the last epoch run).

    Raises:
        ValueError: Bad argument.
        StreamPruneError: Unlabelled dataset, an empty mask, or no image member.
    """
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay, max_steps=max_steps,
    )
    m = open_manifest(manifest)
    if m.label_ext is None:
        raise StreamPruneError(f"{m.path}: dataset has no labels; a surrogate classifier needs them")
    num_classes = m.num_classes
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = build_surrogate(arch, num_classes).to(dev)

    cache = {} if cache_dir is None else {"cache_dir": cache_dir}
    ds, loader = training_loader(
        m, mask, input_size=input_size, batch_size=batch_size, workers=workers, seed=seed, decoder=decoder, **cache
    )
    if len(ds) == 0:
        raise StreamPruneError(f"{m.path}: the mask keeps no samples to train on")
    total_steps = config.total_steps(len(ds))
    opt, sched = config.build(model.parameters(), len(ds))
    with cpu_threads_beside_workers(workers, dev):
        run = fit(
            model, loader, epochs=epochs, optimizer=opt, schedule=sched, device=dev, max_steps=total_steps,
            on_epoch_start=ds.set_epoch, progress=progress, desc=f"train {arch}",
        )
    summary = {
        "steps": run.steps,
        "epochs": run.epochs,
        "samples": run.samples,
        "seconds": round(run.seconds, 3),
        "train_loss": run.train_loss[-1] if run.train_loss else float("nan"),
        "train_accuracy": run.train_accuracy[-1] if run.train_accuracy else float("nan"),
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
        lr=config.peak_lr,
        batch_size=batch_size,
        seed=seed,
        **summary,
    )
    log.info("trained %s for %d steps in %.1f s -> %s", arch, run.steps, run.seconds, path)
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
        "samples": len(labels),
        "per_class_accuracy": per_class,
        "seconds": round(time.perf_counter() - start, 3),
    }
