"""Sources backed by image arrays in memory: IDX files (MNIST layout) and ``.npz`` files."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import Sequence

import numpy as np

from ..errors import LabelError, StreamPruneError
from .base import Sample, encode_image

__all__ = ["ArraySource", "read_idx", "idx_source", "npz_source", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR"]

#: Where Debian's ``dataset-fashion-mnist`` package installs Fashion-MNIST (IDX files): the one
#: place the demo, the tests and the benchmarks look for it.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class ArraySource:
    """Images from an ``[N, H, W(, C)]`` uint8 array, encoded on demand.

    Args:
        images: Pixel array.
        labels: Integer labels, one per image.
        class_names: Class names by label id.
        fmt: Encoding, ``"jpg"`` or ``"png"``.
        quality: JPEG quality.
        prefix: Key prefix; keys are ``f"{prefix}{i:08d}"``.
        origin: Where the arrays came from, for error messages.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str] | None = None,
        fmt: str = "jpg",
        quality: int = 95,
        prefix: str = "",
        origin: str = "arrays",
    ) -> None:
        if len(images) != len(labels):
            raise StreamPruneError(f"{origin}: {len(images)} images but {len(labels)} labels")
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise LabelError(f"{origin}: labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
        if len(labels) and labels.min() < 0:
            raise LabelError(f"{origin}: label {int(labels.min())} at sample {int(labels.argmin())} is negative")
        self.images = images
        self.labels = labels.astype(np.int64)
        n_classes = int(labels.max()) + 1 if len(labels) else 0
        self.class_names = list(class_names) if class_names else [str(c) for c in range(n_classes)]
        if n_classes > len(self.class_names):
            raise LabelError(f"{origin}: label {n_classes - 1} has no class name ({len(self.class_names)} names given)")
        self.fmt = fmt
        self.quality = quality
        self.prefix = prefix

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Sample:
        data = encode_image(self.images[i], self.fmt, self.quality)
        return f"{self.prefix}{i:08d}", {self.fmt: data}, int(self.labels[i])


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    Args:
        path: File path; gzip is detected from the content, not the name.

    Returns:
        The array with the shape the header gives.

    Raises:
        StreamPruneError: Not an IDX file, or truncated.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise StreamPruneError(f"{path}: corrupt gzip data ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise StreamPruneError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise StreamPruneError(f"{path}: truncated IDX file: {len(raw)} bytes, the header alone needs {4 + 4 * ndim}")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(shape))
    body = raw[4 + 4 * ndim :]
    if len(body) < count * dtype.itemsize:
        raise StreamPruneError(f"{path}: truncated IDX file: header says {shape}, data has {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype, count=count).reshape(shape)


def _find(directory: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise StreamPruneError(f"{directory}: no {stem} or {stem}.gz (expected the MNIST IDX layout)")


def idx_source(
    path: str | os.PathLike,
    split: str = "train",
    fmt: str = "jpg",
    quality: int = 95,
    class_names: Sequence[str] | None = None,
) -> ArraySource:
    """Open an MNIST-layout directory (``{split}-images-idx3-ubyte[.gz]`` and labels).

    Args:
        path: The directory, or the images file itself (labels found beside it).
        split: ``"train"`` or ``"t10k"`` (``"test"`` is accepted for ``"t10k"``).
        fmt: Encoding for the shards, ``"jpg"`` or ``"png"`` (lossless).
        quality: JPEG quality.
        class_names: Class names; Fashion-MNIST's are filled in when the path names it.

    Returns:
        The source.
    """
    path = os.fspath(path)
    split = "t10k" if split == "test" else split
    if os.path.isdir(path):
        images_path = _find(path, f"{split}-images-idx3-ubyte")
        labels_path = _find(path, f"{split}-labels-idx1-ubyte")
    else:
        images_path = path
        labels_path = path.replace("images-idx3", "labels-idx1")
        if labels_path == images_path or not os.path.exists(labels_path):
            raise StreamPruneError(f"{path}: cannot find the matching labels file ({labels_path})")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise StreamPruneError(f"{images_path}: expected a 3-D image array, got shape {images.shape}")
    if class_names is None and "fashion" in os.path.abspath(images_path).lower():
        class_names = FASHION_MNIST_CLASSES
    return ArraySource(images, labels, class_names, fmt=fmt, quality=quality, prefix=f"{split}_", origin=images_path)


def npz_source(
    path: str | os.PathLike,
    fmt: str = "jpg",
    quality: int = 95,
    class_names: Sequence[str] | None = None,
) -> ArraySource:
    """Open an ``.npz`` holding images (``images``/``x``/``X``/``data``) and labels
    (``labels``/``y``/``Y``/``targets``), and optionally ``class_names``.

    Args:
        path: The ``.npz`` file.
        fmt: Encoding for the shards.
        quality: JPEG quality.
        class_names: Class names (overrides any stored in the file).

    Returns:
        The source.
    """
    path = os.fspath(path)
    with np.load(path, allow_pickle=False) as data:
        names = set(data.files)
        image_key = next((k for k in ("images", "x", "X", "data") if k in names), None)
        label_key = next((k for k in ("labels", "y", "Y", "targets") if k in names), None)
        if image_key is None:
            raise StreamPruneError(f"{path}: no image array (looked for images, x, X, data; found {sorted(names)})")
        if label_key is None:
            raise LabelError(f"{path}: no label array (looked for labels, y, Y, targets; found {sorted(names)})")
        images = data[image_key]
        labels = data[label_key]
        if class_names is None and "class_names" in names:
            class_names = [str(c) for c in data["class_names"]]
    if images.dtype != np.uint8:
        raise StreamPruneError(f"{path}: images have dtype {images.dtype}; expected uint8")
    if images.ndim not in (3, 4):
        raise StreamPruneError(f"{path}: images have shape {images.shape}; expected [N, H, W] or [N, H, W, C]")
    return ArraySource(images, labels, class_names, fmt=fmt, quality=quality, origin=path)
