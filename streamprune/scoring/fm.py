"""Feature mapping (FM): cluster the source's features, keep the clusters the target lands in.

Zhang et al., NeurIPS 2023 (``docs/methods.md`` section 1), for sources without labels:

1. every source sample is embedded with the surrogate's penultimate (pooled) features, cached
   per shard as float16 (:mod:`.features`: resumable, reused when clustering again);
2. the features are clustered into K pseudo-classes by k-means (:func:`.kmeans.kmeans`:
   k-means++ initialisation on a seeded subsample, then Lloyd iterations streamed over the
   cache in bounded chunks, scikit-learn's stopping rule); each sample's cluster id is stored;
3. each target training sample votes for its nearest centroid (Euclidean distance, indexed
   by **cluster**: the released script's argmin over an array indexed by target sample is not
   reproduced);
4. the ``round(K * (1 - ratio))`` clusters (the kept fraction) with most votes are kept, each
   with all its members.
   Ties (clusters without votes are frequent) are broken by the summed inverse Euclidean
   distance of all target samples to the centroid (higher first, the analogue of LM's summed
   softmax), then by cluster id (lower first).

Variant ``fm_over_classes``: when the source has labels, vote against the source class means
instead of k-means centroids; the scores are then class level.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from ..errors import ArgumentError
from ..kernels import kmeans_accumulate, nearest_centroid, vote_histogram
from ..scores import ScoreFile, rank_items
from .features import ChunkSource, feature_root, surrogate_features
from .kmeans import KMEANS_OPTIONS, KMeansResult, assign, cluster_features, kmeans, kmeans_plus_plus
from .registry import MethodOption, register_score
from .request import ScoreRequest

# KMeansResult, kmeans_plus_plus, kmeans, assign (moved to .kmeans) and surrogate_features
# (moved to .features) stay importable from here for existing callers.
__all__ = [
    "KMeansResult",
    "assign",
    "class_means",
    "fm",
    "fm_class_scores",
    "fm_cluster_scores",
    "fm_votes",
    "kmeans",
    "kmeans_plus_plus",
    "surrogate_features",
]

log = logging.getLogger(__name__)


def class_means(store: ChunkSource, labels: np.ndarray, num_classes: int, chunk_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Mean feature of each class, streamed in chunks.

    Args:
        store: Chunked features (manifest order).
        labels: ``int64[N]`` labels (``-1`` = unlabelled, skipped).
        num_classes: C.
        chunk_rows: Rows per chunk.

    Returns:
        ``(float32[C, D] means (zero for empty classes), int64[C] counts)``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    sums = np.zeros((num_classes, store.dim), dtype=np.float64)
    counts = np.zeros(num_classes, dtype=np.int64)
    for start, chunk in store.iter_chunks(chunk_rows):
        lab = labels[start : start + len(chunk)]
        ok = lab >= 0
        kmeans_accumulate(chunk[ok], lab[ok], sums, counts)
    means = np.zeros_like(sums, dtype=np.float32)
    nz = counts > 0
    means[nz] = (sums[nz] / counts[nz, None]).astype(np.float32)
    return means, counts


def fm_votes(target: np.ndarray, centroids: np.ndarray, valid: np.ndarray | None = None, block: int = 4096) -> dict[str, np.ndarray]:
    """Each target sample votes for its nearest centroid; the tie-break key; the ranking.

    Distances are indexed by centroid (cluster): ``argmin_k ||t_i - mu_k||`` for each target
    sample ``i`` (not the reference script's argmin over target samples).

    Args:
        target: ``[Nt, D]`` target features.
        centroids: ``[K, D]`` centroids (cluster centres or class means).
        valid: Optional ``bool[K]``: only these centroids can receive votes (e.g. non-empty
            classes); the others get 0 votes and 0 tie-break and rank last.
        block: Target rows per distance block.

    Returns:
        ``{"votes": float64[K], "inv_dist_sum": float64[K], "ranking": int64[K]}``: votes =
        top-1 counts; ``inv_dist_sum[k] = sum_i 1 / max(||t_i - mu_k||, 1e-6)``; ranking =
        votes desc, then inv_dist_sum desc, then id asc.
    """
    target = np.ascontiguousarray(target, dtype=np.float32)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    k = centroids.shape[0]
    ids = np.arange(k) if valid is None else np.flatnonzero(valid)
    votes = np.zeros(k, dtype=np.float64)
    inv = np.zeros(k, dtype=np.float64)
    if len(target) and len(ids):
        sub = centroids[ids]
        nearest, _ = nearest_centroid(target, sub)
        votes[ids] = vote_histogram(nearest, len(ids))
        c_sq = (sub.astype(np.float64) ** 2).sum(1)
        for lo in range(0, len(target), block):
            t = target[lo : lo + block].astype(np.float64)
            d2 = (t**2).sum(1)[:, None] - 2.0 * (t @ sub.T.astype(np.float64)) + c_sq[None, :]
            inv[ids] += (1.0 / np.maximum(np.sqrt(np.maximum(d2, 0.0)), 1e-6)).sum(0)
    return {"votes": votes, "inv_dist_sum": inv, "ranking": rank_items(votes, inv)}


def fm_cluster_scores(
    km: KMeansResult,
    target_features: np.ndarray,
    manifest_fingerprint: str,
    **fields: Any,
) -> ScoreFile:
    """Cluster-level FM scores from a k-means result and the target features.

    Args:
        km: Clustering of the source.
        target_features: ``[Nt, D]`` target features.
        manifest_fingerprint: Fingerprint of the source manifest.
        **fields: Further :class:`ScoreFile` fields.

    Returns:
        The (unsaved) scores; ``assignments`` holds each source sample's cluster id.
    """
    v = fm_votes(target_features, km.centroids)
    return _voted(
        "cluster", v, variant="kmeans", extra={"cluster_size": km.counts.astype(np.float64)}, assignments=km.assignments,
        items=[f"cluster{j}" for j in range(len(km.counts))], manifest_fingerprint=manifest_fingerprint, **fields,
    )


def _voted(level: str, v: dict[str, np.ndarray], extra: dict[str, np.ndarray] | None = None, **fields: Any) -> ScoreFile:
    """FM's scores from :func:`fm_votes`: votes, ties by ``inv_dist_sum`` (stored in ``extra``, so the ranking is reproducible)."""
    return ScoreFile.ranked(
        "fm", level, v["votes"], higher_is="keep", score_name="votes",
        # inv_dist_sum: the summed inverse Euclidean distance of all target samples
        ties=[("inv_dist_sum", v["inv_dist_sum"])],
        extra={"inv_dist_sum": v["inv_dist_sum"], **(extra or {})}, **fields,
    )


def fm_class_scores(means: np.ndarray, counts: np.ndarray, target_features: np.ndarray, classes: list[str], manifest_fingerprint: str, **fields: Any) -> ScoreFile:
    """Class-level "FM over classes" scores: target samples vote for the nearest class mean.

    Args:
        means: ``[C, D]`` source class means.
        counts: ``[C]`` samples per class (empty classes get no vote).
        target_features: ``[Nt, D]`` target features.
        classes: Class names.
        manifest_fingerprint: Fingerprint of the source manifest.
        **fields: Further :class:`ScoreFile` fields.

    Returns:
        The (unsaved) scores.
    """
    v = fm_votes(target_features, means, valid=np.asarray(counts) > 0)
    return _voted("class", v, variant="over-classes", items=list(classes), manifest_fingerprint=manifest_fingerprint, **fields)


@register_score(
    "fm",
    options=KMEANS_OPTIONS
    + (MethodOption("fm_over_classes", bool, "vote against source class means (needs labels): class-level mask"),),
)
def fm(
    request: ScoreRequest,
    clusters: int = 1000,
    kmeans_iters: int = 20,
    fm_over_classes: bool = False,
    feature_dir: str | None = None,
    chunk_rows: int = 65536,
    init_sample: int | None = None,
) -> ScoreFile:
    """Feature mapping over the request's target (cluster level, or class level over classes).

    Source and target features are cached in ``feature_dir`` (default ``OUT/features`` and
    ``OUT/features/target``); a second run with another ``clusters`` embeds nothing.

    Args:
        request: Source, target, surrogate and run settings.
        clusters: K, the number of k-means clusters (ignored with ``fm_over_classes``).
        kmeans_iters: Maximum Lloyd iterations.
        fm_over_classes: Vote against source class means (needs labels) -> class-level scores.
        feature_dir: Feature cache directory.
        chunk_rows: Rows read at a time while clustering.
        init_sample: Rows of the seeded subsample k-means++ runs on.

    Returns:
        The scores.

    Raises:
        ValueError: No target, no surrogate, bad K, or no labels for ``fm_over_classes``.
    """
    if request.target is None:
        raise ArgumentError("method 'fm' needs a target dataset (--target)")
    if not fm_over_classes and clusters < 1:
        raise ArgumentError(f"clusters={clusters}: must be at least 1")
    source = request.source
    root = feature_root(request, feature_dir)
    t0 = time.perf_counter()
    store, info = surrogate_features(request, source, root, desc="fm: source")
    target_store, _ = surrogate_features(request, request.target, os.path.join(root, "target"), desc="fm: target")
    embed_s = time.perf_counter() - t0
    target = target_store.read_all()
    common = {
        "manifest": source.path, "num_samples": source.num_samples, "surrogate": info, "target": request.target_info(), "seed": request.seed,
    }
    t0 = time.perf_counter()
    if fm_over_classes:
        labels = source.labels()
        if source.label_ext is None or not len(labels) or labels.max() < 0:
            raise ArgumentError(f"{source.path}: fm_over_classes needs source labels; the dataset has none")
        means, counts = class_means(store, labels, source.num_classes, chunk_rows)
        out = fm_class_scores(
            means, counts, target, list(source.classes) or [str(c) for c in range(source.num_classes)], source.fingerprint,
            params={"fm_over_classes": True, "feature_dir": os.path.abspath(root), "embed_seconds": round(embed_s, 3)}, **common,
        )
    else:
        km = cluster_features(store, clusters, engine=request.engine, iters=kmeans_iters, init_sample=init_sample, chunk_rows=chunk_rows,
                              seed=request.seed, progress=request.progress)
        out = fm_cluster_scores(
            km, target, source.fingerprint,
            params={
                "clusters": clusters, "kmeans_iters": kmeans_iters, "iterations_run": km.iterations, "inertia": km.inertia,
                "init": "k-means++ on a seeded uniform subsample", "init_sample": km.init_sample, "chunk_rows": chunk_rows,
                "feature_dir": os.path.abspath(root), "embed_seconds": round(embed_s, 3),
                "cluster_seconds": round(time.perf_counter() - t0, 3), "distance": "euclidean",
            },
            **common,
        )
    log.info("fm: embedded in %.1f s, scored in %.1f s", embed_s, time.perf_counter() - t0)
    return out
