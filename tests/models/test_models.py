import numpy as np
import pytest
import torch
from PIL import Image

from streamprune.errors import StreamPruneError
from streamprune.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_surrogate,
    checkpoint_info,
    features,
    load_checkpoint,
    save_checkpoint,
    surrogate_transform,
)


@pytest.mark.integration
@pytest.mark.parametrize(
    "arch, dim", [("resnet18", 512), ("resnet50", 2048), ("mobilenet_v3_small", 576)]
)
def test_torchvision_surrogates_have_the_asked_classes_and_pooled_features(arch, dim):
    torch.manual_seed(0)
    model = build_surrogate(arch, 7)
    assert not model.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        f = features(model, x)
    assert logits.shape == (2, 7)
    assert f.shape == (2, dim)


def test_resnet_features_are_the_avgpool_output_fed_to_fc():
    torch.manual_seed(0)
    model = build_surrogate("resnet18", 5)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        f = features(model, x)
        m = model
        h = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        h = m.layer4(m.layer3(m.layer2(m.layer1(h))))
        manual = torch.flatten(m.avgpool(h), 1)
        assert torch.allclose(f, manual, atol=1e-6)
        assert torch.allclose(m.fc(f), m(x), atol=1e-5)


def test_entry_point_surrogate(tiny_arch):
    model = build_surrogate(tiny_arch, 4)
    assert isinstance(model, torch.nn.Sequential)
    x = torch.randn(2, 3, 16, 16)
    assert model(x).shape == (2, 4)
    assert features(model, x).shape == (2, 4)  # input of the last Linear


def test_bad_surrogate_names_give_clear_errors(tiny_arch):
    with pytest.raises(ValueError, match="not a torchvision architecture"):
        build_surrogate("resnet_does_not_exist", 3)
    with pytest.raises(ValueError, match="cannot import module"):
        build_surrogate("no_such_module_xyz:f", 3)
    with pytest.raises(ValueError, match="has no attribute"):
        build_surrogate("tiny_models:missing", 3)
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        build_surrogate("tiny_models:not_a_model", 3)


@pytest.mark.parametrize("mode, size", [("L", (28, 28)), ("RGB", (224, 224)), ("RGBA", (40, 30)), ("P", (50, 64))])
def test_transform_gives_normalised_rgb_of_the_input_size(mode, size):
    image = Image.new(mode, size, color=0)
    t = surrogate_transform(input_size=32)
    x = t(image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    # a black image normalises to -mean/std in every channel
    expected = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=1e-5)
    assert surrogate_transform(input_size=20)(image).shape == (3, 20, 20)


def test_transform_copies_grey_into_three_equal_channels_and_is_deterministic():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(28, 28), dtype=np.uint8), mode="L")
    t = surrogate_transform(32)
    x = t(image)
    raw = x * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    assert torch.allclose(raw[0], raw[1], atol=1e-6) and torch.allclose(raw[1], raw[2], atol=1e-6)
    assert torch.equal(x, t(image))
    with pytest.raises(ValueError, match="input_size"):
        surrogate_transform(4)


def test_checkpoint_round_trip_and_mismatch(tmp_path, tiny_arch):
    torch.manual_seed(1)
    model = build_surrogate(tiny_arch, 3)
    path = save_checkpoint(tmp_path / "c.pt", model, tiny_arch, 3, input_size=16, epochs=2, classes=["a", "b", "c"])
    ckpt = load_checkpoint(path)
    assert ckpt["arch"] == tiny_arch and ckpt["num_classes"] == 3 and ckpt["input_size"] == 16 and ckpt["epochs"] == 2
    torch.manual_seed(2)  # a different initialisation, replaced by the checkpoint
    again = build_surrogate(tiny_arch, 3, checkpoint=path)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    info = checkpoint_info(path)
    assert len(info["checkpoint_sha256"]) == 64 and info["classes"] == ["a", "b", "c"]
    assert not list(tmp_path.glob("*.tmp-*"))
    with pytest.raises(StreamPruneError, match="c.pt.*not 'resnet18'"):
        build_surrogate("resnet18", 3, checkpoint=path)
    with pytest.raises(StreamPruneError, match="3 classes"):
        build_surrogate(tiny_arch, 4, checkpoint=path)
    # a bare state dict written by other code loads too
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    bare = build_surrogate(tiny_arch, 3, checkpoint=tmp_path / "bare.pt")
    assert torch.equal(bare[-1].weight, model[-1].weight)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(StreamPruneError, match="junk.pt"):
        build_surrogate(tiny_arch, 3, checkpoint=tmp_path / "junk.pt")
    with pytest.raises(StreamPruneError, match="missing.pt: checkpoint not found"):
        build_surrogate(tiny_arch, 3, checkpoint=tmp_path / "missing.pt")
