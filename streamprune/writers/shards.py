"""Split a source into tar shards (in parallel), index them, and write the manifest."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..errors import StreamPruneError
from ..indexfile import INDEX_SUFFIX, save_index
from ..manifest import Manifest, build_manifest
from ..shardindex import ShardIndex
from ..sources import Sample, Source
from .output import open_writer_source, start_output_dir
from .tar import TarShardWriter

__all__ = ["write_shards", "shard_name"]

log = logging.getLogger(__name__)

_SOURCE: Source | None = None


def shard_name(k: int, pattern: str = "shard-{:06d}.tar") -> str:
    """Return the file name of shard ``k``."""
    return pattern.format(k)


def _set_source(source: Source) -> None:
    global _SOURCE
    _SOURCE = source


def _write_one(out_dir: str, name: str, positions: np.ndarray, label_ext: str | None, checksum: bool) -> ShardIndex:
    source = _SOURCE
    assert source is not None
    path = os.path.join(out_dir, name)
    with TarShardWriter(path, label_ext=label_ext) as writer:
        for i in positions:
            key, files, label = source[int(i)]
            writer.write(key, files, label)
        index = writer.close(checksum=checksum)
    if len(index) != len(positions):
        raise StreamPruneError(f"{path}: {len(index)} samples written, {len(positions)} expected")
    save_index(index, path + INDEX_SUFFIX)
    return index


def write_shards(
    src: str | os.PathLike | Iterable[Sample] | Source,
    out_dir: str | os.PathLike,
    samples_per_shard: int = 1000,
    shuffle: bool = True,
    seed: int = 0,
    workers: int = 1,
    quality: int = 95,
    image_format: str | None = None,
    split: str = "train",
    class_names: Sequence[str] | None = None,
    label_ext: str | None = "cls",
    checksum: bool = True,
    progress: bool = True,
) -> Manifest:
    """Write a source as webdataset tar shards with per-shard indexes and a manifest.

    Sample order is shuffled (seeded) before sharding by default, so every shard mixes
    classes. Each shard is written under a temporary name, read back and checked, and
    renamed; ``manifest.json`` is written last, so a directory with a manifest is complete.

    Args:
        src: A path :func:`~streamprune.sources.open_source` accepts, a :class:`Source`, or an
            iterable of ``(key, {extension: bytes}, label)`` (consumed into memory).
        out_dir: Output directory (created).
        samples_per_shard: Samples per shard (the last shard may have fewer).
        shuffle: Shuffle sample order before sharding.
        seed: Shuffle seed.
        workers: Processes writing shards in parallel.
        quality: JPEG quality for array sources.
        image_format: ``jpg`` or ``png`` for array sources.
        split: IDX split to read.
        class_names: Class names by label id (overrides the source's).
        label_ext: Extension of the label member (``None``: unlabelled).
        checksum: Record each shard's SHA-256 in the manifest.
        progress: Show a progress bar.

    Returns:
        The saved manifest.

    Raises:
        ValueError: Bad argument.
        StreamPruneError: Bad source, or a shard failed verification.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard={samples_per_shard}: must be at least 1")
    if workers < 1:
        raise ValueError(f"workers={workers}: must be at least 1")
    source = open_writer_source(src, split, image_format, quality, class_names)
    n = len(source)
    out_dir = start_output_dir(out_dir, shard_name(0).replace("000000", "*"))
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    chunks = [order[i : i + samples_per_shard] for i in range(0, n, samples_per_shard)]
    names = [shard_name(k) for k in range(len(chunks))]
    indexes: list[ShardIndex | None] = [None] * len(chunks)
    bar = tqdm(total=n, desc="shard", unit="sample", disable=not progress)
    _set_source(source)
    try:
        if workers == 1 or len(chunks) == 1:
            for k, chunk in enumerate(chunks):
                indexes[k] = _write_one(out_dir, names[k], chunk, label_ext, checksum)
                bar.update(len(chunk))
        else:
            # fork shares the (possibly large) in-memory source with the workers without pickling it
            ctx = mp.get_context("fork")
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {
                    pool.submit(_write_one, out_dir, names[k], chunk, label_ext, checksum): k
                    for k, chunk in enumerate(chunks)
                }
                for future in cf.as_completed(futures):
                    k = futures[future]
                    indexes[k] = future.result()
                    bar.update(len(chunks[k]))
    finally:
        _set_source(None)  # type: ignore[arg-type]
        bar.close()
    names_in = list(class_names) if class_names else list(getattr(source, "class_names", []) or []) or None
    entries = [(index, names[k], names[k] + INDEX_SUFFIX) for k, index in enumerate(indexes) if index is not None]
    manifest = build_manifest(out_dir, entries, classes=names_in, label_ext=label_ext)
    if manifest.num_samples != n:
        raise StreamPruneError(f"{out_dir}: {manifest.num_samples} samples in the shards, {n} in the source")
    manifest.save()
    log.info("wrote %d samples in %d shards to %s", n, len(names), out_dir)
    return manifest
