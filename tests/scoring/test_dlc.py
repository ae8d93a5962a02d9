"""DLC: the fast one-pass score against a straightforward iterative-pruning reference, options, CLI."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from torch import nn
from torch.nn.utils import prune

from streamprune.errors import StreamPruneError
from streamprune.masks import MaskFile
from streamprune.models import build_surrogate, save_checkpoint, surrogate_transform
from streamprune.scoring import score_source
from streamprune.scoring.dlc import Embedder, dlc_scores, level_counts, prunable_weights, removal_levels
from streamprune.scoring.scores_file import ScoreFile
from streamprune.writers import write_shards
from streamprune_cli.main import cli

CNN = "tiny_models:tiny_cnn"
VIT = "tiny_models:tiny_vit"


def _images(n=36, classes=3, side=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    # class-dependent brightness plus noise, so classes differ in feature space
    base = 40 + 70 * labels[:, None, None]
    images = np.clip(base + rng.normal(0, 25, (n, side, side)), 0, 255).astype(np.uint8)
    return images, labels


@pytest.fixture
def dataset(tmp_path):
    images, labels = _images()
    np.savez(tmp_path / "d.npz", images=images, labels=labels, class_names=np.array(["a", "b", "c"]))
    m = write_shards(str(tmp_path / "d.npz"), tmp_path / "data", samples_per_shard=10, shuffle=False,
                     image_format="png", progress=False)
    return m, images, labels


def _model(arch=CNN, num_classes=5, seed=0):
    torch.manual_seed(seed)
    model = build_surrogate(arch, num_classes)
    for mod in model.modules():  # non-trivial running statistics: eval mode must use them
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _reference_dlc(model, images, labels, input_size, levels, step, schedule="geometric", eps=1e-8):
    """Straightforward DLC: torch's pruning on a copy, every sample re-embedded at every level."""
    transform = surrogate_transform(input_size)
    x = torch.stack([transform(Image.fromarray(im)) for im in images])
    classes = np.unique(labels)
    y = torch.as_tensor(np.searchsorted(classes, labels))

    def embed(net):
        captured = []
        head = net[-1]
        h = head.register_forward_pre_hook(lambda m, inp: captured.append(inp[0]))
        with torch.no_grad():
            net(x)
        h.remove()
        return captured[0].double()

    work = copy.deepcopy(model)
    targets = [(m, "weight") for m in work.modules() if isinstance(m, nn.Conv2d)]
    losses, zeros = [], []
    mu = None
    for k in range(levels):
        if schedule == "linear":  # sparsity k * step, from the unmasked model
            work = copy.deepcopy(model)
            targets = [(m, "weight") for m in work.modules() if isinstance(m, nn.Conv2d)]
            if k:
                prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=k * step)
        z = embed(work)
        if mu is None:
            mu = torch.stack([z[y == c].mean(0) for c in range(len(classes))])
        d = torch.sqrt(((z[:, None, :] - mu[None]) ** 2).sum(-1))
        losses.append(F.cross_entropy(1.0 / torch.clamp(d, min=eps), y, reduction="none"))
        zeros.append(sum(int((m.weight == 0).sum()) for m, _ in targets))
        if schedule == "geometric":
            prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=step)
    return torch.stack(losses).mean(0).numpy(), zeros


@pytest.mark.parametrize("schedule, levels, step", [("geometric", 50, 0.02), ("geometric", 12, 0.1), ("linear", 20, 0.05)])
def test_fast_dlc_matches_iterative_pruning_reference(dataset, schedule, levels, step):
    m, images, labels = dataset
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = dlc_scores(model, m, levels=levels, schedule=schedule, step=step, input_size=12, batch_size=7, progress=False)
    ref, zeros = _reference_dlc(model, images, labels, 12, levels, step, schedule)
    # float32 forwards over other batch sizes differ in the last bits; small losses magnify that
    np.testing.assert_allclose(out["dlc"], ref, rtol=2e-5, atol=1e-7)
    # the same number of weights is masked at every level as torch's pruning masks
    assert np.round(out["sparsity"] * out["prunable"]).astype(int).tolist() == zeros
    assert out["prunable"] == 3 * 6 * 9 + 6 * 8 * 9 and out["layers"] == "conv"
    assert out["level_loss"].shape == (levels,) and out["loss_unmasked"].shape == (36,)
    # the weights are restored afterwards
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_level_counts_and_schedules():
    # geometric: round(2% of the remaining) per level, Python (banker's) rounding as torch
    assert level_counts(1000, 4, "geometric", 0.02) == [0, 20, 40, 59]
    geo = level_counts(10_000, 50)
    assert geo[-1] / 10_000 == pytest.approx(1 - 0.98**49, abs=2e-3)  # ~63% after 49 steps
    lin = level_counts(1000, 50, "linear", 0.02)
    assert lin == [20 * k for k in range(50)]  # 0%, 2%, ..., 98%
    with pytest.raises(ValueError, match="exceed 100% sparsity"):
        level_counts(1000, 60, "linear", 0.02)
    for kwargs, msg in (({"schedule": "cubic"}, "schedule='cubic' must be one of geometric, linear"),
                        ({"step": 0.0}, "step=0.0 must be in"), ({"levels": 0}, "levels=0 must be")):
        with pytest.raises(ValueError, match=msg):
            level_counts(1000, **{"levels": 5, **kwargs})


