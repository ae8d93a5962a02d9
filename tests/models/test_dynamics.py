"""Training-dynamics recorder: stored values vs an independent forward pass, masks, GraNd, files."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from builders import write_grey_images
from PIL import Image

import streamprune.dynamics as dynamics_module
from streamprune import MaskMismatchError, StreamPruneError, mask_from_bool
from streamprune.dynamics import record_dynamics
from streamprune.dynamicsfile import DYNAMICS_META, FIELDS, load_dynamics
from streamprune.models import build_surrogate, save_checkpoint, surrogate_transform
from streamprune.scoring import score_source
from streamprune.scoring.scores_file import ScoreFile
from streamprune.writers import write_shards

# No BatchNorm: with lr=0 the model is then exactly the same function in train and eval mode,
# whatever the batch composition, so a direct forward pass must reproduce the recording.
N, C, SIDE = 30, 3, 8


@pytest.fixture
def tiny_arch():
    """No BatchNorm: with lr=0 a direct forward pass reproduces the recording (:func:`tiny_models.tiny_pool2`)."""
    return "tiny_models:tiny_pool2"


@pytest.fixture
def data(tmp_path):
    return write_grey_images(tmp_path, N, C, SIDE, samples_per_shard=7)


@pytest.fixture
def start_checkpoint(tmp_path, tiny_arch):
    torch.manual_seed(42)
    model = build_surrogate(tiny_arch, C)
    return save_checkpoint(tmp_path / "start.pt", model, tiny_arch, C, input_size=SIDE), model


def _reference(model, images, labels, manifest):
    """Per-sample fields in manifest order from a plain float64 forward pass over the source arrays."""
    transform = surrogate_transform(SIDE)
    src_index = [int(k) for k in manifest.keys()]  # npz keys are the source row numbers
    x = torch.stack([transform(Image.fromarray(images[i])) for i in src_index])
    y = labels[src_index]
    with torch.no_grad():
        z = model.eval()(x).double().numpy()
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    rows = np.arange(len(y))
    p_y = p[rows, y]
    other = p.copy()
    other[rows, y] = -1.0
    ref = {
        "correct": (z.argmax(1) == y).astype(float),
        "p_true": p_y,
        "margin": p_y - other.max(1),
        "loss": -np.log(p_y),
        "el2n": np.sqrt(((p - np.eye(C)[y]) ** 2).sum(1)),
        "logit_margin": z[rows, y] - np.where(np.eye(C)[y] > 0, -np.inf, z).max(1),  # shift-invariant: z minus its max is fine
    }
    return ref, x, torch.as_tensor(y)


def test_lr0_recording_equals_direct_forward_in_manifest_order(tmp_path, data, tiny_arch, start_checkpoint):
    m, images, labels = data
    ckpt, model = start_checkpoint
    r = record_dynamics(m, tiny_arch, tmp_path / "dyn", epochs=2, checkpoint=ckpt, lr=0.0, batch_size=4, workers=0, seed=3, progress=False)
    assert r.recorded == N and r.epochs == 2 and r.num_samples == N and r.runs == 1
    dyn = r.load(m)
    assert dyn.fields == list(FIELDS) and dyn.array.shape == (2, N, len(FIELDS)) and dyn.array.dtype == np.float32
    ref, _, _ = _reference(model, images, labels, m)
    assert 0 < ref["correct"].sum() < N  # the check below sees both outcomes
    for e in range(2):
        for name in FIELDS:
            np.testing.assert_allclose(dyn.field(name)[e], ref[name], rtol=1e-5, atol=1e-6, err_msg=f"{name}, epoch {e}")
    meta = json.loads((tmp_path / "dyn" / DYNAMICS_META).read_text())
    assert meta["manifest_fingerprint"] == m.fingerprint and meta["seed"] == 3 and meta["epochs_done"] == 2
    assert meta["optimizer"]["name"] == "sgd" and meta["optimizer"]["lr"] == 0.0
    assert meta["model"]["arch"] == tiny_arch and meta["model"]["checkpoint_sha256"]
    assert len(meta["seconds_per_epoch"]) == 2 and meta["grand"] is None
    np.testing.assert_allclose(meta["train_loss"], [ref["loss"].mean()] * 2, rtol=1e-5)
    assert sorted(os.listdir(tmp_path / "dyn")) == ["dynamics.json", "dynamics.npy"]


@pytest.mark.integration
def test_mask_gives_nan_rows_and_workers_read_each_sample_once(tmp_path, data, tiny_arch, start_checkpoint):
    m, images, labels = data
    ckpt, model = start_checkpoint
    keep = np.zeros(N, dtype=bool)
    keep[::3] = True
    keep[5] = True
    mask_path = mask_from_bool(m, keep).save(tmp_path / "k.spmask")
    r = record_dynamics(m, tiny_arch, tmp_path / "dyn", epochs=1, checkpoint=ckpt, mask=mask_path, lr=0.0, batch_size=3, workers=2, progress=False)
    assert r.recorded == keep.sum() and r.num_samples == N
    dyn = load_dynamics(tmp_path / "dyn")
    assert np.array_equal(dyn.recorded(), keep)
    assert np.isnan(dyn.array[0][~keep]).all() and not np.isnan(dyn.array[0][keep]).any()
    ref, _, _ = _reference(model, images, labels, m)
    for name in FIELDS:
        np.testing.assert_allclose(dyn.field(name)[0][keep], ref[name][keep], rtol=1e-5, atol=1e-6)
    with pytest.raises(StreamPruneError, match=r"dynamics\.json: 19 of 30 samples have no recorded dynamics"):
        dyn.require_recorded("el2n")
    assert json.loads((tmp_path / "dyn" / DYNAMICS_META).read_text())["mask"] == os.path.abspath(mask_path)


def _grad_norm_loop(model, x, y):
    model.eval()
    out = []
    for i in range(len(y)):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        out.append(float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()))))
    return np.array(out)


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_grand_epochs_equal_a_per_sample_autograd_loop(tmp_path, data, tiny_arch, start_checkpoint, strategy):
    m, images, labels = data
    ckpt, model = start_checkpoint
    r = record_dynamics(
        m, tiny_arch, tmp_path / "dyn", epochs=1, checkpoint=ckpt, lr=0.0, batch_size=8, grand_epochs=[1, 0], grad_chunk=5,
        grad_strategy=strategy, progress=False,
    )
    assert r.grand_epochs == (0, 1) and r.files.grand == str(tmp_path / "dyn" / "grand.npy") and r.files.el2n is None
    dyn = load_dynamics(tmp_path / "dyn", m)
    _, x, y = _reference(model, images, labels, m)
    expected = _grad_norm_loop(model, x, y)
    norms, at = dyn.grand()
    assert at == [0, 1] and norms.shape == (2, N)
    for row in norms:  # lr=0: the same weights before and after the epoch
        np.testing.assert_allclose(row, expected, rtol=1e-4)
    assert dyn.grand(0)[1] == [0]
    grand_meta = json.loads((tmp_path / "dyn" / DYNAMICS_META).read_text())["grand"]
    assert grand_meta["epochs"] == [0, 1] and grand_meta["strategy"] == strategy


@pytest.mark.integration
def test_training_changes_the_model_and_sidecar_summarises_the_array(tmp_path, data, tiny_arch):
    m, _, _ = data
    r = record_dynamics(m, tiny_arch, tmp_path / "dyn", epochs=3, optimizer="adam", lr=0.05, batch_size=5, seed=1, progress=False)
    dyn = load_dynamics(tmp_path / "dyn", m)
    loss = dyn.field("loss")
    assert not np.allclose(loss[0], loss[2])  # the weights moved
    np.testing.assert_allclose(r.training.train_loss, loss.mean(1), rtol=1e-5)
    np.testing.assert_allclose(r.training.train_accuracy, dyn.field("correct").mean(1), rtol=1e-6)
    p = dyn.field("p_true")
    assert np.all((p >= 0) & (p <= 1)) and np.allclose(dyn.field("loss"), -np.log(p), rtol=1e-4, atol=1e-5)
    r2 = record_dynamics(m, tiny_arch, tmp_path / "dyn2", epochs=3, optimizer="adam", lr=0.05, batch_size=5, seed=1, progress=False)
    assert np.array_equal(np.load(r.files.array), np.load(r2.files.array))  # same seed, same recording


def test_recording_is_bound_to_its_manifest_and_missing_files_are_named(tmp_path, data, tiny_arch):
    m, _, _ = data
    record_dynamics(m, tiny_arch, tmp_path / "dyn", epochs=1, batch_size=8, progress=False)
    other = write_shards(str(tmp_path / "source.npz"), tmp_path / "other", samples_per_shard=10, image_format="png", progress=False)
    meta = str(tmp_path / "dyn" / DYNAMICS_META)
    with pytest.raises(MaskMismatchError, match="dynamics.json: dynamics were recorded for another dataset") as exc:
        load_dynamics(tmp_path / "dyn", other)
    assert meta in str(exc.value)
    assert load_dynamics(meta, m).epochs == 1  # the sidecar path works too
    (tmp_path / "empty").mkdir()
    with pytest.raises(StreamPruneError, match="empty/dynamics.json: no training dynamics recorded here"):
        load_dynamics(tmp_path / "empty")
    os.unlink(tmp_path / "dyn" / "dynamics.npy")
    with pytest.raises(StreamPruneError, match="dynamics.npy: dynamics array missing"):
        load_dynamics(tmp_path / "dyn")
    obj = json.loads(open(meta).read())
    obj["version"] = 99
    open(meta, "w").write(json.dumps(obj))
    with pytest.raises(StreamPruneError, match="dynamics version 99 is not supported"):
        load_dynamics(tmp_path / "dyn")


def test_an_interrupted_run_leaves_the_previous_recording_intact(tmp_path, data, tiny_arch, monkeypatch):
    m, _, _ = data
    record_dynamics(m, tiny_arch, tmp_path / "dyn", epochs=1, batch_size=8, seed=0, progress=False)
    before = np.load(tmp_path / "dyn" / "dynamics.npy")
    calls = {"n": 0}
    real = dynamics_module.batch_statistics

    def failing(logits, labels):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(logits, labels)

    (tmp_path / "dyn" / "dynamics.npy.tmp-999999").write_bytes(b"left by a killed run")
    monkeypatch.setattr(dynamics_module, "batch_statistics", failing)
    with pytest.raises(KeyboardInterrupt):
        record_dynamics(m, tiny_arch, tmp_path / "dyn", epochs=2, batch_size=8, seed=5, grand_epochs=[1], progress=False)
    assert sorted(os.listdir(tmp_path / "dyn")) == ["dynamics.json", "dynamics.npy"]  # no temp files left
    dyn = load_dynamics(tmp_path / "dyn", m)
    assert dyn.epochs == 1 and np.array_equal(np.asarray(dyn.array), before)


def test_bad_arguments(tmp_path, data, tiny_arch):
    m, _, _ = data
    with pytest.raises(ValueError, match="grand_epochs"):
        record_dynamics(m, tiny_arch, tmp_path / "a", epochs=2, grand_epochs=[3], progress=False)
    with pytest.raises(ValueError, match="lr=-1"):
        record_dynamics(m, tiny_arch, tmp_path / "a", epochs=1, lr=-1.0, progress=False)
    with pytest.raises(ValueError, match="epochs=0"):
        record_dynamics(m, tiny_arch, tmp_path / "a", epochs=0, progress=False)
    empty = mask_from_bool(m, np.zeros(N, dtype=bool))
    with pytest.raises(StreamPruneError, match="keeps no samples"):
        record_dynamics(m, tiny_arch, tmp_path / "a", epochs=1, mask=empty, progress=False)
    samples = [(f"u{i}", {"png": b"x"}, None) for i in range(3)]
    unlabelled = write_shards(samples, tmp_path / "unl", progress=False)
    with pytest.raises(StreamPruneError, match="no labels"):
        record_dynamics(unlabelled, tiny_arch, tmp_path / "a", epochs=1, progress=False)


# With BatchNorm, train and eval mode give different outputs: an eval-mode snapshot must
# match an eval-mode forward pass of the weights (and running statistics) of that moment.


@pytest.fixture
def bn_arch():
    """BatchNorm: train and eval mode differ (:func:`tiny_models.tiny_pool2_bn`)."""
    return "tiny_models:tiny_pool2_bn"


def _capture_snapshot_states(monkeypatch):
    """Copies of the model's state at every EL2N snapshot, keyed by (run, epoch)."""
    states = {}
    real = dynamics_module._El2nPass.__call__

    def spy(self, out, at):
        states[(self.run, at)] = copy.deepcopy(self.model.state_dict())
        return real(self, out, at)

    monkeypatch.setattr(dynamics_module._El2nPass, "__call__", spy)
    return states


