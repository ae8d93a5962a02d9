import numpy as np
import pytest

from streamprune.kernels import kmeans_accumulate, nearest_centroid, pack_mask, unpack_mask, vote_histogram


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vote_histogram_matches_bincount(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 37, size=5000)
    weights = rng.random(5000)
    np.testing.assert_array_equal(vote_histogram(labels, 40), np.bincount(labels, minlength=40))
    np.testing.assert_allclose(vote_histogram(labels, 40, weights), np.bincount(labels, weights, minlength=40))


def test_vote_histogram_rejects_out_of_range_labels():
    with pytest.raises(ValueError):
        vote_histogram(np.array([0, 5]), 5)


@pytest.mark.parametrize("n,k,d,block", [(1000, 17, 8, 64), (3001, 100, 64, 512), (5, 3, 2, 2048), (0, 4, 3, 16)])
def test_nearest_centroid_matches_numpy_reference(n, k, d, block):
    rng = np.random.default_rng(n + k)
    x = rng.normal(size=(n, d)).astype(np.float32)
    c = rng.normal(size=(k, d)).astype(np.float32)
    idx, dist = nearest_centroid(x, c, block=block)
    ref_d = ((x[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(-1)
    ref_idx = ref_d.argmin(1) if n else np.zeros(0, dtype=np.int64)
    # Float32 rounding can swap near-ties; those must be ties within tolerance.
    chosen = ref_d[np.arange(n), idx] if n else np.zeros(0)
    best = ref_d[np.arange(n), ref_idx] if n else np.zeros(0)
    np.testing.assert_allclose(chosen, best, rtol=1e-4, atol=1e-4)
    assert (idx == ref_idx).mean() > 0.999 if n else True
    np.testing.assert_allclose(dist, best, rtol=1e-3, atol=1e-3)


def test_nearest_centroid_checks_shapes():
    with pytest.raises(ValueError):
        nearest_centroid(np.zeros((3, 4)), np.zeros((2, 5)))


def test_kmeans_accumulate_streams_chunks_like_a_full_pass():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    assign = rng.integers(0, 9, size=2000)
    sums = np.zeros((9, 16))
    counts = np.zeros(9, dtype=np.int64)
    for lo in range(0, 2000, 300):
        kmeans_accumulate(x[lo : lo + 300], assign[lo : lo + 300], sums, counts)
    ref_sums = np.stack([x[assign == j].astype(np.float64).sum(0) for j in range(9)])
    np.testing.assert_allclose(sums, ref_sums, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(counts, np.bincount(assign, minlength=9))


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1001])
def test_pack_mask_matches_numpy_packbits(n):
    keep = np.random.default_rng(n).random(n) < 0.4
    packed = pack_mask(keep)
    np.testing.assert_array_equal(packed, np.packbits(keep, bitorder="little"))
    np.testing.assert_array_equal(unpack_mask(packed, n), keep)