def test_removal_levels_l1_and_random():
    torch.manual_seed(0)
    weights = [torch.randn(4, 5), torch.randn(30)]
    counts = level_counts(50, 10, "linear", 0.1)
    l1 = removal_levels(weights, counts, "l1")
    flat_w = torch.cat([w.reshape(-1) for w in weights]).abs()
    flat_l = torch.cat([r.reshape(-1) for r in l1])
    for k, c in enumerate(counts):
        masked = flat_l <= k if k else torch.zeros_like(flat_l, dtype=torch.bool)
        assert int(masked.sum()) == c
        if 0 < c < 50:  # the masked ones are the smallest magnitudes
            assert flat_w[masked].max() < flat_w[~masked].min()
    assert int((flat_l == len(counts)).sum()) == 50 - counts[-1]  # never masked
    r1 = removal_levels(weights, counts, "random", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(r1, removal_levels(weights, counts, "random", seed=1)))
    r2 = removal_levels(weights, counts, "random", seed=2)
    assert not all(torch.equal(a, b) for a, b in zip(r1, r2))
    flat_r = torch.cat([r.reshape(-1) for r in r1])
    assert [int((flat_r <= k).sum()) for k in range(1, 10)] == counts[1:]
    assert not torch.equal(flat_r, flat_l)
    with pytest.raises(ValueError, match="mask='magnitude' must be one of l1, random"):
        removal_levels(weights, counts, "magnitude")


def test_random_masks_are_seeded(dataset):
    m, _, _ = dataset
    a = dlc_scores(_model(), m, levels=10, step=0.1, mask="random", seed=1, input_size=12, progress=False)["dlc"]
    b = dlc_scores(_model(), m, levels=10, step=0.1, mask="random", seed=1, input_size=12, progress=False)["dlc"]
    c = dlc_scores(_model(), m, levels=10, step=0.1, mask="random", seed=2, input_size=12, progress=False)["dlc"]
    l1 = dlc_scores(_model(), m, levels=10, step=0.1, mask="l1", input_size=12, progress=False)["dlc"]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, l1)


@pytest.mark.integration
def test_score_method_is_deterministic_across_batches_and_workers(tmp_path, dataset):
    m, _, _ = dataset
    kw = dict(surrogate=CNN, input_size=12, progress=False, levels=8, step=0.1)
    r1 = score_source(m, "dlc", [0.5], tmp_path / "a", batch_size=5, workers=0, **kw)
    r2 = score_source(m, "dlc", [0.5], tmp_path / "b", batch_size=16, workers=2, **kw)
    s1, s2 = ScoreFile.load(r1["scores"]), ScoreFile.load(r2["scores"])
    np.testing.assert_allclose(s1.scores, s2.scores, rtol=1e-6, atol=1e-9)  # float32 sums differ by batch size
    assert s1.method == "dlc" and s1.level == "sample" and s1.harder == "higher" and s1.higher_is == "keep"
    p = s1.params
    assert p["levels"] == 8 and p["schedule"] == "geometric" and p["mask"] == "l1" and p["layers"] == "conv"
    assert p["seconds"] > 0 and p["pool"] is None and len(p["sparsity"]) == 8 and p["sparsity"][0] == 0
    assert s1.surrogate["arch"] == CNN and s1.surrogate["checkpoint"] is None and s1.surrogate["input_size"] == 12
    assert np.all(s1.scores > 0) and "loss_unmasked" in s1.extra
    # DLC's masks default to the paper's DLC + FlexRand: class-balanced, named after the selector
    assert os.path.basename(r1["masks"][0.5]) == "dlc-flexrand-0.5.spmask"
    mask = MaskFile(r1["masks"][0.5])
    assert mask.provenance["selector"] == "flexrand"
    labels = m.labels()
    kept_per_class = np.bincount(labels[mask.to_bool()], minlength=m.num_classes)
    sizes = np.bincount(labels, minlength=m.num_classes)
    assert np.abs(kept_per_class - sizes * 0.5).max() < 1 and kept_per_class.sum() == (len(labels) + 1) // 2


