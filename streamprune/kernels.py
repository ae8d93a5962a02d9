"""Numba kernels for the hot loops of scoring and selection.

Each kernel has a plain NumPy equivalent in the tests; these versions exist because they
stream in bounded memory and run in parallel. The nearest-centroid search never builds the
full N x K distance matrix: it works on row blocks, each block's dot products come from one
BLAS call (``||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2``), and blocks run in parallel.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["vote_histogram", "nearest_centroid", "kmeans_accumulate", "pack_mask", "unpack_mask"]


@numba.njit(cache=True)
def _vote_histogram(labels: np.ndarray, weights: np.ndarray, n_bins: int) -> np.ndarray:
    out = np.zeros(n_bins, dtype=np.float64)
    for i in range(labels.shape[0]):
        c = labels[i]
        if c < 0 or c >= n_bins:
            raise ValueError("label out of range")
        out[c] += weights[i]
    return out


def vote_histogram(labels: np.ndarray, n_bins: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Count (or sum weights of) votes per bin.

    Args:
        labels: Integer bin per vote, each in ``[0, n_bins)``.
        n_bins: Number of bins.
        weights: Optional weight per vote (default 1).

    Returns:
        ``float64[n_bins]`` vote totals.

    Raises:
        ValueError: A label is outside ``[0, n_bins)``.
    """
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if weights is None:
        weights = np.ones(labels.shape[0], dtype=np.float64)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    if weights.shape != labels.shape:
        raise ValueError(f"weights shape {weights.shape} != labels shape {labels.shape}")
    return _vote_histogram(labels, weights, int(n_bins))


@numba.njit(parallel=True, cache=True)
def _nearest_centroid(x: np.ndarray, c: np.ndarray, c_sq: np.ndarray, block: int, out_idx: np.ndarray, out_d: np.ndarray) -> None:
    n = x.shape[0]
    k = c.shape[0]
    n_blocks = (n + block - 1) // block
    ct = np.ascontiguousarray(c.T)
    for b in numba.prange(n_blocks):
        lo = b * block
        hi = min(n, lo + block)
        xb = x[lo:hi]
        dots = xb @ ct
        for i in range(hi - lo):
            best = np.inf
            arg = 0
            row = dots[i]
            for j in range(k):
                d = c_sq[j] - 2.0 * row[j]
                if d < best:
                    best = d
                    arg = j
            x_sq = 0.0
            for t in range(x.shape[1]):
                x_sq += xb[i, t] * xb[i, t]
            out_idx[lo + i] = arg
            out_d[lo + i] = max(best + x_sq, 0.0)


def nearest_centroid(x: np.ndarray, centroids: np.ndarray, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Index of and squared distance to the nearest centroid for each row, in row blocks.

    Args:
        x: ``[N, D]`` points (float32 or float16; computed in float32).
        centroids: ``[K, D]`` centroids.
        block: Rows per block; peak extra memory is about ``threads * block * K * 4`` bytes.

    Returns:
        ``(int64[N] nearest index, float32[N] squared distance)``; ties go to the lower index.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1]:
        raise ValueError(f"shapes {x.shape} and {c.shape} do not match as [N, D] and [K, D]")
    idx = np.empty(x.shape[0], dtype=np.int64)
    dist = np.empty(x.shape[0], dtype=np.float32)
    if x.shape[0]:
        c_sq = (c.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
        _nearest_centroid(x, c, c_sq, int(block), idx, dist)
    return idx, dist


@numba.njit(cache=True)
def _kmeans_accumulate(x: np.ndarray, assign: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> None:
    d = x.shape[1]
    for i in range(x.shape[0]):
        j = assign[i]
        counts[j] += 1
        for t in range(d):
            sums[j, t] += x[i, t]


def kmeans_accumulate(x: np.ndarray, assign: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> None:
    """Add a chunk's points to per-cluster sums and counts (the k-means update, streamed).

    Args:
        x: ``[N, D]`` chunk of points.
        assign: ``[N]`` cluster of each point.
        sums: ``float64[K, D]`` running sums, updated in place.
        counts: ``int64[K]`` running counts, updated in place.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    assign = np.ascontiguousarray(assign, dtype=np.int64)
    if len(assign) and (assign.min() < 0 or assign.max() >= sums.shape[0]):
        raise ValueError(f"cluster ids must be in [0, {sums.shape[0]})")
    _kmeans_accumulate(x, assign, sums, counts)


@numba.njit(cache=True)
def _pack_mask(keep: np.ndarray, out: np.ndarray) -> None:
    for i in range(keep.shape[0]):
        if keep[i]:
            out[i >> 3] |= np.uint8(1 << (i & 7))


def pack_mask(keep: np.ndarray) -> np.ndarray:
    """Pack booleans into bytes, bit i of byte i//8 = keep[i] (``np.packbits`` little order).

    Args:
        keep: Boolean array.

    Returns:
        ``uint8[ceil(N/8)]``.
    """
    keep = np.ascontiguousarray(keep, dtype=np.bool_)
    out = np.zeros((keep.shape[0] + 7) // 8, dtype=np.uint8)
    _pack_mask(keep, out)
    return out


def unpack_mask(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_mask`.

    Args:
        packed: Packed bytes.
        n: Number of booleans.

    Returns:
        ``bool[n]``.
    """
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little", count=n).astype(bool)
