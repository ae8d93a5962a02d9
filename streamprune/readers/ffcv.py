"""Pruned FFCV loading: an ``ffcv.loader.Loader`` over the kept samples of a ``.beton`` file.

Nothing is copied: the kept samples are handed to FFCV as ``indices=``, and FFCV reads only
the pages (``os_cache=False``) or memory-mapped bytes (``os_cache=True``) those samples live in.
Everything else (``order``, ``distributed``, ``batch_size``, ``drop_last``, ``os_cache``,
``pipelines``, ``batches_ahead``, ...) is passed through to FFCV unchanged.

Cold-cache reads: with ``os_cache=False`` FFCV reads whole pages (8 MiB by default), so a
random 20% of the samples still touches nearly every page; write the file with
``layout="page-aware"`` and use ``order="quasi_random"`` for class-level masks. With
``os_cache=True`` FFCV memory-maps the file and the kernel reads around every page fault
(``read_ahead_kb`` of the device, often 128 KiB, sometimes 8 MiB or more), with the same effect;
``readahead=False`` maps the file with ``MADV_RANDOM`` so a cold epoch reads only the pages
the kept samples occupy, whatever the layout.

A mask may have been made on the ``.beton`` manifest or on another manifest of the same
samples (the tar version written from the same source): it is translated by sample key when
the fingerprints differ and the keys match, and refused (:class:`MaskMismatchError`) otherwise.

One FFCV ``Loader`` reads one file. A manifest with several ``.beton`` files needs ``shard=k``
to pick the file (one loader per file); writing one file (the default of
``streamprune shard --format beton``) avoids the question.
"""

from __future__ import annotations

import mmap
import os
from typing import Any, Mapping

import numpy as np

from .. import storage
from ..errors import ArgumentError, IndexMismatchError, StreamPruneError
from ..manifest import Manifest, ManifestLike, open_manifest
from ..masks import MaskLike, as_mask, translate_mask
from ..optional import require_ffcv

__all__ = ["pruned_ffcv_loader", "kept_indices", "keep_array", "random_access_map", "ORDERS"]

ORDERS = ("random", "quasi_random", "sequential")


def _check_beton(manifest: Manifest) -> None:
    if not manifest.shards:
        raise StreamPruneError(f"{manifest.path}: manifest has no files")
    for entry in manifest.shards:
        if entry.format != "beton":
            raise StreamPruneError(
                f"{manifest.path}: shard {entry.name} is a {entry.format} shard, not a .beton file; read tar shards "
                "with streamprune.PrunedWebDataset, or write the dataset with `streamprune shard --format beton` "
                "(or index .beton files with `streamprune index FILE.beton`)"
            )


def keep_array(mask: MaskLike, manifest: ManifestLike, mask_manifest: ManifestLike | None = None) -> np.ndarray | None:
    """The keep bits of ``mask`` over ``manifest``'s samples, translating by key if needed.

    Args:
        mask: Mask path, :class:`MaskFile`, :class:`KeepMask`, or ``None`` (keep all).
        manifest: The dataset to read.
        mask_manifest: The manifest a mask *file* was made for, when that is not
            ``manifest`` (e.g. the tar version); a :class:`KeepMask` knows its own.

    Returns:
        A boolean array in ``manifest`` order, or ``None`` for "keep everything".

    Raises:
        MaskMismatchError: The mask belongs to another dataset (keys differ) or its manifest
            is unknown.
    """
    manifest = open_manifest(manifest)
    if mask is None:
        return None
    mask = as_mask(mask)
    if mask.manifest_fingerprint == manifest.fingerprint:
        mask.check(manifest)
        return mask.to_bool()
    return translate_mask(mask, manifest, mask_manifest=mask_manifest).keep


