"""Class-blind baselines: random classes / samples, Moderate, GraNd."""

import numpy as np
import pytest
import torch
from builders import write_grey_images
from torch import nn

from streamprune.gradnorms import per_sample_grad_norms
from streamprune.masks import MaskFile
from streamprune.scoring import score_source
from streamprune.scoring.baselines import moderate_scores
from streamprune.scoring.features import ArrayStore, FeatureStore
from streamprune.scoring.scores_file import ScoreFile, rank_items


@pytest.fixture
def tiny_arch():
    """A tiny surrogate with BatchNorm (:func:`tiny_models.tiny_bn`)."""
    return "tiny_models:tiny_bn"


@pytest.fixture
def source(tmp_path):
    return write_grey_images(tmp_path, 60, 5, 10, samples_per_shard=16)[0]


def _run(source, method, tmp_path, name, ratios=(0.4, 0.8), **kw):
    return score_source(source, method, list(ratios), tmp_path / name, progress=False, **kw)


def test_random_classes_and_samples(tmp_path, source):
    a = _run(source, "random-classes", tmp_path, "a", seed=1)
    b = _run(source, "random-classes", tmp_path, "b", seed=1)
    c = _run(source, "random-classes", tmp_path, "c", seed=2)
    sa = ScoreFile.load(a["scores"])
    assert sa.level == "class" and sa.num_items == 5 and sa.higher_is == "keep"
    assert a["kept"] == b["kept"] and len(a["kept"][0.4]) == 3 and len(a["kept"][0.8]) == 1
    assert np.array_equal(sa.scores, ScoreFile.load(b["scores"]).scores)
    assert not np.array_equal(sa.scores, ScoreFile.load(c["scores"]).scores)
    mask = MaskFile(a["masks"][0.4])
    assert mask.kept == 36  # 3 whole classes of 12
    r = _run(source, "random-samples", tmp_path, "r", seed=1)
    s = ScoreFile.load(r["scores"])
    assert s.level == "sample" and s.num_items == 60
    assert MaskFile(r["masks"][0.4]).kept == 36 and MaskFile(r["masks"][0.8]).kept == 12
    r2 = _run(source, "random-samples", tmp_path, "r2", seed=1)
    assert np.array_equal(MaskFile(r["masks"][0.8]).to_bool(), MaskFile(r2["masks"][0.8]).to_bool())


# A hand-computed 2-class example (features in 2-D, exact in float16):
#   class 0: (0,0) (1,0) (2,0) (3,0) (10,0)  -> median (2, 0)   -> distances 2, 1, 0, 1, 8
#   class 1: (100,0) (100,5) (100,6) (100,7) -> median (100, 5.5) -> distances 5.5, .5, .5, 1.5
# All 9 distances sorted (ties by sample id): ids 2, 6, 7, 1, 3, 8, 0, 5, 4 (ranks 0..8).
MODERATE_X = np.array(
    [[0, 0], [1, 0], [2, 0], [3, 0], [10, 0], [100, 0], [100, 5], [100, 6], [100, 7]], dtype=np.float32
)
MODERATE_Y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
MODERATE_D = np.array([2, 1, 0, 1, 8, 5.5, 0.5, 0.5, 1.5])


def _reference_prune_idx(distance, rate):
    """Moderate-DS ``selection.py``'s ``get_prune_idx``: the ids OUTSIDE the kept band (rate = fraction kept)."""
    low, high = 0.5 - rate / 2, 0.5 + rate / 2
    sorted_idx = distance.argsort(kind="stable")
    return np.concatenate((sorted_idx[: round(distance.shape[0] * low)], sorted_idx[round(distance.shape[0] * high) :]))


def _top(scores_dict, k):
    return set(rank_items(scores_dict["score"], scores_dict["rank_first"])[:k].tolist())


