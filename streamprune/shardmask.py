"""Write a mask file shard by shard on an engine: the driver never holds a bit per sample.

A mask file's bit region is laid out from the manifest alone (shard ``k``'s bits at a fixed,
8-byte aligned offset, ``ceil(samples / 8)`` bytes), so each engine task computes one shard's
keep bits, writes them at that offset of a shared data file and returns its counts (kept,
kept bytes, per class). The driver adds those up, writes the header, and streams the data file
behind it into the mask file, atomically: memory ``O(shards + classes)``, not ``O(N)``. The
file is byte for byte what :meth:`~streamprune.masks.KeepMask.save` writes for the same bits
and provenance (the ``created`` time aside).

``keep`` is a picklable ``keep(k, index) -> bool[samples]`` (a module-level function or a small
object): :class:`CombineMasks` does mask algebra shard by shard this way.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import shutil
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from .atomic import atomic_open, temp_name
from .engine import Engine, make_engine
from .errors import ArgumentError, StorageError, StreamPruneError
from .manifest import Manifest
from .masks import MAGIC, MASK_FORMAT, MASK_VERSION, MaskFile, packed_shard_bits
from .shardindex import ShardIndex

__all__ = ["CombineMasks", "KeepFn", "bit_offsets", "write_mask_by_shard"]

#: ``keep(k, index) -> bool[samples of shard k]``: one shard's keep bits (``index`` is shard k's index).
KeepFn = Callable[[int, ShardIndex], np.ndarray]
_COPY = 1 << 24


def bit_offsets(manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """Each shard's bitset size and offset in a mask file's bit region (from the manifest alone).

    Returns:
        ``(nbytes, offsets)``: ``int64[shards]`` each; ``offsets`` has one more entry, the region's size.
    """
    nbytes = (np.fromiter((s.samples for s in manifest.shards), dtype=np.int64, count=len(manifest.shards)) + 7) // 8
    return nbytes, np.concatenate([[0], np.cumsum((nbytes + 7) // 8 * 8)]).astype(np.int64)


def _shard_state(manifest: Manifest, keep: KeepFn, data_path: str) -> tuple[Manifest, KeepFn, str]:
    return manifest, keep, data_path


def _shard_task(state: tuple[Manifest, KeepFn, str], job: tuple[int, int]) -> tuple[int, int, int, int, np.ndarray, np.ndarray]:
    """One shard: compute its bits, write them at their offset, return ``(k, kept, kept bytes, bytes, kept/class, total/class)``."""
    manifest, keep, data_path = state
    k, offset = job
    index = manifest.index(k, cache=False)
    bits = np.asarray(keep(k, index), dtype=bool)
    if bits.shape != (len(index),):
        raise StreamPruneError(f"shard {k} ({manifest.shards[k].name}): {bits.shape} keep bits for {len(index)} samples")
    packed = packed_shard_bits(bits)
    fd = os.open(data_path, os.O_WRONLY)
    try:
        os.pwrite(fd, packed, offset)
    finally:
        os.close(fd)
    sizes = np.asarray(index.data_bytes, dtype=np.int64)
    labels = np.asarray(index.labels, dtype=np.int64)
    n_classes = len(manifest.classes)
    labelled = (labels >= 0) & (labels < n_classes)
    kept_per_class = np.bincount(labels[labelled & bits], minlength=n_classes)
    total_per_class = np.bincount(labels[labelled], minlength=n_classes)
    return k, int(bits.sum()), int(sizes[bits].sum()), int(sizes.sum()), kept_per_class, total_per_class


def write_mask_by_shard(
    manifest: Manifest,
    keep: KeepFn,
    path: str | os.PathLike,
    provenance: dict[str, Any],
    engine: str | Engine | None = None,
    workers: int = 1,
    progress_desc: str = "mask",
) -> MaskFile:
    """Write the mask whose shard ``k`` keeps ``keep(k, index)``, one engine task per shard.

    Args:
        manifest: The dataset.
        keep: Picklable ``keep(k, index) -> bool[samples]``.
        path: Destination ``*.spmask`` (written atomically).
        provenance: How the mask was made (``created`` is added when missing).
        engine: ``"local"`` / ``None``, ``"ray"`` or an :class:`~streamprune.engine.Engine` (its
            workers must see ``path``'s directory).
        workers: Local processes when ``engine`` is a name.
        progress_desc: The pass's name in the engine's report.

    Returns:
        The written mask, opened.

    Raises:
        StreamPruneError: ``keep`` returned the wrong number of bits for a shard.
        StorageError: ``path``'s directory cannot be created.
    """
    path = os.fspath(path)
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # as KeepMask.save: the user chose the path
    except OSError as exc:
        raise StorageError(f"{path}: cannot write it ({exc.strerror or exc})") from exc
    nbytes, offsets = bit_offsets(manifest)
    data_path = temp_name(path) + ".bits"
    with open(data_path, "wb") as fh:
        fh.truncate(int(offsets[-1]))  # sparse: tasks fill their shards' ranges
    n = len(manifest.shards)
    kept = np.zeros(n, dtype=np.int64)
    kept_bytes = np.zeros(n, dtype=np.int64)
    shard_bytes = np.zeros(n, dtype=np.int64)
    n_classes = len(manifest.classes)
    per_class = np.zeros((2, n_classes), dtype=np.int64)

    def add(_: int, result: tuple) -> None:
        k, kept[k], kept_bytes[k], shard_bytes[k], kept_c, total_c = result
        per_class[0] += kept_c
        per_class[1] += total_c

    runner = make_engine(engine, workers=workers)
    try:
        runner.map(
            _shard_task, [(k, int(offsets[k])) for k in range(n)],
            setup=functools.partial(_shard_state, manifest, keep, data_path), on_result=add, desc=progress_desc,
            keep_results=False,
        )
        header = {
            "format": MASK_FORMAT,
            "version": MASK_VERSION,
            "manifest_fingerprint": manifest.fingerprint,
            "manifest": manifest.path,
            "num_samples": manifest.num_samples,
            "kept": int(kept.sum()),
            "kept_bytes": int(kept_bytes.sum()),
            "total_bytes": int(shard_bytes.sum()),
            "provenance": {**provenance, "created": provenance.get("created") or _now()},
            "classes": manifest.classes,
            "kept_per_class": per_class[0].tolist(),
            "total_per_class": per_class[1].tolist(),
            "shards": [
                {"name": e.name, "samples": e.samples, "kept": int(kept[k]), "kept_bytes": int(kept_bytes[k]),
                 "index_sha256": e.index_sha256, "offset": int(offsets[k]), "nbytes": int(nbytes[k])}
                for k, e in enumerate(manifest.shards)
            ],
        }
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        with atomic_open(path, "wb") as out, open(data_path, "rb") as bits:
            out.write(MAGIC + struct.pack("<Q", len(raw)) + raw)
            shutil.copyfileobj(bits, out, _COPY)
    finally:
        if os.path.exists(data_path):
            os.unlink(data_path)
    return MaskFile(path)


class CombineMasks:
    """Mask algebra shard by shard: ``keep(k, _)`` combines shard ``k``'s bits of saved masks.

    Args:
        paths: Mask files (made for the same manifest).
        op: ``"and"``, ``"or"``, ``"minus"`` (first and not the others) or ``"not"`` (one mask).
    """

    OPS = ("and", "or", "minus", "not")

    def __init__(self, paths: list[str], op: str) -> None:
        if op not in self.OPS:
            raise ArgumentError(f"op={op!r}: must be one of {', '.join(self.OPS)}")
        if (op == "not") != (len(paths) == 1) or not paths:
            raise ArgumentError(f"op={op!r} takes {'one mask' if op == 'not' else 'two or more masks'}, got {len(paths)}")
        self.paths = [os.fspath(p) for p in paths]
        self.op = op
        self._opened: list[MaskFile] | None = None

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "op": self.op, "_opened": None}  # each worker opens the files once

    def __call__(self, k: int, index: ShardIndex) -> np.ndarray:
        if self._opened is None:  # a header is O(shards): parsed once per worker, not once per shard
            self._opened = [MaskFile(p) for p in self.paths]
        bits = [m.shard(k) for m in self._opened]
        if self.op == "not":
            return ~bits[0]
        out = bits[0].copy()
        for other in bits[1:]:
            if self.op == "and":
                out &= other
            elif self.op == "or":
                out |= other
            else:
                out &= ~other
        return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
