"""Training dynamics: finetune on the (pruned) shards and record every sample's statistics per epoch.

EL2N, forgetting, AUM and GraNd (``docs/methods.md`` section 3) are functions of how each
sample behaves while a model trains. :func:`record_dynamics` trains a classifier through
:class:`~streamprune.readers.PrunedWebDataset` (shuffled, ``set_epoch`` every epoch) and, from
the *training* forward pass of each batch (the logits the optimizer step is computed from, as
forgetting and AUM are defined), stores per sample and epoch:

============  ==============================================================
``correct``   1.0 if ``argmax_k f(x)_k == y`` else 0.0
``p_true``    ``p_y``, the softmax probability of the true class
``margin``    ``p_y - max_{k != y} p_k`` (AUM's per-epoch term; ``p_y`` when C = 1)
``loss``      ``-log p_y`` (cross-entropy)
``el2n``      ``||softmax(f(x)) - onehot(y)||_2`` (not derivable from ``p_y`` alone)
============  ==============================================================

Optionally, at chosen epochs (``grand_epochs``: ``0`` = at initialisation, ``e`` = after ``e``
epochs of training), a separate pass in evaluation mode computes each sample's GraNd score
``||grad_theta CE(f(x), y)||_2`` with ``torch.func``
(:func:`~streamprune.scoring.baselines.per_sample_grad_norms`).

Files in the output directory (format in ``FORMATS.md``)::

    dynamics.npy    float32 [epochs, N, fields], manifest order; NaN rows for samples a mask pruned
    grand.npy       float32 [len(grand_epochs), N] (only with grand_epochs); NaN for pruned samples
    dynamics.json   sidecar: format, version, fields, epochs, manifest fingerprint, model, seed,
                    optimizer, seconds per epoch, ...

Both arrays are written under temporary names and renamed when the run completes; the sidecar
is written (atomically) last, so a directory with a ``dynamics.json`` holds a whole recording.
:func:`load_dynamics` reads it back memory-mapped and refuses a recording made for another
manifest.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .atomic import atomic_write_json, temp_name
from .errors import MaskMismatchError, StreamPruneError
from .jsonfile import read_versioned_json
from .manifest import Manifest
from .readers.webdataset import ManifestLike, MaskLike, open_manifest, open_mask

__all__ = [
    "DYNAMICS_FORMAT",
    "DYNAMICS_VERSION",
    "FIELDS",
    "DYNAMICS_ARRAY",
    "GRAND_ARRAY",
    "DYNAMICS_META",
    "record_dynamics",
    "batch_statistics",
    "Dynamics",
    "load_dynamics",
]

log = logging.getLogger(__name__)

DYNAMICS_FORMAT = "streamprune-dynamics"
DYNAMICS_VERSION = 1
#: Per-sample, per-epoch quantities stored in ``dynamics.npy`` (last axis, in this order).
FIELDS = ("correct", "p_true", "margin", "loss", "el2n")
DYNAMICS_ARRAY = "dynamics.npy"
GRAND_ARRAY = "grand.npy"
DYNAMICS_META = "dynamics.json"


def batch_statistics(logits: Any, labels: Any) -> Any:
    """The :data:`FIELDS` of each sample of a batch, from its logits and labels.

    Args:
        logits: ``[B, C]`` float tensor (detached).
        labels: ``int64[B]`` tensor of class ids in ``0..C-1``.

    Returns:
        ``float32[B, len(FIELDS)]`` tensor on the logits' device.
    """
    import torch
    import torch.nn.functional as F

    z = logits.detach().float()
    y = labels.long()
    logp = F.log_softmax(z, dim=1)
    p = logp.exp()
    p_true = p.gather(1, y[:, None])[:, 0]
    if z.shape[1] > 1:
        others = p.scatter(1, y[:, None], float("-inf"))
        margin = p_true - others.max(dim=1).values
    else:  # a single class has no competitor
        margin = p_true.clone()
    onehot = F.one_hot(y, z.shape[1]).to(p.dtype)
    el2n = torch.linalg.vector_norm(p - onehot, dim=1)
    loss = -logp.gather(1, y[:, None])[:, 0]
    correct = (z.argmax(dim=1) == y).to(p.dtype)
    return torch.stack([correct, p_true, margin, loss, el2n], dim=1)


def _kept_bool(mask: Any, manifest: Manifest) -> np.ndarray:
    if mask is None:
        return np.ones(manifest.num_samples, dtype=bool)
    if hasattr(mask, "keep"):
        return np.asarray(mask.keep, dtype=bool)
    return np.asarray(mask.to_bool(), dtype=bool)


def _check_grand_epochs(grand_epochs: Sequence[int], epochs: int) -> list[int]:
    out = sorted({int(g) for g in grand_epochs})
    bad = [g for g in out if not 0 <= g <= epochs]
    if bad:
        raise ValueError(f"grand_epochs={list(grand_epochs)}: each must be in 0..{epochs} (0 = before training, e = after epoch e)")
    return out


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
    grad_chunk: int = 16,
    grad_strategy: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Finetune a classifier on a sharded dataset and record per-sample training dynamics.

    Training reads the kept samples through :class:`~streamprune.readers.PrunedWebDataset`
    (shuffled, ``set_epoch(epoch)`` each epoch, ``workers`` DataLoader processes, the
    deterministic :func:`~streamprune.models.surrogate_transform`), in one process (no split
    over distributed ranks). Each batch's training forward pass, before its optimizer step,
    gives the recorded :data:`FIELDS`. Cross-entropy loss; SGD (Nesterov momentum 0.9) or
    AdamW; a one-cycle or constant learning rate over ``epochs * ceil(kept / batch_size)``
    steps.

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
        seed: Seed of the initialisation and of the data order.
        grand_epochs: Epochs at which to compute per-sample gradient norms (``0``: at
            initialisation, ``e``: after ``e`` epochs), evaluation mode, all parameters.
        grad_chunk: Samples vmapped at once for the gradient norms.
        grad_strategy: ``"vmap"`` (``torch.func``), ``"loop"`` (one autograd call per
            sample), or ``"auto"``: vmap on CUDA, loop on the CPU, where vmapped
            convolution gradients are several times slower
            (:func:`~streamprune.scoring.baselines.per_sample_grad_norms`).
        progress: Show progress bars.

    Returns:
        ``{"dir", "meta", "array", "grand_array", "epochs", "num_samples", "recorded",
        "seconds_per_epoch", "train_loss", "train_accuracy", "grand_epochs"}``.

    Raises:
        ValueError: Bad argument.
        StreamPruneError: Unlabelled dataset, empty mask, a label outside the classes, a
            checkpoint trained on other classes, or a sample not read exactly once per epoch.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from . import __version__
    from .models import DEFAULT_INPUT_SIZE, build_surrogate, checkpoint_info, cpu_threads_beside_workers, resolve_device
    from .train import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule, training_loader

    if epochs < 1:
        raise ValueError(f"epochs={epochs}: must be at least 1")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r}: must be one of {sorted(OPTIMIZERS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: must be one of {list(SCHEDULES)}")
    if lr is not None and (not math.isfinite(lr) or lr < 0):
        raise ValueError(f"lr={lr}: must be a finite number >= 0")
    if grad_chunk < 1:
        raise ValueError(f"grad_chunk={grad_chunk}: must be at least 1")
    if grad_strategy not in ("auto", "vmap", "loop"):
        raise ValueError(f"grad_strategy={grad_strategy!r}: must be 'auto', 'vmap' or 'loop'")
    grand_at = _check_grand_epochs(grand_epochs, epochs)
    m = open_manifest(manifest)
    num_classes = m.num_classes
    if m.label_ext is None or num_classes < 1:
        raise StreamPruneError(f"{m.path}: dataset has no labels; training dynamics need them")
    info = checkpoint_info(checkpoint)
    classes = info.pop("classes", None)
    if classes and m.classes and list(classes) != list(m.classes):
        raise StreamPruneError(f"{checkpoint}: checkpoint was trained on classes {list(classes)[:4]}..., {m.path} has {list(m.classes)[:4]}...")
    input_size = int(input_size or info.get("input_size") or DEFAULT_INPUT_SIZE)
    mask_obj = open_mask(mask, m)
    kept = _kept_bool(mask_obj, m)
    if not kept.any():
        raise StreamPruneError(f"{m.path}: the mask keeps no samples to train on")
    labels = m.labels()
    bad = np.flatnonzero(kept & ((labels < 0) | (labels >= num_classes)))
    if len(bad):
        raise StreamPruneError(
            f"{m.path}: sample {m.keys()[int(bad[0])]!r} has no label in 0..{num_classes - 1} ({len(bad)} such samples); "
            "training dynamics need every trained sample labelled"
        )
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    _remove_stale_temps(out_dir)

    dev = resolve_device(device)
    strategy = grad_strategy if grad_strategy != "auto" else ("vmap" if dev.type == "cuda" else "loop")
    torch.manual_seed(seed)
    model = build_surrogate(arch, num_classes, checkpoint).to(dev)
    ds, loader = training_loader(
        m, mask_obj, input_size=input_size, batch_size=batch_size, workers=workers, seed=seed, with_keys=True, rank=0, world_size=1
    )
    steps_per_epoch = math.ceil(len(ds) / batch_size)
    total_steps = epochs * steps_per_epoch
    peak = OPTIMIZERS[optimizer] if lr is None else float(lr)
    opt = make_optimizer(optimizer, model.parameters(), peak, weight_decay)
    sched = make_schedule(opt, peak, total_steps, schedule)
    position_of = {key: i for i, key in enumerate(m.keys())}
    n = m.num_samples

    final = os.path.join(out_dir, DYNAMICS_ARRAY)
    final_grand = os.path.join(out_dir, GRAND_ARRAY)
    meta_path = os.path.join(out_dir, DYNAMICS_META)
    tmp = temp_name(final)
    tmp_grand = temp_name(final_grand)
    arr = grand_arr = None
    seconds: list[float] = []
    grand_seconds: list[float] = []
    train_loss: list[float] = []
    train_acc: list[float] = []

    def grand_pass(slot: int, at: int) -> None:
        from .readers import PrunedWebDataset
        from .models import surrogate_transform
        from .scoring.baselines import per_sample_grad_norms

        t0 = time.perf_counter()
        eval_ds = PrunedWebDataset(m, mask_obj, shuffle=False, rank=0, world_size=1)
        pipe = eval_ds.decode("pil").to_tuple("__key__", "jpg;png", "cls").map_tuple(str, surrogate_transform(input_size), int)
        eval_loader = torch.utils.data.DataLoader(pipe, batch_size=batch_size, num_workers=workers)
        model.eval()
        count = np.zeros(n, dtype=np.int32)
        with tqdm(total=len(eval_ds), desc=f"grand @ epoch {at}", unit="sample", disable=not progress) as gbar:
            for keys, x, y in eval_loader:
                pos = np.fromiter((position_of[k] for k in keys), dtype=np.int64, count=len(keys))
                grand_arr[slot, pos] = per_sample_grad_norms(model, x.to(dev), y.to(dev), chunk=grad_chunk, strategy=strategy).astype(np.float32)
                np.add.at(count, pos, 1)
                gbar.update(len(keys))
        model.train()
        _check_counts(count, kept, m, f"grand pass at epoch {at}")
        grand_seconds.append(round(time.perf_counter() - t0, 3))

    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(epochs, n, len(FIELDS)))
        if grand_at:
            grand_arr = np.lib.format.open_memmap(tmp_grand, mode="w+", dtype=np.float32, shape=(len(grand_at), n))
            grand_arr[:] = np.nan
        bar = tqdm(total=total_steps, desc=f"dynamics {arch}", unit="step", disable=not progress)
        with bar, cpu_threads_beside_workers(workers, dev):
            if 0 in grand_at:
                grand_pass(grand_at.index(0), 0)
            model.train()
            for epoch in range(epochs):
                t0 = time.perf_counter()
                ds.set_epoch(epoch)
                arr[epoch] = np.nan
                count = np.zeros(n, dtype=np.int32)
                loss_sum = correct = seen = 0.0
                for keys, images, labels in loader:
                    x, y = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
                    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
                        bad = keys[int(np.flatnonzero((labels.numpy() < 0) | (labels.numpy() >= num_classes))[0])]
                        raise StreamPruneError(f"{m.path}: sample {bad!r} has a label outside 0..{num_classes - 1}")
                    logits = model(x)
                    losses = F.cross_entropy(logits, y, reduction="none")
                    loss = losses.mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    stats = batch_statistics(logits, y).cpu().numpy()
                    pos = np.fromiter((position_of[k] for k in keys), dtype=np.int64, count=len(keys))
                    arr[epoch, pos] = stats
                    np.add.at(count, pos, 1)
                    k = len(keys)
                    loss_sum += float(stats[:, 3].sum())
                    correct += float(stats[:, 0].sum())
                    seen += k
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
                _check_counts(count, kept, m, f"epoch {epoch + 1}")
                arr.flush()
                seconds.append(round(time.perf_counter() - t0, 3))
                train_loss.append(loss_sum / seen)
                train_acc.append(correct / seen)
                log.info("dynamics epoch %d/%d: loss %.4f, accuracy %.4f, %.1f s", epoch + 1, epochs, train_loss[-1], train_acc[-1], seconds[-1])
                if epoch + 1 in grand_at:
                    grand_pass(grand_at.index(epoch + 1), epoch + 1)
        arr.flush()
        arr = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(meta_path)  # a stale sidecar must never vouch for the new arrays
        os.replace(tmp, final)
        if grand_arr is not None:
            grand_arr.flush()
            grand_arr = None
            os.replace(tmp_grand, final_grand)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(final_grand)
    finally:
        arr = grand_arr = None  # unmap; an interrupted run leaves no partial array behind
        for path in (tmp, tmp_grand):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    meta = {
        "format": DYNAMICS_FORMAT,
        "version": DYNAMICS_VERSION,
        "array": DYNAMICS_ARRAY,
        "dtype": "float32",
        "shape": [epochs, n, len(FIELDS)],
        "fields": list(FIELDS),
        "epochs": epochs,
        "epochs_done": epochs,
        "num_samples": n,
        "recorded_samples": int(kept.sum()),
        "manifest": m.path,
        "manifest_fingerprint": m.fingerprint,
        "mask": os.path.abspath(os.fspath(mask)) if isinstance(mask, (str, os.PathLike)) else (None if mask is None else "<in-memory>"),
        "model": {"arch": arch, **info, "num_classes": num_classes, "input_size": input_size},
        "seed": seed,
        "optimizer": {"name": optimizer, "lr": peak, "weight_decay": weight_decay, "schedule": schedule, "batch_size": batch_size, "steps": total_steps},
        "record": "training forward pass of each batch, before its optimizer step; model in train mode",
        "workers": workers,
        "device": str(dev),
        "seconds_per_epoch": seconds,
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "grand": (
            {"array": GRAND_ARRAY, "epochs": grand_at, "mode": "eval", "parameters": "all", "strategy": strategy, "grad_chunk": grad_chunk, "seconds": grand_seconds}
            if grand_at else None
        ),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "streamprune_version": __version__,
    }
    atomic_write_json(meta_path, meta)
    log.info("recorded %d epochs of %d samples in %.1f s -> %s", epochs, int(kept.sum()), sum(seconds), out_dir)
    return {
        "dir": out_dir,
        "meta": meta_path,
        "array": final,
        "grand_array": final_grand if grand_at else None,
        "epochs": epochs,
        "num_samples": n,
        "recorded": int(kept.sum()),
        "seconds_per_epoch": seconds,
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "grand_epochs": grand_at,
    }


def _remove_stale_temps(out_dir: str) -> None:
    # a run killed by a signal cannot clean up after itself; its temp arrays never look complete
    for name in (DYNAMICS_ARRAY, GRAND_ARRAY):
        for path in glob.glob(os.path.join(glob.escape(out_dir), name + ".tmp-*")):
            with contextlib.suppress(OSError):
                os.unlink(path)


def _check_counts(count: np.ndarray, kept: np.ndarray, m: Manifest, when: str) -> None:
    wrong = np.flatnonzero(count != kept.astype(np.int32))
    if len(wrong):
        keys = m.keys()
        i = int(wrong[0])
        raise StreamPruneError(
            f"{m.path}: {when}: sample {keys[i]!r} was read {int(count[i])} times (expected {int(kept[i])}); "
            f"{len(wrong)} samples are affected"
        )


@dataclass
class Dynamics:
    """A recording written by :func:`record_dynamics`, memory-mapped read-only.

    Attributes:
        directory: The recording's directory.
        meta: The sidecar (``dynamics.json``).
        array: ``float32[epochs, N, fields]`` memory map.
        grand_array: ``float32[G, N]`` memory map, or ``None`` when no gradient norms were recorded.
    """

    directory: str
    meta: dict[str, Any]
    array: np.ndarray
    grand_array: np.ndarray | None = None

    @property
    def meta_path(self) -> str:
        """Path of the sidecar."""
        return os.path.join(self.directory, DYNAMICS_META)

    @property
    def fields(self) -> list[str]:
        """Names of the recorded fields (last axis of :attr:`array`)."""
        return list(self.meta["fields"])

    @property
    def epochs(self) -> int:
        """Recorded epochs."""
        return int(self.array.shape[0])

    @property
    def num_samples(self) -> int:
        """Samples of the manifest (recorded or not)."""
        return int(self.array.shape[1])

    @property
    def grand_epochs(self) -> list[int]:
        """Training epochs at which gradient norms were recorded (empty if none)."""
        g = self.meta.get("grand") or {}
        return [int(e) for e in g.get("epochs", [])]

    def _epochs(self, epochs: int | None) -> int:
        if epochs is None:
            return self.epochs
        if not 1 <= int(epochs) <= self.epochs:
            raise ValueError(f"epochs={epochs}: {self.meta_path} records {self.epochs} epoch(s); use 1..{self.epochs}")
        return int(epochs)

    def field(self, name: str, epochs: int | None = None) -> np.ndarray:
        """One field over the first ``epochs`` epochs.

        Args:
            name: One of :attr:`fields`.
            epochs: Number of leading epochs (default: all recorded).

        Returns:
            ``float32[epochs, N]`` (a copy; NaN for unrecorded samples).

        Raises:
            ValueError: Unknown field or epoch count.
        """
        if name not in self.fields:
            raise ValueError(f"{self.meta_path}: no field {name!r}; recorded fields are {self.fields}")
        return np.array(self.array[: self._epochs(epochs), :, self.fields.index(name)], dtype=np.float32)

    def recorded(self) -> np.ndarray:
        """``bool[N]``: samples that were trained on (not pruned by the recording's mask)."""
        return ~np.isnan(self.array[0, :, 0])

    def grand(self, up_to_epoch: int | None = None) -> tuple[np.ndarray, list[int]]:
        """Recorded gradient norms taken at training epochs ``<= up_to_epoch``.

        Args:
            up_to_epoch: Latest training epoch to include (default: all snapshots).

        Returns:
            ``(float32[G, N] norms, their epochs)``.

        Raises:
            StreamPruneError: No gradient norms were recorded, or none that early.
        """
        if self.grand_array is None:
            raise StreamPruneError(
                f"{self.meta_path}: no per-sample gradient norms recorded; run `streamprune dynamics ... --grand-epochs 1,2`"
            )
        at = self.grand_epochs
        rows = [i for i, e in enumerate(at) if up_to_epoch is None or e <= int(up_to_epoch)]
        if not rows:
            raise StreamPruneError(f"{self.meta_path}: gradient norms were recorded at epochs {at}, none at or before {up_to_epoch}")
        return np.array(self.grand_array[rows], dtype=np.float32), [at[i] for i in rows]

    def require_recorded(self, method: str) -> None:
        """Raise unless every sample of the manifest has recorded dynamics.

        Args:
            method: Scoring method name, for the message.

        Raises:
            StreamPruneError: Some samples were pruned by the mask the recording was made with.
        """
        rec = self.recorded()
        missing = int((~rec).sum())
        if missing:
            raise StreamPruneError(
                f"{self.meta_path}: {missing} of {len(rec)} samples have no recorded dynamics (pruned by the recording's "
                f"mask {self.meta.get('mask')}); method {method!r} scores every sample of the manifest, so record "
                "dynamics without a mask"
            )


def _read_meta(path: str) -> dict[str, Any]:
    return read_versioned_json(
        path, DYNAMICS_FORMAT, DYNAMICS_VERSION, "dynamics sidecar",
        missing=f"{path}: no training dynamics recorded here (run `streamprune dynamics MANIFEST --out DIR` first)",
        version_label="dynamics", version_note=f" (this streamprune reads {DYNAMICS_VERSION})",
    )


def load_dynamics(directory: str | os.PathLike, manifest: ManifestLike | None = None) -> Dynamics:
    """Open a recording, checking it is whole and (optionally) belongs to ``manifest``.

    Args:
        directory: Output directory of :func:`record_dynamics` (or its ``dynamics.json``).
        manifest: If given, the recording's manifest fingerprint must match it.

    Returns:
        The :class:`Dynamics` (arrays memory-mapped read-only).

    Raises:
        StreamPruneError: Missing, malformed or unsupported files (the message names the file).
        MaskMismatchError: The recording was made for another manifest.
    """
    directory = os.fspath(directory)
    if os.path.basename(directory) == DYNAMICS_META and os.path.isfile(directory):
        directory = os.path.dirname(directory) or "."
    meta_path = os.path.join(directory, DYNAMICS_META)
    meta = _read_meta(meta_path)
    if manifest is not None:
        m = open_manifest(manifest)
        if meta.get("manifest_fingerprint") != m.fingerprint:
            raise MaskMismatchError(
                f"{meta_path}: dynamics were recorded for another dataset or index (fingerprint "
                f"{str(meta.get('manifest_fingerprint'))[:12]}, manifest {m.path} has {m.fingerprint[:12]}); record them again"
            )
    fields = meta.get("fields")
    shape = meta.get("shape")
    if not isinstance(fields, list) or not isinstance(shape, list) or len(shape) != 3 or shape[2] != len(fields):
        raise StreamPruneError(f"{meta_path}: malformed dynamics sidecar (fields {fields!r}, shape {shape!r})")
    array_path = os.path.join(directory, meta.get("array", DYNAMICS_ARRAY))
    array = _open_array(array_path, tuple(shape))
    grand_array = None
    g = meta.get("grand")
    if g:
        grand_array = _open_array(os.path.join(directory, g.get("array", GRAND_ARRAY)), (len(g.get("epochs", [])), shape[1]))
    return Dynamics(directory, meta, array, grand_array)


def _open_array(path: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise StreamPruneError(f"{path}: dynamics array missing (the recording is incomplete; record it again)") from None
    except (ValueError, OSError) as exc:
        raise StreamPruneError(f"{path}: not a readable .npy array ({exc})") from None
    if arr.dtype != np.float32 or arr.shape != shape:
        raise StreamPruneError(f"{path}: array is {arr.dtype} {arr.shape}; the sidecar says float32 {shape}")
    return arr