def test_moderate_distances_are_to_the_class_median_and_the_band_is_global():
    m = moderate_scores(ArrayStore(MODERATE_X), MODERATE_Y, chunk_rows=4)
    np.testing.assert_array_equal(m["distance"], MODERATE_D)
    # global ranks: 2->0, 6->1, 7->2, 1->3, 3->4, 8->5, 0->6, 5->7, 4->8; the median rank is 4 (id 3)
    np.testing.assert_array_equal(m["quantile"] * 8, [6, 3, 0, 4, 8, 7, 1, 2, 5])
    assert _top(m, 1) == {3}
    assert _top(m, 3) == {1, 3, 8}  # ranks 3..5: two from class 0, one from class 1
    assert _top(m, 5) == {7, 1, 3, 8, 0}  # ranks 2..6
    assert _top(m, 4) == {7, 1, 3, 8}  # n - k odd: ranks 2..5, the extra one on the near side
    for k in (1, 3, 5, 7, 9):  # where N * b is a whole number the reference band is the same set
        assert _top(m, k) == set(range(9)) - set(_reference_prune_idx(MODERATE_D, k / 9).tolist())


def test_moderate_class_band_option_keeps_the_middle_of_each_class():
    m = moderate_scores(ArrayStore(MODERATE_X), MODERATE_Y, band="class")
    np.testing.assert_array_equal(m["distance"], MODERATE_D)
    # class 0 ranks (n=5): 2->0, 1->1, 3->2, 0->3, 4->4; class 1 (n=4): 6->0, 7->1, 8->2, 5->3
    np.testing.assert_allclose(m["quantile"], [3 / 4, 1 / 4, 0, 2 / 4, 1, 1, 0, 1 / 3, 2 / 3])
    # scores: id 3 = 0; ids 7, 8 = -1/6; ids 1, 0 = -1/4; the ends -1/2
    assert _top(m, 1) == {3} and _top(m, 3) == {3, 7, 8} and _top(m, 5) == {3, 7, 8, 1, 0}
    with pytest.raises(ValueError, match="band='median'"):
        moderate_scores(ArrayStore(MODERATE_X), MODERATE_Y, band="median")


def test_moderate_global_band_matches_the_reference_selection_on_random_features():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(40, 5)), rng.normal(size=(60, 5)) * 4 + 1]).astype(np.float16)
    y = np.repeat([0, 1], [40, 60])
    d = np.array([np.linalg.norm(x[i].astype(np.float64) - np.median(x[y == y[i]].astype(np.float32), axis=0)) for i in range(100)])
    m = moderate_scores(ArrayStore(x), y, chunk_rows=17)
    np.testing.assert_allclose(m["distance"], d, rtol=1e-6)
    for k in (10, 30, 50, 80):  # N * (0.5 -+ b / 2) is a whole number: no rounding question
        assert _top(m, k) == set(range(100)) - set(_reference_prune_idx(d, k / 100).tolist())
    # the spread-out class 1 is far from its median more often: a global band is not class-balanced
    assert np.bincount(y[list(_top(m, 30))], minlength=2).tolist() != [12, 18]


def test_moderate_method(tmp_path, source, tiny_arch):
    r = _run(source, "moderate", tmp_path, "m", surrogate=tiny_arch, input_size=10)
    s = ScoreFile.load(r["scores"])
    assert s.level == "sample" and s.num_items == 60 and s.params["band"] == "global"
    feats = FeatureStore(tmp_path / "m" / "features", source).read_all().astype(np.float32)
    labels = source.labels()
    med = np.stack([np.median(feats[labels == c], axis=0) for c in range(5)])
    d = np.sqrt(((feats.astype(np.float64) - med[labels]) ** 2).sum(1))
    np.testing.assert_allclose(s.extra["distance_to_class_median"], d, rtol=1e-5)
    for ratio, k in ((0.4, 36), (0.8, 12)):
        kept = MaskFile(r["masks"][ratio]).to_bool()
        order = np.lexsort((np.arange(60), s.extra["distance_to_class_median"]))
        start = (60 - k) // 2  # the k distances around the median of all 60
        assert set(np.flatnonzero(kept)) == set(order[start : start + k].tolist())
    r2 = _run(source, "moderate", tmp_path, "m2", surrogate=tiny_arch, input_size=10)
    assert np.array_equal(ScoreFile.load(r2["scores"]).ranking, s.ranking)
    rc = _run(source, "moderate", tmp_path, "mc", surrogate=tiny_arch, input_size=10, band="class", ratios=(0.5,))
    per_class = np.bincount(labels[MaskFile(rc["masks"][0.5]).to_bool()], minlength=5)
    assert per_class.tolist() == [6] * 5  # the middle 6 of each class of 12


