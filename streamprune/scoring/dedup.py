"""Deduplication: semantic (SemDeDup) and exact (byte-identical samples), as sample-level scores.

``docs/deduplication.md`` (the methods documentation's "Deduplication" section) states both
definitions; in short:

**SemDeDup** (Abbas et al. 2023, arXiv 2303.09540; reference code ``facebookresearch/SemDeDup``):

1. embed every source sample (the surrogate's penultimate features, the per-shard cache FM
   uses: :func:`.features.surrogate_features`) and L2-normalise each feature;
2. cluster the normalised features with k-means (:func:`.kmeans.kmeans`, K = ``clusters``);
   centroids are L2-normalised afterwards (on the unit sphere this is the reference's
   spherical k-means up to the update rule);
3. within each cluster, order the members by cosine distance to the centroid,
   ``1 - <x, c>``, **descending** (the reference's ``keep_hard=True``: the member farthest
   from the centroid comes first and is kept), ties by sample id;
4. for member ``j`` in that order, ``M_j = max_{i < j} <x_i, x_j>``: the largest cosine
   similarity to ANY member ranked before it, removed or not (the reference computes
   ``max(triu(X X^T, diagonal=1), dim=0)``; it does not walk greedily over kept members only).
   The first member of a cluster has no predecessor: ``M = -1``;
5. a sample is a duplicate when ``M_j > 1 - eps``.

The threshold: ``eps`` (``--eps``) sets it directly; otherwise ``target_ratio`` (``--target-ratio``,
default :data:`DEFAULT_TARGET_RATIO` = 0.5) picks the eps that marks that fraction of the source
as duplicates (:func:`eps_for_ratio`), which is how the paper states its operating points (the
fraction of LAION-440M kept; its headline keeps 50%). A fixed eps has no meaning independent of
the embedding: with a small supervised surrogate most cosine similarities exceed 0.95, and the
earlier default eps = 0.05 flagged 8,206 of 8,600 samples of the planted-duplicate benchmark.
A run that flags more than half of the source logs a warning.

The score is ``M`` (``higher_is = "prune"``: the most similar to an earlier member are
removed first; ``harder = null``), so the mask at ratio r removes the ``round(N r)`` samples
with the largest ``M``, and the mask at ``ratio = params.ratio_at_eps`` is exactly the eps
deduplication (every duplicate, nothing else: duplicates rank last because their ``M`` is
larger than every non-duplicate's). ``extra.duplicate`` (1/0 at ``eps``), ``extra.cluster`` and
``extra.distance_to_centroid`` are stored; :func:`mask_from_duplicates` (``streamprune mask
scores MANIFEST F --duplicates``) keeps the non-duplicates.

**Exact deduplication** (``exact-dedup``): samples are exact duplicates when they have the same
member extensions in the same order and byte-identical member data. Candidates are the
samples whose per-sample checksum (``ShardIndex.checksums``, recorded by ``shard`` and
``index``) occurs more than once; each candidate's member data is then read by byte range
(only the candidates are read) and compared byte for byte, so a hash collision never drops a
sample. The first occurrence in manifest order is kept. Score 1 (kept) / 0 (duplicate),
``higher_is = "keep"``, ranking: kept samples first, then duplicates, each by id;
``extra.duplicate_of`` is the manifest position of the first occurrence (-1 for kept samples).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from ..errors import ArgumentError, StreamPruneError
from ..keys import read_member_data
from ..manifest import Manifest, ManifestLike, open_manifest
from ..masks import KeepMask, mask_from_bool
from ..scores import ScoreFile
from .features import ArrayStore, ChunkSource, RowTransform, feature_root, surrogate_features
from .kmeans import cluster_features
from .registry import MethodOption, register_score
from .request import ScoreRequest

__all__ = [
    "DEFAULT_TARGET_RATIO",
    "NormalisedStore",
    "eps_for_ratio",
    "exact_dedup",
    "exact_duplicates",
    "mask_from_duplicates",
    "max_earlier_similarity",
    "semdedup",
    "semdedup_arrays",
]

log = logging.getLogger(__name__)

#: SemDeDup's default: the eps that marks half the source as duplicates (the paper's headline
#: LAION-440M operating point keeps 50%).
DEFAULT_TARGET_RATIO = 0.5


def eps_for_ratio(max_similarity: np.ndarray, target_ratio: float) -> float:
    """The eps at which ``round(N * target_ratio)`` samples are duplicates (``M > 1 - eps``), or fewer on ties.

    Args:
        max_similarity: ``M`` of every sample (:func:`max_earlier_similarity` within clusters).
        target_ratio: Fraction of the source to mark as duplicates, in ``[0, 1]``.

    Returns:
        eps = ``1 - t`` where ``t`` is the ``(k + 1)``-th largest ``M``; samples tied at ``t`` are
        not duplicates, so ties can only make fewer than ``k``. Rounding can make a cosine
        similarity exceed 1 by a few ulps, so eps may be slightly negative (not clipped: clipping
        would flag every such sample).

    Raises:
        ArgumentError: ``target_ratio`` outside ``[0, 1]``.
    """
    if not 0.0 <= target_ratio <= 1.0:
        raise ArgumentError(f"target_ratio={target_ratio}: must be in [0, 1] (the fraction of samples marked duplicate)")
    m = np.sort(np.asarray(max_similarity, dtype=np.float64))[::-1]
    n = len(m)
    k = min(int(np.floor(n * target_ratio + 0.5)), n)
    if n == 0:
        return 0.0
    threshold = m[k] if k < n else -1.0  # every M >= -1: at k = n, M > -1 leaves only first members out
    return float(1.0 - threshold)


class NormalisedStore(RowTransform):
    """Rows of another chunked feature source, each scaled to unit L2 norm (zero rows stay zero).

    Args:
        inner: The features (:class:`~.features.FeatureStore`, :class:`~.features.ArrayStore`).
    """

    @staticmethod
    def normalise(x: np.ndarray) -> np.ndarray:
        """``x`` with every row divided by its L2 norm (float32)."""
        x = np.asarray(x, dtype=np.float32)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(norms > 0, norms, 1.0)

    transform = normalise


def max_earlier_similarity(x: np.ndarray, block: int = 1024) -> np.ndarray:
    """``M_j = max_{i < j} <x_i, x_j>`` for rows in the given order (``-1`` for row 0).

    The reference's ``max(triu(X X^T, diagonal=1), dim=0)``, computed in ``block x block``
    tiles of the upper triangle (float64), so memory stays ``O(block^2)`` for any cluster size.

    Args:
        x: ``[m, D]`` unit-norm rows, in the cluster's walk order.
        block: Tile side.

    Returns:
        ``float64[m]``.
    """
    x = np.asarray(x, dtype=np.float64)
    m = len(x)
    out = np.full(m, -1.0)
    for j0 in range(0, m, block):
        cols = x[j0 : j0 + block]
        best = np.full(len(cols), -np.inf)
        for i0 in range(0, j0 + len(cols), block):
            rows = x[i0 : min(i0 + block, j0 + len(cols))]
            sim = rows @ cols.T
            i_idx = np.arange(i0, i0 + len(rows))[:, None]
            j_idx = np.arange(j0, j0 + len(cols))[None, :]
            sim[i_idx >= j_idx] = -np.inf
            np.maximum(best, sim.max(axis=0), out=best)
        out[j0 : j0 + len(cols)] = np.where(np.isfinite(best), best, -1.0)
    return out


def semdedup_arrays(
    features: ChunkSource | np.ndarray,
    clusters: int,
    eps: float,
    *,
    kmeans_iters: int = 20,
    seed: int = 0,
    chunk_rows: int = 65536,
    init_sample: int | None = None,
    progress: bool = False,
    engine: Any = None,
) -> dict[str, Any]:
    """SemDeDup over features (the module docstring's steps 1-5), without any files.

    Args:
        features: ``[N, D]`` features (array or chunked store), not necessarily normalised.
        clusters: K.
        eps: Duplicate threshold: ``M > 1 - eps`` is a duplicate.
        kmeans_iters: Maximum Lloyd iterations.
        seed: k-means seed.
        chunk_rows: Rows read at a time.
        init_sample: Rows k-means++ is seeded on.
        progress: k-means progress bar.
        engine: Run k-means as engine tasks over the feature shards (:func:`~.kmeans.cluster_features`).

    Returns:
        ``{"max_similarity": float64[N], "duplicate": bool[N], "assignments": int64[N],
        "distance": float64[N] (cosine distance to the cluster centroid), "walk_order":
        int64[N] (cluster asc, then distance desc, then id), "kmeans": KMeansResult}``.

    Raises:
        ValueError: ``eps`` outside ``[0, 2]`` or a bad ``clusters``.
    """
    if not 0.0 <= eps <= 2.0:
        raise ArgumentError(f"eps={eps}: must be in [0, 2] (duplicates have cosine similarity > 1 - eps)")
    store = NormalisedStore(ArrayStore(features) if isinstance(features, np.ndarray) else features)
    n = store.num_samples
    km = cluster_features(store, clusters, engine=engine, iters=kmeans_iters, seed=seed, chunk_rows=chunk_rows, init_sample=init_sample,
                          progress=progress)
    centroids = NormalisedStore.normalise(km.centroids).astype(np.float64)
    assign = km.assignments
    distance = np.empty(n, dtype=np.float64)
    for start, chunk in store.iter_chunks(chunk_rows):
        a = assign[start : start + len(chunk)]
        distance[start : start + len(chunk)] = 1.0 - np.einsum("ij,ij->i", chunk.astype(np.float64), centroids[a])
    ids = np.arange(n, dtype=np.int64)
    order = np.lexsort((ids, -distance, assign))
    bounds = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=clusters))])
    max_sim = np.full(n, -1.0)
    # gather whole clusters in batches of about chunk_rows rows: one read of each shard per batch
    c = 0
    while c < clusters:
        c_end = c + 1
        while c_end < clusters and bounds[c_end + 1] - bounds[c] <= chunk_rows:
            c_end += 1
        rows = order[bounds[c] : bounds[c_end]]
        x = store.take(rows) if len(rows) else np.zeros((0, store.dim), np.float32)
        for j in range(c, c_end):
            a, b = bounds[j] - bounds[c], bounds[j + 1] - bounds[c]
            if b - a > 1:
                max_sim[rows[a:b]] = max_earlier_similarity(x[a:b])
        c = c_end
    return {
        "max_similarity": max_sim, "duplicate": max_sim > 1.0 - eps, "assignments": assign, "distance": distance,
        "walk_order": order, "kmeans": km,
    }


@register_score(
    "semdedup",
    options=(
        MethodOption("eps", float, "SemDeDup threshold: a sample whose cosine similarity to a member ranked before it in its "
                     "cluster exceeds 1 - eps is a duplicate", default_help="chosen by --target-ratio"),
        MethodOption("target_ratio", float, "SemDeDup: choose eps so that this fraction of the source is marked duplicate "
                     "(not with --eps)", default_help="0.5, the paper's headline operating point"),
        MethodOption("clusters", int, "number of k-means clusters K", default_help="N / 1000, at least 1"),
        MethodOption("kmeans_iters", int, "maximum k-means (Lloyd) iterations"),
    ),
)
def semdedup(
    request: ScoreRequest,
    eps: float | None = None,
    target_ratio: float | None = None,
    clusters: int | None = None,
    kmeans_iters: int = 20,
    feature_dir: str | None = None,
    chunk_rows: int = 65536,
    init_sample: int | None = None,
) -> ScoreFile:
    """SemDeDup scores of the source (sample level; see the module docstring).

    Args:
        request: Source, surrogate and run settings (no target).
        eps: Duplicate threshold (``M > 1 - eps``); default: chosen by ``target_ratio``.
        target_ratio: Fraction of the source to mark duplicate, which picks eps
            (:func:`eps_for_ratio`); default :data:`DEFAULT_TARGET_RATIO` when ``eps`` is not given.
        clusters: K (default ``max(1, round(N / 1000))``, capped at N).
        kmeans_iters: Maximum Lloyd iterations.
        feature_dir: Feature cache (default ``OUT/features``, shared with FM and Moderate).
        chunk_rows: Rows read at a time.
        init_sample: Rows k-means++ is seeded on.

    Returns:
        The scores (``params``: ``eps``, ``eps_chosen_by``, ``target_ratio``, ``duplicates``, ...).

    Raises:
        ArgumentError: Both ``eps`` and ``target_ratio`` given, or either out of range.
    """
    if eps is not None and target_ratio is not None:
        raise ArgumentError(f"semdedup: give eps ({eps}) or target_ratio ({target_ratio}), not both")
    if target_ratio is not None and not 0.0 <= target_ratio <= 1.0:
        raise ArgumentError(f"target_ratio={target_ratio}: must be in [0, 1] (the fraction of samples marked duplicate)")
    source = request.source
    n = source.num_samples
    k = int(clusters) if clusters is not None else max(1, round(n / 1000))
    k = min(k, n)
    root = feature_root(request, feature_dir)
    t0 = time.perf_counter()
    store, info = surrogate_features(request, source, root, desc="semdedup: embed")
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = semdedup_arrays(store, k, 0.0 if eps is None else eps, kmeans_iters=kmeans_iters, seed=request.seed, chunk_rows=chunk_rows,
                        init_sample=init_sample, progress=request.progress, engine=request.engine)
    dedup_s = time.perf_counter() - t0
    max_sim = r["max_similarity"]
    chosen_by = "eps" if eps is not None else "target_ratio"
    if eps is None:  # M does not depend on eps: the threshold is picked afterwards
        target_ratio = DEFAULT_TARGET_RATIO if target_ratio is None else float(target_ratio)
        eps = eps_for_ratio(max_sim, target_ratio)
        r["duplicate"] = np.asarray(max_sim, dtype=np.float64) > 1.0 - eps  # float64: a float32 compare would round the threshold
    dups = int(r["duplicate"].sum())
    if n and dups > n / 2:
        log.warning("%s: SemDeDup at eps=%g marks %d of %d samples (%.0f%%) as duplicates, more than half; with this embedding "
                    "that is rarely duplication: check --eps or pass --target-ratio", source.path, eps, dups, n, 100.0 * dups / n)
    return request.score_file(
        "semdedup", "sample", max_sim, higher_is="prune", score_name="max_similarity_to_earlier", variant="reference", harder=None,
        extra={"duplicate": r["duplicate"].astype(np.float64), "cluster": r["assignments"].astype(np.float64),
               "distance_to_centroid": r["distance"]},
        surrogate=info,
        params={
            "eps": eps, "eps_chosen_by": chosen_by, "target_ratio": target_ratio if chosen_by == "target_ratio" else None, "clusters": k, "kmeans_iters": kmeans_iters, "iterations_run": r["kmeans"].iterations,
            "duplicates": dups, "ratio_at_eps": dups / n if n else 0.0, "walk": "distance to centroid desc (keep_hard)",
            "removed_if": "max cosine similarity to any earlier member of its cluster > 1 - eps",
            "feature_dir": os.path.abspath(root), "embed_seconds": round(embed_s, 3), "dedup_seconds": round(dedup_s, 3),
        },
    )


def _checksums(manifest: Manifest) -> tuple[np.ndarray, str]:
    parts = []
    algorithms = set()
    for k in range(len(manifest.shards)):
        index = manifest.index(k)
        if index.checksums is None and len(index):
            raise StreamPruneError(
                f"{manifest.shard_path(k)}: its index records no per-sample checksums; re-run `streamprune index` "
                "(checksums are on by default) before exact deduplication"
            )
        if len(index):
            algorithms.add(index.checksum_algorithm)
            parts.append(np.asarray(index.checksums, dtype=np.uint64))
    if len(algorithms) > 1:
        raise StreamPruneError(f"{manifest.path}: shards were indexed with different checksum algorithms {sorted(algorithms)}; re-index them")
    return (np.concatenate(parts) if parts else np.zeros(0, np.uint64)), (algorithms.pop() if algorithms else "")


def exact_duplicates(manifest: Manifest, batch_bytes: int = 64 << 20) -> tuple[np.ndarray, dict[str, Any]]:
    """The first occurrence of each exact duplicate (module docstring), confirmed byte for byte.

    Args:
        manifest: The dataset (its indexes must record checksums).
        batch_bytes: About how many candidate bytes are read and held at a time.

    Returns:
        ``(duplicate_of, stats)``: ``int64[N]``, the manifest position of the first identical
        sample, ``-1`` for samples kept (first occurrences and unique samples); ``stats``:
        ``checksum``, ``candidates`` (samples sharing a checksum), ``duplicates``,
        ``collisions`` (candidates whose checksum matched but bytes did not), ``bytes_read``.

    Raises:
        StreamPruneError: An index has no checksums, or shards use different algorithms.
    """
    sums, algorithm = _checksums(manifest)
    n = len(sums)
    dup_of = np.full(n, -1, dtype=np.int64)
    stats = {"checksum": algorithm, "candidates": 0, "duplicates": 0, "collisions": 0, "bytes_read": 0}
    if n == 0:
        return dup_of, stats
    _, inverse, counts = np.unique(sums, return_inverse=True, return_counts=True)
    candidates = np.flatnonzero(counts[inverse] > 1)
    stats["candidates"] = len(candidates)
    if not len(candidates):
        return dup_of, stats
    groups = candidates[np.argsort(inverse[candidates], kind="stable")]  # by checksum, then position
    group_of = inverse[groups]
    starts = np.flatnonzero(np.r_[True, group_of[1:] != group_of[:-1]])
    ends = np.r_[starts[1:], len(groups)]
    sizes = manifest.sample_bytes()
    g = 0
    while g < len(starts):
        g_end, held = g, 0
        while g_end < len(starts) and (g_end == g or held + sizes[groups[starts[g_end] : ends[g_end]]].sum() <= batch_bytes):
            held += int(sizes[groups[starts[g_end] : ends[g_end]]].sum())
            g_end += 1
        batch = groups[starts[g] : ends[g_end - 1]]
        data = {pos: parts for pos, parts in read_member_data(manifest, batch)}
        stats["bytes_read"] += sum(len(d) for parts in data.values() for _, d in parts)
        for j in range(g, g_end):
            representatives: list[int] = []  # first occurrences of the distinct contents in this group
            for pos in groups[starts[j] : ends[j]].tolist():  # ascending: manifest order
                same = next((r for r in representatives if data[r] == data[pos]), None)
                if same is None:
                    if representatives:
                        stats["collisions"] += 1
                    representatives.append(pos)
                else:
                    dup_of[pos] = same
        g = g_end
    stats["duplicates"] = int((dup_of >= 0).sum())
    return dup_of, stats


@register_score("exact-dedup")
def exact_dedup(request: ScoreRequest) -> ScoreFile:
    """Exact deduplication scores (sample level, 1 kept / 0 duplicate; module docstring).

    Args:
        request: The source (no surrogate, no target).

    Returns:
        The scores.
    """
    source = request.source
    t0 = time.perf_counter()
    dup_of, stats = exact_duplicates(source)
    keep = (dup_of < 0).astype(np.float64)
    n = len(keep)
    return request.score_file(
        "exact-dedup", "sample", keep, higher_is="keep", score_name="first_occurrence", harder=None,
        extra={"duplicate": 1.0 - keep, "duplicate_of": dup_of.astype(np.float64)},
        params={**stats, "ratio_at_eps": stats["duplicates"] / n if n else 0.0, "seconds": round(time.perf_counter() - t0, 3),
                "identical_if": "same member extensions in order and byte-identical member data"},
    )


def mask_from_duplicates(manifest: ManifestLike, scores: ScoreFile) -> KeepMask:
    """Keep every sample a deduplication scores file does not flag (``extra.duplicate == 0``).

    Args:
        manifest: The dataset (must match the scores): a :class:`Manifest`, or its
            ``manifest.json`` (path or URL) or directory.
        scores: ``semdedup`` (at its ``eps``) or ``exact-dedup`` scores.

    Returns:
        The mask; provenance names the method, the scores file and ``eps`` (SemDeDup).

    Raises:
        ValueError: The scores carry no duplicate flags.
    """
    manifest = open_manifest(manifest)
    scores.check(manifest)
    if "duplicate" not in scores.extra or scores.level != "sample":
        raise ArgumentError(f"{scores.path or 'scores'}: method {scores.method!r} records no per-sample duplicate flags "
                         "(use semdedup or exact-dedup scores)")
    return mask_from_bool(
        manifest, scores.extra["duplicate"] == 0, method=scores.method, selector="duplicates",
        scores=os.path.abspath(scores.path) if scores.path else None, eps=scores.params.get("eps"),
    )
