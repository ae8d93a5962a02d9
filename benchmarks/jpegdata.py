"""The benchmarks' synthetic data: deterministic ImageNet-like JPEGs and the cached shards made of them."""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any

import numpy as np

from streamprune.indexfile import companion_path

__all__ = ["GENERATOR_VERSION", "JpegSource", "dataset_files", "jpeg_sizes", "make_jpeg", "make_jpeg_shards"]

#: Bumped when the generator's bytes change, so that cached shards of an older generator are remade.
GENERATOR_VERSION = 2


def make_jpeg(i: int, seed: int = 0, noise: float = 16.0, quality: int = 95) -> bytes:
    """A deterministic random-textured RGB JPEG (~256-320 px a side, ~100-150 KB).

    A bicubically upsampled coarse colour field (object-like blobs) plus per-pixel Gaussian
    texture, encoded by PIL at quality 95 without chroma subsampling (like high-quality
    photo JPEGs), so the file sizes land around ImageNet's larger images.
    """
    # heavy import (PIL), loaded only when this runs: the registry imports every suite
    from PIL import Image

    rng = np.random.default_rng([seed, i])
    w = int(rng.integers(256, 321))
    h = int(rng.integers(256, 321))
    coarse = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
    texture = rng.standard_normal((h, w, 3), dtype=np.float32) * noise
    pixels = np.clip(base + texture, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


class JpegSource:
    """A streamprune ``Source`` of ``n`` synthetic JPEG samples with labels in ``0..classes-1``."""

    def __init__(self, n: int, seed: int = 0, classes: int = 1000) -> None:
        self.n = n
        self.seed = seed
        self.classes = classes
        self.class_names = [f"c{c:04d}" for c in range(classes)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        label = int(np.random.default_rng([self.seed, i, 7]).integers(self.classes))
        return f"img{i:08d}", {"jpg": make_jpeg(i, self.seed)}, label


def dataset_files(manifest: Any) -> dict[str, list[str]]:
    """Every file a reader of ``manifest`` opens, by kind, so that cold runs evict all of them.

    Args:
        manifest: A ``streamprune.Manifest`` (tar shards or ``.beton`` files).

    Returns:
        ``{"shards", "index_json", "index_npz", "manifest"}``: the data files, their index
        sidecars, the sidecars' binary companions (``<shard>.index.npz``; only those that exist,
        since a reader opens one only when it is there) and the manifest file. A mask file is
        not part of a dataset: callers add the one they read.
    """
    indexes = [manifest.resolve(s.index) for s in manifest.shards]
    companions = [companion_path(p) for p in indexes]
    return {
        "shards": [manifest.shard_path(k) for k in range(len(manifest.shards))],
        "index_json": indexes,
        "index_npz": [p for p in companions if os.path.isfile(p)],
        "manifest": [manifest.path],
    }


def make_jpeg_shards(
    out_dir: str,
    total_mb: float,
    samples_per_shard: int = 500,
    seed: int = 0,
    workers: int = 2,
    log=print,
):
    """Generate (or reuse) JPEG shards of about ``total_mb`` MiB in ``out_dir``.

    Returns:
        The loaded :class:`streamprune.Manifest`.
    """
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    from streamprune import Manifest, write_shards

    params = {
        "generator_version": GENERATOR_VERSION,
        "total_mb": total_mb,
        "samples_per_shard": samples_per_shard,
        "seed": seed,
    }
    meta_path = os.path.join(out_dir, "bench_meta.json")
    if os.path.exists(meta_path) and os.path.exists(os.path.join(out_dir, "manifest.json")):
        with open(meta_path) as fh:
            meta = json.load(fh)
        if meta.get("params") == params:
            log(f"reusing data in {out_dir}")
            return Manifest.load(out_dir)
    # Estimate the per-sample size from a few images, then size the dataset to total_mb.
    probe = [len(make_jpeg(i, seed)) for i in range(48)]
    per_sample = float(np.mean(probe)) + 1792  # 2 headers, jpg padding (~256), label block
    n = max(8, int(np.ceil(total_mb * 2**20 / per_sample)))
    log(f"generating {n} JPEG samples (~{np.mean(probe) / 1e3:.0f} KB each) into {out_dir} ...")
    t0 = time.perf_counter()
    write_shards(
        JpegSource(n, seed),
        out_dir,
        samples_per_shard=samples_per_shard,
        shuffle=False,
        workers=workers,
        checksum=True,
        progress=False,
        class_names=JpegSource(1, seed).class_names,
        overwrite=True,  # data of other parameters: its shards and index files go first
    )
    os.sync()
    with open(meta_path, "w") as fh:
        json.dump({"params": params, "samples": n, "seconds": time.perf_counter() - t0}, fh)
    log(f"  done in {time.perf_counter() - t0:.1f} s")
    return Manifest.load(out_dir)


def jpeg_sizes(manifest) -> np.ndarray:
    """Size in bytes of each sample's ``jpg`` member (manifest order)."""
    sizes = []
    for k in range(len(manifest.shards)):
        for group in manifest.index(k).members:
            sizes.extend(size for ext, _, size in group if ext == "jpg")
    manifest.drop_cache()
    return np.asarray(sizes, dtype=np.int64)
