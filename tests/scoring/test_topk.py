"""Selection by per-shard histograms equals a global sort; masks written shard by shard equal KeepMask.save."""

from __future__ import annotations

import numpy as np
import pytest

from streamprune.engine import LocalEngine
from streamprune.masks import MaskFile, mask_from_bool
from streamprune.scores import ScoreFile, rank_items
from streamprune.selection import mask_from_scores
from streamprune.shardmask import CombineMasks, write_mask_by_shard
from streamprune.topk import ArrayScores, find_cut, score_keys, top_mask_by_shard


def _brute(scores: np.ndarray, k: int, higher_is: str) -> np.ndarray:
    """The reference: a stable full sort, higher first, id ascending among equal scores."""
    signed = scores if higher_is == "keep" else -scores
    return np.sort(rank_items(signed)[:k])


def _cut_ids(counts, scores, k, higher_is, gather, engine=None) -> np.ndarray:
    offsets = np.concatenate([[0], np.cumsum(counts)])
    source = ArrayScores(scores, offsets)
    cut = find_cut(counts, source, k, higher_is, gather=gather, engine=engine)
    bits = np.concatenate([cut.keep(score_keys(source(s), higher_is), int(offsets[s])) for s in range(len(counts))])
    return np.flatnonzero(bits)


def test_keys_order_like_the_numbers():
    values = np.array([-np.inf, -1e300, -2.5, -1e-310, -0.0, 0.0, 1e-310, 1.0, 3.0, np.inf])
    keys = score_keys(values)
    assert np.all(np.diff(keys.astype(object)) >= 0) and keys[4] == keys[5]  # -0.0 ties with 0.0
    assert np.array_equal(score_keys(values, "prune")[::-1], np.sort(score_keys(values, "prune")))


@pytest.mark.parametrize("gather", [1, 5, 1 << 20])
@pytest.mark.parametrize("higher_is", ["keep", "prune"])
def test_kept_set_equals_a_global_sort_on_random_scores_with_ties(gather, higher_is):
    rng = np.random.default_rng(gather + len(higher_is))
    for trial in range(25):
        counts = rng.integers(0, 40, size=int(rng.integers(1, 8)))
        n = int(counts.sum())
        kind = trial % 4
        if kind == 0:  # heavy ties
            scores = rng.integers(-3, 4, size=n).astype(np.float64)
        elif kind == 1:  # one value
            scores = np.full(n, 0.5)
        elif kind == 2:  # continuous, signs and zeros of both signs
            scores = rng.normal(size=n) * rng.choice([1e-300, 1.0, 1e300], size=n)
            scores[rng.random(n) < 0.2] = -0.0
            scores[rng.random(n) < 0.2] = 0.0
        else:  # values that share their top bits, ties within
            scores = 1.0 + rng.integers(0, 3, size=n) * np.finfo(np.float64).eps
        for k in sorted({0, n, n // 2, int(rng.integers(0, n + 1)), max(n - 1, 0), min(1, n)}):
            assert np.array_equal(_cut_ids(counts, scores, k, higher_is, gather), _brute(scores, k, higher_is)), (trial, k)


@pytest.mark.integration
def test_processes_give_the_same_cut():
    rng = np.random.default_rng(3)
    counts = np.array([50, 0, 70, 30, 64])
    scores = rng.integers(0, 5, size=int(counts.sum())).astype(np.float64)
    assert np.array_equal(_cut_ids(counts, scores, 101, "keep", 4, engine=LocalEngine(2)), _brute(scores, 101, "keep"))


@pytest.mark.parametrize("higher_is", ["keep", "prune"])
def test_top_mask_by_shard_is_the_mask_of_todays_top_selector(tmp_path, small_dataset, higher_is):
    manifest = small_dataset
    n = manifest.num_samples
    scores = np.random.default_rng(7).integers(0, 6, size=n).astype(np.float64)
    ranking = rank_items(scores if higher_is == "keep" else -scores)
    sf = ScoreFile(method="random", level="sample", scores=scores, ranking=ranking, higher_is=higher_is,
                   manifest_fingerprint=manifest.fingerprint)
    for ratio in (0.0, 0.3, 0.8, 0.975):
        today = mask_from_scores(manifest, sf, ratio)
        ours = top_mask_by_shard(manifest, ArrayScores(scores, manifest.shard_offsets), ratio, str(tmp_path / "m.spmask"),
                                 higher_is=higher_is, gather=3)
        assert np.array_equal(ours.to_bool(), today.keep)
        mine, theirs = ours.header, today.header()
        for field in ("kept", "kept_bytes", "total_bytes", "kept_per_class", "total_per_class", "num_samples", "manifest_fingerprint"):
            assert mine[field] == theirs[field], field
        assert mine["shards"] == theirs["shards"]
        ours.check(manifest)


@pytest.mark.integration
def test_mask_algebra_by_shard_equals_in_memory_algebra(tmp_path, small_dataset):
    manifest = small_dataset
    rng = np.random.default_rng(1)
    a = mask_from_bool(manifest, rng.random(manifest.num_samples) < 0.5)
    b = mask_from_bool(manifest, rng.random(manifest.num_samples) < 0.3)
    pa, pb = a.save(tmp_path / "a.spmask"), b.save(tmp_path / "b.spmask")
    for op, expected in (("and", a.keep & b.keep), ("or", a.keep | b.keep), ("minus", a.keep & ~b.keep)):
        out = write_mask_by_shard(manifest, CombineMasks([pa, pb], op), tmp_path / f"{op}.spmask", {"method": op},
                                  engine=LocalEngine(2))
        assert np.array_equal(out.to_bool(), expected), op
    out = write_mask_by_shard(manifest, CombineMasks([pa], "not"), tmp_path / "not.spmask", {"method": "not"})
    assert np.array_equal(MaskFile(out.path).to_bool(), ~a.keep)
    with pytest.raises(ValueError, match="one mask"):
        CombineMasks([pa, pb], "not")
