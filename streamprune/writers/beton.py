"""Write a source as FFCV ``.beton`` files (through FFCV's ``DatasetWriter``) with a manifest.

The ``.beton`` version of a dataset carries the same sample keys as its tar version (the source's
keys; the same seed gives the same sample order), so one keep mask applies to both through
:func:`streamprune.masks.translate_mask`. Each file gets an index sidecar of the usual format
(keys, labels, each sample's data byte range) and the manifest records it with
``"format": "beton"``.

Layouts:

* ``default``: the seeded shuffle, like the tar shards.
* ``page-aware``: samples grouped by class (the seeded shuffle within each class), and each
  writer process given one contiguous run, so every FFCV page (8 MiB by default) holds samples of
  as few classes as possible. A class-level mask then keeps whole pages, and FFCV's page reads
  (``os_cache=False``, ``QUASI_RANDOM`` order) fetch little pruned data.

``keep_jpeg=True`` (with ``write_mode="jpg"``) stores a source's RGB JPEG members byte for byte
instead of decoding and re-encoding them: no second generation of JPEG loss, no encode cost,
and the ``.beton`` holds the very bytes of the tar version.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import multiprocessing as mp
import os
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from .. import storage
from ..atomic import file_sha256, temp_name
from ..betonindex import index_beton, save_beton_index
from ..errors import ArgumentError, StreamPruneError, redact
from ..indexfile import INDEX_SUFFIX
from ..manifest import Manifest, build_manifest
from ..optional import require_ffcv
from ..sources import ArraySource, Sample, Source
from .order import key_label, sample_order
from .output import open_writer_source, start_output_dir

__all__ = ["write_beton", "beton_name", "jpeg_as_is", "StoredJpeg", "WRITE_MODES", "LAYOUTS", "DEFAULT_PAGE_SIZE", "IMAGE_FIELD", "LABEL_FIELD"]

log = logging.getLogger(__name__)

WRITE_MODES = ("raw", "jpg", "smart")
LAYOUTS = ("default", "page-aware")
DEFAULT_PAGE_SIZE = 1 << 23  # FFCV's default: 4 x 2 MiB
SMART_THRESHOLD = 128 * 128 * 3  # 'smart': JPEG when the raw pixels would take more than this
IMAGE_FIELD = "image"
LABEL_FIELD = "label"
_MAX_SIDE = 65535  # FFCV stores width and height as uint16
_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff", "gif")


def beton_name(k: int) -> str:
    """Return the file name of ``.beton`` file ``k``."""
    return f"shard-{k:06d}.beton"


def rgb_array(files: dict[str, bytes], key: str) -> np.ndarray:
    """Decode a sample's image member to an ``H x W x 3`` uint8 array (what FFCV stores).

    Args:
        files: The sample's members, ``{extension: bytes}``.
        key: Sample key, for error messages.

    Returns:
        The RGB pixels.

    Raises:
        StreamPruneError: No image member, or it cannot be decoded.
    """
    ext = next((e for e in _IMAGE_EXTS if e in files), None)
    if ext is None:
        raise StreamPruneError(f"sample {key!r}: no image member to write (members: {sorted(files)})")
    try:
        with Image.open(io.BytesIO(files[ext])) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as exc:  # PIL raises several types for corrupt data
        raise StreamPruneError(f"sample {key!r}: cannot decode its {ext} member ({exc})") from None


def _array_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    return np.ascontiguousarray(image)


class StoredJpeg:
    """A source JPEG that ``keep_jpeg`` stores unchanged: its bytes and pixel size."""

    __slots__ = ("data", "height", "width")

    def __init__(self, data: bytes, height: int, width: int) -> None:
        self.data = np.frombuffer(data, dtype=np.uint8)
        self.height = height
        self.width = width


def jpeg_as_is(files: dict[str, bytes], max_resolution: int | None = None) -> StoredJpeg | None:
    """The sample's JPEG member if FFCV can store it unchanged, else ``None``.

    FFCV's JPEG decoder (libjpeg-turbo, RGB output) reads any 3-channel JPEG; grayscale or
    CMYK JPEGs, images over ``max_resolution`` (they must be downscaled) and sizes that do not
    fit FFCV's 16-bit width/height fields are left to the decode-and-encode path.

    Args:
        files: The sample's members, ``{extension: bytes}``.
        max_resolution: The writer's ``max_resolution`` (``None``: no limit).

    Returns:
        The JPEG to store, or ``None``.
    """
    ext = next((e for e in _IMAGE_EXTS if e in files), None)
    if ext not in ("jpg", "jpeg"):
        return None
    data = files[ext]
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            fmt, mode, (width, height) = image.format, image.mode, image.size
    except Exception:  # corrupt: the decode path reports it with the sample's key
        return None
    limit = min(max_resolution or _MAX_SIDE, _MAX_SIDE)
    if fmt != "JPEG" or mode != "RGB" or max(width, height) > limit:
        return None
    return StoredJpeg(data, height, width)


def _encode_keeping_jpeg(field, destination, image, malloc) -> None:
    """``RGBImageField.encode`` that writes a :class:`StoredJpeg` as FFCV's ``jpg`` mode."""
    from ffcv.fields.rgb_image import IMAGE_MODES  # optional extra, imported only when used

    if not isinstance(image, StoredJpeg):
        type(field).encode(field, destination, image, malloc)
        return
    destination["mode"] = IMAGE_MODES["jpg"]
    destination["height"], destination["width"] = image.height, image.width
    destination["data_ptr"], storage = malloc(image.data.nbytes)
    storage[:] = image.data


