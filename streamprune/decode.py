"""Image decoding for the readers: a choice of JPEG decoders behind one webdataset handler.

Once a pruned reader skips the bytes of dropped samples, decoding the kept JPEGs is most of
an epoch's CPU time. :func:`image_decoder` returns a webdataset decode handler
(``(key, data) -> PIL.Image | None``) that decodes JPEG members with the fastest decoder
installed and every other image type (png, webp, ...) with PIL::

    ds = PrunedWebDataset(manifest, mask).decode(image_decoder("auto", size=224))
    ds = ds.to_tuple(image_key(ds.source.manifest), "cls")

Backends (:data:`DECODERS`):

* ``simplejpeg``: libjpeg-turbo through the ``simplejpeg`` wheel (``pip install
  'streamprune[fast-decode]'``);
* ``turbojpeg``: libjpeg-turbo through ``PyTurboJPEG`` and the system's ``libturbojpeg``
  (PyTurboJPEG 1.x for libjpeg-turbo 2.x, 2.x for libjpeg-turbo 3);
* ``pil``: Pillow (always there; the fallback).

``"auto"`` picks the first installed one in :data:`AUTO_ORDER` (fastest first, as measured by
``python -m benchmarks io --only decode``).

All backends give the same result: a PIL image in ``mode`` (``RGB`` or ``L``) with pixels
within JPEG-decoder rounding of PIL's. Without ``size`` it has the image's own size. With
``size`` it is resized as torchvision's ``Resize(size)`` resizes (shorter side ``size``,
bilinear, antialiased), and a JPEG at least twice that size is first decoded at a reduced
scale: libjpeg's DCT scaling by the largest of 1/2, 1/4, 1/8 that keeps both sides at least
``size`` (the rule of PIL's ``Image.draft``, used by every backend), then resized from the
exact box the full image covers. The result is close to resizing a full decode (box-filtered
by the DCT before the bilinear filter, so slightly softer) at a fraction of the decode time;
a transform that resizes to ``size`` next finds nothing left to do.
"""

from __future__ import annotations

import importlib
import io
import re
from typing import Any, Union

from PIL import Image

from .errors import ArgumentError, StreamPruneError
from .manifest import IMAGE_EXTENSIONS, Manifest

__all__ = [
    "DECODERS",
    "AUTO_ORDER",
    "FAST_DECODE_HINT",
    "ImageDecoder",
    "image_decoder",
    "DecoderLike",
    "as_decoder",
    "available_decoders",
    "resolve_decoder",
    "image_key",
    "reduced_scale",
]

#: Every backend name :func:`image_decoder` accepts (besides ``"auto"``).
DECODERS = ("simplejpeg", "turbojpeg", "pil")
#: The order ``"auto"`` tries them in: fastest first (see the io benchmark's decode rows).
AUTO_ORDER = ("simplejpeg", "turbojpeg", "pil")
FAST_DECODE_HINT = "pip install 'streamprune[fast-decode]' (simplejpeg) or PyTurboJPEG with the system libturbojpeg"
MODES = ("RGB", "L")
JPEG_EXTENSIONS = frozenset({"jpg", "jpeg"})
#: JPEG files start with the SOI marker; a ``.jpg`` member that does not (a PNG under a JPEG
#: name, as some of ImageNet's files are) goes to PIL, which reads any format.
JPEG_MAGIC = b"\xff\xd8"
SCALES = (8, 4, 2)  # libjpeg's fast power-of-two IDCT reductions, largest first

# One TurboJPEG instance per process: it holds a ctypes handle to libturbojpeg (not picklable,
# so DataLoader workers each make their own on first use).
_turbo_instance: Any = None


def _turbo() -> Any:
    global _turbo_instance
    if _turbo_instance is None:
        # deferred: turbojpeg is an optional extra, loaded only when that backend decodes
        import turbojpeg

        _turbo_instance = turbojpeg.TurboJPEG()
    return _turbo_instance


def _installed(backend: str) -> bool:
    if backend == "pil":
        return True
    try:
        if backend == "simplejpeg":
            importlib.import_module("simplejpeg")
        else:
            _turbo()  # also loads libturbojpeg, which fails when the system library is missing or too old
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def available_decoders() -> list[str]:
    """The installed backends, fastest first (``"pil"`` is always last and always there)."""
    return [b for b in AUTO_ORDER if _installed(b)]


def resolve_decoder(backend: str = "auto") -> str:
    """The backend a name stands for: ``"auto"`` is the fastest installed.

    Args:
        backend: ``"auto"`` or one of :data:`DECODERS`.

    Returns:
        A name in :data:`DECODERS`.

    Raises:
        ValueError: Unknown name.
        StreamPruneError: The named backend is not installed.
    """
    if backend == "auto":
        return available_decoders()[0]
    if backend not in DECODERS:
        raise ArgumentError(f"decoder {backend!r}: must be 'auto' or one of {', '.join(DECODERS)}")
    if not _installed(backend):
        raise StreamPruneError(f"decoder {backend!r} is not installed: {FAST_DECODE_HINT}")
    return backend


