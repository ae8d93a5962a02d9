"""Deduplication: SemDeDup against a brute-force O(n^2) reference, exact dedup confirmed by bytes."""

import numpy as np
import pytest
from click.testing import CliRunner

from streamprune.masks import MaskFile
from streamprune.scores import ScoreFile
from streamprune.scoring import dedup as dedup_module
from streamprune.scoring import score_source
from streamprune.scoring.dedup import exact_duplicates, mask_from_duplicates, max_earlier_similarity, semdedup_arrays
from streamprune.scoring.features import ArrayStore
from streamprune_cli.main import cli


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_semdedup(x, assignments, centroids, eps):
    """The reference code's steps, O(n^2) per cluster: sort by distance desc, max(triu(S, 1), axis=0) > 1 - eps."""
    x = _unit(np.asarray(x, dtype=np.float64))
    n = len(x)
    max_sim = np.full(n, -1.0)
    for c in range(len(centroids)):
        members = np.flatnonzero(assignments == c)
        if len(members) < 2:
            continue
        centroid = centroids[c] / np.linalg.norm(centroids[c])
        dist = 1 - x[members] @ centroid
        order = members[np.lexsort((members, -dist))]
        sim = x[order] @ x[order].T
        tri = np.triu(sim, k=1)
        tri[np.tril_indices(len(order))] = -np.inf
        max_sim[order] = np.maximum(tri.max(axis=0), -1.0)
        max_sim[order[0]] = -1.0
    return max_sim, max_sim > 1 - eps


def test_blocked_max_matches_full_matrix():
    x = _unit(np.random.default_rng(0).normal(size=(53, 5)))
    full = x @ x.T
    expected = np.array([-1.0] + [full[:j, j].max() for j in range(1, 53)])
    for block in (1, 7, 53, 100):
        assert np.allclose(max_earlier_similarity(x, block=block), expected)


def test_semdedup_matches_brute_force_and_finds_planted_duplicates():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(120, 16)) + 3 * rng.normal(size=(4, 16))[rng.integers(0, 4, 120)]
    copies = base[:30] + 1e-3 * rng.normal(size=(30, 16))  # near-duplicates of the first 30
    x = np.concatenate([base, copies]).astype(np.float32)
    r = semdedup_arrays(ArrayStore(x), 4, eps=0.01, chunk_rows=37, seed=0)
    # same clustering (the reference's clustering is faiss' spherical k-means): compare everything after it
    ref_sim, ref_dup = reference_semdedup(x, r["assignments"], r["kmeans"].centroids.astype(np.float64), 0.01)
    assert np.allclose(r["max_similarity"], ref_sim, atol=1e-5)
    assert np.array_equal(r["duplicate"], ref_dup)
    pairs = [(i, 120 + i) for i in range(30)]
    assert all(r["duplicate"][a] != r["duplicate"][b] for a, b in pairs)  # exactly one of each pair goes
    assert r["duplicate"].sum() == 30
    for a, b in pairs:  # the kept one is the one farther from the centroid
        kept, gone = (a, b) if r["duplicate"][b] else (b, a)
        assert r["distance"][kept] >= r["distance"][gone] - 1e-12


def test_reference_removes_even_after_a_removed_predecessor():
    # a chain x0 ~ x1 ~ x2 where x2 is close to x1 (removed) but not to x0: the reference removes x2 too
    x = np.array([[1.0, 0.0, 0.0], [0.995, 0.0998, 0], [0.98, 0.199, 0]])
    x = _unit(x)
    m = max_earlier_similarity(x)
    assert m[1] > 0.99 and m[2] > 0.99 and x[0] @ x[2] < 0.99