class _FfcvSamples:
    """The source as FFCV's writer wants it: ``dataset[i] -> (HxWx3 uint8, label)``.

    With ``keep_jpeg`` an RGB JPEG member comes back as a :class:`StoredJpeg` instead, which
    the image field's ``encode`` stores unchanged.

    Errors cannot escape FFCV's writer processes (its main loop would wait forever), so a
    failing sample is replaced by a 1x1 image and its number recorded in shared memory; the
    parent re-raises the error after the writer returns.
    """

    def __init__(self, source: Source, keep_jpeg: bool = False, max_resolution: int | None = None) -> None:
        self.source = source
        self.keep_jpeg = keep_jpeg
        self.max_resolution = max_resolution
        self.failed = mp.get_context("fork").Value("q", -1)
        self.stored_as_is = mp.get_context("fork").Value("q", 0)

    def __len__(self) -> int:
        return len(self.source)

    def load(self, i: int) -> tuple[np.ndarray | StoredJpeg, int]:
        source = self.source
        if isinstance(source, ArraySource):
            return _array_rgb(source.images[i]), int(source.labels[i])
        key, files, label = source[i]
        label = -1 if label is None else int(label)
        if self.keep_jpeg:
            stored = jpeg_as_is(files, self.max_resolution)
            if stored is not None:
                with self.stored_as_is.get_lock():
                    self.stored_as_is.value += 1
                return stored, label
        return rgb_array(files, key), label

    def __getitem__(self, i: int) -> tuple[np.ndarray | StoredJpeg, int]:
        try:
            return self.load(int(i))
        except Exception:
            with self.failed.get_lock():
                if self.failed.value < 0:
                    self.failed.value = int(i)
            return np.zeros((1, 1, 3), dtype=np.uint8), -1


@contextlib.contextmanager
def _quiet_ffcv_writer(ffcv_writer, progress: bool):
    if progress:
        yield
        return
    original = ffcv_writer.tqdm
    ffcv_writer.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        ffcv_writer.tqdm = original


