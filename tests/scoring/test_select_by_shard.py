"""``mask_from_scores`` selects ``top`` by a histogram cut (no global sort): the kept set is the old argsort's.

The reference here is the path the library took before: a full ``np.lexsort`` of the scores (and
tie keys, then id), the first ``round(N * (1 - ratio))`` of it, a boolean per sample. It is
written out in this file, independent of the library's ranking code.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamprune.engine import LocalEngine
from streamprune.masks import MaskFile
from streamprune.ratios import kept_count
from streamprune.scores import ScoreFile
from streamprune.selection import class_quotas, mask_from_scores
from streamprune.topk import ArrayScores, find_cut, score_keys

RATIOS = (0.0, 0.1, 0.37, 0.5, 0.8, 0.975)


def _argsort_ranking(scores: np.ndarray, higher_is: str, tie: np.ndarray | None) -> np.ndarray:
    """The old global sort: primary score (its kept direction first), then the tie key descending, then id."""
    primary = -scores if higher_is == "keep" else scores
    columns = [np.arange(len(scores))] + ([-tie] if tie is not None else []) + [primary]
    return np.lexsort(columns)


def _argsort_keep(scores: np.ndarray, ratio: float, higher_is: str, tie: np.ndarray | None) -> np.ndarray:
    keep = np.zeros(len(scores), dtype=bool)
    keep[_argsort_ranking(scores, higher_is, tie)[: kept_count(len(scores), ratio)]] = True
    return keep


def _random_scores(rng: np.random.Generator, n: int, kind: int) -> np.ndarray:
    if kind == 0:  # heavy ties
        return rng.integers(-2, 3, size=n).astype(np.float64)
    if kind == 1:  # one value
        return np.full(n, 0.25)
    if kind == 2:  # continuous, zeros of both signs
        out = rng.normal(size=n)
        out[rng.random(n) < 0.3] = -0.0
        out[rng.random(n) < 0.3] = 0.0
        return out
    return 1.0 + rng.integers(0, 3, size=n) * np.finfo(np.float64).eps  # ties among values sharing their top bits


def _score_file(manifest, scores, higher_is, tie) -> ScoreFile:
    ties = [] if tie is None else [("tie", tie)]
    return ScoreFile.ranked("test", "sample", scores, higher_is=higher_is, score_name="s", ties=ties,
                            extra={} if tie is None else {"tie": tie}, manifest_fingerprint=manifest.fingerprint)


@pytest.fixture
def uneven_dataset(tmp_path, sample_factory, shard_writer):
    """150 samples in shards of 23 (the last one short), 4 classes."""
    return shard_writer(sample_factory(150, seed=3), tmp_path / "uneven", samples_per_shard=23)


@pytest.mark.parametrize("higher_is", ["keep", "prune"])
@pytest.mark.parametrize("with_tie_key", [False, True])
def test_top_mask_equals_the_argsort_mask(tmp_path, uneven_dataset, higher_is, with_tie_key):
    manifest = uneven_dataset
    n = manifest.num_samples
    rng = np.random.default_rng(len(higher_is) + 10 * with_tie_key)
    for kind in range(4):
        scores = _random_scores(rng, n, kind)
        tie = rng.integers(0, 3, size=n).astype(np.float64) if with_tie_key else None  # a tie key with ties of its own
        sf = _score_file(manifest, scores, higher_is, tie)
        for ratio in RATIOS:
            expected = _argsort_keep(scores, ratio, higher_is, tie)
            in_memory = mask_from_scores(manifest, sf, ratio)
            assert np.array_equal(in_memory.keep, expected), (kind, ratio)
            written = mask_from_scores(manifest, sf, ratio, out=tmp_path / "out" / "m.spmask")
            assert isinstance(written, MaskFile)
            assert np.array_equal(written.to_bool(), expected), (kind, ratio)
            written.check(manifest)
            theirs = in_memory.header()
            for field in ("kept", "kept_bytes", "total_bytes", "kept_per_class", "total_per_class", "shards", "num_samples"):
                assert written.header[field] == theirs[field], field
            mine = {k: v for k, v in written.provenance.items() if k != "created"}
            assert mine == {k: v for k, v in in_memory.provenance.items() if k != "created"}


@pytest.mark.parametrize("tie_order", ["random", "id"])
@pytest.mark.parametrize("gather", [1, 4, 1 << 20])
@pytest.mark.parametrize("higher_is", ["keep", "prune"])
def test_cut_with_a_stored_ranking_keeps_its_tie_order(gather, higher_is, tie_order):
    """Histogram passes (small ``gather`` forces them, and tie groups larger than it) with a stored ranking."""
    rng = np.random.default_rng(gather + len(tie_order))
    for trial in range(30):
        counts = rng.integers(0, 30, size=int(rng.integers(1, 7)))
        n = int(counts.sum())
        scores = _random_scores(rng, n, trial % 4)
        tie = rng.random(n) if tie_order == "random" else None  # ties in the score broken in a random order, or by id
        ranking = _argsort_ranking(scores, higher_is, tie)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        for k in sorted({0, n, n // 3, int(rng.integers(0, n + 1)), max(n - 1, 0), min(1, n)}):
            cut = find_cut(counts, ArrayScores(scores, offsets), k, higher_is, gather=gather, ranking=ranking)
            keep = cut.keep(score_keys(scores, higher_is), 0)
            expected = np.zeros(n, dtype=bool)
            expected[ranking[:k]] = True
            assert np.array_equal(keep, expected), (trial, k)


def test_processes_write_the_same_mask(tmp_path, uneven_dataset):
    manifest = uneven_dataset
    scores = np.random.default_rng(5).integers(0, 4, size=manifest.num_samples).astype(np.float64)
    sf = _score_file(manifest, scores, "keep", None)
    written = mask_from_scores(manifest, sf, 0.6, out=tmp_path / "p.spmask", engine=LocalEngine(2))
    assert np.array_equal(written.to_bool(), _argsort_keep(scores, 0.6, "keep", None))


def test_class_and_cluster_top_written_by_shard_equal_the_reference(tmp_path, uneven_dataset):
    manifest = uneven_dataset
    labels = np.asarray(manifest.labels())
    rng = np.random.default_rng(2)
    votes = rng.integers(0, 3, size=manifest.num_classes).astype(np.float64)
    classes = ScoreFile.ranked("test", "class", votes, higher_is="keep", score_name="votes",
                               manifest_fingerprint=manifest.fingerprint)
    n_clusters = 9
    assignments = rng.integers(0, n_clusters, size=manifest.num_samples)
    sizes = rng.integers(0, 4, size=n_clusters).astype(np.float64)
    clusters = ScoreFile.ranked("test", "cluster", sizes, higher_is="prune", score_name="size", assignments=assignments,
                                manifest_fingerprint=manifest.fingerprint)
    for ratio in (0.0, 0.25, 0.5, 0.75):
        kept_classes = _argsort_ranking(votes, "keep", None)[: kept_count(len(votes), ratio)]
        kept_clusters = _argsort_ranking(sizes, "prune", None)[: kept_count(n_clusters, ratio)]
        for sf, expected in ((classes, np.isin(labels, kept_classes)), (clusters, np.isin(assignments, kept_clusters))):
            in_memory = mask_from_scores(manifest, sf, ratio)
            written = mask_from_scores(manifest, sf, ratio, out=tmp_path / f"{sf.level}.spmask")
            assert np.array_equal(in_memory.keep, expected) and np.array_equal(written.to_bool(), expected), (sf.level, ratio)
            assert {k: v for k, v in written.provenance.items() if k != "created"} == \
                {k: v for k, v in in_memory.provenance.items() if k != "created"}


@pytest.mark.parametrize("selector", ["easy", "hard"])
def test_per_class_top_k_selectors_equal_a_per_class_sort(tmp_path, uneven_dataset, selector):
    """``easy``/``hard`` (per-class top-k, selected in memory) against a per-class argsort written here."""
    manifest = uneven_dataset
    labels = np.asarray(manifest.labels())
    rng = np.random.default_rng(4)
    for harder in ("higher", "lower"):
        scores = rng.integers(0, 4, size=manifest.num_samples).astype(np.float64)
        sf = ScoreFile.ranked("test", "sample", scores, higher_is="keep", score_name="s", harder=harder,
                              manifest_fingerprint=manifest.fingerprint)
        d = scores if harder == "higher" else -scores
        for ratio in RATIOS:
            groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
            expected = np.zeros(manifest.num_samples, dtype=bool)
            for ids, quota in zip(groups, class_quotas([len(g) for g in groups], ratio)):
                order = ids[np.lexsort((ids, -d[ids] if selector == "hard" else d[ids]))]
                expected[order[:quota]] = True
            out = mask_from_scores(manifest, sf, ratio, selector, out=tmp_path / "pc.spmask")
            assert np.array_equal(out.to_bool(), expected), (harder, ratio)