def test_a_sample_far_from_its_prototype_is_harder(tmp_path):
    images, labels = _images(n=40, classes=2, side=10, seed=3)
    images[0] = np.clip(images[1].astype(int), 0, 255).astype(np.uint8)  # labelled 0, looks like class 1
    np.savez(tmp_path / "o.npz", images=images, labels=labels)
    m = write_shards(str(tmp_path / "o.npz"), tmp_path / "o", samples_per_shard=16, image_format="png", progress=False)
    keys = m.keys()
    out = dlc_scores(_model(num_classes=3), m, levels=10, step=0.05, input_size=12, progress=False)["dlc"]
    outlier = keys.index("00000000")
    class0 = [i for i, k in enumerate(keys) if labels[int(k)] == 0 and i != outlier]
    assert out[outlier] > np.max(out[class0])


def test_vit_token_pooling_and_linear_layers(tmp_path, dataset):
    m, _, _ = dataset
    vit = _model(VIT, num_classes=7)
    names = [n for n, _ in prunable_weights(vit)[0]]
    assert prunable_weights(vit)[1] == "linear"
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in names
    assert "encoder.layers.encoder_layer_0.self_attention.out_proj.weight" in names
    assert "encoder.layers.encoder_layer_0.mlp.0.weight" in names and "encoder.layers.encoder_layer_0.mlp.3.weight" in names
    assert not any(n.startswith("heads") or n.startswith("conv_proj") for n in names)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():  # tokens by hand: patches, class token, encoder
        t = vit._process_input(x)
        t = vit.encoder(torch.cat([vit.class_token.expand(3, -1, -1), t], dim=1))
        assert t.shape == (3, 17, 32)
        torch.testing.assert_close(Embedder(vit, "cls")(x), t[:, 0])
        torch.testing.assert_close(Embedder(vit, "mean")(x), t[:, 1:].mean(1))
    kw = dict(surrogate=VIT, input_size=32, progress=False, levels=6, step=0.1)
    cls = ScoreFile.load(score_source(m, "dlc", [0.5], tmp_path / "c", **kw)["scores"])
    mean = ScoreFile.load(score_source(m, "dlc", [0.5], tmp_path / "m", pool="mean", **kw)["scores"])
    assert cls.params["pool"] == "cls" and mean.params["pool"] == "mean" and cls.params["layers"] == "linear"
    assert cls.params["feature_dim"] == 32 and not np.allclose(cls.scores, mean.scores)
    with pytest.raises(ValueError, match="pool='max' must be one of cls, mean"):
        score_source(m, "dlc", [0.5], tmp_path / "x", pool="max", **kw)


def test_pretrained_backbone_with_other_classes(tmp_path, dataset):
    m, _, _ = dataset
    model = _model(num_classes=7)
    ckpt = save_checkpoint(tmp_path / "bb.pt", model, CNN, 7, input_size=12, classes=[f"k{i}" for i in range(7)])
    r = score_source(m, "dlc", [0.5], tmp_path / "a", surrogate=CNN, checkpoint=ckpt, progress=False, levels=5)
    s = ScoreFile.load(r["scores"])
    assert s.surrogate["num_classes"] == 7 and s.surrogate["input_size"] == 12 and s.surrogate["checkpoint_sha256"]
    direct = dlc_scores(model, m, levels=5, input_size=12, progress=False)["dlc"]
    np.testing.assert_allclose(s.scores, direct, rtol=1e-6)
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # a bare state dict: the head size is read from it
    r2 = score_source(m, "dlc", [0.5], tmp_path / "b", surrogate=CNN, checkpoint=tmp_path / "bare.pt", input_size=12,
                      progress=False, levels=5)
    np.testing.assert_allclose(ScoreFile.load(r2["scores"]).scores, direct, rtol=1e-6)