def test_grad_norms_match_a_per_sample_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    model.eval()
    x = torch.randn(7, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    fast = per_sample_grad_norms(model, x, y, chunk=3)
    ref = []
    for i in range(7):
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        loss.backward()
        ref.append(float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()))))
    assert np.allclose(fast, ref, rtol=1e-5, atol=1e-7)
    model.zero_grad(set_to_none=True)
    assert np.allclose(per_sample_grad_norms(model, x, y, strategy="loop"), ref, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())  # the loop leaves .grad alone
    with pytest.raises(ValueError, match="strategy='scan'"):
        per_sample_grad_norms(model, x, y, strategy="scan")


@pytest.mark.integration
def test_grand_method(tmp_path, source, tiny_arch):
    r = _run(source, "grand", tmp_path, "g", surrogate=tiny_arch, input_size=10, batch_size=16, workers=0)
    s = ScoreFile.load(r["scores"])
    assert s.level == "sample" and s.score_name == "grad_norm" and np.all(s.scores > 0)
    kept = MaskFile(r["masks"][0.8]).to_bool()
    assert kept.sum() == 12
    assert s.scores[kept].min() >= s.scores[~kept].max()  # the highest norms are kept
    r2 = _run(source, "grand", tmp_path, "g2", surrogate=tiny_arch, input_size=10, batch_size=7, workers=2)
    assert np.allclose(ScoreFile.load(r2["scores"]).scores, s.scores, rtol=1e-5)


def test_grand_grad_strategy_auto_takes_the_loop_on_cpu_and_vmap_gives_the_same_norms(tmp_path, source, tiny_arch, monkeypatch):
    from click.testing import CliRunner

    from streamprune.scoring import baselines
    from streamprune_cli.main import cli

    used = []
    real = baselines.per_sample_grad_norms

    def spy(model, x, y, chunk=16, strategy="vmap"):
        used.append(strategy)
        return real(model, x, y, chunk=chunk, strategy=strategy)

    monkeypatch.setattr(baselines, "per_sample_grad_norms", spy)
    auto = ScoreFile.load(_run(source, "grand", tmp_path, "auto", surrogate=tiny_arch, input_size=10, batch_size=16)["scores"])
    assert set(used) == {"loop"} and auto.params["grad_strategy"] == "loop"  # auto on the CPU: the faster loop
    used.clear()
    vmap = ScoreFile.load(_run(source, "grand", tmp_path, "vmap", surrogate=tiny_arch, input_size=10, batch_size=16,
                               grad_strategy="vmap")["scores"])
    assert set(used) == {"vmap"} and vmap.params["grad_strategy"] == "vmap"
    assert np.allclose(auto.scores, vmap.scores, rtol=1e-5)
    with pytest.raises(ValueError, match="grad_strategy='scan'"):
        _run(source, "grand", tmp_path, "bad", surrogate=tiny_arch, input_size=10, grad_strategy="scan")

    used.clear()
    result = CliRunner().invoke(cli, ["score", source.path, "--method", "grand", "--model", tiny_arch, "--input-size", "10",
                                      "--grad-strategy", "vmap", "--ratio", "0.5", "--out", str(tmp_path / "cli"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert set(used) == {"vmap"} and ScoreFile.load(str(tmp_path / "cli" / "scores.json")).params["grad_strategy"] == "vmap"
    help_text = CliRunner().invoke(cli, ["score", "--help"], terminal_width=200).output
    assert "--grad-strategy [auto|vmap|loop]" in help_text and "grand: per-sample gradients" in help_text
