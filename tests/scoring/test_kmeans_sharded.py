"""k-means as engine tasks over feature shards equals the single-process k-means."""

from __future__ import annotations

import numpy as np
import pytest

from streamprune.engine import LocalEngine
from streamprune.scoring.kmeans import ShardedArray, kmeans, kmeans_by_shard


def _blobs(n: int, dim: int, centres: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=4.0, size=(centres, dim))
    return (means[rng.integers(0, centres, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.integration
@pytest.mark.parametrize("processes", [1, 2])
def test_sharded_kmeans_equals_single_process_for_the_same_seed(processes):
    x = _blobs(1500, 6, 5, seed=processes)
    offsets = np.array([0, 200, 200, 700, 1100, 1500])  # one empty shard
    for seed in (0, 3):
        one = kmeans(x, 5, iters=15, seed=seed, chunk_rows=128, init_sample=600)
        many = kmeans_by_shard(ShardedArray(x, offsets), 5, engine=LocalEngine(processes), iters=15, seed=seed,
                               chunk_rows=128, init_sample=600)
        assert many.iterations == one.iterations and many.init_sample == one.init_sample
        np.testing.assert_allclose(many.centroids, one.centroids, rtol=1e-5, atol=1e-5)
        assert np.array_equal(many.assignments, one.assignments)
        assert np.array_equal(many.counts, one.counts)
        assert many.inertia == pytest.approx(one.inertia, rel=1e-9)


def test_sharded_kmeans_checks_k():
    with pytest.raises(ValueError, match="clusters=0"):
        kmeans_by_shard(ShardedArray(np.zeros((4, 2)), np.array([0, 4])), 0)


def test_assignments_written_per_shard_equal_the_returned_ones(tmp_path):
    from streamprune.scoring.kmeans import assignment_path

    x = _blobs(600, 4, 3, seed=9)
    offsets = np.array([0, 250, 250, 600])
    store = ShardedArray(x, offsets)
    kept = kmeans_by_shard(store, 3, iters=5, seed=1)
    written = kmeans_by_shard(store, 3, iters=5, seed=1, assignments_dir=str(tmp_path / "a"))
    assert len(written.assignments) == 0 and np.array_equal(written.counts, kept.counts)
    ids = np.concatenate([np.load(assignment_path(str(tmp_path / "a"), s)) for s in (0, 2)])
    assert np.array_equal(ids, kept.assignments)
