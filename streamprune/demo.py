"""The main job on a built-in dataset: shard it, mask it, read it pruned, and report."""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from .manifest import MANIFEST_NAME, Manifest
from .masks import MaskFile, random_mask
from .readers import PrunedWebDataset
from .report import describe, format_report
from .writers import write_shards

__all__ = ["default_source", "run_demo"]

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def default_source(work_dir: str) -> str:
    """Pick the built-in dataset: Debian's Fashion-MNIST if installed, else scikit-learn digits.

    Args:
        work_dir: Where the digits ``.npz`` is written when it is used.

    Returns:
        A path ``write_shards`` accepts.
    """
    if os.path.isdir(FASHION_MNIST_DIR):
        return FASHION_MNIST_DIR
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    path = os.path.join(work_dir, "digits.npz")
    np.savez(path, images=images, labels=digits.target.astype(np.int64))
    return path


def _read_all(manifest: str, mask: str | None) -> tuple[int, float]:
    ds = PrunedWebDataset(manifest, mask).decode("l").to_tuple("jpg;png", "cls")
    start = time.perf_counter()
    count = 0
    for image, _ in ds:
        if image.ndim != 2:
            raise RuntimeError(f"decoded image has shape {image.shape}; expected a grey image")
        count += 1
    return count, time.perf_counter() - start


def run_demo(
    out_dir: str,
    source: str | None = None,
    ratio: float = 0.6,
    workers: int = 2,
    samples_per_shard: int = 5000,
    progress: bool = True,
) -> dict:
    """Shard a dataset, remove a random ``ratio`` of its classes, and read it pruned and unpruned.

    Args:
        out_dir: Working directory (shards, mask).
        source: Dataset path; default :func:`default_source`.
        ratio: Fraction of classes removed.
        workers: Shard-writing processes.
        samples_per_shard: Samples per shard.
        progress: Show progress bars.

    Returns:
        ``{"manifest", "mask", "read": {...}, "report": text}``.
    """
    os.makedirs(out_dir, exist_ok=True)
    source = source or default_source(out_dir)
    shard_dir = os.path.join(out_dir, "shards")
    manifest_path = os.path.join(shard_dir, MANIFEST_NAME)
    manifest = write_shards(source, shard_dir, samples_per_shard=samples_per_shard, workers=workers, progress=progress)
    mask_path = os.path.join(out_dir, f"random-class-{ratio:g}.spmask")
    random_mask(manifest, ratio, level="class", seed=0).save(mask_path)
    full_n, full_s = _read_all(manifest_path, None)
    kept_n, kept_s = _read_all(manifest_path, mask_path)
    info = describe(Manifest.load(manifest_path), MaskFile(mask_path))
    read = {
        "full_samples": full_n,
        "full_seconds": full_s,
        "pruned_samples": kept_n,
        "pruned_seconds": kept_s,
        "speedup": full_s / kept_s if kept_s else float("inf"),
        "ideal_speedup": full_n / kept_n if kept_n else float("inf"),
    }
    text = format_report(info, max_rows=5) + (
        f"\n\nread with decode: all {full_n:,} samples in {full_s:.2f} s ({full_n / full_s:,.0f}/s); "
        f"kept {kept_n:,} in {kept_s:.2f} s ({kept_n / kept_s:,.0f}/s)\n"
        f"measured speed-up {read['speedup']:.2f}x (ideal 1/(1-ratio) = {read['ideal_speedup']:.2f}x)"
    )
    return {"manifest": manifest_path, "mask": mask_path, "read": read, "report": text}
