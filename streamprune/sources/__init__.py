"""Input adapters: everything ``streamprune shard`` can read, behind one :func:`open_source`."""

from __future__ import annotations

import os
from typing import Iterable, Sequence

from ..errors import StreamPruneError
from .arrays import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, ArraySource, idx_source, npz_source, read_idx
from .base import ListSource, Sample, Source, encode_image
from .folder import FolderSource

__all__ = [
    "open_source",
    "Source",
    "Sample",
    "ListSource",
    "ArraySource",
    "FolderSource",
    "idx_source",
    "npz_source",
    "read_idx",
    "encode_image",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
]


def _looks_like_idx_dir(path: str) -> bool:
    return any(n.endswith(("-idx3-ubyte", "-idx3-ubyte.gz")) for n in os.listdir(path))


def open_source(
    src: str | os.PathLike | Iterable[Sample],
    split: str = "train",
    fmt: str | None = None,
    quality: int = 95,
    class_names: Sequence[str] | None = None,
) -> Source:
    """Open anything ``streamprune shard`` accepts.

    Args:
        src: A class-per-folder tree, an MNIST-layout IDX directory or images file, an
            ``.npz``, or an iterable of ``(key, {extension: bytes}, label)``.
        split: IDX split (``train`` or ``t10k``/``test``).
        fmt: Encoding of array images, ``jpg`` (default) or ``png``.
        quality: JPEG quality for array images.
        class_names: Class names by label id (for array sources).

    Returns:
        A random-access :class:`Source`.

    Raises:
        StreamPruneError: The path does not exist or is not a recognised source.
    """
    if not isinstance(src, (str, os.PathLike)):
        return ListSource(src, class_names)
    path = os.fspath(src)
    if not os.path.exists(path):
        raise StreamPruneError(f"{path}: source not found")
    if os.path.isdir(path):
        if _looks_like_idx_dir(path):
            return idx_source(path, split=split, fmt=fmt or "jpg", quality=quality, class_names=class_names)
        return FolderSource(path)
    if path.endswith(".npz"):
        return npz_source(path, fmt=fmt or "jpg", quality=quality, class_names=class_names)
    if "idx3-ubyte" in os.path.basename(path):
        return idx_source(path, split=split, fmt=fmt or "jpg", quality=quality, class_names=class_names)
    raise StreamPruneError(
        f"{path}: not a recognised source (expected a class-per-folder directory, an IDX directory or "
        "*-idx3-ubyte[.gz] file, or an .npz)"
    )
