"""streamprune: prune streaming training datasets without copying or reading pruned bytes.

The data path: source files -> :func:`write_shards` (tar shards + byte-range index +
manifest) -> a keep mask (:mod:`streamprune.masks`) -> :class:`PrunedWebDataset` reading only
the kept byte ranges.
"""

from .errors import (
    CompressedShardError,
    DuplicateKeyError,
    IndexMismatchError,
    LabelError,
    ManifestError,
    MaskMismatchError,
    StreamPruneError,
    TarFormatError,
)
from .betonindex import index_betons
from .manifest import Manifest, index_shards
from .masks import KeepMask, MaskFile, mask_from_bool, mask_from_classes, mask_from_keys, random_mask, translate_mask
from .optional import MissingExtraError
from .readers import KeptSampler, PrunedMapDataset, PrunedSource, PrunedWebDataset, pruned_tarfile_samples
from .readers.ffcv import pruned_ffcv_loader
from .report import describe
from .writers import write_beton, write_shards

__version__ = "0.1.0"

__all__ = [
    "Manifest",
    "index_shards",
    "index_betons",
    "write_shards",
    "write_beton",
    "KeepMask",
    "MaskFile",
    "mask_from_bool",
    "mask_from_keys",
    "mask_from_classes",
    "random_mask",
    "translate_mask",
    "PrunedWebDataset",
    "PrunedSource",
    "pruned_tarfile_samples",
    "PrunedMapDataset",
    "KeptSampler",
    "pruned_ffcv_loader",
    "describe",
    "StreamPruneError",
    "TarFormatError",
    "CompressedShardError",
    "ManifestError",
    "IndexMismatchError",
    "MaskMismatchError",
    "LabelError",
    "DuplicateKeyError",
    "MissingExtraError",
]
