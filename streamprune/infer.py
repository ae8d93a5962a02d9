"""Evaluation-mode passes over a manifest: ordered batches and batched inference.

Scoring needs one number (or vector) per sample in **manifest order**, whatever the batch
size or the number of DataLoader workers. :func:`eval_batches` reads the kept samples in
archive order through :class:`~streamprune.readers.PrunedWebDataset` with the deterministic
:func:`~streamprune.models.surrogate_transform` and hands out each batch with the manifest
positions of its samples; :func:`infer` runs a model over it and sorts the rows back into
manifest order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .decode import DecoderLike, as_decoder, image_key
from .errors import StreamPruneError
from .manifest import ManifestLike
from .masks import MaskLike
from .models import (
    DEFAULT_INPUT_SIZE,
    cpu_threads_beside_workers,
    features_and_logits,
    resolve_device,
    surrogate_transform,
)
from .readers import PrunedWebDataset
from .sampleformats import FOREIGN_FORMATS, image_fields

__all__ = ["EvalBatches", "eval_batches", "infer"]

log = logging.getLogger(__name__)


@dataclass
class EvalBatches:
    """Batches of transformed samples in archive order, each with its manifest positions.

    Iterating yields ``(positions, images, labels)``: ``int64[B]`` manifest positions, the
    ``[B, 3, S, S]`` image tensor, and the ``int64[B]`` label tensor (``None`` when the batches
    were made without labels).

    Attributes:
        dataset: The pruned reader (one process: no split over distributed ranks).
        loader: The DataLoader over its decoded pipeline (yields ``(keys, images[, labels])``).
        labelled: Whether batches carry labels.
        position_of: Manifest position of every sample key.
    """

    dataset: PrunedWebDataset
    loader: torch.utils.data.DataLoader
    labelled: bool
    position_of: dict[str, int] = field(repr=False)

    def __len__(self) -> int:
        return len(self.dataset)

    def positions(self, keys: Sequence[str]) -> np.ndarray:
        """Manifest positions of the samples named by ``keys``.

        Args:
            keys: Sample keys (``__key__``) of a batch.

        Returns:
            ``int64[len(keys)]``.
        """
        return np.fromiter((self.position_of[k] for k in keys), dtype=np.int64, count=len(keys))

    def __iter__(self) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]:
        for batch in self.loader:
            yield self.positions(batch[0]), batch[1], (batch[2] if self.labelled else None)


def _foreign_image_field(m: Any) -> str:
    """The first image field of an MDS/LitData manifest (an error naming its fields when it has none)."""
    entry = m.shards[0]
    names = image_fields(entry.format, entry.layout)
    if not names:
        raise StreamPruneError(f"{m.path or m.root}: no image field in the {entry.format} samples (fields: "
                               f"{', '.join(entry.layout.get('column_names') or []) or 'see the dataset index.json'})")
    return names[0]


class _FieldTuple:
    """An MDS/LitData sample -> ``(key, transform(RGB image)[, label])`` (picklable, for DataLoader workers)."""

    def __init__(self, image: str, label: str | None, transform: Callable[[Any], Any]) -> None:
        self.image, self.label, self.transform = image, label, transform

    def __call__(self, sample: dict) -> tuple:
        image = self.transform(sample[self.image].convert("RGB"))
        if self.label is None:
            return sample["__key__"], image
        return sample["__key__"], image, int(sample[self.label])


def eval_batches(
    manifest: ManifestLike,
    mask: MaskLike = None,
    *,
    input_size: int = DEFAULT_INPUT_SIZE,
    transform: Callable[[Any], Any] | None = None,
    batch_size: int = 256,
    workers: int = 0,
    labels: bool | None = None,
    decoder: DecoderLike = "auto",
) -> EvalBatches:
    """Kept samples of a manifest in archive order, transformed, batched, with their positions.

    Args:
        manifest: Manifest path or object.
        mask: Keep mask (path or object) restricting the samples, or ``None`` for all.
        input_size: Side of the square input of the default transform.
        transform: Per-image transform (default :func:`~streamprune.models.surrogate_transform`).
        batch_size: Samples per batch (the last one may be smaller).
        workers: DataLoader worker processes decoding images.
        labels: Read the ``cls`` labels (``None``: when the manifest has labels).
        decoder: JPEG decoder: ``"auto"`` (fastest installed, PIL if none), a backend name or
            an :class:`~streamprune.decode.ImageDecoder` (see :func:`~streamprune.decode.image_decoder`).
            With the default transform a named decoder may decode at a reduced scale whose
            sides stay at least ``input_size`` (the transform resizes to ``input_size`` anyway);
            with a custom ``transform`` it decodes at full size.

    Returns:
        The :class:`EvalBatches`.

    Raises:
        StreamPruneError: The samples hold no image member.
    """
    ds = PrunedWebDataset(manifest, mask, shuffle=False, rank=0, world_size=1)
    m = ds.source.manifest
    labelled = m.label_ext is not None if labels is None else bool(labels)
    if m.shards and m.shards[0].format in FOREIGN_FORMATS:
        # MDS/LitData samples arrive decoded by their format's own decoder: an image field, the label field
        loader = torch.utils.data.DataLoader(
            ds.map(_FieldTuple(_foreign_image_field(m), m.label_ext if labelled else None, transform or surrogate_transform(input_size))),
            batch_size=batch_size, num_workers=workers)
        return EvalBatches(ds, loader, labelled, {key: i for i, key in enumerate(m.keys())})
    image = image_key(m)
    # the default transform's first resize goes down to input_size: a decode that stops at that size loses nothing it keeps
    images = as_decoder(decoder, size=input_size if transform is None else None)
    transform = transform or surrogate_transform(input_size)
    if labelled:
        pipeline = ds.decode(images).to_tuple("__key__", image, "cls").map_tuple(str, transform, int)
    else:
        pipeline = ds.decode(images).to_tuple("__key__", image).map_tuple(str, transform)
    loader = torch.utils.data.DataLoader(pipeline, batch_size=batch_size, num_workers=workers)
    position_of = {key: i for i, key in enumerate(m.keys())}
    return EvalBatches(ds, loader, labelled, position_of)


def infer(
    model: nn.Module,
    manifest: ManifestLike,
    mask: MaskLike = None,
    *,
    input_size: int = DEFAULT_INPUT_SIZE,
    batch_size: int = 256,
    workers: int = 0,
    device: str | torch.device | None = "cpu",
    want_features: bool = False,
    progress: bool = True,
    desc: str = "infer",
    decoder: DecoderLike = "auto",
) -> dict[str, np.ndarray]:
    """Run a model over a dataset's (kept) samples with the evaluation transform.

    Rows of the result are sorted into manifest order, so the output does not depend on
    ``workers`` or ``batch_size``.

    Args:
        model: The classifier (switched to eval mode).
        manifest: Manifest path or object.
        mask: Keep mask (path or object) restricting the samples, or ``None`` for all.
        input_size: Side of the square input (see :func:`~streamprune.models.surrogate_transform`).
        batch_size: Samples per forward pass.
        workers: DataLoader worker processes (0: decode in this process).
        device: Torch device.
        want_features: Also return the penultimate features (see :func:`~streamprune.models.features`).
        progress: Show a progress bar.
        desc: Progress bar label.
        decoder: JPEG decoder (see :func:`eval_batches`): ``"auto"``, a backend name or an
            :class:`~streamprune.decode.ImageDecoder`.

    Returns:
        ``{"positions": int64[N] manifest positions, "labels": int64[N] (-1 if unlabelled),
        "logits": float32[N, C]}`` plus ``"features": float32[N, D]`` if asked for.

    Raises:
        StreamPruneError: No sample to run on (empty dataset or mask), or no image member.
    """
    batches = eval_batches(manifest, mask, input_size=input_size, batch_size=batch_size, workers=workers, decoder=decoder)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    positions, labels, logits, feats = [], [], [], []
    with torch.no_grad(), cpu_threads_beside_workers(workers, dev), tqdm(total=len(batches), desc=desc, unit="sample", disable=not progress) as bar:
        for pos, images, y in batches:
            x = images.to(dev, non_blocking=True)
            if want_features:
                f, out = features_and_logits(model, x)
                feats.append(f.float().cpu().numpy())
            else:
                out = model(x)
            logits.append(out.float().cpu().numpy())
            positions.append(pos)
            labels.append(y.numpy().astype(np.int64) if y is not None else np.full(len(pos), -1, np.int64))
            bar.update(len(pos))
    if not logits:
        raise StreamPruneError(f"{batches.dataset.source.manifest.path}: no samples to run the model on (empty dataset or mask)")
    pos = np.concatenate(positions)
    order = np.argsort(pos, kind="stable")
    result = {"positions": pos[order], "labels": np.concatenate(labels)[order], "logits": np.concatenate(logits)[order]}
    if want_features:
        result["features"] = np.concatenate(feats)[order]
    return result
