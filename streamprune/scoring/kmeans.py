"""Lloyd's k-means streamed over chunked features, in bounded memory (FM and SSP).

The features of a large source never fit in memory at once, so every pass reads them chunk
by chunk (:class:`~.features.FeatureStore` or, for small data, :class:`~.features.ArrayStore`):
k-means++ seeds on a seeded uniform subsample, each Lloyd iteration assigns a chunk with
:func:`~streamprune.kernels.nearest_centroid` (blocked, parallel; never an N x K matrix) and
accumulates the centroid update with :func:`~streamprune.kernels.kmeans_accumulate` into
float64 sums. The stopping rule is scikit-learn's, so a result can be checked against
``sklearn.cluster.KMeans(algorithm="lloyd")`` started from the same centroids.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..atomic import atomic_open
from ..engine import make_engine
from ..errors import ArgumentError
from ..kernels import kmeans_accumulate, nearest_centroid
from .features import ArrayStore, ChunkSource
from .registry import MethodOption

__all__ = ["KMEANS_OPTIONS", "KMeansResult", "ShardedArray", "assign", "assignment_path", "cluster_features", "kmeans", "kmeans_by_shard", "kmeans_options", "kmeans_plus_plus", "mean_feature_variance"]


def kmeans_options(clusters_default: str | None = None) -> tuple[MethodOption, ...]:
    """The k-means options of a method that clusters features (FM, SSP), declared once.

    Args:
        clusters_default: How the method's default K reads in help texts, when its signature's
            default is computed (``None`` there); otherwise the signature's default is shown.

    Returns:
        ``--clusters`` and ``--kmeans-iters``.
    """
    return (
        MethodOption("clusters", int, "number of k-means clusters K", default_help=clusters_default),
        MethodOption("kmeans_iters", int, "maximum k-means (Lloyd) iterations"),
    )


#: :func:`kmeans_options` with the defaults of the method's signature (FM's K = 1000).
KMEANS_OPTIONS = kmeans_options()

log = logging.getLogger(__name__)


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

    Raises:
        ValueError: Fewer than ``k`` points.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    if n < k:
        raise ArgumentError(f"k-means++ needs at least k={k} points, got {n}")
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


def mean_feature_variance(store: ChunkSource, chunk_rows: int = 65536) -> float:
    """Mean over dimensions of the per-dimension variance, ``np.mean(np.var(X, axis=0))``.

    This is the scale scikit-learn's ``KMeans`` multiplies ``tol`` by. The chunks' means and
    sums of squared deviations are merged pairwise (Chan et al.) in float64, so features far
    from the origin do not lose their variance to cancellation as ``E[x^2] - E[x]^2`` would.

    Args:
        store: Chunked features.
        chunk_rows: Rows per chunk.

    Returns:
        The mean variance (population variance, ``ddof=0``); 0 for no samples.
    """
    n = 0
    mean = np.zeros(store.dim, dtype=np.float64)
    m2 = np.zeros(store.dim, dtype=np.float64)
    for _, chunk in store.iter_chunks(chunk_rows):
        c = chunk.astype(np.float64)
        nc = len(c)
        if nc == 0:
            continue
        c_mean = c.mean(axis=0)
        c_m2 = ((c - c_mean) ** 2).sum(axis=0)
        delta = c_mean - mean
        total = n + nc
        m2 += c_m2 + delta**2 * (n * nc / total)
        mean += delta * (nc / total)
        n = total
    return float(m2.mean() / n) if n and store.dim else 0.0


def _initial_centroids(
    store: ChunkSource, k: int, init: str | np.ndarray, init_sample: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, int | None]:
    n, dim = store.num_samples, store.dim
    if not isinstance(init, str):
        centroids = np.array(init, dtype=np.float32)
        if centroids.shape != (k, dim):
            raise ArgumentError(f"init has shape {centroids.shape}; expected ({k}, {dim})")
        return centroids, None
    if init != "k-means++":
        raise ArgumentError(f"init={init!r}: must be 'k-means++' or a [k, D] array")
    used = int(min(n, max(50 * k, 10000) if init_sample is None else max(k, init_sample)))
    # sorted rows keep the subsample's reads sequential through the per-shard cache
    rows = np.sort(rng.choice(n, size=used, replace=False)) if used < n else np.arange(n)
    return kmeans_plus_plus(store.take(rows), k, rng), used


def _lloyd_step(store: ChunkSource, centroids: np.ndarray, chunk_rows: int) -> tuple[np.ndarray, float, int]:
    """One assignment + update pass: ``(new centroids, inertia before the update, empty clusters)``."""
    k, dim = centroids.shape
    sums = np.zeros((k, dim), dtype=np.float64)
    counts = np.zeros(k, dtype=np.int64)
    inertia = 0.0
    for _, chunk in store.iter_chunks(chunk_rows):
        idx, d = nearest_centroid(chunk, centroids)
        kmeans_accumulate(chunk, idx, sums, counts)
        inertia += float(d.sum(dtype=np.float64))
    return _moved(centroids, sums, counts), inertia, int((counts == 0).sum())


def _moved(centroids: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The Lloyd update: each non-empty cluster's mean (float32); an empty one keeps its centroid."""
    new = centroids.copy()
    nonempty = counts > 0
    new[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
    return new


def _lloyd(centroids: np.ndarray, threshold: float, iters: int, step, progress: bool = False) -> tuple[np.ndarray, int]:
    """Lloyd iterations until the squared centroid shift is at most ``threshold`` (scikit-learn's rule).

    ``step(centroids) -> (new centroids, inertia before the update, empty clusters)`` is one
    pass over the features: in this process (:func:`kmeans`) or as engine tasks (:func:`kmeans_by_shard`).

    Returns:
        ``(final centroids, iterations run)``.
    """
    it = 0
    with tqdm(total=iters, desc="k-means", unit="iter", disable=not progress) as bar:
        for it in range(1, iters + 1):
            new, inertia, empty = step(centroids)
            shift = float(((new.astype(np.float64) - centroids) ** 2).sum())
            centroids = new
            bar.update(1)
            bar.set_postfix(inertia=f"{inertia:.4g}", empty=empty, refresh=False)
            log.debug("k-means iteration %d: inertia %.6g (before update), shift %.3g", it, inertia, shift)
            if shift <= threshold:
                break
    return centroids, it


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

    Each iteration reads the features once, chunk by chunk. Memory: the K x D centroids and
    float64 sums, one chunk, and the N cluster ids; never the whole feature matrix. An empty
    cluster keeps its previous centroid (scikit-learn instead moves it to a far sample, so
    results differ only when a cluster empties).

    Stopping rule, as scikit-learn's ``KMeans``: after ``iters`` iterations, or as soon as the
    squared centroid shift of an iteration, summed over all centroids, is at most
    ``tol * mean(var(X, axis=0))``: ``tol`` is relative to the **mean per-dimension
    variance** of the features (:func:`mean_feature_variance`), not their total variance.
    An iteration whose assignments repeat the previous ones moves no centroid (shift 0), so
    it also stops there, where scikit-learn declares strict convergence. The returned
    assignment is against the final centroids.

    Args:
        store: A :class:`~.features.FeatureStore`, :class:`~.features.ArrayStore`, or an array.
        k: Number of clusters.
        iters: Maximum Lloyd iterations.
        init: ``"k-means++"`` (on a seeded uniform subsample of ``init_sample`` rows) or an
            explicit ``[k, D]`` array of initial centroids.
        init_sample: Rows drawn for k-means++ (default ``min(N, max(50 * k, 10000))``).
        tol: Tolerance on the summed squared centroid shift, relative to the mean
            per-dimension variance of the features (scikit-learn's ``tol``).
        chunk_rows: Rows read at a time.
        seed: Seed of the subsample and of k-means++.
        progress: Show a progress bar over iterations.

    Returns:
        The :class:`KMeansResult`.

    Raises:
        ValueError: ``k`` out of range or a malformed ``init``.
    """
    if isinstance(store, np.ndarray):
        store = ArrayStore(store)
    n = store.num_samples
    if not 1 <= k <= n:
        raise ArgumentError(f"clusters={k}: must be between 1 and the number of samples ({n})")
    centroids, used_sample = _initial_centroids(store, k, init, init_sample, np.random.default_rng(seed))
    threshold = tol * mean_feature_variance(store, chunk_rows)
    centroids, it = _lloyd(centroids, threshold, iters, lambda c: _lloyd_step(store, c, chunk_rows), progress)
    assignments, inertia = assign(store, centroids, chunk_rows)
    counts = np.bincount(assignments, minlength=k).astype(np.int64)
    return KMeansResult(centroids, assignments, inertia, it, counts, used_sample)


# --- the same k-means as engine tasks over feature shards ------------------------------------


class ShardedArray(ChunkSource):
    """An in-memory ``[N, D]`` array cut into shards at ``offsets`` (what :class:`~.features.FeatureStore` offers).

    Args:
        x: The features.
        offsets: Each shard's first row, plus ``N`` at the end.
    """

    def __init__(self, x: np.ndarray, offsets: np.ndarray) -> None:
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.num_samples, self.dim = self.x.shape

    def shard(self, k: int) -> np.ndarray:
        """Shard ``k``'s rows."""
        return self.x[self.offsets[k] : self.offsets[k + 1]]

    def iter_chunks(self, chunk_rows: int = 65536):
        """Chunks in row order, never spanning two shards."""
        for k in range(len(self.offsets) - 1):
            arr = self.shard(k)
            for lo in range(0, len(arr), chunk_rows):
                yield int(self.offsets[k] + lo), arr[lo : lo + chunk_rows]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows."""
        return self.x[np.asarray(rows, dtype=np.int64)]


def _shard_chunks(store, k: int, chunk_rows: int):
    arr = store.shard(k)
    for lo in range(0, arr.shape[0], chunk_rows):
        yield np.asarray(arr[lo : lo + chunk_rows], dtype=np.float32)


def _moments_task(state, k: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Shard ``k``'s row count, mean and sum of squared deviations (float64), merged on the driver."""
    store, _, chunk_rows, _ = state
    n, mean, m2 = 0, np.zeros(store.dim), np.zeros(store.dim)
    for chunk in _shard_chunks(store, k, chunk_rows):
        n, mean, m2 = _merge_moments((n, mean, m2), _moments(chunk))
    return n, mean, m2


def _moments(chunk: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    c = chunk.astype(np.float64)
    mean = c.mean(axis=0)
    return len(c), mean, ((c - mean) ** 2).sum(axis=0)


def _merge_moments(a, b):
    """Chan et al.'s pairwise merge of ``(n, mean, m2)``."""
    (na, ma, sa), (nb, mb, sb) = a, b
    if nb == 0:
        return a
    total = na + nb
    delta = mb - ma
    return total, ma + delta * (nb / total), sa + sb + delta**2 * (na * nb / total)


def _lloyd_task(state, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Shard ``k``'s share of a Lloyd step: float64 sums and counts per cluster, and its inertia."""
    store, centroids, chunk_rows, _ = state
    sums = np.zeros(centroids.shape, dtype=np.float64)
    counts = np.zeros(len(centroids), dtype=np.int64)
    inertia = 0.0
    for chunk in _shard_chunks(store, k, chunk_rows):
        idx, d = nearest_centroid(chunk, centroids)
        kmeans_accumulate(chunk, idx, sums, counts)
        inertia += float(d.sum(dtype=np.float64))
    return sums, counts, inertia


def _assign_task(state, k: int) -> tuple[int, np.ndarray | None, float, np.ndarray]:
    """Shard ``k``'s cluster ids against the final centroids (or written to its file), its inertia and cluster sizes."""
    store, centroids, chunk_rows, out_dir = state
    parts, inertia = [], 0.0
    for chunk in _shard_chunks(store, k, chunk_rows):
        idx, d = nearest_centroid(chunk, centroids)
        parts.append(np.asarray(idx, dtype=np.int64))
        inertia += float(d.sum(dtype=np.float64))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    counts = np.bincount(ids, minlength=len(centroids)).astype(np.int64)
    if out_dir is None:
        return k, ids, inertia, counts
    with atomic_open(assignment_path(out_dir, k), "wb", fsync=False) as fh:
        np.save(fh, ids.astype(np.int32 if len(centroids) < 2**31 else np.int64))
    return k, None, inertia, counts


def assignment_path(out_dir: str, k: int) -> str:
    """Where :func:`kmeans_by_shard` writes shard ``k``'s cluster ids (``assignments_dir``)."""
    return os.path.join(out_dir, f"assignments-{k:07d}.npy")


def _state(store, centroids, chunk_rows, out_dir=None):
    return store, centroids, chunk_rows, out_dir


def kmeans_by_shard(
    store,
    k: int,
    *,
    engine=None,
    workers: int = 1,
    iters: int = 20,
    init: str | np.ndarray = "k-means++",
    init_sample: int | None = None,
    tol: float = 1e-4,
    chunk_rows: int = 65536,
    seed: int = 0,
    assignments_dir: str | None = None,
    progress: bool = False,
) -> KMeansResult:
    """:func:`kmeans`, with every pass over the features run as engine tasks, one per feature shard.

    Each task reads its shard's features where it runs and returns the K x D float64 sums, the
    counts and the inertia; the driver adds them up (one at a time: ``keep_results=False``) and
    moves the centroids, so the features never travel through the driver. Initialisation
    (the seeded subsample and k-means++) and the stopping rule are :func:`kmeans`'s, so for
    the same data and seed the result is the same up to float rounding of the sums' order.

    Args:
        store: A :class:`~.features.FeatureStore` or :class:`ShardedArray` (picklable;
            ``shard(k)``, ``offsets``, ``take``).
        k: Number of clusters.
        engine: ``"local"`` / ``None``, ``"ray"`` or an :class:`~streamprune.engine.Engine`.
        workers: Local processes when ``engine`` is a name.
        iters, init, init_sample, tol, chunk_rows, seed, progress: As :func:`kmeans`.
        assignments_dir: Each task writes its shard's cluster ids there (:func:`assignment_path`)
            and the result's ``assignments`` is empty: nothing of size N reaches the driver.
            ``None``: the ids come back into ``assignments`` (N x 8 bytes on the driver).

    Returns:
        The :class:`KMeansResult` (assignments in manifest order, unless written to ``assignments_dir``).
    """
    n = store.num_samples
    if not 1 <= k <= n:
        raise ValueError(f"clusters={k}: must be between 1 and the number of samples ({n})")
    runner = make_engine(engine, workers=workers)
    shards = [s for s in range(len(store.offsets) - 1) if store.offsets[s + 1] > store.offsets[s]]
    centroids, used_sample = _initial_centroids(store, k, init, init_sample, np.random.default_rng(seed))
    moments = [0, np.zeros(store.dim), np.zeros(store.dim)]

    def merge(_: int, part) -> None:
        moments[:] = _merge_moments(tuple(moments), part)

    runner.map(_moments_task, shards, setup=functools.partial(_state, store, None, chunk_rows), on_result=merge,
               desc="kmeans-variance", keep_results=False)
    threshold = tol * (float(moments[2].mean() / moments[0]) if moments[0] and store.dim else 0.0)

    def step(centroids: np.ndarray) -> tuple[np.ndarray, float, int]:
        sums = np.zeros((k, store.dim), dtype=np.float64)
        counts = np.zeros(k, dtype=np.int64)
        inertia = [0.0]

        def add(_: int, part) -> None:
            sums[:] += part[0]
            counts[:] += part[1]
            inertia[0] += part[2]

        runner.map(_lloyd_task, shards, setup=functools.partial(_state, store, centroids, chunk_rows), on_result=add,
                   desc="kmeans-step", keep_results=False)
        return _moved(centroids, sums, counts), inertia[0], int((counts == 0).sum())

    centroids, it = _lloyd(centroids, threshold, iters, step, progress)
    assignments = np.empty(n if assignments_dir is None else 0, dtype=np.int64)
    total = [0.0]
    sizes = np.zeros(k, dtype=np.int64)

    def place(_: int, part) -> None:
        s, ids, inertia, counts = part
        if ids is not None:
            assignments[store.offsets[s] : store.offsets[s] + len(ids)] = ids
        total[0] += inertia
        sizes[:] += counts

    if assignments_dir is not None:
        os.makedirs(assignments_dir, exist_ok=True)
    runner.map(_assign_task, shards, setup=functools.partial(_state, store, centroids, chunk_rows, assignments_dir),
               on_result=place, desc="kmeans-assign", keep_results=False)
    counts = sizes
    return KMeansResult(centroids, assignments, total[0], it, counts, used_sample)


def cluster_features(store: ChunkSource | np.ndarray, k: int, *, engine=None, **options) -> KMeansResult:
    """The k-means a method runs (FM, SSP, SemDeDup): as engine tasks when it has an engine and sharded features.

    Args:
        store: The features; sharded when it has ``offsets`` and ``shard(k)`` (a
            :class:`~.features.FeatureStore`, or a :class:`~.features.RowTransform` of one).
        k: Number of clusters.
        engine: The scoring request's engine: ``None`` runs :func:`kmeans` in this process;
            otherwise, with sharded features, :func:`kmeans_by_shard` on it (the same result
            for the same data and seed, to float rounding).
        **options: :func:`kmeans`'s options (``iters``, ``init_sample``, ``chunk_rows``, ``seed``, ``progress``).

    Returns:
        The :class:`KMeansResult`.
    """
    if engine is None or getattr(store, "offsets", None) is None:
        return kmeans(store, k, **options)
    return kmeans_by_shard(store, k, engine=engine, **options)
