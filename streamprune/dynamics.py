"""Training dynamics: finetune on the (pruned) shards and record every sample's statistics per epoch.

EL2N, forgetting, AUM and GraNd (``docs/methods.md`` section 4) are functions of how each
sample behaves while a model trains. :func:`record_dynamics` trains a classifier through
:class:`~streamprune.readers.PrunedWebDataset` (shuffled, ``set_epoch`` every epoch) and, from
the *training* forward pass of each batch (the logits the optimizer step is computed from, as
forgetting and AUM are defined), stores per sample and epoch:

============  ==============================================================
``correct``   1.0 if ``argmax_k f(x)_k == y`` else 0.0
``p_true``    ``p_y``, the softmax probability of the true class
``margin``    ``p_y - max_{k != y} p_k`` (AUM's probability variant; ``p_y`` when C = 1)
``loss``      ``-log p_y`` (cross-entropy)
``el2n``      ``||softmax(f(x)) - onehot(y)||_2`` (not derivable from ``p_y`` alone)
``logit_margin`` ``z_y - max_{k != y} z_k`` of the logits ``z`` (AUM's term as Pleiss et
              al. define it; ``z_y`` when C = 1)
============  ==============================================================

Optionally, at chosen epochs (``0`` = at initialisation, ``e`` = after ``e`` epochs of
training), separate passes over every kept sample in **evaluation mode** (BatchNorm on its
running statistics, no weight update, so a sample's value does not depend on its batch or on
where in the epoch it was seen) record snapshot scores, as Paul et al. (2021) define them:

* ``grand_epochs``: GraNd, ``||grad_theta CE(f(x), y)||_2``
  (:func:`~streamprune.gradnorms.per_sample_grad_norms`), first run only;
* ``el2n_epochs``: EL2N, ``||softmax(f(x)) - onehot(y)||_2``, in every run.

``runs`` trains that many independent models one after the other, with seeds ``seed``,
``seed + 1``, ... (initialisation, unless a ``checkpoint`` fixes it, and data order); the paper
averages EL2N over such runs. ``dynamics.npy`` and ``grand.npy`` hold the first run (seed
``seed``); ``el2n.npy`` holds every run's snapshots.

Training runs through :func:`streamprune.train.fit`, the same loop as ``train-surrogate``;
this module only hooks it: each batch's statistics go into the array, each epoch's sample
counts are checked, and the gradient-norm passes run between epochs.

This module only records: the files it writes, and their reader
(:func:`~streamprune.dynamicsfile.load_dynamics`), are :mod:`streamprune.dynamicsfile`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._version import __version__
from .atomic import atomic_write_json
from .dynamicsfile import (
    DYNAMICS_ARRAY,
    DYNAMICS_FORMAT,
    DYNAMICS_VERSION,
    EL2N_ARRAY,
    FIELDS,
    GRAND_ARRAY,
    Dynamics,
    DynamicsArrays,
    load_dynamics,
    remove_stale_temps,
    temporary_arrays,
)
from .errors import ArgumentError, StreamPruneError
from .gradnorms import GRAD_STRATEGIES, per_sample_grad_norms, resolve_grad_strategy
from .infer import eval_batches
from .manifest import Manifest, ManifestLike, open_manifest
from .masks import Mask, MaskLike, open_mask
from .models import (
    DEFAULT_INPUT_SIZE,
    build_surrogate,
    checkpoint_info,
    cpu_threads_beside_workers,
    resolve_device,
)
from .train import (
    BatchOutput,
    EpochStats,
    FitResult,
    TrainConfig,
    fit,
    training_loader,
)

__all__ = ["RecordedFiles", "Recording", "batch_statistics", "record_dynamics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordedFiles:
    """The files a recording wrote (their format: :mod:`streamprune.dynamicsfile`).

    Attributes:
        directory: The output directory.
        meta: ``dynamics.json``, the sidecar.
        array: ``dynamics.npy``, the training pass's :data:`FIELDS` per epoch and sample.
        grand: ``grand.npy``, or ``None`` when no ``grand_epochs`` were asked for.
        el2n: ``el2n.npy``, or ``None`` when no ``el2n_epochs`` were asked for.
    """

    directory: str
    meta: str
    array: str
    grand: str | None = None
    el2n: str | None = None


@dataclass(frozen=True)
class Recording:
    """What :func:`record_dynamics` did: where it wrote, what it recorded, how training went.

    Attributes:
        files: The files written.
        epochs: Training epochs recorded (per run).
        num_samples: Samples in the manifest (a row each; pruned ones are NaN).
        recorded: Samples trained on and recorded (those the mask keeps).
        runs: Independent training runs.
        grand_epochs: Epochs of the GraNd snapshots, sorted (empty: none).
        el2n_epochs: Epochs of the EL2N snapshots, sorted (empty: none).
        training: The first run's :class:`~streamprune.train.FitResult` (per-epoch seconds,
            loss and accuracy of the recorded trajectory).
    """

    files: RecordedFiles
    epochs: int
    num_samples: int
    recorded: int
    runs: int
    grand_epochs: tuple[int, ...]
    el2n_epochs: tuple[int, ...]
    training: FitResult

    def load(self, manifest: ManifestLike | None = None) -> Dynamics:
        """The recording, read back (:func:`~streamprune.dynamicsfile.load_dynamics`)."""
        return load_dynamics(self.files.directory, manifest)


def batch_statistics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The :data:`FIELDS` of each sample of a batch, from its logits and labels.

    Args:
        logits: ``[B, C]`` float tensor (detached).
        labels: ``int64[B]`` tensor of class ids in ``0..C-1``.

    Returns:
        ``float32[B, len(FIELDS)]`` tensor on the logits' device.
    """
    z = logits.detach().float()
    y = labels.long()
    logp = F.log_softmax(z, dim=1)
    p = logp.exp()
    p_true = p.gather(1, y[:, None])[:, 0]
    z_true = z.gather(1, y[:, None])[:, 0]
    if z.shape[1] > 1:
        others = p.scatter(1, y[:, None], float("-inf"))
        margin = p_true - others.max(dim=1).values
        logit_margin = z_true - z.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    else:  # a single class has no competitor
        margin = p_true.clone()
        logit_margin = z_true.clone()
    onehot = F.one_hot(y, z.shape[1]).to(p.dtype)
    el2n = torch.linalg.vector_norm(p - onehot, dim=1)
    loss = -logp.gather(1, y[:, None])[:, 0]
    correct = (z.argmax(dim=1) == y).to(p.dtype)
    return torch.stack([correct, p_true, margin, loss, el2n, logit_margin], dim=1)