@pytest.mark.integration
def test_el2n_snapshots_equal_an_eval_mode_forward_pass_of_the_model_at_that_epoch(tmp_path, data, bn_arch, monkeypatch):
    m, images, labels = data
    states = _capture_snapshot_states(monkeypatch)
    r = record_dynamics(
        m, bn_arch, tmp_path / "dyn", epochs=2, optimizer="adam", lr=0.05, batch_size=8, seed=2, el2n_epochs=[2, 0, 1], input_size=SIDE,
        progress=False,
    )
    assert r.el2n_epochs == (0, 1, 2) and r.runs == 1 and r.files.el2n == str(tmp_path / "dyn" / "el2n.npy") and sorted(states) == [(0, 0), (0, 1), (0, 2)]
    dyn = load_dynamics(tmp_path / "dyn", m)
    snaps, at = dyn.el2n_snapshots()
    assert at == [0, 1, 2] and snaps.shape == (1, 3, N) and dyn.runs == 1
    model = build_surrogate(bn_arch, C)
    for j, e in enumerate(at):
        model.load_state_dict(states[(0, e)])
        ref, _, _ = _reference(model, images, labels, m)  # eval mode, float64 softmax, manifest order
        np.testing.assert_allclose(snaps[0, j], ref["el2n"], rtol=1e-5, atol=1e-6, err_msg=f"epoch {e}")
    assert not np.allclose(snaps[0, 1], snaps[0, 2])  # the weights moved between snapshots
    # eval mode is not the training pass: BatchNorm on batch statistics, weights moving in the epoch
    assert not np.allclose(snaps[0, 2], dyn.field("el2n")[1], atol=1e-3)
    meta = json.loads((tmp_path / "dyn" / DYNAMICS_META).read_text())
    assert meta["version"] == 3 and meta["runs"] == 1 and meta["seeds"] == [2]
    assert meta["el2n"]["epochs"] == [0, 1, 2] and meta["el2n"]["mode"] == "eval" and meta["el2n"]["array"] == "el2n.npy"
    assert sorted(os.listdir(tmp_path / "dyn")) == ["dynamics.json", "dynamics.npy", "el2n.npy"]
    assert dyn.el2n_snapshots(0)[1] == [0]
    with pytest.raises(ValueError, match="epochs=3"):
        dyn.el2n_snapshots(3)