def kept_indices(
    manifest: ManifestLike,
    mask: MaskLike = None,
    shard: int | None = None,
    mask_manifest: ManifestLike | None = None,
) -> np.ndarray:
    """Positions of the kept samples inside one ``.beton`` file (what FFCV's ``indices=`` takes).

    Args:
        manifest: A manifest of ``.beton`` files.
        mask: The keep mask (see :func:`keep_array`), or ``None`` for all samples.
        shard: Which file; may be left out when the manifest has one.
        mask_manifest: The manifest a mask file was made for, if not ``manifest``.

    Returns:
        Ascending ``uint64`` sample positions in the file.

    Raises:
        StreamPruneError: Not a ``.beton`` manifest, or ``shard`` missing/out of range.
        MaskMismatchError: See :func:`keep_array`.
    """
    manifest = open_manifest(manifest)
    _check_beton(manifest)
    k = _shard_number(manifest, shard)
    keep = keep_array(mask, manifest, mask_manifest)
    offsets = manifest.shard_offsets
    if keep is None:
        return np.arange(manifest.shards[k].samples, dtype=np.uint64)
    return np.flatnonzero(keep[offsets[k] : offsets[k + 1]]).astype(np.uint64)


def _shard_number(manifest: Manifest, shard: int | None) -> int:
    n = len(manifest.shards)
    if shard is None:
        if n != 1:
            raise StreamPruneError(
                f"{manifest.path}: manifest has {n} .beton files and an FFCV Loader reads one; pass shard=k "
                f"(0..{n - 1}) for one loader per file, or write a single file (the default)"
            )
        return 0
    if not 0 <= int(shard) < n:
        raise StreamPruneError(f"shard={shard}: the manifest has files 0..{n - 1}")
    return int(shard)


def _order_option(order: Any, distributed: bool):
    from ffcv.loader import OrderOption  # optional extra, imported only when used

    if isinstance(order, OrderOption):
        option = order
    elif isinstance(order, str):
        name = order.strip().lower().replace("-", "_")
        if name not in ORDERS:
            raise ArgumentError(f"order={order!r}: must be one of {', '.join(ORDERS)} or an ffcv OrderOption")
        option = OrderOption[name.upper()]
    else:
        return order  # a custom ffcv TraversalOrder class: FFCV checks it
    if option == OrderOption.QUASI_RANDOM and distributed:
        raise StreamPruneError(
            "order=quasi_random with distributed=True: FFCV 1.0.2 does not support QUASI_RANDOM in distributed "
            "mode; use order='random'"
        )
    return option


def _check_file(manifest: Manifest, k: int) -> str:
    entry = manifest.shards[k]
    path = manifest.shard_path(k)
    if storage.is_remote(path):
        raise StreamPruneError(
            f"{path}: FFCV reads .beton files from local disk only (it memory-maps them); copy the files locally "
            "and load the manifest with base= pointing at the copy, or use tar shards for remote reads"
        )
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(16)
    except FileNotFoundError:
        raise StreamPruneError(f"{path}: .beton file named by {manifest.path} not found") from None
    samples = int(np.frombuffer(head[8:16], dtype="<u8")[0]) if len(head) == 16 else -1
    if size != entry.bytes or samples != entry.samples:
        raise IndexMismatchError(
            f"{path}: file has {size} bytes / {samples} samples, manifest says {entry.bytes} / {entry.samples}; "
            "the file was rewritten after indexing: re-run `streamprune index` and make new masks"
        )
    return path


