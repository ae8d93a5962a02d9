"""The main job on a built-in dataset: shard it, score it, mask it, read it pruned, and report.

With Fashion-MNIST installed (Debian's ``dataset-fashion-mnist``) the demo runs the label
mapping scenario of ``docs/methods.md`` section 1 end to end: the train split is the source,
the three footwear classes of the t10k split (Sandal, Sneaker, Ankle boot) are the target, a
surrogate is trained briefly on the source, LM scores the source classes by the target's
votes, and the mask keeps the top classes. Without it, scikit-learn's digits are sharded and
a random class mask is used instead.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from .decode import image_key
from .errors import ArgumentError
from .manifest import MANIFEST_NAME, Manifest
from .masks import MaskFile, random_mask
from .readers import PrunedWebDataset
from .report import describe, format_report
from .scores import ScoreFile
from .scoring import score_source
from .sources import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, ArraySource, idx_source
from .train import train_surrogate
from .writers import write_shards

__all__ = ["default_source", "footwear_target", "run_demo", "FOOTWEAR"]

log = logging.getLogger(__name__)

#: Fashion-MNIST's footwear classes: Sandal, Sneaker, Ankle boot.
FOOTWEAR = (5, 7, 9)


def default_source(work_dir: str) -> str:
    """Pick the built-in dataset: Debian's Fashion-MNIST if installed, else scikit-learn digits.

    Args:
        work_dir: Where the digits ``.npz`` is written when it is used.

    Returns:
        A path ``write_shards`` accepts.
    """
    if os.path.isdir(FASHION_MNIST_DIR):
        return FASHION_MNIST_DIR
    from sklearn.datasets import load_digits  # deferred: scikit-learn is slow to import and only the fallback needs it

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    path = os.path.join(work_dir, "digits.npz")
    np.savez(path, images=images, labels=digits.target.astype(np.int64))
    return path


def _read_all(manifest: str, mask: str | None) -> tuple[int, float]:
    ds = PrunedWebDataset(manifest, mask)
    ds = ds.decode("l").to_tuple(image_key(ds.source.manifest), "cls")
    start = time.perf_counter()
    count = 0
    for image, _ in ds:
        if image.ndim != 2:
            raise RuntimeError(f"decoded image has shape {image.shape}; expected a grey image")
        count += 1
    return count, time.perf_counter() - start


def footwear_target(fashion_dir: str, out_dir: str, split: str = "t10k", workers: int = 1, progress: bool = True) -> Manifest:
    """Shard the footwear images of a Fashion-MNIST split: the LM demo's target set.

    Args:
        fashion_dir: Fashion-MNIST IDX directory.
        out_dir: Where the target shards and manifest go.
        split: IDX split the target is taken from (``t10k``: disjoint from the source).
        workers: Shard-writing processes.
        progress: Show a progress bar.

    Returns:
        The target manifest (labels keep the Fashion-MNIST ids 5, 7, 9).
    """
    full = idx_source(fashion_dir, split=split, class_names=FASHION_MNIST_CLASSES)
    keep = np.isin(full.labels, FOOTWEAR)
    target = ArraySource(full.images[keep], full.labels[keep], class_names=FASHION_MNIST_CLASSES, prefix=f"{split}-")
    return write_shards(target, out_dir, samples_per_shard=1000, workers=workers, progress=progress, overwrite=True)


def _is_fashion_mnist(source: str) -> bool:
    return os.path.isdir(source) and os.path.realpath(source) == os.path.realpath(FASHION_MNIST_DIR)


def _lm_steps(
    out_dir: str, source: str, manifest: Manifest, ratio: float, workers: int, train_steps: int, arch: str,
    input_size: int, progress: bool, timings: dict[str, float],
) -> tuple[str, str]:
    """Train the surrogate, shard the footwear target, score with LM; return (mask, summary)."""
    start = time.perf_counter()
    trained = train_surrogate(
        manifest, arch, os.path.join(out_dir, "surrogate.pt"), max_steps=train_steps, input_size=input_size,
        workers=1, progress=progress,
    )
    timings["train surrogate"] = time.perf_counter() - start
    start = time.perf_counter()
    target = footwear_target(source, os.path.join(out_dir, "target"), workers=workers, progress=progress)
    timings["shard target"] = time.perf_counter() - start
    start = time.perf_counter()
    scored = score_source(
        manifest, "lm", [ratio], os.path.join(out_dir, "lm"), target=target, surrogate=arch,
        checkpoint=trained["checkpoint"], workers=1, progress=progress,
    )
    timings["score (lm)"] = time.perf_counter() - start
    scores = ScoreFile.load(scored["scores"])
    names = manifest.classes
    votes = scores.extra["votes"]
    top = ", ".join(f"{names[c]} {int(votes[c])}" for c in scores.ranking[:5])
    kept = scored["kept"][ratio]
    footwear_votes = int(votes[list(FOOTWEAR)].sum())
    summary = (
        f"label mapping: surrogate {arch} trained {trained['steps']} steps in {trained['seconds']:.1f} s "
        f"(train accuracy {trained['train_accuracy']:.3f}); {target.num_samples:,} footwear target samples from t10k, "
        f"{footwear_votes / target.num_samples:.1%} of them voted for a footwear class\n"
        f"top votes: {top}\n"
        f"kept at ratio {ratio:g}: {', '.join(names[c] for c in kept)} "
        f"({'the three footwear classes on top' if set(scores.ranking[:3].tolist()) == set(FOOTWEAR) else 'footwear NOT on top'})"
    )
    return scored["masks"][ratio], summary


def run_demo(
    out_dir: str,
    source: str | None = None,
    ratio: float = 0.6,
    workers: int = 2,
    samples_per_shard: int = 5000,
    progress: bool = True,
    method: str = "auto",
    train_steps: int = 150,
    arch: str = "resnet18",
    input_size: int = 32,
) -> dict:
    """Shard a dataset, prune a ``ratio`` of its classes, and read it pruned and unpruned.

    Args:
        out_dir: Working directory (shards, surrogate, scores, masks).
        source: Dataset path; default :func:`default_source`.
        ratio: Fraction of classes removed.
        workers: Shard-writing processes.
        samples_per_shard: Samples per shard.
        progress: Show progress bars.
        method: ``"lm"`` (label mapping with the footwear target; Fashion-MNIST only),
            ``"random"`` (random classes), or ``"auto"`` (``lm`` for Fashion-MNIST, else
            ``random``).
        train_steps: Surrogate training steps (LM).
        arch: Surrogate architecture (LM).
        input_size: Surrogate input side (LM).

    Returns:
        ``{"manifest", "mask", "method", "read": {...}, "timings": {step: seconds}, "report": text}``.

    Raises:
        ValueError: ``method="lm"`` with a source that is not Fashion-MNIST, or an unknown method.
    """
    total_start = time.perf_counter()
    timings: dict[str, float] = {}
    os.makedirs(out_dir, exist_ok=True)
    source = source or default_source(out_dir)
    if method == "auto":
        method = "lm" if _is_fashion_mnist(source) else "random"
    if method not in ("lm", "random"):
        raise ArgumentError(f"method={method!r}: must be 'auto', 'lm' or 'random'")
    if method == "lm" and not _is_fashion_mnist(source):
        raise ArgumentError(f"the LM demo needs Fashion-MNIST at {FASHION_MNIST_DIR} (its footwear classes are the target), not {source}")
    shard_dir = os.path.join(out_dir, "shards")
    manifest_path = os.path.join(shard_dir, MANIFEST_NAME)
    start = time.perf_counter()
    # the demo's own directory: a rerun replaces what the last one wrote
    manifest = write_shards(source, shard_dir, samples_per_shard=samples_per_shard, workers=workers, progress=progress, overwrite=True)
    timings["shard source"] = time.perf_counter() - start
    summary = ""
    if method == "lm":
        mask_path, summary = _lm_steps(out_dir, source, manifest, ratio, workers, train_steps, arch, input_size, progress, timings)
    else:
        start = time.perf_counter()
        mask_path = os.path.join(out_dir, f"random-class-{ratio:g}.spmask")
        random_mask(manifest, ratio, level="class", seed=0).save(mask_path)
        timings["mask (random classes)"] = time.perf_counter() - start
    full_n, full_s = _read_all(manifest_path, None)
    kept_n, kept_s = _read_all(manifest_path, mask_path)
    timings["read all"] = full_s
    timings["read pruned"] = kept_s
    info = describe(Manifest.load(manifest_path), MaskFile(mask_path))
    read = {
        "full_samples": full_n,
        "full_seconds": full_s,
        "pruned_samples": kept_n,
        "pruned_seconds": kept_s,
        "speedup": full_s / kept_s if kept_s else float("inf"),
        "ideal_speedup": full_n / kept_n if kept_n else float("inf"),
    }
    timings["total"] = time.perf_counter() - total_start
    for step, seconds in timings.items():
        log.info("demo step %s: %.1f s", step, seconds)
    text = format_report(info, max_rows=5) + (
        f"\n\nread with decode: all {full_n:,} samples in {full_s:.2f} s ({full_n / full_s:,.0f}/s); "
        f"kept {kept_n:,} in {kept_s:.2f} s ({kept_n / kept_s:,.0f}/s)\n"
        f"measured speed-up {read['speedup']:.2f}x (ideal 1/(1-ratio) = {read['ideal_speedup']:.2f}x)"
    )
    if summary:
        text += "\n\n" + summary
    text += "\n\ntime per step: " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in timings.items())
    return {"manifest": manifest_path, "mask": mask_path, "method": method, "read": read, "timings": timings, "report": text}
