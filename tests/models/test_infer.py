"""Inference over a manifest (streamprune.infer): rows in manifest order, kept samples only, the
evaluation transform's logits."""

import numpy as np
import pytest
import torch
from builders import brightness_npz
from PIL import Image

from streamprune import mask_from_bool
from streamprune.infer import infer
from streamprune.models import build_surrogate, surrogate_transform
from streamprune.writers import write_shards


@pytest.mark.integration
def test_infer_returns_rows_in_manifest_order_whatever_the_batching(tmp_path, tiny_arch):
    manifest = write_shards(brightness_npz(tmp_path / "x.npz", n=50), tmp_path / "data", samples_per_shard=7, image_format="png", progress=False)
    torch.manual_seed(0)
    model = build_surrogate(tiny_arch, 3)
    a = infer(model, manifest, batch_size=4, workers=0, input_size=12, want_features=True, progress=False)
    b = infer(model, manifest, batch_size=64, workers=2, input_size=12, progress=False)
    assert np.array_equal(a["positions"], np.arange(50))
    assert np.array_equal(a["labels"], manifest.labels())
    assert a["features"].shape == (50, 4) and a["logits"].shape == (50, 3)
    assert np.allclose(a["logits"], b["logits"], atol=1e-5)


def test_infer_over_a_mask_gives_the_kept_rows_of_a_direct_forward_pass(tmp_path, tiny_arch):
    npz = brightness_npz(tmp_path / "x.npz", n=20)
    # unshuffled: manifest position i is the npz image i
    manifest = write_shards(npz, tmp_path / "data", samples_per_shard=6, image_format="png", shuffle=False, progress=False)
    keep = np.zeros(20, dtype=bool)
    keep[[0, 3, 7, 8, 19]] = True  # across shards, the first and last samples among them
    torch.manual_seed(0)
    model = build_surrogate(tiny_arch, 3).eval()
    out = infer(model, manifest, mask_from_bool(manifest, keep), batch_size=2, workers=0, input_size=12, progress=False)
    assert np.array_equal(out["positions"], np.flatnonzero(keep))
    # the reference: the source images themselves (not the shards), the evaluation transform, one forward pass
    images = np.load(npz)["images"][keep]
    transform = surrogate_transform(12)
    x = torch.stack([transform(Image.fromarray(im, mode="L")) for im in images])
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.allclose(out["logits"], expected, atol=1e-5)
    assert np.array_equal(out["labels"], manifest.labels()[keep])