def test_semdedup_method_scores_and_masks(tmp_path, small_dataset, monkeypatch):
    n = small_dataset.num_samples
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    feats[n // 2 :] = feats[: n // 2] + 1e-4  # second half duplicates the first
    monkeypatch.setattr(dedup_module, "surrogate_features", lambda req, m, root, desc="": (ArrayStore(feats), {"arch": "test"}))
    r = score_source(small_dataset, "semdedup", [0.25], tmp_path / "o", progress=False, eps=0.01, clusters=3)
    s = ScoreFile.load(r["scores"])
    assert s.level == "sample" and s.higher_is == "prune" and s.harder is None
    assert s.params["duplicates"] == n // 2 and s.params["ratio_at_eps"] == 0.5
    assert MaskFile(r["masks"][0.25]).kept == n - n // 4
    m = mask_from_duplicates(small_dataset, s)
    assert m.kept == n // 2 and m.provenance["eps"] == 0.01
    same = score_source(small_dataset, "semdedup", [0.5], tmp_path / "o2", progress=False, eps=0.01, clusters=3)
    assert np.array_equal(MaskFile(same["masks"][0.5]).to_bool(), m.keep)  # ratio_at_eps gives the eps mask


def test_eps_for_ratio_marks_that_fraction_as_duplicates():
    m = np.array([0.2, 0.99, 0.5, 0.97, -1.0, 0.9, 0.3, 0.8])
    eps = dedup_module.eps_for_ratio(m, 0.25)  # 2 of 8: the two largest, 0.99 and 0.97
    assert eps == pytest.approx(1 - 0.9) and int((m > 1 - eps).sum()) == 2
    assert int((m > 1 - dedup_module.eps_for_ratio(m, 0.0)).sum()) == 0
    assert int((m > 1 - dedup_module.eps_for_ratio(m, 1.0)).sum()) == 7  # a cluster's first member (M = -1) never is
    tied = np.array([0.5, 0.5, 0.5, 0.1])
    assert int((tied > 1 - dedup_module.eps_for_ratio(tied, 0.5)).sum()) == 0  # ties at the threshold stay: fewer, never more
    with pytest.raises(ValueError, match="target_ratio=1.5"):
        dedup_module.eps_for_ratio(m, 1.5)


def test_semdedup_default_threshold_is_the_target_ratio_and_more_than_half_warns(tmp_path, small_dataset, monkeypatch, caplog):
    n = small_dataset.num_samples
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    feats[n // 2 :] = feats[: n // 2] + 1e-4
    monkeypatch.setattr(dedup_module, "surrogate_features", lambda req, m, root, desc="": (ArrayStore(feats), {"arch": "test"}))
    r = score_source(small_dataset, "semdedup", [0.25], tmp_path / "o", progress=False, clusters=3)
    s = ScoreFile.load(r["scores"])
    assert s.params["eps_chosen_by"] == "target_ratio" and s.params["target_ratio"] == dedup_module.DEFAULT_TARGET_RATIO
    assert s.params["duplicates"] <= round(n * 0.5) and s.params["duplicates"] == int((np.asarray(s.scores) > 1 - s.params["eps"]).sum())
    r = score_source(small_dataset, "semdedup", [0.25], tmp_path / "o2", progress=False, clusters=3, target_ratio=0.1)
    assert ScoreFile.load(r["scores"]).params["duplicates"] == round(n * 0.1)
    with caplog.at_level("WARNING", logger="streamprune.scoring.dedup"):
        score_source(small_dataset, "semdedup", [0.25], tmp_path / "o3", progress=False, clusters=3, eps=2.0)
    assert "more than half" in caplog.text
    with pytest.raises(ValueError, match="not both"):
        score_source(small_dataset, "semdedup", [0.25], tmp_path / "o4", progress=False, clusters=3, eps=0.1, target_ratio=0.1)


@pytest.fixture
def with_copies(tmp_path, shard_writer, sample_factory):
    samples = sample_factory(30)
    dup = [(f"d{j}", dict(samples[i][1]), samples[i][2]) for j, i in enumerate((3, 3, 17))]  # 3 twice, 17 once
    relabelled = [("x0", dict(samples[5][1]), (samples[5][2] + 1) % 4)]  # same image, another label: not identical
    return shard_writer(samples + dup + relabelled, tmp_path / "d", shuffle=False)


def test_exact_duplicates_keep_the_first_and_confirm_bytes(with_copies, monkeypatch):
    keys = with_copies.keys()
    dup_of, stats = exact_duplicates(with_copies)
    found = {keys[i]: keys[j] for i, j in enumerate(dup_of) if j >= 0}
    assert found == {"d0": "s00003", "d1": "s00003", "d2": "s00017"}
    assert stats["candidates"] == 5 and stats["collisions"] == 0 and stats["checksum"] == "xxh3_64"
    # every checksum equal (forced collisions): bytes still decide, and only candidates were read
    real = dedup_module._checksums
    monkeypatch.setattr(dedup_module, "_checksums", lambda m: (np.zeros(m.num_samples, np.uint64), real(m)[1]))
    forced, stats = exact_duplicates(with_copies, batch_bytes=1000)
    assert np.array_equal(forced, dup_of)
    assert stats["collisions"] == with_copies.num_samples - 3 - 1


def test_exact_dedup_method_and_cli(with_copies, tmp_path):
    runner = CliRunner()
    out = tmp_path / "o"
    r = runner.invoke(cli, ["score", with_copies.path, "--method", "exact-dedup", "--ratio", "0", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    s = ScoreFile.load(out / "scores.json")
    assert s.params["duplicates"] == 3 and s.extra["duplicate_of"].max() >= 0
    r = runner.invoke(cli, ["mask", with_copies.path, "--scores", str(out / "scores.json"), "--duplicates", "--out", str(tmp_path / "m.spmask")])
    assert r.exit_code == 0, r.output
    assert MaskFile(tmp_path / "m.spmask").kept == with_copies.num_samples - 3
    r = runner.invoke(cli, ["mask", with_copies.path, "--duplicates", "--out", str(tmp_path / "m.spmask")])
    assert r.exit_code == 2