def _kept_bool(mask: Mask | None, manifest: Manifest) -> np.ndarray:
    if mask is None:
        return np.ones(manifest.num_samples, dtype=bool)
    return np.asarray(mask.to_bool(), dtype=bool)


def _check_snapshot_epochs(name: str, at: Sequence[int], epochs: int) -> list[int]:
    out = sorted({int(g) for g in at})
    bad = [g for g in out if not 0 <= g <= epochs]
    if bad:
        raise ArgumentError(f"{name}={list(at)}: each must be in 0..{epochs} (0 = before training, e = after epoch e)")
    return out


def _check_grad_arguments(grad_chunk: int, grad_strategy: str) -> None:
    if grad_chunk < 1:
        raise ArgumentError(f"grad_chunk={grad_chunk}: must be at least 1")
    if grad_strategy not in GRAD_STRATEGIES:
        raise ArgumentError(f"grad_strategy={grad_strategy!r}: must be 'auto', 'vmap' or 'loop'")


@dataclass
class _Data:
    """The labelled dataset a recording trains on, checked against the checkpoint and mask."""

    manifest: Manifest
    mask: Any
    kept: np.ndarray
    info: dict[str, Any]
    input_size: int

    @property
    def position_of(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.manifest.keys())}


def _open_data(manifest: ManifestLike, checkpoint: str | os.PathLike | None, mask: MaskLike, input_size: int | None) -> _Data:
    m = open_manifest(manifest)
    if m.label_ext is None or m.num_classes < 1:
        raise StreamPruneError(f"{m.path}: dataset has no labels; training dynamics need them")
    info = checkpoint_info(checkpoint)
    classes = info.pop("classes", None)
    if classes and m.classes and list(classes) != list(m.classes):
        raise StreamPruneError(f"{checkpoint}: checkpoint was trained on classes {list(classes)[:4]}..., {m.path} has {list(m.classes)[:4]}...")
    mask_obj = open_mask(mask, m)
    kept = _kept_bool(mask_obj, m)
    if not kept.any():
        raise StreamPruneError(f"{m.path}: the mask keeps no samples to train on")
    labels = m.labels()
    bad = np.flatnonzero(kept & ((labels < 0) | (labels >= m.num_classes)))
    if len(bad):
        raise StreamPruneError(
            f"{m.path}: sample {m.keys()[int(bad[0])]!r} has no label in 0..{m.num_classes - 1} ({len(bad)} such samples); "
            "training dynamics need every trained sample labelled"
        )
    return _Data(m, mask_obj, kept, info, int(input_size or info.get("input_size") or DEFAULT_INPUT_SIZE))


