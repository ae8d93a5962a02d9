"""Feature mapping (FM): cluster the source's features, keep the clusters the target lands in.

Zhang et al., NeurIPS 2023 (``docs/methods.md`` section 1), for sources without labels:

1. every source sample is embedded with the surrogate's penultimate (pooled) features, cached
   per shard as float16 (:mod:`.features`: resumable, reused when clustering again);
2. the features are clustered into K pseudo-classes by k-means (:func:`kmeans`: k-means++
   initialisation on a seeded subsample, then Lloyd iterations streamed over the cache in
   bounded chunks with :func:`~streamprune.kernels.nearest_centroid` and
   :func:`~streamprune.kernels.kmeans_accumulate`); each sample's cluster id is stored;
3. each target training sample votes for its nearest centroid (Euclidean distance, indexed
   by **cluster**: the released script's argmin over an array indexed by target sample is not
   reproduced);
4. the ``round(K * budget)`` clusters with most votes are kept, each with all its members.
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
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..kernels import kmeans_accumulate, nearest_centroid, vote_histogram
from .registry import MethodOption, register_score
from .request import ScoreRequest
from .features import ArrayStore, FeatureStore, embed_manifest
from ..scores import ScoreFile, rank_items

__all__ = [
    "KMeansResult",
    "kmeans_plus_plus",
    "kmeans",
    "assign",
    "class_means",
    "fm_votes",
    "fm_cluster_scores",
    "fm_class_scores",
    "surrogate_features",
    "fm",
]

log = logging.getLogger(__name__)

ChunkSource = Any  # FeatureStore | ArrayStore (num_samples, dim, iter_chunks, take)


@dataclass
class KMeansResult:
    """Outcome of :func:`kmeans`.

    Attributes:
        centroids: ``float32[K, D]``.
        assignments: ``int64[N]`` cluster id of each sample (against the final centroids).
        inertia: Sum of squared distances of the samples to their centroid (final centroids).
        iterations: Lloyd iterations run.
        counts: ``int64[K]`` cluster sizes.
        init_sample: Rows the k-means++ initialisation was drawn from (``None``: given init).
    """

    centroids: np.ndarray
    assignments: np.ndarray
    inertia: float
    iterations: int
    counts: np.ndarray
    init_sample: int | None = None


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) on in-memory points.

    The first centre is uniform; each next one is drawn with probability proportional to the
    squared distance to the nearest centre chosen so far.

    Args:
        x: ``float32[n, D]`` points (``n >= k``).
        k: Number of centres.
        rng: Random generator.

    Returns:
        ``float32[k, D]`` initial centroids (rows of ``x``).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means++ needs at least k={k} points, got {n}")
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    x_sq = np.einsum("ij,ij->i", x, x)
    closest = np.maximum(x_sq - 2.0 * (x @ x[chosen[0]]) + x_sq[chosen[0]], 0.0).astype(np.float64)
    for j in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: take any not chosen yet
            rest = np.setdiff1d(np.arange(n), chosen[:j])
            chosen[j] = rest[0]
        else:
            r = rng.random() * total
            chosen[j] = min(int(np.searchsorted(np.cumsum(closest), r, side="right")), n - 1)
        c = chosen[j]
        d = np.maximum(x_sq - 2.0 * (x @ x[c]) + x_sq[c], 0.0)
        np.minimum(closest, d, out=closest)
    return x[chosen].copy()


def assign(store: ChunkSource, centroids: np.ndarray, chunk_rows: int = 65536) -> tuple[np.ndarray, float]:
    """Nearest centroid of every sample, in chunks.

    Args:
        store: Chunked features.
        centroids: ``[K, D]``.
        chunk_rows: Rows per chunk.

    Returns:
        ``(int64[N] cluster ids, inertia)``.
    """
    out = np.empty(store.num_samples, dtype=np.int64)
    inertia = 0.0
    for start, chunk in store.iter_chunks(chunk_rows):
        idx, d = nearest_centroid(chunk, centroids)
        out[start : start + len(chunk)] = idx
        inertia += float(d.sum(dtype=np.float64))
    return out, inertia


def kmeans(
    store: ChunkSource | np.ndarray,
    k: int,
    *,
    iters: int = 20,
    init: str | np.ndarray = "k-means++",
    init_sample: int | None = None,
    tol: float = 1e-4,
    chunk_rows: int = 65536,
    seed: int = 0,
    progress: bool = False,
) -> KMeansResult:
    """Lloyd's k-means streamed over chunked features, in bounded memory.

    Each iteration reads the features once, chunk by chunk: the assignment of a chunk comes
    from :func:`~streamprune.kernels.nearest_centroid` (blocked, parallel; never an N x K
    matrix) and the centroid update is accumulated with
    :func:`~streamprune.kernels.kmeans_accumulate` into float64 sums. Memory: the K x D
    centroids and sums, one chunk, and the N cluster ids; never the whole feature matrix.
    An empty cluster keeps its previous centroid. Stops after ``iters`` iterations or when
    the squared centroid shift falls below ``tol`` times the mean squared feature norm
    (scikit-learn's criterion, on the data variance). The final assignment is against the final centroids.

    Args:
        store: A :class:`~.features.FeatureStore`, :class:`~.features.ArrayStore`, or an array.
        k: Number of clusters.
        iters: Maximum Lloyd iterations.
        init: ``"k-means++"`` (on a seeded uniform subsample of ``init_sample`` rows) or an
            explicit ``[k, D]`` array of initial centroids.
        init_sample: Rows drawn for k-means++ (default ``min(N, max(50 * k, 10000))``).
        tol: Relative tolerance on the centroid shift.
        chunk_rows: Rows read at a time.
        seed: Seed of the subsample and of k-means++.
        progress: Show a progress bar over iterations.

    Returns:
        The :class:`KMeansResult`.

    Raises:
        ValueError: ``k`` out of range or a malformed ``init``.
    """
    from tqdm.auto import tqdm

    if isinstance(store, np.ndarray):
        store = ArrayStore(store)
    n, dim = store.num_samples, store.dim
    if not 1 <= k <= n:
        raise ValueError(f"clusters={k}: must be between 1 and the number of samples ({n})")
    rng = np.random.default_rng(seed)
    used_sample = None
    if isinstance(init, str):
        if init != "k-means++":
            raise ValueError(f"init={init!r}: must be 'k-means++' or a [k, D] array")
        used_sample = int(min(n, max(50 * k, 10000) if init_sample is None else max(k, init_sample)))
        rows = np.sort(rng.choice(n, size=used_sample, replace=False)) if used_sample < n else np.arange(n)
        centroids = kmeans_plus_plus(store.take(rows), k, rng)
    else:
        centroids = np.array(init, dtype=np.float32)
        if centroids.shape != (k, dim):
            raise ValueError(f"init has shape {centroids.shape}; expected ({k}, {dim})")
    # tolerance scaled by the data's variance, as scikit-learn does
    sums1 = np.zeros(dim, dtype=np.float64)
    sq = 0.0
    for _, chunk in store.iter_chunks(chunk_rows):
        sums1 += chunk.sum(axis=0, dtype=np.float64)
        sq += float((chunk.astype(np.float64) ** 2).sum())
    variance = max(sq / n - float((sums1 / n) @ (sums1 / n)), 0.0) if n else 0.0
    threshold = tol * variance
    it = 0
    with tqdm(total=iters, desc="k-means", unit="iter", disable=not progress) as bar:
        for it in range(1, iters + 1):
            sums = np.zeros((k, dim), dtype=np.float64)
            counts = np.zeros(k, dtype=np.int64)
            inertia = 0.0
            for _, chunk in store.iter_chunks(chunk_rows):
                idx, d = nearest_centroid(chunk, centroids)
                kmeans_accumulate(chunk, idx, sums, counts)
                inertia += float(d.sum(dtype=np.float64))
            new = centroids.copy()
            nonempty = counts > 0
            new[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
            shift = float(((new.astype(np.float64) - centroids) ** 2).sum())
            centroids = new
            bar.update(1)
            bar.set_postfix(inertia=f"{inertia:.4g}", empty=int((~nonempty).sum()), refresh=False)
            log.debug("k-means iteration %d: inertia %.6g (before update), shift %.3g", it, inertia, shift)
            if shift <= threshold:
                break
    assignments, inertia = assign(store, centroids, chunk_rows)
    counts = np.bincount(assignments, minlength=k).astype(np.int64)
    return KMeansResult(centroids, assignments, inertia, it, counts, used_sample)


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


_TIEBREAK = "votes desc, then summed inverse Euclidean distance of all target samples desc, then id asc"


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
    return ScoreFile(
        method="fm",
        variant="kmeans",
        level="cluster",
        higher_is="keep",
        score_name="votes",
        scores=v["votes"],
        extra={"inv_dist_sum": v["inv_dist_sum"], "cluster_size": km.counts.astype(np.float64)},
        ranking=v["ranking"],
        tiebreak=_TIEBREAK,
        assignments=km.assignments,
        items=[f"cluster{j}" for j in range(len(km.counts))],
        manifest_fingerprint=manifest_fingerprint,
        **fields,
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
    return ScoreFile(
        method="fm",
        variant="over-classes",
        level="class",
        higher_is="keep",
        score_name="votes",
        scores=v["votes"],
        extra={"inv_dist_sum": v["inv_dist_sum"]},
        ranking=v["ranking"],
        tiebreak=_TIEBREAK,
        items=list(classes),
        manifest_fingerprint=manifest_fingerprint,
        **fields,
    )


def _feature_root(request: ScoreRequest, feature_dir: str | None) -> str:
    if feature_dir:
        return os.fspath(feature_dir)
    out_dir = getattr(request, "out_dir", None)
    if not out_dir:
        raise ValueError("feature mapping needs a directory for its feature cache (feature_dir=, or run through score_source / --out)")
    return os.path.join(os.fspath(out_dir), "features")


def surrogate_features(request: ScoreRequest, manifest: Any, cache_dir: str, desc: str = "embed") -> tuple[FeatureStore, dict[str, Any]]:
    """Penultimate surrogate features of ``manifest``, cached per shard in ``cache_dir``.

    Args:
        request: Surrogate, checkpoint, batch size, workers, device, seed, progress.
        manifest: The dataset to embed.
        cache_dir: Feature directory.
        desc: Progress bar label.

    Returns:
        ``(store, surrogate provenance)``.
    """
    from .. import models

    model, info = request.build_surrogate()
    model = model.to(models.resolve_device(request.device)).eval()
    identity = {
        "features": "penultimate",
        "arch": info["arch"],
        "checkpoint_sha256": info.get("checkpoint_sha256"),
        "input_size": int(info["input_size"]),
        "seed": None if info.get("checkpoint_sha256") else int(request.seed),
    }
    store = embed_manifest(
        manifest, cache_dir, lambda x: models.features(model, x), identity, input_size=identity["input_size"],
        batch_size=request.batch_size, workers=request.workers, device=request.device, progress=request.progress, desc=desc,
    )
    return store, info


#: The k-means options FM and SSP share.
KMEANS_OPTIONS = (
    MethodOption("clusters", int, "number of k-means clusters K", default_help="FM 1000, SSP the class count"),
    MethodOption("kmeans_iters", int, "maximum k-means (Lloyd) iterations"),
)


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
        raise ValueError("method 'fm' needs a target dataset (--target)")
    if not fm_over_classes and clusters < 1:
        raise ValueError(f"clusters={clusters}: must be at least 1")
    source = request.source
    root = _feature_root(request, feature_dir)
    t0 = time.perf_counter()
    store, info = surrogate_features(request, source, root, desc="fm: source")
    target_store, _ = surrogate_features(request, request.target, os.path.join(root, "target"), desc="fm: target")
    embed_s = time.perf_counter() - t0
    target = target_store.read_all()
    common = dict(
        manifest=source.path, num_samples=source.num_samples, surrogate=info, target=request.target_info(), seed=request.seed,
    )
    t0 = time.perf_counter()
    if fm_over_classes:
        labels = source.labels()
        if source.label_ext is None or not len(labels) or labels.max() < 0:
            raise ValueError(f"{source.path}: fm_over_classes needs source labels; the dataset has none")
        means, counts = class_means(store, labels, source.num_classes, chunk_rows)
        out = fm_class_scores(
            means, counts, target, list(source.classes) or [str(c) for c in range(source.num_classes)], source.fingerprint,
            params={"fm_over_classes": True, "feature_dir": os.path.abspath(root), "embed_seconds": round(embed_s, 3)}, **common,
        )
    else:
        km = kmeans(store, clusters, iters=kmeans_iters, init_sample=init_sample, chunk_rows=chunk_rows, seed=request.seed, progress=request.progress)
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
