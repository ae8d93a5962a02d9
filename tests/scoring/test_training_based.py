"""Training-based scores (EL2N, forgetting, AUM, GraNd from dynamics, SSP) and the CLI end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from builders import write_grey_images
from click.testing import CliRunner

from streamprune import MaskFile, MaskMismatchError, StreamPruneError
from streamprune.scoring import score_source
from streamprune.scoring.features import ArrayStore
from streamprune.scoring.scores_file import ScoreFile
from streamprune.scoring.training_based import prototype_distances
from streamprune.writers import write_shards
from streamprune_cli.main import cli

N, E = 8, 5
# correctness per sample over E epochs (columns are samples)
PATTERNS = np.array(
    [
        [0, 0, 0, 0, 0],  # never learned -> E + 1
        [1, 1, 1, 1, 1],  # always correct -> 0
        [1, 0, 1, 0, 1],  # oscillating -> 2
        [0, 1, 0, 1, 0],  # oscillating, learned late -> 2
        [1, 1, 0, 0, 0],  # learned then forgotten for good -> 1
        [0, 0, 0, 1, 1],  # learned late -> 0
        [1, 0, 0, 0, 1],  # -> 1
        [0, 1, 1, 0, 1],  # -> 1
    ],
    dtype=np.float32,
).T  # [E, N]


@pytest.fixture
def source(tmp_path):
    return write_grey_images(tmp_path, N, 2, 8, samples_per_shard=3)[0]


def write_recording(directory, manifest, array, grand=None, grand_epochs=(), el2n=None, el2n_epochs=(), fields=None):
    """A recording written by hand to the layout FORMATS.md documents (version 1; version 2 with ``el2n``)."""
    os.makedirs(directory, exist_ok=True)
    np.save(os.path.join(directory, "dynamics.npy"), array.astype(np.float32))
    meta = {
        "format": "streamprune-dynamics", "version": 1, "array": "dynamics.npy", "dtype": "float32",
        "shape": list(array.shape), "fields": fields or ["correct", "p_true", "margin", "loss", "el2n"],
        "epochs": array.shape[0], "epochs_done": array.shape[0], "num_samples": array.shape[1],
        "manifest": manifest.path, "manifest_fingerprint": manifest.fingerprint, "mask": None,
        "model": {"arch": "resnet18", "checkpoint": None, "checkpoint_sha256": None, "num_classes": 2, "input_size": 32},
        "seed": 7, "optimizer": {"name": "sgd", "lr": 0.05}, "seconds_per_epoch": [1.0] * array.shape[0], "grand": None,
    }
    if grand is not None:
        np.save(os.path.join(directory, "grand.npy"), grand.astype(np.float32))
        meta["grand"] = {"array": "grand.npy", "epochs": list(grand_epochs), "mode": "eval"}
    if el2n is not None:  # [runs, snapshots, N]
        np.save(os.path.join(directory, "el2n.npy"), el2n.astype(np.float32))
        seeds = [7 + r for r in range(el2n.shape[0])]
        meta.update(version=2, runs=el2n.shape[0], seeds=seeds)
        meta["el2n"] = {"array": "el2n.npy", "epochs": list(el2n_epochs), "runs": el2n.shape[0], "seeds": seeds, "mode": "eval"}
    with open(os.path.join(directory, "dynamics.json"), "w") as fh:
        json.dump(meta, fh)
    return str(directory)


@pytest.fixture
def synthetic(tmp_path, source):
    rng = np.random.default_rng(1)
    arr = np.empty((E, N, 5), dtype=np.float32)
    arr[..., 0] = PATTERNS
    arr[..., 1] = rng.random((E, N))
    arr[..., 2] = rng.uniform(-1, 1, (E, N))
    arr[..., 3] = -np.log(arr[..., 1])
    arr[..., 4] = rng.uniform(0, np.sqrt(2), (E, N))
    grand = rng.uniform(0, 5, (3, N))
    return write_recording(tmp_path / "dyn", source, arr, grand, grand_epochs=[0, 1, 3]), arr, grand


def _score(source, method, tmp_path, name, ratios=(0.5,), **options):
    r = score_source(source, method, list(ratios), tmp_path / name, progress=False, **options)
    return r, ScoreFile.load(r["scores"])


def test_el2n_of_an_old_recording_falls_back_to_the_training_pass_mean_and_says_so(tmp_path, source, synthetic, caplog):
    d, arr, _ = synthetic  # version 1: no eval-mode snapshots
    with caplog.at_level("WARNING", logger="streamprune.scoring.training_based"):
        r, s = _score(source, "el2n", tmp_path, "e", dynamics_dir=d)
    assert "no evaluation-mode EL2N snapshots" in caplog.text
    assert s.params["el2n_source"].startswith("training forward pass") and s.params["mode"] == "train"
    ref = [sum(float(arr[e, i, 4]) for e in range(E)) / E for i in range(N)]  # E < 10: all epochs
    np.testing.assert_allclose(s.scores, ref, rtol=1e-6)
    assert s.level == "sample" and s.harder == "higher" and s.higher_is == "keep" and s.params["epochs_used"] == E
    assert set(np.flatnonzero(MaskFile(r["masks"][0.5]).to_bool())) == set(np.argsort(-np.array(ref))[: N // 2])
    _, s2 = _score(source, "el2n", tmp_path, "e2", dynamics_dir=d, epochs=2)
    np.testing.assert_allclose(s2.scores, (arr[0, :, 4].astype(float) + arr[1, :, 4]) / 2, rtol=1e-6)
    assert s2.surrogate["arch"] == "resnet18" and s2.seed == 7


def test_el2n_averages_the_eval_mode_snapshots_over_runs_and_epochs(tmp_path, source, synthetic, caplog):
    _, arr, _ = synthetic
    # 2 runs x snapshots at epochs 0, 1, 3: per sample i, run r, snapshot j the value i + 10 r + 100 j
    el2n = np.arange(N)[None, None, :] + 10.0 * np.arange(2)[:, None, None] + 100.0 * np.arange(3)[None, :, None]
    d = write_recording(tmp_path / "v2", source, arr, el2n=el2n, el2n_epochs=[0, 1, 3])
    with caplog.at_level("WARNING", logger="streamprune.scoring.training_based"):
        r, s = _score(source, "el2n", tmp_path, "all", dynamics_dir=d)
    assert "no evaluation-mode" not in caplog.text
    np.testing.assert_allclose(s.scores, np.arange(N) + 5 + 100)  # mean over runs 0, 10 and over 0, 100, 200
    assert s.params["el2n_source"] == "eval-mode snapshots" and s.params["el2n_epochs"] == [0, 1, 3]
    assert s.params["runs"] == 2 and s.params["seeds"] == [7, 8] and s.params["epochs_used"] == 3
    assert set(np.flatnonzero(MaskFile(r["masks"][0.5]).to_bool())) == {4, 5, 6, 7}
    _, s1 = _score(source, "el2n", tmp_path, "e1", dynamics_dir=d, epochs=2)  # snapshots at epochs 0 and 1
    np.testing.assert_allclose(s1.scores, np.arange(N) + 5 + 50)
    _, s0 = _score(source, "el2n", tmp_path, "e0", dynamics_dir=d, epochs=0)
    np.testing.assert_allclose(s0.scores, np.arange(N) + 5.0)
    with pytest.raises(ValueError, match="records 5 epoch"):
        _score(source, "el2n", tmp_path, "x", dynamics_dir=d, epochs=6)
    with pytest.raises(ValueError, match="records 5 epoch"):  # GraNd's epochs are checked as EL2N's are
        _score(source, "grand-dyn", tmp_path, "x", dynamics_dir=d, epochs=6)
    late = write_recording(tmp_path / "late", source, arr, el2n=el2n[:, 2:], el2n_epochs=[3])
    with pytest.raises(StreamPruneError, match=r"EL2N snapshots were taken at epochs \[3\], none at or before 2"):
        _score(source, "el2n", tmp_path, "x", dynamics_dir=late, epochs=2)
    gap = el2n.copy()
    gap[1, 2, 3] = np.nan
    with pytest.raises(StreamPruneError, match="EL2N snapshots are missing for 1 samples"):
        _score(source, "el2n", tmp_path, "x", dynamics_dir=write_recording(tmp_path / "gap", source, arr, el2n=gap, el2n_epochs=[0, 1, 3]))


def test_forgetting_counts_transitions_and_never_learned_is_most_forgotten(tmp_path, source, synthetic):
    d, _, _ = synthetic
    _, s = _score(source, "forgetting", tmp_path, "f", dynamics_dir=d, seed=3)
    ref = []
    for i in range(N):
        seq = PATTERNS[:, i]
        events = sum(1 for e in range(1, E) if seq[e - 1] == 1 and seq[e] == 0)
        ref.append(E + 1 if seq.sum() == 0 else events)
    assert ref == [6, 0, 2, 2, 1, 0, 1, 1]
    np.testing.assert_array_equal(s.scores, ref)
    np.testing.assert_array_equal(s.extra["never_learned"], [1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(s.extra["events"], [0, 0, 2, 2, 1, 0, 1, 1])
    assert s.harder == "higher" and s.ranking[0] == 0 and set(s.ranking[1:3]) == {2, 3}
    _, s3 = _score(source, "forgetting", tmp_path, "f3", dynamics_dir=d, epochs=3, seed=3)
    np.testing.assert_array_equal(s3.scores, [4, 0, 1, 1, 1, 4, 1, 0])  # sample 5 not yet learned by epoch 3
    _, other = _score(source, "forgetting", tmp_path, "f4", dynamics_dir=d, seed=4)
    np.testing.assert_array_equal(other.scores, s.scores)  # the seed only breaks ties


def test_aum_is_on_logits_and_an_old_recording_without_them_is_refused(tmp_path, source, synthetic):
    d, arr, _ = synthetic  # version 1: the five fields, no logit margins
    with pytest.raises(StreamPruneError, match="recorded without logit margins.*--aum-margin probability"):
        _score(source, "aum", tmp_path, "l", dynamics_dir=d)
    rng = np.random.default_rng(2)
    six = np.concatenate([arr, rng.uniform(-5, 5, (E, N, 1)).astype(np.float32)], axis=2)
    d6 = write_recording(tmp_path / "dyn6", source, six, fields=["correct", "p_true", "margin", "loss", "el2n", "logit_margin"])
    _, s = _score(source, "aum", tmp_path, "l6", dynamics_dir=d6)
    np.testing.assert_allclose(s.scores, six[..., 5].astype(float).sum(0), rtol=1e-6)
    assert s.variant == "logit" and s.params["aum_margin"] == "logit"
    _, p = _score(source, "aum", tmp_path, "p6", dynamics_dir=d6, margin="probability")
    np.testing.assert_allclose(p.scores, six[..., 2].astype(float).sum(0), rtol=1e-6)


def test_aum_sums_margins_and_keeps_the_lowest(tmp_path, source, synthetic):
    d, arr, _ = synthetic
    r, s = _score(source, "aum", tmp_path, "a", ratios=(0.25, 0.5), dynamics_dir=d, margin="probability")
    ref = np.array([sum(float(arr[e, i, 2]) for e in range(E)) for i in range(N)])
    np.testing.assert_allclose(s.scores, ref, rtol=1e-6)
    assert s.harder == "lower" and s.higher_is == "prune"
    assert list(s.ranking) == list(np.argsort(ref, kind="stable"))
    assert set(np.flatnonzero(MaskFile(r["masks"][0.25]).to_bool())) == set(np.argsort(ref)[:6])


def test_grand_dyn_averages_recorded_snapshots(tmp_path, source, synthetic):
    d, _, grand = synthetic
    _, s = _score(source, "grand-dyn", tmp_path, "g", dynamics_dir=d)
    np.testing.assert_allclose(s.scores, grand.astype(np.float32).astype(float).mean(0), rtol=1e-6)
    _, s1 = _score(source, "grand-dyn", tmp_path, "g1", dynamics_dir=d, epochs=1)
    np.testing.assert_allclose(s1.scores, grand[:2].astype(np.float32).astype(float).mean(0), rtol=1e-6)
    assert s1.params["grand_epochs"] == [0, 1] and s.harder == "higher"


def test_dynamics_methods_refuse_missing_partial_or_foreign_recordings(tmp_path, source, synthetic):
    d, arr, _ = synthetic
    with pytest.raises(ValueError, match="needs recorded training dynamics.*--dynamics DIR"):
        _score(source, "aum", tmp_path, "x")
    with pytest.raises(ValueError, match="records 5 epoch"):
        _score(source, "el2n", tmp_path, "x", dynamics_dir=d, epochs=6)
    with pytest.raises(ValueError, match="records 5 epoch"):  # GraNd's epochs are checked as EL2N's are
        _score(source, "grand-dyn", tmp_path, "x", dynamics_dir=d, epochs=6)
    partial = arr.copy()
    partial[:, [1, 4]] = np.nan
    p = write_recording(tmp_path / "partial", source, partial)
    with pytest.raises(StreamPruneError, match=r"partial/dynamics\.json: 2 of 8 samples have no recorded dynamics"):
        _score(source, "forgetting", tmp_path, "x", dynamics_dir=p)
    nog = write_recording(tmp_path / "nog", source, arr)
    with pytest.raises(StreamPruneError, match=r"nog/dynamics\.json: no per-sample gradient norms"):
        _score(source, "grand-dyn", tmp_path, "x", dynamics_dir=nog)
    other = write_shards(str(tmp_path / "source.npz"), tmp_path / "other", samples_per_shard=4, image_format="png", progress=False)
    with pytest.raises(MaskMismatchError, match=r"dyn/dynamics\.json: dynamics were recorded for another dataset"):
        _score(other, "el2n", tmp_path, "x", dynamics_dir=d)
    with pytest.raises(StreamPruneError, match=r"empty/dynamics\.json: no training dynamics recorded here"):
        os.makedirs(tmp_path / "empty")
        _score(source, "el2n", tmp_path, "x", dynamics_dir=str(tmp_path / "empty"))


def test_prototype_distances_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32) * 3
    c = rng.normal(size=(4, 6)).astype(np.float32)
    d_all = np.sqrt(((x[:, None, :].astype(float) - c[None].astype(float)) ** 2).sum(-1))
    idx, d = prototype_distances(ArrayStore(x), c, "euclidean", chunk_rows=7)
    np.testing.assert_array_equal(idx, d_all.argmin(1))
    np.testing.assert_allclose(d, d_all.min(1), rtol=1e-9)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    cos = xn.astype(float) @ cn.T.astype(float)
    idx, d = prototype_distances(x, c, "cosine", chunk_rows=9)
    np.testing.assert_array_equal(idx, cos.argmax(1))
    np.testing.assert_allclose(d, 1 - cos.max(1), rtol=1e-5, atol=1e-6)




@pytest.fixture
def tiny_arch():
    """A tiny surrogate with 24 pooled features (:func:`tiny_models.tiny_pool2`)."""
    return "tiny_models:tiny_pool2"


def test_ssp_scores_are_distances_to_prototypes_of_the_cached_features(tmp_path, source, tiny_arch):
    from streamprune.scoring.features import FeatureStore

    r, s = _score(source, "ssp", tmp_path, "p", ratios=(0.25,), surrogate=tiny_arch, clusters=1)
    assert s.harder == "higher" and s.higher_is == "keep" and s.params["clusters"] == 1
    feats = FeatureStore(tmp_path / "p" / "features", source).read_all().astype(np.float64)
    # one prototype: k-means converges to the mean feature
    np.testing.assert_allclose(s.scores, np.linalg.norm(feats - feats.mean(0), axis=1), rtol=1e-4)
    kept = np.flatnonzero(MaskFile(r["masks"][0.25]).to_bool())
    assert set(kept) == set(np.argsort(-s.scores, kind="stable")[:6])  # the farthest are kept
    _, easy = _score(source, "ssp", tmp_path, "p", ratios=(0.25,), surrogate=tiny_arch, clusters=1, keep="easy")
    np.testing.assert_allclose(easy.scores, s.scores)
    assert easy.higher_is == "prune" and easy.harder == "higher"
    assert list(easy.ranking) == list(np.lexsort((np.arange(N), easy.scores)))  # the nearest first
    _, cos = _score(source, "ssp", tmp_path, "p", ratios=(0.25,), surrogate=tiny_arch, clusters=1, distance="cosine")
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    proto = unit.mean(0) / np.linalg.norm(unit.mean(0))
    np.testing.assert_allclose(cos.scores, 1 - unit @ proto, rtol=1e-4, atol=1e-6)
    _, two = _score(source, "ssp", tmp_path, "p", ratios=(0.25,), surrogate=tiny_arch, clusters=2)
    assert set(two.extra["cluster"].astype(int)) == {0, 1} and np.all(two.scores <= s.scores.max() + 1e-6)
    with pytest.raises(ValueError, match="keep='middle'"):
        _score(source, "ssp", tmp_path, "p", surrogate=tiny_arch, keep="middle")


def _cli(*args):
    return CliRunner().invoke(cli, [os.fspath(a) for a in args])


@pytest.mark.integration
def test_cli_records_dynamics_and_scores_them_end_to_end(tmp_path, source, tiny_arch):
    dyn = tmp_path / "dyn"
    r = _cli("dynamics", source.path, "--model", tiny_arch, "--epochs", "3", "--out", dyn, "--batch-size", "3",
             "--optimizer", "adam", "--lr", "0.01", "--workers", "0", "--grand-epochs", "1,3", "--el2n-epochs", "1,2", "--runs", "2",
             "--quiet")
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "recorded 8 of 8 samples x 3 epochs x 2 runs" in r.output and r.output.count("epoch ") >= 3
    for method in ("el2n", "forgetting", "aum", "grand-dyn"):
        out = tmp_path / method
        r = _cli("score", source.path, "--method", method, "--dynamics", dyn, "--ratio", "0.25,0.5", "--out", out, "--quiet")
        assert r.exit_code == 0, r.output + repr(r.exception)
        s = ScoreFile.load(out / "scores.json")
        assert s.method == method and s.num_items == N and s.harder in ("higher", "lower")
        assert MaskFile(out / f"{method}-0.25.spmask").kept == 6 and MaskFile(out / f"{method}-0.5.spmask").kept == 4
    r = _cli("score", source.path, "--method", "el2n", "--dynamics", dyn, "--dynamics-epochs", "2", "--ratio", "0.5", "--out", tmp_path / "e2", "--quiet")
    e2 = ScoreFile.load(tmp_path / "e2" / "scores.json")
    assert r.exit_code == 0 and e2.params["epochs_used"] == 2 and e2.params["el2n_epochs"] == [1, 2] and e2.params["runs"] == 2
    r = _cli("score", source.path, "--method", "aum", "--ratio", "0.5", "--out", tmp_path / "no")
    assert r.exit_code == 1 and "needs recorded training dynamics" in r.output and "Traceback" not in r.output  # the library's error
    r = _cli("dynamics", source.path, "--model", tiny_arch, "--epochs", "2", "--out", tmp_path / "bad", "--grand-epochs", "1,x")
    assert r.exit_code == 2 and "comma-separated epoch numbers" in r.output