def pruned_ffcv_loader(
    manifest: ManifestLike,
    mask: MaskLike = None,
    *,
    batch_size: int,
    num_workers: int = -1,
    order: Any = "random",
    distributed: bool = False,
    drop_last: bool = False,
    os_cache: bool = True,
    pipelines: Mapping[str, Any] | None = None,
    seed: int = 0,
    shard: int | None = None,
    mask_manifest: ManifestLike | None = None,
    readahead: bool = True,
    **loader_kwargs: Any,
):
    """An ``ffcv.loader.Loader`` over the kept samples of a ``.beton`` file.

    Args:
        manifest: Manifest of ``.beton`` files (from ``streamprune shard --format beton`` or
            ``streamprune index FILE.beton``), path or object.
        mask: Keep mask (path, :class:`MaskFile`, :class:`KeepMask`) made on this manifest or
            on another manifest of the same samples; ``None`` loads everything.
        batch_size: Passed to FFCV.
        num_workers: FFCV decoding threads (``-1``: all cores).
        order: ``"random"``, ``"quasi_random"``, ``"sequential"``, an ``ffcv`` ``OrderOption``,
            or a custom ``TraversalOrder`` class. ``quasi_random`` reads page by page and is
            the order to use with ``os_cache=False`` and a page-aware file.
        distributed: Passed to FFCV (needs ``torch.distributed`` initialised; not with
            ``quasi_random``).
        drop_last: Passed to FFCV (note: FFCV's own default is ``True``).
        os_cache: Passed to FFCV: ``True`` memory-maps the file through the page cache;
            ``False`` reads whole pages into process memory.
        pipelines: Passed to FFCV (``None``: FFCV's default decoders for every field).
        seed: Order seed, passed to FFCV.
        shard: Which ``.beton`` file when the manifest has several.
        mask_manifest: The manifest a mask *file* was made for, when it is not ``manifest``.
        readahead: ``os_cache=True`` only: ``False`` maps the file with ``MADV_RANDOM``, so the
            kernel reads just the faulted pages of kept samples instead of a read-ahead
            window around each (fewer bytes on a cold cache, more but smaller reads).
        **loader_kwargs: Any other ``Loader`` argument (``batches_ahead``, ``recompile``,
            ``custom_fields``).

    Returns:
        The FFCV loader; ``loader.kept_indices`` holds the kept sample positions and
        ``loader.manifest_shard`` the file number.

    Raises:
        MissingExtraError: FFCV is not installed.
        StreamPruneError: Not a ``.beton`` manifest, several files without ``shard``, a mask
            that keeps nothing in the file, or an unsupported order combination.
        MaskMismatchError: The mask belongs to another dataset.
        IndexMismatchError: The file changed since it was indexed.
    """
    require_ffcv("pruned FFCV loading")
    from ffcv.loader import Loader  # optional extra, checked by require_ffcv above

    if "indices" in loader_kwargs:
        raise TypeError("indices= is computed from the mask; do not pass it")
    manifest = open_manifest(manifest)
    indices = kept_indices(manifest, mask, shard=shard, mask_manifest=mask_manifest)
    k = _shard_number(manifest, shard)
    path = _check_file(manifest, k)
    if len(indices) == 0:
        raise StreamPruneError(f"{path}: the mask keeps no samples of this file")
    if batch_size < 1:
        raise ArgumentError(f"batch_size={batch_size}: must be at least 1")
    if not readahead and not os_cache:
        raise ArgumentError("readahead=False applies to os_cache=True (FFCV's memory map); with os_cache=False FFCV reads whole pages")
    loader = Loader(
        path,
        batch_size=batch_size,
        num_workers=num_workers,
        os_cache=os_cache,
        order=_order_option(order, distributed),
        distributed=distributed,
        seed=seed,
        indices=indices,
        pipelines=dict(pipelines) if pipelines is not None else {},
        drop_last=drop_last,
        **loader_kwargs,
    )
    if not readahead:
        loader.memory_manager.context = _random_access_context_class()(loader.memory_manager)
    loader.kept_indices = indices
    loader.manifest_shard = k
    return loader


def random_access_map(path: str) -> np.ndarray:
    """A read-only uint8 view of ``path`` memory-mapped with ``MADV_RANDOM`` (no read-around)."""
    with open(path, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
    if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(mapped, dtype=np.uint8)


_CONTEXT_CLASS = None


def _random_access_context_class():
    """FFCV's memory-map context, mapping the file with :func:`random_access_map` instead."""
    global _CONTEXT_CLASS
    if _CONTEXT_CLASS is None:
        from ffcv.memory_managers.os_cache import OSCacheContext  # optional extra, imported only when used

        class RandomAccessOSCacheContext(OSCacheContext):
            def __enter__(self):
                if self.mmap is None:
                    self.mmap = random_access_map(self.manager.reader.file_name)
                return super().__enter__()

        _CONTEXT_CLASS = RandomAccessOSCacheContext
    return _CONTEXT_CLASS
