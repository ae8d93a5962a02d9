"""OpenCLIP trains on a pruned DataComp pool in place: no resharded copy.

DataComp's filtering baselines output a list of 128-bit uids, and the usual next step
(``resharder.py``) rewrites the whole pool into new shards before OpenCLIP trains on them.
Here the uid list becomes a keep mask (``streamprune mask MANIFEST --keys uids.npy``), and
OpenCLIP's own data pipeline (``open_clip_train.data.get_wds_dataset``) reads the original
shards with one stage swapped: its tar expansion (``tarfile_to_samples_nothrow``) becomes
:func:`~streamprune.readers.webdataset.pruned_tarfile_samples`, which reads only the kept
samples of each shard it is handed, by byte range::

    from streamprune.openclip import use_pruned_shards, train_num_samples
    use_pruned_shards("pool/manifest.json", "filtered.spmask")   # before get_data(args, ...)
    args.train_num_samples = train_num_samples("pool/manifest.json", "filtered.spmask")

Everything else in OpenCLIP's pipeline is its own: the shard list, its seeded per-epoch shard
shuffle, the split over nodes and DataLoader workers, the sample shuffle buffer, decoding,
the tokenizer and the batching. See docs/recipes.md for the options this replaces.
"""

from __future__ import annotations

from typing import Any

from .manifest import ManifestLike, open_manifest
from .masks import MaskLike, kept_counts, open_mask
from .optional import require_extra
from .readers.webdataset import pruned_tarfile_samples

__all__ = ["use_pruned_shards", "train_num_samples"]


def use_pruned_shards(manifest: ManifestLike, mask: MaskLike = None, **kwargs: Any) -> Any:
    """Make OpenCLIP's ``get_wds_dataset`` read only the kept samples of the shards it lists.

    Replaces ``open_clip_train.data.tarfile_to_samples_nothrow`` (the stage that turns shard
    URLs into samples) for this process and the DataLoader workers it starts; call it
    before ``get_data``/``get_wds_dataset``. ``--train-data`` still names the original shards
    (those of ``manifest``).

    Args:
        manifest: The pool's manifest (``streamprune index`` of its shards).
        mask: The keep mask (e.g. from a DataComp uid list), or ``None`` for every sample.
        **kwargs: Passed to :func:`~streamprune.readers.webdataset.pruned_tarfile_samples`
            (``verify``, ``base``, ``storage_options``, ``fetch``).

    Returns:
        The stage now in place.

    Raises:
        MissingExtraError: ``open-clip-torch`` is not installed.
    """
    data = require_extra("open_clip_train.data", "pip install open-clip-torch pandas", "the OpenCLIP recipe")
    stage = pruned_tarfile_samples(manifest, mask, **kwargs)
    data.tarfile_to_samples_nothrow = stage
    return stage


def train_num_samples(manifest: ManifestLike, mask: MaskLike = None) -> int:
    """The kept sample count: OpenCLIP's ``--train-num-samples`` for one pass over the kept samples."""
    m = open_manifest(manifest)
    return int(kept_counts(m, open_mask(mask, m)).sum())
