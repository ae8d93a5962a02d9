"""FM, SSP and SemDeDup give the same scores with k-means in this process and as engine tasks over feature shards."""

from __future__ import annotations

import numpy as np
import pytest

from streamprune.engine import LocalEngine
from streamprune.scoring import dedup as dedup_module
from streamprune.scoring import fm as fm_module
from streamprune.scoring import training_based as training_module
from streamprune.scoring.features import ArrayStore
from streamprune.scoring.kmeans import ShardedArray
from streamprune.scoring.request import ScoreRequest


@pytest.fixture
def uneven_dataset(tmp_path, sample_factory, shard_writer):
    """150 samples in shards of 23 (the last one short)."""
    return shard_writer(sample_factory(150, seed=3), tmp_path / "uneven", samples_per_shard=23)


def _blobs(n: int, dim: int, centres: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=5.0, size=(centres, dim))
    return (means[rng.integers(0, centres, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


def _features(module, monkeypatch, source, x: np.ndarray, target: np.ndarray | None = None) -> None:
    """The method's embedding pass replaced by fixed features: the source's cut into its shards (as the feature cache is)."""

    def fake(request, manifest, root, desc=""):
        if manifest is source and "target" not in root:
            return ShardedArray(x, source.shard_offsets), {"arch": "test"}
        return ArrayStore(target), {"arch": "test"}

    monkeypatch.setattr(module, "surrogate_features", fake)


def _both(method, source, tmp_path, target=None, **options):
    """The method's scores with no engine (in-process k-means) and on an engine of two processes."""
    common = dict(source=source, target=target, surrogate="test", progress=False, seed=4)
    here = method(ScoreRequest(out_dir=str(tmp_path / "a"), **common), **options)
    with LocalEngine(2) as engine:
        there = method(ScoreRequest(out_dir=str(tmp_path / "b"), engine=engine, **common), **options)
    assert engine.reports and any(r.desc == "kmeans-step" for r in engine.reports)  # the engine really ran k-means
    return here, there


def test_fm_scores_equal_with_kmeans_on_the_engine(tmp_path, monkeypatch, uneven_dataset):
    x = _blobs(uneven_dataset.num_samples, 6, 5, seed=1)
    _features(fm_module, monkeypatch, uneven_dataset, x, target=x[::7] + 0.1)
    here, there = _both(fm_module.fm, uneven_dataset, tmp_path, target=uneven_dataset, clusters=5, kmeans_iters=15)
    assert np.array_equal(here.assignments, there.assignments)
    assert np.array_equal(here.scores, there.scores) and np.array_equal(here.ranking, there.ranking)
    np.testing.assert_allclose(here.extra["inv_dist_sum"], there.extra["inv_dist_sum"], rtol=1e-6)
    assert here.params["iterations_run"] == there.params["iterations_run"]
    assert here.params["inertia"] == pytest.approx(there.params["inertia"], rel=1e-9)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_ssp_scores_equal_with_kmeans_on_the_engine(tmp_path, monkeypatch, uneven_dataset, distance):
    x = _blobs(uneven_dataset.num_samples, 5, 4, seed=2)
    _features(training_module, monkeypatch, uneven_dataset, x)
    here, there = _both(training_module.ssp, uneven_dataset, tmp_path, clusters=4, kmeans_iters=15, distance=distance)
    assert np.array_equal(here.extra["cluster"], there.extra["cluster"])
    np.testing.assert_allclose(here.scores, there.scores, rtol=1e-5, atol=1e-6)
    assert here.params["iterations_run"] == there.params["iterations_run"]


def test_semdedup_scores_equal_with_kmeans_on_the_engine(tmp_path, monkeypatch, uneven_dataset):
    n = uneven_dataset.num_samples
    x = np.random.default_rng(3).normal(size=(n, 32)).astype(np.float32)  # random directions: no pair alike by chance
    x[n // 2 :] = x[: n - n // 2] + 1e-4  # planted duplicates
    _features(dedup_module, monkeypatch, uneven_dataset, x)
    here, there = _both(dedup_module.semdedup, uneven_dataset, tmp_path, clusters=3, eps=0.01)
    np.testing.assert_allclose(here.scores, there.scores, rtol=1e-6, atol=1e-9)
    assert here.params["duplicates"] == there.params["duplicates"] == n // 2
    assert np.array_equal(here.ranking, there.ranking)
