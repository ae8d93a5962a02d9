"""The DataComp/OpenCLIP flow without resharding: uid list -> mask -> OpenCLIP's own pipeline reads the kept uids once each."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from click.testing import CliRunner
from PIL import Image

from streamprune.openclip import train_num_samples, use_pruned_shards
from streamprune_cli.main import cli

SHARDS, PER_SHARD = 4, 25

# the recipes import their trainer libraries, seconds each: out of the edit loop
pytestmark = pytest.mark.integration


def _uid(i: int) -> tuple[int, int]:
    rng = np.random.default_rng(1000 + i)
    hi, lo = rng.integers(0, 2**63, size=2, dtype=np.uint64)
    return int(hi), int(lo)


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), i % 256, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A small DataComp-style image-text pool: jpg, txt and json (with its uid) per sample."""
    root = tmp_path_factory.mktemp("pool")
    for s in range(SHARDS):
        with wds.TarWriter(str(root / f"{s:08d}.tar")) as sink:
            for j in range(PER_SHARD):
                i = s * PER_SHARD + j
                hi, lo = _uid(i)
                sink.write({"__key__": f"{i:09d}", "jpg": _jpeg(i), "txt": f"caption {i}",
                            "json": json.dumps({"uid": f"{hi:016x}{lo:016x}", "key": f"{i:09d}"}).encode()})
    return root


def test_openclip_epoch_reads_exactly_the_kept_uids(pool, tmp_path, monkeypatch):
    # imported here, not at collection: open_clip_train takes ~5 s to import, paid only by this test
    open_clip_data = pytest.importorskip("open_clip_train.data")
    runner = CliRunner()
    result = runner.invoke(cli, ["index", str(pool), "--out", str(tmp_path / "sp"), "--no-labels", "-q"])
    assert result.exit_code == 0, result.output
    rng = np.random.default_rng(0)
    kept = np.sort(rng.choice(SHARDS * PER_SHARD, size=40, replace=False))
    # DataComp's subset file: the kept uids as two uint64 columns
    uids = np.array([_uid(int(i)) for i in kept], dtype=np.dtype("u8,u8"))
    np.save(tmp_path / "subset.npy", uids)
    result = runner.invoke(cli, ["mask", str(tmp_path / "sp"), "--keys", str(tmp_path / "subset.npy"),
                                 "--out", str(tmp_path / "subset.spmask")])
    assert result.exit_code == 0, result.output

    manifest, mask = str(tmp_path / "sp"), str(tmp_path / "subset.spmask")
    # the stage is put in place for this test only (monkeypatch restores OpenCLIP's own afterwards)
    monkeypatch.setattr(open_clip_data, "tarfile_to_samples_nothrow", open_clip_data.tarfile_to_samples_nothrow)
    use_pruned_shards(manifest, mask)
    args = argparse.Namespace(
        train_data="::".join(str(pool / f"{s:08d}.tar") for s in range(SHARDS)), val_data=None,
        train_num_samples=train_num_samples(manifest, mask), dataset_resampled=False,
        train_data_upsampling_factors=None, seed=0, batch_size=8, workers=0, world_size=1,
    )
    assert args.train_num_samples == len(kept)

    def tokenizer(texts):  # the caption's sample number, so the batches say which samples they hold
        texts = [texts] if isinstance(texts, str) else texts
        return torch.tensor([[int(t.split()[-1])] for t in texts])

    preprocess = lambda image: torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # noqa: E731
    info = open_clip_data.get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer)
    for epoch in range(2):
        info.set_epoch(epoch)
        seen = []
        for images, texts in info.dataloader:
            assert images.shape[1:] == (8, 8, 3)
            seen += texts[:, 0].tolist()
        assert sorted(seen) == kept.tolist()  # every kept uid once, no other