def _write_one(
    ffcv,
    samples: _FfcvSamples,
    path: str,
    name: str,
    positions: np.ndarray,
    keys: list[str],
    labels: np.ndarray,
    fields: dict,
    page_size: int,
    workers: int,
    layout: str,
    progress: bool,
    checksum: bool,
    settings: dict,
):
    from ffcv.writer import DatasetWriter  # optional extra, imported only when used

    tmp = temp_name(path)
    stored_before = samples.stored_as_is.value
    workers = max(1, min(workers, len(positions)))
    # page-aware: one contiguous run per writer process, so pages never mix two distant runs
    chunksize = math.ceil(len(positions) / workers) if layout == "page-aware" else 100
    try:
        writer = DatasetWriter(tmp, fields, page_size=page_size, num_workers=workers)
        with _quiet_ffcv_writer(ffcv.writer, progress):
            writer.from_indexed_dataset(samples, indices=[int(p) for p in positions], chunksize=chunksize)
        if samples.failed.value >= 0:
            bad = int(samples.failed.value)
            try:
                samples.load(bad)
            except StreamPruneError:
                raise
            except Exception as exc:
                raise StreamPruneError(f"sample {keys[list(positions).index(bad)]!r}: {exc}") from None
            raise StreamPruneError(f"{path}: writing sample {bad} failed in an FFCV writer process")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        index, info = index_beton(tmp, label_field=LABEL_FIELD, keys=keys, name=name)
        if info.num_samples != len(positions):
            raise StreamPruneError(f"{path}: header says {info.num_samples} samples, {len(positions)} were written")
        if not np.array_equal(index.labels, labels):
            first = int(np.flatnonzero(index.labels != labels)[0])
            raise StreamPruneError(f"{path}: label of sample {keys[first]!r} reads back as {int(index.labels[first])}, not {int(labels[first])}")
        if any(not m for m in index.members):
            first = next(i for i, m in enumerate(index.members) if not m)
            raise StreamPruneError(f"{path}: sample {keys[first]!r} has no image data after writing")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if checksum:
        index.sha256 = file_sha256(path)
    index.extra["beton"].update(settings)
    if samples.keep_jpeg:
        index.extra["beton"]["jpeg_stored_as_is"] = int(samples.stored_as_is.value - stored_before)
    save_beton_index(index, path + INDEX_SUFFIX)
    return index


