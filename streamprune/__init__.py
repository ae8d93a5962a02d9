"""streamprune: prune streaming training datasets without copying or reading pruned bytes.

The data path: source files -> :func:`write_shards` (tar shards + byte-range index +
manifest) -> a keep mask (:mod:`streamprune.masks`) -> :class:`PrunedWebDataset` reading only
the kept byte ranges. ``ARCHITECTURE.md`` maps the layers and modules.

Names are imported on first use (PEP 562), so ``import streamprune`` and the command line's
start-up do not pay for torch, numba or webdataset until a reader or scorer is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors as _errors
from ._version import __version__
from .errors import (
    ArgumentError,
    CacheError,
    ChecksumError,
    CompressedShardError,
    DuplicateKeyError,
    IndexMismatchError,
    LabelError,
    ManifestError,
    MaskMismatchError,
    MissingKeysError,
    OutputExistsError,
    StorageError,
    StreamPruneError,
    TarFormatError,
    UnknownNameError,
    UnsafeLocationError,
)

# public name -> module that defines it
_LAZY = {
    "Manifest": "manifest",
    "index_dataset": "remoteindex",
    "index_files": "indexing",
    "index_shards": "indexing",
    "index_betons": "indexing",
    "write_dataset": "writers",
    "write_shards": "writers",
    "write_beton": "writers",
    "Mask": "masks",
    "KeepMask": "masks",
    "MaskFile": "masks",
    "open_mask": "masks",
    "mask_from_bool": "masks",
    "mask_from_keys": "keys",
    "mask_from_classes": "masks",
    "random_mask": "masks",
    "translate_mask": "masks",
    "ScoreFile": "scores",
    "mask_from_scores": "selection",
    "score_source": "scoring",
    "PrunedWebDataset": "readers",
    "PrunedSource": "readers",
    "pruned_tarfile_samples": "readers",
    "PrunedMapDataset": "readers",
    "KeptSampler": "readers",
    "pruned_ffcv_loader": "readers.ffcv",
    "image_decoder": "decode",
    "ImageDecoder": "decode",
    "describe": "report",
    "InfoBatch": "schedules",
    "MissingExtraError": "optional",
}

#: every error class of the contract (``errors.__all__`` is their one list; ``redact`` stays in ``errors``)
__all__ = ["__version__", *_LAZY, *(name for name in _errors.__all__ if name != "redact")]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'streamprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static tools see the names the lazy table provides
    from .decode import ImageDecoder, image_decoder
    from .indexing import index_betons, index_files, index_shards
    from .keys import mask_from_keys
    from .manifest import Manifest
    from .masks import (
        KeepMask,
        Mask,
        MaskFile,
        mask_from_bool,
        mask_from_classes,
        open_mask,
        random_mask,
        translate_mask,
    )
    from .optional import MissingExtraError
    from .readers import KeptSampler, PrunedMapDataset, PrunedSource, PrunedWebDataset, pruned_tarfile_samples
    from .readers.ffcv import pruned_ffcv_loader
    from .remoteindex import index_dataset
    from .report import describe
    from .schedules import InfoBatch
    from .scores import ScoreFile
    from .scoring import score_source
    from .selection import mask_from_scores
    from .writers import write_beton, write_dataset, write_shards