class _SnapshotPass:
    """One evaluation-mode pass over every kept sample at the end of an epoch, into one array row.

    Subclasses say what a batch gives per sample (:meth:`values`); the pass checks that every
    kept sample got exactly one value and restores the model's training mode.
    """

    name = "snapshot"

    def __init__(self, model: nn.Module, data: _Data, *, batch_size: int, workers: int, device: torch.device,
                 progress: bool) -> None:
        self.model, self.data = model, data
        self.batch_size, self.workers, self.device, self.progress = batch_size, workers, device, progress
        self.seconds: list[float] = []

    def values(self, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """Per-sample values of one batch (on ``self.device``)."""
        raise NotImplementedError

    def describe(self, at: int) -> str:
        """What this pass is, at epoch ``at``, for progress bars and errors."""
        return f"{self.name} pass at epoch {at}"

    def __call__(self, out: np.ndarray, at: int) -> None:
        t0 = time.perf_counter()
        m = self.data.manifest
        batches = eval_batches(m, self.data.mask, input_size=self.data.input_size, batch_size=self.batch_size, workers=self.workers, labels=True)
        training = self.model.training
        self.model.eval()
        count = np.zeros(m.num_samples, dtype=np.int32)
        with tqdm(total=len(batches), desc=self.describe(at), unit="sample", disable=not self.progress) as bar:
            for pos, x, y in batches:
                out[pos] = self.values(x.to(self.device), y.to(self.device))
                np.add.at(count, pos, 1)
                bar.update(len(pos))
        self.model.train(training)
        _check_counts(count, self.data.kept, m, self.describe(at))
        self.seconds.append(round(time.perf_counter() - t0, 3))


class _GrandPass(_SnapshotPass):
    """Per-sample gradient norms of every kept sample, in evaluation mode, into one row of ``grand.npy``."""

    name = "grand"

    def __init__(self, model: nn.Module, data: _Data, *, grad_chunk: int, strategy: str, **kwargs: Any) -> None:
        super().__init__(model, data, **kwargs)
        self.grad_chunk, self.strategy = grad_chunk, strategy

    def values(self, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """Gradient norms of the batch's samples."""
        return per_sample_grad_norms(self.model, x, y, chunk=self.grad_chunk, strategy=self.strategy).astype(np.float32)


class _El2nPass(_SnapshotPass):
    """EL2N of every kept sample from an evaluation-mode forward pass, into one row of ``el2n.npy``.

    The same quantity as the training pass's ``el2n`` field (:func:`batch_statistics`), but
    with the weights of one moment (the end of an epoch) and BatchNorm on its running
    statistics, as Paul et al. score their early checkpoints.
    """

    name = "el2n"

    def __init__(self, model: nn.Module, data: _Data, *, run: int, **kwargs: Any) -> None:
        super().__init__(model, data, **kwargs)
        self.run = run

    def describe(self, at: int) -> str:
        """Names the run too: EL2N snapshots are taken in every run."""
        return f"el2n pass of run {self.run} at epoch {at}"

    def values(self, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """EL2N of the batch's samples."""
        with torch.no_grad():
            return batch_statistics(self.model(x), y)[:, FIELDS.index("el2n")].cpu().numpy()


class _Recorder:
    """:func:`~streamprune.train.fit` hooks of one run.

    Each batch's :data:`FIELDS` go into ``dynamics.npy`` (first run only: forgetting and AUM
    are defined on one training trajectory), the snapshot passes run at the chosen epochs, and
    every epoch's sample counts are checked.
    """

    def __init__(self, arrays: DynamicsArrays, data: _Data, dataset: Any, epochs: int, *, run: int,
                 grand: _GrandPass | None, grand_at: list[int], el2n: _El2nPass, el2n_at: list[int]) -> None:
        self.arrays, self.data, self.dataset, self.epochs, self.run = arrays, data, dataset, epochs, run
        self.grand, self.grand_at, self.el2n, self.el2n_at = grand, grand_at, el2n, el2n_at
        self.record = run == 0
        self.count = np.zeros(data.manifest.num_samples, dtype=np.int32)

    def snapshot(self, at: int) -> None:
        """Evaluation-mode passes after ``at`` epochs, if asked for then."""
        if self.grand is not None and at in self.grand_at:
            self.grand(self.arrays.grand[self.grand_at.index(at)], at)
        if at in self.el2n_at:
            self.el2n(self.arrays.el2n[self.run, self.el2n_at.index(at)], at)

    def epoch_start(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        if self.record:
            self.arrays.dynamics[epoch] = np.nan
        self.count[:] = 0

    def batch(self, b: BatchOutput) -> None:
        if self.record:
            self.arrays.dynamics[b.epoch, b.indices] = batch_statistics(b.logits, b.labels).cpu().numpy()
        np.add.at(self.count, b.indices, 1)

    def epoch_end(self, stats: EpochStats) -> None:
        _check_counts(self.count, self.data.kept, self.data.manifest, f"run {self.run}, epoch {stats.epoch + 1}")
        if self.record:
            self.arrays.dynamics.flush()
        log.info(
            "dynamics run %d, epoch %d/%d: loss %.4f, accuracy %.4f, %.1f s",
            self.run, stats.epoch + 1, self.epochs, stats.loss, stats.accuracy, stats.seconds,
        )
        self.snapshot(stats.epoch + 1)


def record_dynamics(
    manifest: ManifestLike,
    arch: str,
    out_dir: str | os.PathLike,
    *,
    epochs: int,
    checkpoint: str | os.PathLike | None = None,
    mask: MaskLike = None,
    batch_size: int = 128,
    lr: float | None = None,
    optimizer: str = "sgd",
    weight_decay: float = 5e-4,
    schedule: str = "onecycle",
    input_size: int | None = None,
    workers: int = 1,
    device: str | None = "cpu",
    seed: int = 0,
    grand_epochs: Sequence[int] = (),
    el2n_epochs: Sequence[int] = (),
    runs: int = 1,
    grad_chunk: int = 16,
    grad_strategy: str = "auto",
    progress: bool = True,
) -> Recording:
    """Finetune a classifier on a sharded dataset and record per-sample training dynamics.

    Training reads the kept samples through :class:`~streamprune.readers.PrunedWebDataset`
    (shuffled, ``set_epoch(epoch)`` each epoch, ``workers`` DataLoader processes, the
    deterministic :func:`~streamprune.models.surrogate_transform`), in one process (no split
    over distributed ranks), with :func:`~streamprune.train.fit`. Each batch's training
    forward pass, before its optimizer step, gives the recorded :data:`FIELDS`.
    Cross-entropy loss; SGD (Nesterov momentum 0.9) or AdamW; a one-cycle or constant
    learning rate over ``epochs * ceil(kept / batch_size)`` steps.

    Args:
        manifest: Labelled dataset (manifest path or object).
        arch: torchvision architecture or ``"package.module:function"`` entry point.
        out_dir: Directory for ``dynamics.npy``, ``dynamics.json`` (and ``grand.npy``); created.
        epochs: Training epochs recorded.
        checkpoint: Start from these weights (:func:`~streamprune.models.build_surrogate`);
            ``None``: random initialisation seeded by ``seed``.
        mask: Train on (and record) only the samples this keep mask keeps; pruned samples get
            NaN rows.
        batch_size: Samples per optimizer step.
        lr: Peak learning rate (default 0.05 for SGD, 0.002 for Adam; 0 keeps the weights fixed).
        optimizer: ``"sgd"`` (the default, as in the papers defining these scores) or ``"adam"``.
        weight_decay: Weight decay.
        schedule: ``"onecycle"`` or ``"constant"`` (:func:`~streamprune.train.make_schedule`).
        input_size: Network input side (default: the checkpoint's, else 32).
        workers: DataLoader worker processes decoding images.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        seed: Seed of the initialisation and of the data order (of the first run).
        grand_epochs: Epochs at which to compute per-sample gradient norms (``0``: at
            initialisation, ``e``: after ``e`` epochs), evaluation mode, all parameters; first
            run only.
        el2n_epochs: Epochs at which to compute every kept sample's EL2N in evaluation mode
            (``0``: at initialisation, ``e``: after ``e`` epochs), in every run.
        runs: Independent training runs, seeds ``seed``, ``seed + 1``, ...; each trains a
            fresh model (from ``checkpoint`` if given, else a seeded random initialisation)
            with its own data order. More than one needs ``el2n_epochs`` (only the EL2N
            snapshots use the later runs).
        grad_chunk: Samples vmapped at once for the gradient norms.
        grad_strategy: ``"vmap"`` (``torch.func``), ``"loop"`` (one autograd call per
            sample), or ``"auto"``: vmap on CUDA, loop on the CPU, where vmapped
            convolution gradients are several times slower
            (:func:`~streamprune.gradnorms.per_sample_grad_norms`).
        progress: Show progress bars.

    Returns:
        The :class:`Recording`: its files, counts, snapshot epochs and the first run's training.

    Raises:
        ArgumentError: Bad argument (also a ``ValueError``).
        StreamPruneError: Unlabelled dataset, empty mask, a label outside the classes, a
            checkpoint trained on other classes, or a sample not read exactly once per epoch.
    """
    config = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay, schedule=schedule)
    _check_grad_arguments(grad_chunk, grad_strategy)
    grand_at = _check_snapshot_epochs("grand_epochs", grand_epochs, epochs)
    el2n_at = _check_snapshot_epochs("el2n_epochs", el2n_epochs, epochs)
    if int(runs) != runs or runs < 1:
        raise ArgumentError(f"runs={runs}: must be a whole number >= 1")
    if runs > 1 and not el2n_at:
        raise ArgumentError(f"runs={runs}: only the EL2N snapshots use the later runs; give el2n_epochs (e.g. [1, 2]) or runs=1")
    runs = int(runs)
    data = _open_data(manifest, checkpoint, mask, input_size)
    m, n = data.manifest, data.manifest.num_samples
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    remove_stale_temps(out_dir)

    dev = resolve_device(device)
    strategy = resolve_grad_strategy(grad_strategy, dev)
    fits: list[FitResult] = []
    grand_seconds: list[float] = []
    el2n_seconds: list[list[float]] = []
    per_epoch = 0
    with temporary_arrays(out_dir, epochs, n, len(grand_at), (runs, len(el2n_at))) as arrays, cpu_threads_beside_workers(workers, dev):
        for run in range(runs):
            torch.manual_seed(seed + run)
            model = build_surrogate(arch, m.num_classes, checkpoint).to(dev)
            ds, loader = training_loader(
                m, data.mask, input_size=data.input_size, batch_size=batch_size, workers=workers, seed=seed + run, with_keys=True,
                rank=0, world_size=1,
            )
            per_epoch = len(ds)
            opt, sched = config.build(model.parameters(), per_epoch)
            grand = None
            if run == 0:
                grand = _GrandPass(
                    model, data, batch_size=batch_size, workers=workers, device=dev, grad_chunk=grad_chunk, strategy=strategy,
                    progress=progress,
                )
            el2n = _El2nPass(model, data, batch_size=batch_size, workers=workers, device=dev, run=run, progress=progress)
            recorder = _Recorder(arrays, data, ds, epochs, run=run, grand=grand, grand_at=grand_at, el2n=el2n, el2n_at=el2n_at)
            recorder.snapshot(0)
            fits.append(fit(
                model, loader, epochs=epochs, optimizer=opt, schedule=sched, device=dev, index_of=data.position_of,
                on_epoch_start=recorder.epoch_start, on_batch=recorder.batch, on_epoch_end=recorder.epoch_end,
                progress=progress, desc=f"dynamics {arch}" + (f" run {run + 1}/{runs}" if runs > 1 else ""),
            ))
            if grand is not None:
                grand_seconds = grand.seconds
            el2n_seconds.append(el2n.seconds)
        arrays.commit()

    first = fits[0]
    recorded = int(data.kept.sum())
    seeds = [seed + r for r in range(runs)]
    training = config.describe(per_epoch)
    grand_meta = (
        {"array": GRAND_ARRAY, "epochs": grand_at, "mode": "eval", "parameters": "all", "strategy": strategy, "grad_chunk": grad_chunk,
         "run": 0, "seconds": grand_seconds}
        if grand_at else None
    )
    el2n_meta = (
        {"array": EL2N_ARRAY, "epochs": el2n_at, "runs": runs, "seeds": seeds, "mode": "eval", "seconds": el2n_seconds,
         "train_loss": [f.train_loss for f in fits], "train_accuracy": [f.train_accuracy for f in fits]}
        if el2n_at else None
    )
    meta = _sidecar(
        data, arch, mask, seed=seed, seeds=seeds, optimizer=training, workers=workers, device=dev, run=first, grand=grand_meta,
        el2n=el2n_meta, version=__version__,
    )
    atomic_write_json(arrays.meta_path, meta)
    log.info(
        "recorded %d run(s) of %d epochs of %d samples in %.1f s -> %s", runs, epochs, recorded, sum(sum(f.epoch_seconds) for f in fits), out_dir
    )
    return Recording(
        files=RecordedFiles(
            directory=out_dir, meta=arrays.meta_path, array=arrays.final, grand=arrays.final_grand if grand_at else None,
            el2n=arrays.final_el2n if el2n_at else None,
        ),
        epochs=epochs, num_samples=n, recorded=recorded, runs=runs, grand_epochs=tuple(grand_at), el2n_epochs=tuple(el2n_at),
        training=first,
    )


def _sidecar(
    data: _Data, arch: str, mask: MaskLike, *, seed: int, seeds: list[int], optimizer: dict[str, Any], workers: int,
    device: torch.device, run: FitResult, grand: dict[str, Any] | None, el2n: dict[str, Any] | None, version: str,
) -> dict[str, Any]:
    """``dynamics.json`` (format version 2; key order kept, so sidecars stay comparable byte for byte)."""
    m = data.manifest
    epochs = len(run.epoch_seconds)
    return {
        "format": DYNAMICS_FORMAT,
        "version": DYNAMICS_VERSION,
        "array": DYNAMICS_ARRAY,
        "dtype": "float32",
        "shape": [epochs, m.num_samples, len(FIELDS)],
        "fields": list(FIELDS),
        "epochs": epochs,
        "epochs_done": epochs,
        "num_samples": m.num_samples,
        "recorded_samples": int(data.kept.sum()),
        "manifest": m.path,
        "manifest_fingerprint": m.fingerprint,
        "mask": os.path.abspath(os.fspath(mask)) if isinstance(mask, (str, os.PathLike)) else (None if mask is None else "<in-memory>"),
        "model": {"arch": arch, **data.info, "num_classes": m.num_classes, "input_size": data.input_size},
        "seed": seed,
        "runs": len(seeds),
        "seeds": seeds,
        "optimizer": optimizer,
        "record": "training forward pass of each batch, before its optimizer step; model in train mode; first run",
        "workers": workers,
        "device": str(device),
        "seconds_per_epoch": run.epoch_seconds,
        "train_loss": run.train_loss,
        "train_accuracy": run.train_accuracy,
        "grand": grand,
        "el2n": el2n,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "streamprune_version": version,
    }


def _check_counts(count: np.ndarray, kept: np.ndarray, m: Manifest, when: str) -> None:
    wrong = np.flatnonzero(count != kept.astype(np.int32))
    if len(wrong):
        keys = m.keys()
        i = int(wrong[0])
        raise StreamPruneError(
            f"{m.path}: {when}: sample {keys[i]!r} was read {int(count[i])} times (expected {int(kept[i])}); "
            f"{len(wrong)} samples are affected"
        )
