"""FFCV helpers shared by the io and ffcv suites: the decode pipelines, pages touched, one epoch, unmapping."""

from __future__ import annotations

import gc
import time
from typing import Any

import numpy as np

__all__ = ["ffcv_pipelines", "page_stats", "release_mmap", "run_epoch"]


def ffcv_pipelines() -> dict:
    """The FFCV decode pipelines of the benchmarks: centre-crop RGB decode to 224 px + ``ToTensor``; int labels."""
    # optional extra: ffcv, only installed with streamprune[ffcv]
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.transforms import ToTensor

    return {"image": [CenterCropRGBImageDecoder((224, 224), 224 / 256), ToTensor()], "label": [IntDecoder(), ToTensor()]}


def page_stats(manifest: Any, keep: np.ndarray | None) -> dict:
    """Pages touched by the kept samples, and kept data bytes, from the file's own tables."""
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    from streamprune.betonindex import read_beton

    info = read_beton(manifest.shard_path(0))
    pages = info.sample_pages()
    keep = np.ones(info.num_samples, dtype=bool) if keep is None else keep
    data = manifest.sample_bytes()
    all_pages = np.unique(pages[pages >= 0])
    touched = np.unique(pages[keep & (pages >= 0)])
    return {
        "pages_total": len(all_pages),
        "pages_touched": len(touched),
        "page_fraction": len(touched) / max(len(all_pages), 1),
        "predicted_page_read_bytes": int(len(touched) * info.page_size),
        "kept_data_fraction": float(data[keep].sum() / max(data.sum(), 1)),
    }


def run_epoch(loader: Any) -> tuple[float, int, int]:
    """Iterate one epoch; returns seconds, samples and a label checksum."""
    n = 0
    total = 0
    t0 = time.perf_counter()
    for _images, labels in loader:
        n += int(labels.shape[0])
        total += int(labels.sum())
    return time.perf_counter() - t0, n, total


def release_mmap(loader: Any) -> None:
    """Drop FFCV's memory map of the file (os_cache=True keeps one open across epochs).

    Pages mapped into a process cannot be evicted with POSIX_FADV_DONTNEED, so a live map would
    make every later "cold" epoch warm. FFCV maps the file again at the next epoch.
    """
    context = getattr(loader.memory_manager, "context", None)
    if context is not None and getattr(context, "mmap", None) is not None:
        context.mmap = None
    gc.collect()