def test_dlc_errors(tmp_path, dataset):
    m, images, _ = dataset
    with pytest.raises(ValueError, match="needs a pretrained backbone"):
        score_source(m, "dlc", [0.5], tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="mask='l2' must be one of"):
        score_source(m, "dlc", [0.5], tmp_path / "a", surrogate=CNN, mask="l2", progress=False)
    with pytest.raises(ValueError, match="schedule='exp'"):
        score_source(m, "dlc", [0.5], tmp_path / "a", surrogate=CNN, schedule="exp", progress=False)
    import io

    def png(im):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        return buf.getvalue()

    unlabelled = write_shards([(f"u{i}", {"png": png(im)}, None) for i, im in enumerate(images[:8])], tmp_path / "u",
                              label_ext=None, progress=False)
    with pytest.raises(StreamPruneError, match="needs a label for every sample"):
        score_source(unlabelled, "dlc", [0.5], tmp_path / "b", surrogate=CNN, progress=False)


def test_cli_dlc_with_flexrand_masks_rederived_identically(tmp_path, dataset):
    m, _, labels = dataset
    out = tmp_path / "out"
    runner = CliRunner()
    r = runner.invoke(cli, ["score", m.path, "--method", "dlc", "--model", CNN, "--input-size", "12", "--levels", "6",
                            "--schedule", "linear", "--dlc-mask", "random", "--selector", "flexrand", "--gamma", "0.45",
                            "--ratio", "0.5,0.75", "--out", str(out), "--seed", "3", "--quiet"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    s = ScoreFile.load(out / "scores.json")
    assert s.params["schedule"] == "linear" and s.params["mask"] == "random" and s.params["levels"] == 6
    for ratio in (0.5, 0.75):
        written = out / f"dlc-flexrand-{ratio:g}.spmask"
        again = tmp_path / f"again-{ratio}.spmask"
        r2 = runner.invoke(cli, ["mask", m.path, "--scores", str(out / "scores.json"), "--ratio", str(ratio), "--selector",
                                 "flexrand", "--gamma", "0.45", "--seed", "3", "--out", str(again)])
        assert r2.exit_code == 0, r2.output + repr(r2.exception)
        a, b = MaskFile(written), MaskFile(again)
        assert np.array_equal(a.to_bool(), b.to_bool())
        kept = a.to_bool()
        assert np.bincount(labels[kept], minlength=3).tolist() == [round(12 * (1 - ratio))] * 3
        assert a.provenance["selector_options"] == {"gamma": 0.45}
    other = tmp_path / "other.spmask"
    r3 = runner.invoke(cli, ["mask", m.path, "--scores", str(out / "scores.json"), "--ratio", "0.5", "--selector",
                             "flexrand", "--gamma", "0.45", "--seed", "4", "--out", str(other)])
    assert r3.exit_code == 0 and not np.array_equal(MaskFile(other).to_bool(), MaskFile(out / "dlc-flexrand-0.5.spmask").to_bool())
    bad = runner.invoke(cli, ["mask", m.path, "--scores", str(out / "scores.json"), "--ratio", "0.5", "--selector", "ccs",
                              "--beta", "1.5", "--out", str(other)])
    assert bad.exit_code != 0 and "beta=1.5" in bad.output
    helptext = runner.invoke(cli, ["score", "--help"]).output
    assert "dlc" in helptext and "flexrand" in helptext and "ccs" in helptext


def test_score_source_takes_the_cli_names_model_and_dlc_mask(tmp_path, dataset):
    m, _, _ = dataset
    kw = dict(input_size=12, progress=False, levels=4, step=0.1, seed=3)
    old = ScoreFile.load(score_source(m, "dlc", [0.5], tmp_path / "old", surrogate=CNN, mask="random", **kw)["scores"])
    new = ScoreFile.load(score_source(m, "dlc", [0.5], tmp_path / "new", model=CNN, dlc_mask="random", dlc_step=0.1,
                                      **{k: v for k, v in kw.items() if k != "step"})["scores"])
    assert new.params["mask"] == "random" and new.surrogate["arch"] == CNN
    np.testing.assert_allclose(new.scores, old.scores, rtol=1e-6)
    with pytest.raises(ValueError, match="model=.* and surrogate=.* are two names of one option"):
        score_source(m, "dlc", [0.5], tmp_path / "x", model=CNN, surrogate=VIT, **kw)
    with pytest.raises(ValueError, match="mask='l1' and dlc_mask='random' are two names of one option"):
        score_source(m, "dlc", [0.5], tmp_path / "y", model=CNN, mask="l1", dlc_mask="random", **kw)