def write_beton(
    src: str | os.PathLike | Iterable[Sample] | Source,
    out_dir: str | os.PathLike,
    samples_per_file: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    workers: int = 1,
    write_mode: str = "smart",
    max_resolution: int | None = None,
    quality: int = 95,
    layout: str = "default",
    page_size: int = DEFAULT_PAGE_SIZE,
    smart_threshold: int | None = None,
    keep_jpeg: bool = False,
    image_format: str | None = None,
    split: str = "train",
    class_names: Sequence[str] | None = None,
    checksum: bool = True,
    progress: bool = True,
    overwrite: bool = False,
) -> Manifest:
    """Write a source as FFCV ``.beton`` files with index sidecars and a manifest.

    Fields: ``image`` (``RGBImageField``) and ``label`` (``IntField``; -1 when unlabelled).
    Encoded source images are decoded to RGB arrays for FFCV (array sources are passed through
    without a JPEG round trip). Each file is written under a temporary name, read back (sample
    count from the header, labels from the metadata table, one image per sample) and renamed;
    ``manifest.json`` is written last.

    Args:
        src: Anything :func:`write_shards` accepts.
        out_dir: Output directory (created).
        samples_per_file: Samples per ``.beton`` file; ``None`` (default) writes one file.
        shuffle: Shuffle sample order (seeded; the same order as the tar writer's).
        seed: Shuffle seed.
        workers: FFCV writer processes.
        write_mode: ``raw`` (pixels), ``jpg`` (JPEG at ``quality``) or ``smart`` (JPEG only
            for images whose raw pixels exceed ``smart_threshold``).
        max_resolution: Downscale images so the longer side is at most this (``None``: keep).
        quality: JPEG quality for ``jpg``/``smart``.
        layout: ``default`` or ``page-aware`` (samples of a class kept together in pages).
        page_size: FFCV page size (a power of two >= 2 MiB).
        smart_threshold: Bytes of raw pixels above which ``smart`` stores JPEG (default
            128*128*3).
        keep_jpeg: ``write_mode="jpg"`` only: store each source's RGB JPEG member byte for
            byte (``quality`` does not apply to it) instead of decoding and re-encoding it;
            other images (PNG, grayscale, larger than ``max_resolution``, arrays) are encoded
            at ``quality`` as usual. The sidecar records how many were stored as-is.
        image_format: Encoding of array sources for other writers (ignored: arrays are
            passed through).
        split: IDX split to read.
        class_names: Class names by label id (overrides the source's).
        checksum: Record each file's SHA-256.
        progress: Show FFCV's progress bar.
        overwrite: ``out_dir`` may hold another dataset (a manifest, or ``.beton`` files of an
            unfinished run): its files and index files are removed first (how many is logged);
            without it such a directory is refused (:class:`OutputExistsError`).

    Returns:
        The saved manifest (shards with ``format == "beton"``).

    Raises:
        MissingExtraError: FFCV is not installed.
        ArgumentError: Bad argument, or ``out_dir`` is a URL (FFCV memory-maps its files:
            they are written to, and read from, local disk only).
        OutputExistsError: ``out_dir`` holds another dataset and ``overwrite`` is off.
        StreamPruneError: Bad source or sample, or a file failed verification.
    """
    if storage.is_remote(out_dir):
        raise ArgumentError(f"{redact(os.fspath(out_dir))}: FFCV .beton files are written to local disk only (FFCV memory-maps them)")
    if layout == "class-sorted":
        raise ArgumentError("layout='class-sorted' is a layout for tar shards; .beton files take 'page-aware'")
    ffcv = require_ffcv("writing .beton files")
    from ffcv.fields import IntField, RGBImageField  # optional extra, checked by require_ffcv above

    if write_mode not in WRITE_MODES:
        raise ArgumentError(f"write_mode={write_mode!r}: must be one of {', '.join(WRITE_MODES)}")
    if keep_jpeg and write_mode != "jpg":
        raise ArgumentError(f"keep_jpeg=True needs write_mode='jpg', not {write_mode!r}")
    if layout not in LAYOUTS:
        raise ArgumentError(f"layout={layout!r}: must be one of {', '.join(LAYOUTS)}")
    if samples_per_file is not None and samples_per_file < 1:
        raise ArgumentError(f"samples_per_file={samples_per_file}: must be at least 1")
    if workers < 1:
        raise ArgumentError(f"workers={workers}: must be at least 1")
    if max_resolution is not None and max_resolution < 1:
        raise ArgumentError(f"max_resolution={max_resolution}: must be at least 1")
    if not 1 <= int(quality) <= 100:
        raise ArgumentError(f"quality={quality}: must be in 1..100")
    if page_size < (1 << 21) or page_size & (page_size - 1):
        raise ArgumentError(f"page_size={page_size}: must be a power of two >= 2 MiB")
    source = open_writer_source(src, split, image_format, quality, class_names)
    n = len(source)
    out_dir = start_output_dir(out_dir, beton_name(0).replace("000000", "*"), overwrite=overwrite)
    pairs = [key_label(source, i) for i in range(n)]
    all_keys = [k for k, _ in pairs]
    all_labels = np.asarray([lab for _, lab in pairs], dtype=np.int64)
    order = sample_order(n, shuffle, seed, all_labels if layout == "page-aware" else None)
    per_file = samples_per_file or n
    chunks = [order[i : i + per_file] for i in range(0, n, per_file)]
    threshold = smart_threshold if smart_threshold is not None else SMART_THRESHOLD
    fields = {
        IMAGE_FIELD: RGBImageField(
            write_mode=write_mode,
            max_resolution=max_resolution,
            jpeg_quality=int(quality),
            smart_threshold=threshold if write_mode == "smart" else None,
        ),
        LABEL_FIELD: IntField(),
    }
    if keep_jpeg:
        # on the instance: FFCV records the field's type by type(field), which must stay RGBImageField
        fields[IMAGE_FIELD].encode = functools.partial(_encode_keeping_jpeg, fields[IMAGE_FIELD])
    settings = {
        "layout": layout,
        "write_mode": write_mode,
        "max_resolution": max_resolution,
        "jpeg_quality": int(quality),
        "smart_threshold": threshold if write_mode == "smart" else None,
        "keep_jpeg": bool(keep_jpeg),
        "shuffle": bool(shuffle),
        "seed": int(seed),
    }
    samples = _FfcvSamples(source, keep_jpeg=keep_jpeg, max_resolution=max_resolution)
    entries = []
    for k, chunk in enumerate(chunks):
        name = beton_name(k)
        keys = [all_keys[i] for i in chunk]
        index = _write_one(
            ffcv, samples, os.path.join(out_dir, name), name, chunk, keys, all_labels[chunk], fields,
            page_size, workers, layout, progress, checksum, settings,
        )
        entries.append((index, name, name + INDEX_SUFFIX))
        log.info("wrote %s: %d samples, %d bytes", name, len(chunk), index.shard_bytes)
    names_in = list(class_names) if class_names else list(getattr(source, "class_names", []) or []) or None
    manifest = build_manifest(out_dir, entries, classes=names_in, label_ext=LABEL_FIELD)
    for entry in manifest.shards:
        entry.format = "beton"
    if manifest.num_samples != n:
        raise StreamPruneError(f"{out_dir}: {manifest.num_samples} samples in the files, {n} in the source")
    manifest.save()
    log.info("wrote %d samples in %d .beton file(s) to %s", n, len(chunks), out_dir)
    return manifest