def reduced_scale(width: int, height: int, size: int | None) -> int:
    """The reduction ``d`` (1, 2, 4 or 8) of a decode at ``1/d`` that keeps both sides >= ``size``.

    The same rule as PIL's ``Image.draft``: the largest power of two ``d <= 8`` with
    ``width >= d * size`` and ``height >= d * size``, so the decoded sides ``ceil(side / d)``
    stay at least ``size``.

    Args:
        width: Full width in pixels.
        height: Full height in pixels.
        size: Smallest side wanted, or ``None`` for a full-size decode.

    Returns:
        ``d``; 1 means full size.
    """
    if not size:
        return 1
    for d in SCALES:
        if width >= d * size and height >= d * size:
            return d
    return 1


class ImageDecoder:
    """A webdataset decode handler for image members; see :func:`image_decoder`.

    Picklable (DataLoader workers get a copy): it holds only the backend's name and options.

    Attributes:
        backend: The resolved backend (``simplejpeg``, ``turbojpeg`` or ``pil``).
        mode: ``"RGB"`` or ``"L"``.
        size: Shorter side of the output (JPEGs decoded at a reduced scale first), or ``None`` (the image's size).
    """

    def __init__(self, backend: str = "auto", *, mode: str = "RGB", size: int | None = None) -> None:
        mode = mode.upper()
        if mode not in MODES:
            raise ArgumentError(f"mode={mode!r}: must be one of {', '.join(MODES)}")
        if size is not None and int(size) < 1:
            raise ArgumentError(f"size={size}: must be a positive number of pixels")
        self.backend = resolve_decoder(backend)
        self.mode = mode
        self.size = int(size) if size is not None else None

    def __repr__(self) -> str:
        return f"ImageDecoder({self.backend!r}, mode={self.mode!r}, size={self.size})"

    def __call__(self, key: str, data: bytes) -> Image.Image | None:
        """Decode ``data`` if ``key`` names an image member, else ``None`` (webdataset tries its next handler).

        Args:
            key: The member's extension as webdataset passes it (``".jpg"``, ``"jpg"``, ``"seg.png"``).
            data: The member's bytes.

        Returns:
            A PIL image in :attr:`mode`, or ``None`` for a member that is not an image.
        """
        ext = re.sub(r".*[.]", "", key).lower()
        if ext not in IMAGE_EXTENSIONS:
            return None
        return self.decode(data, jpeg=ext in JPEG_EXTENSIONS)

    def decode(self, data: bytes, jpeg: bool = True) -> Image.Image:
        """Decode one encoded image (and resize it when the decoder has a :attr:`size`).

        Args:
            data: The encoded bytes.
            jpeg: Whether the member is named as a JPEG; only then (and only when the bytes
                start with the JPEG marker) does a fast backend decode it.

        Returns:
            A PIL image in :attr:`mode`.
        """
        decoded = None
        if self.backend != "pil" and jpeg and data[:2] == JPEG_MAGIC:
            try:
                decoded = self._decode_fast(data)
            except (ValueError, OSError, RuntimeError):
                pass  # CMYK/YCCK or damaged JPEGs the fast decoders refuse: PIL reads them (or raises a clear error)
        image, full_size, d = decoded if decoded is not None else self._decode_pil(data)
        return self._resize(image, full_size, d) if self.size else image

    def _decode_pil(self, data: bytes) -> tuple[Image.Image, tuple[int, int], int]:
        with io.BytesIO(data) as stream:
            image = Image.open(stream)
            full_size = image.size
            d = 1
            if self.size and image.format == "JPEG":  # DCT scaling: only JPEGs support it
                d = reduced_scale(*full_size, self.size)
                if d > 1:
                    image.draft(self.mode, (self.size, self.size))  # picks the same d (reduced_scale's rule is PIL's)
            image.load()
        return (image if image.mode == self.mode else image.convert(self.mode)), full_size, d

    def _decode_fast(self, data: bytes) -> tuple[Image.Image, tuple[int, int], int]:
        if self.backend == "simplejpeg":
            # deferred: simplejpeg is an optional extra, imported only by a decoder that uses it
            import simplejpeg

            colorspace = "GRAY" if self.mode == "L" else "RGB"
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            d = reduced_scale(width, height, self.size)
            # min_factor=d with the exact 1/d sizes pins the scale to 1/d; min_height alone would
            # pick scales like 7/8, which decode slower than full size and differ from PIL's draft
            pixels = simplejpeg.decode_jpeg(
                data, colorspace=colorspace, min_height=-(-height // d), min_width=-(-width // d), min_factor=d
            )
        else:
            # deferred: turbojpeg is an optional extra, imported only by a decoder that uses it
            import turbojpeg

            tj = _turbo()
            width, height, _, _ = tj.decode_header(data)
            d = reduced_scale(width, height, self.size)
            pixel_format = turbojpeg.TJPF_GRAY if self.mode == "L" else turbojpeg.TJPF_RGB
            pixels = tj.decode(data, pixel_format=pixel_format, scaling_factor=(1, d) if d > 1 else None)
        if pixels.ndim == 3 and pixels.shape[2] == 1:
            pixels = pixels[:, :, 0]
        return Image.fromarray(pixels), (width, height), d

    def _resize(self, image: Image.Image, full_size: tuple[int, int], d: int) -> Image.Image:
        # torchvision's Resize(size) rule: the shorter side becomes size, the longer int(size * long / short)
        width, height = full_size
        short, long = min(width, height), max(width, height)
        long = int(self.size * long / short)
        target = (self.size, long) if width <= height else (long, self.size)
        # A 1/d decode has ceil(side / d) pixels, the last one covering a partial block: the
        # full image is the box (0, 0, width / d, height / d) of it, so resizing that box keeps
        # the geometry of resizing the full decode (the whole image would be off by up to half a pixel).
        box = (0.0, 0.0, width / d, height / d)
        if target == image.size and d == 1:
            return image
        return image.resize(target, Image.BILINEAR, box=box)


def image_decoder(backend: str = "auto", *, mode: str = "RGB", size: int | None = None) -> ImageDecoder:
    """A webdataset handler that decodes image members with a chosen JPEG decoder.

    Pass it to ``.decode()`` of a :class:`~streamprune.readers.PrunedWebDataset` (or any
    webdataset pipeline): JPEG members (``jpg``/``jpeg`` with JPEG bytes) go to the backend,
    every other image type to PIL, and non-image members (``cls``, ``json``, ...) on to
    webdataset's own handlers::

        ds.decode(image_decoder())                    # fastest installed, full size, RGB
        ds.decode(image_decoder("pil", mode="L"))     # PIL, greyscale
        ds.decode(image_decoder(size=64))             # shorter side 64: JPEGs decoded at 1/2, 1/4 or 1/8 scale first

    Args:
        backend: ``"auto"`` (fastest installed: :data:`AUTO_ORDER`), ``"simplejpeg"``,
            ``"turbojpeg"`` or ``"pil"``.
        mode: ``"RGB"`` (grey JPEGs are expanded) or ``"L"`` (colour JPEGs are reduced to luma).
        size: Resize to shorter side ``size`` (torchvision's ``Resize(size)``), decoding JPEGs
            at a reduced DCT scale first when they are at least twice as large. ``None``: the
            image's own size.

    Returns:
        The :class:`ImageDecoder`.

    Raises:
        ValueError: Unknown backend or mode, or a size below 1.
        StreamPruneError: The named backend is not installed.
    """
    return ImageDecoder(backend, mode=mode, size=size)


DecoderLike = Union[str, ImageDecoder]


def as_decoder(decoder: DecoderLike, *, size: int | None = None) -> ImageDecoder:
    """The decoder a loader's ``decoder=`` argument names.

    Args:
        decoder: A backend name (see :func:`image_decoder`), or a ready :class:`ImageDecoder`,
            which is used as it is (its own ``mode`` and ``size``).
        size: For a name: the reduced-scale decode size the loader asks for (``None``: full size).

    Returns:
        An RGB :class:`ImageDecoder` for a name; ``decoder`` itself otherwise.
    """
    if isinstance(decoder, ImageDecoder):
        return decoder
    return image_decoder(decoder, size=size)


def image_key(manifest: Manifest) -> str:
    """The ``to_tuple`` field for a dataset's image: its image extensions joined by ``;``.

    The extensions present in the manifest come first (see
    :meth:`~streamprune.manifest.Manifest.image_extensions`), then the other known image
    types, so a shard holding an image type that shard 0 lacks still reads.

    Args:
        manifest: The dataset.

    Returns:
        E.g. ``"webp;jpg;jpeg;png;..."``.

    Raises:
        StreamPruneError: The manifest's samples hold no image member.
    """
    present = manifest.image_extensions()
    if not present:
        members = sorted({ext for m in manifest.index(0).members for ext, _, _ in m}) if manifest.shards else []
        raise StreamPruneError(
            f"{manifest.path or manifest.root}: no image member in the samples (members: {', '.join(members) or 'none'}; "
            f"image types: {', '.join(IMAGE_EXTENSIONS)})"
        )
    return ";".join([*present, *(ext for ext in IMAGE_EXTENSIONS if ext not in present)])