@pytest.mark.integration
def test_runs_are_independent_seeds_and_the_el2n_score_is_their_mean(tmp_path, data, bn_arch):
    m, _, _ = data
    common = {"epochs": 2, "optimizer": "adam", "lr": 0.05, "batch_size": 8, "el2n_epochs": [1, 2], "input_size": SIDE, "progress": False}
    r = record_dynamics(m, bn_arch, tmp_path / "two", seed=3, runs=2, **common)
    assert r.runs == 2
    two = load_dynamics(tmp_path / "two", m)
    snaps, at = two.el2n_snapshots()
    assert snaps.shape == (2, 2, N) and two.runs == 2 and two.meta["seeds"] == [3, 4]
    assert not np.allclose(snaps[0], snaps[1], atol=1e-4)  # different initialisation and data order
    # each run is the recording a single run with that seed makes
    record_dynamics(m, bn_arch, tmp_path / "s3", seed=3, **common)
    record_dynamics(m, bn_arch, tmp_path / "s4", seed=4, **common)
    s3, s4 = load_dynamics(tmp_path / "s3"), load_dynamics(tmp_path / "s4")
    np.testing.assert_array_equal(snaps[0], s3.el2n_snapshots()[0][0])
    np.testing.assert_array_equal(snaps[1], s4.el2n_snapshots()[0][0])
    np.testing.assert_array_equal(np.asarray(two.array), np.asarray(s3.array))  # dynamics.npy: the first run
    out = score_source(m, "el2n", [0.5], tmp_path / "scores", dynamics_dir=str(tmp_path / "two"), progress=False)
    s = ScoreFile.load(out["scores"])
    expected = (snaps[0, 0].astype(float) + snaps[0, 1] + snaps[1, 0] + snaps[1, 1]) / 4
    np.testing.assert_allclose(s.scores, expected, rtol=1e-6)
    assert s.params["el2n_source"] == "eval-mode snapshots" and s.params["runs"] == 2 and s.params["el2n_epochs"] == [1, 2]
    out1 = score_source(m, "el2n", [0.5], tmp_path / "scores1", dynamics_dir=str(tmp_path / "two"), epochs=1, progress=False)
    np.testing.assert_allclose(ScoreFile.load(out1["scores"]).scores, (snaps[0, 0].astype(float) + snaps[1, 0]) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="runs=2: only the EL2N snapshots use the later runs"):
        record_dynamics(m, bn_arch, tmp_path / "bad", epochs=1, runs=2, progress=False)
    with pytest.raises(ValueError, match="el2n_epochs"):
        record_dynamics(m, bn_arch, tmp_path / "bad", epochs=1, el2n_epochs=[2], progress=False)
