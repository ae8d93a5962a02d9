"""Class-blind baselines: random classes / samples, Moderate, GraNd."""

import numpy as np
import pytest
import torch
from torch import nn

from streamprune.masks import MaskFile
from streamprune.scoring import score_source
from streamprune.scoring.baselines import moderate_scores, per_sample_grad_norms
from streamprune.scoring.features import ArrayStore
from streamprune.scoring.scores_file import ScoreFile
from streamprune.writers import write_shards

TINY_MODULE = '''
from torch import nn


def tiny(num_classes):
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, num_classes)
    )
'''


@pytest.fixture
def tiny_arch(tmp_path, monkeypatch):
    (tmp_path / "sp_tiny_base.py").write_text(TINY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "sp_tiny_base:tiny"


@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 5
    images = rng.integers(0, 256, size=(60, 10, 10), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", images=images, labels=labels)
    return write_shards(str(tmp_path / "s.npz"), tmp_path / "source", samples_per_shard=16, image_format="png", progress=False)


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


def test_moderate_keeps_the_middle_band_per_class():
    rng = np.random.default_rng(0)
    # class 0: 11 points on a line at distances 0..10 from the origin (median point 0 after centring)
    x0 = np.zeros((11, 3), dtype=np.float32)
    x0[:, 0] = np.arange(11) - 5.0  # coordinate-wise median = 0; distances |i - 5|
    x1 = rng.normal(size=(21, 3)).astype(np.float32) * 3 + 100
    x = np.concatenate([x0, x1])
    labels = np.array([0] * 11 + [1] * 21)
    m = moderate_scores(ArrayStore(x), labels, chunk_rows=5)
    assert np.allclose(m["distance"][:11], np.abs(np.arange(11) - 5.0))
    # reference: per class, keep those whose distance rank is closest to the median rank
    for c, rows in ((0, np.arange(11)), (1, np.arange(11, 32))):
        d = m["distance"][rows]
        order = np.lexsort((rows, d))
        q = np.empty(len(rows))
        q[order] = np.arange(len(rows)) / (len(rows) - 1)
        assert np.allclose(m["quantile"][rows], q)
        med_d = np.median(d)
        band = rows[np.argsort(-m["score"][rows], kind="stable")[: len(rows) // 2]]
        outside = np.setdiff1d(rows, band)
        # kept band is nearer the median distance than the dropped extremes, on both sides
        assert np.abs(m["distance"][band] - med_d).max() <= np.abs(m["distance"][outside] - med_d).max()
        assert m["distance"][band].min() > m["distance"][rows].min() and m["distance"][band].max() < m["distance"][rows].max()


def test_moderate_method(tmp_path, source, tiny_arch):
    r = _run(source, "moderate", tmp_path, "m", surrogate=tiny_arch, input_size=10)
    s = ScoreFile.load(r["scores"])
    assert s.level == "sample" and s.num_items == 60 and "distance_to_class_median" in s.extra
    kept = MaskFile(r["masks"][0.4]).to_bool()
    assert kept.sum() == 36
    per_class = np.bincount(source.labels()[kept], minlength=5)
    assert per_class.min() >= 6 and per_class.max() <= 8  # the middle band of every class (12 each)
    r2 = _run(source, "moderate", tmp_path, "m2", surrogate=tiny_arch, input_size=10)
    assert np.array_equal(ScoreFile.load(r2["scores"]).ranking, s.ranking)


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


def test_grand_method(tmp_path, source, tiny_arch):
    r = _run(source, "grand", tmp_path, "g", surrogate=tiny_arch, input_size=10, batch_size=16, workers=0)
    s = ScoreFile.load(r["scores"])
    assert s.level == "sample" and s.score_name == "grad_norm" and np.all(s.scores > 0)
    kept = MaskFile(r["masks"][0.8]).to_bool()
    assert kept.sum() == 12
    assert s.scores[kept].min() >= s.scores[~kept].max()  # the highest norms are kept
    r2 = _run(source, "grand", tmp_path, "g2", surrogate=tiny_arch, input_size=10, batch_size=7, workers=2)
    assert np.allclose(ScoreFile.load(r2["scores"]).scores, s.scores, rtol=1e-5)
