"""What every source adapter provides: random access to (key, {extension: bytes}, label)."""

from __future__ import annotations

import io
from typing import Iterable, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from ..errors import ArgumentError

__all__ = ["Sample", "Source", "ListSource", "encode_image"]

Sample = tuple[str, dict[str, bytes], "int | None"]


@runtime_checkable
class Source(Protocol):
    """A random-access dataset the shard writer can split over processes.

    Attributes:
        class_names: Class names by label id (empty when unknown).
    """

    class_names: list[str]

    def __len__(self) -> int:
        """Number of samples."""

    def __getitem__(self, i: int) -> Sample:
        """Sample ``i`` as ``(key, {extension: bytes}, label or None)``."""


class ListSource:
    """A source over samples already in memory (used for arbitrary Python iterables).

    Args:
        samples: Iterable of ``(key, {extension: bytes}, label)``; it is consumed once.
        class_names: Optional class names by label id.
    """

    def __init__(self, samples: Iterable[Sample], class_names: Sequence[str] | None = None) -> None:
        self.samples = list(samples)
        self.class_names = list(class_names or [])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def encode_image(array: np.ndarray, fmt: str = "jpg", quality: int = 95) -> bytes:
    """Encode an HxW or HxWxC uint8 array as JPEG or PNG.

    Args:
        array: Image pixels (grey, RGB or RGBA; JPEG drops alpha).
        fmt: ``"jpg"`` or ``"png"``.
        quality: JPEG quality, 1-100.

    Returns:
        The encoded bytes.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ArgumentError(f"image array has dtype {array.dtype}; expected uint8")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    image = Image.fromarray(array)
    buf = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        if image.mode == "RGBA":
            image = image.convert("RGB")
        image.save(buf, format="JPEG", quality=int(quality))
    elif fmt == "png":
        image.save(buf, format="PNG")
    else:
        raise ArgumentError(f"image format {fmt!r}: must be 'jpg' or 'png'")
    return buf.getvalue()
