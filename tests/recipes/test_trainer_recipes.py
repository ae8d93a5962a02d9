"""The trainer recipes of docs/recipes.md, each run for a short epoch: PyTorch Lightning and HF Accelerate.

(Plain torchrun DDP is tests/recipes/test_distributed.py: gloo ranks over a 2-worker DataLoader.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from streamprune import Manifest, PrunedMapDataset, PrunedWebDataset
from streamprune.errors import MaskMismatchError
from streamprune.masks import random_mask
from streamprune.readers import PrunedSource
from streamprune.writers import write_shards

N = 120

# the recipes import their trainer libraries, seconds each: out of the edit loop
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    rng = np.random.default_rng(0)
    samples = [(f"s{i:04d}", {"x": rng.standard_normal(4).astype(np.float32).tobytes()}, i % 3) for i in range(N)]
    write_shards(samples, root / "ds", samples_per_shard=30, shuffle=False, progress=False)
    manifest = str(root / "ds")
    mask = random_mask(Manifest.load(manifest), 0.5, level="sample", seed=1)
    mask.save(str(root / "half.spmask"))
    return manifest, str(root / "half.spmask")


def _batch(samples):
    return [s["__key__"] for s in samples], torch.stack([torch.frombuffer(bytearray(s["x"]), dtype=torch.float32) for s in samples])


# --- PyTorch Lightning: the recipe ------------------------------------------------------------


def lightning_recipe() -> tuple[type, type]:
    """The recipe's data module, and a module that records the keys it trains on.

    Defined once ``pytorch_lightning`` is imported, here rather than at collection: it takes
    ~10 s to import, which every pytest worker would pay (skipped when it is not installed).
    """
    pl = pytest.importorskip("pytorch_lightning")

    class PrunedDataModule(pl.LightningDataModule):
        """Kept samples as a LightningDataModule; the epoch seeds the shuffle, the checkpoint binds the dataset."""

        def __init__(self, manifest, mask, batch_size=16, seed=0):
            super().__init__()
            self.ds = PrunedWebDataset(manifest, mask, shuffle=True, seed=seed)
            self.batch_size = batch_size

        def set_epoch(self, epoch):
            self.ds.set_epoch(epoch)

        def train_dataloader(self):
            # called at every epoch's start (reload_dataloaders_every_n_epochs=1), before the loader is
            # iterated: the reader plans its epoch when iterated, so the epoch must be set here
            if self.trainer is not None:
                self.set_epoch(self.trainer.current_epoch)
            return DataLoader(self.ds, batch_size=self.batch_size, collate_fn=_batch)

        def state_dict(self):
            # saved in the trainer's checkpoint: a resume on another dataset or mask is refused
            return {"binding": self.ds.source.binding()}

        def load_state_dict(self, state):
            if state["binding"] != self.ds.source.binding():
                raise MaskMismatchError(f"the checkpoint was trained on {state['binding']}, not {self.ds.source.binding()}")

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.seen: dict[int, list[str]] = {}

        def training_step(self, batch, batch_idx):
            keys, x = batch
            self.seen.setdefault(self.current_epoch, []).extend(keys)
            return self.layer(x).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return PrunedDataModule, Recorder


def _trainer(tmp_path, epochs):
    import pytorch_lightning as pl  # deferred: lightning_recipe() has imported it (or skipped)

    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, reload_dataloaders_every_n_epochs=1, default_root_dir=str(tmp_path))


def _epoch_order(manifest, mask, epoch):
    source = PrunedSource(manifest, mask, shuffle=True, seed=0)
    source.set_epoch(epoch)
    return [s["__key__"] for s in source]


def test_lightning_epoch_and_resume_from_the_trainer_checkpoint(data, tmp_path):
    PrunedDataModule, Recorder = lightning_recipe()
    manifest, mask = data
    module = Recorder()
    trainer = _trainer(tmp_path, 1)
    trainer.fit(module, datamodule=PrunedDataModule(manifest, mask))
    assert module.seen[0] == _epoch_order(manifest, mask, 0)
    ckpt = str(tmp_path / "after-epoch-0.ckpt")
    trainer.save_checkpoint(ckpt)

    resumed = Recorder()
    _trainer(tmp_path, 2).fit(resumed, datamodule=PrunedDataModule(manifest, mask), ckpt_path=ckpt)
    assert list(resumed.seen) == [1]  # epoch 0 is not run again
    assert resumed.seen[1] == _epoch_order(manifest, mask, 1) != module.seen[0]
    assert sorted(resumed.seen[1]) == sorted(module.seen[0])  # the same kept samples, reshuffled

    with pytest.raises(MaskMismatchError):
        _trainer(tmp_path, 2).fit(Recorder(), datamodule=PrunedDataModule(manifest, None), ckpt_path=ckpt)


# --- HF Accelerate: a prepared DataLoader over the map-style reader ----------------------------


def test_accelerate_prepared_loader_splits_kept_samples_over_processes(data):
    # imported here, not at collection: accelerate imports for seconds, paid only by this test
    accelerate = pytest.importorskip("accelerate")
    manifest, mask = data
    ds = PrunedMapDataset(manifest, mask)
    kept = [ds[i]["__key__"] for i in range(len(ds))]
    accelerator = accelerate.Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(ds, batch_size=8, shuffle=True, collate_fn=_batch))
    one = [k for keys, _ in loader for k in keys]
    assert sorted(one) == sorted(kept)
    # what each of two processes gets from the same prepared loader: its own batches, read by it alone
    parts = []
    for rank in range(2):
        shard = accelerate.data_loader.prepare_data_loader(
            DataLoader(ds, batch_size=8, shuffle=False, collate_fn=_batch), num_processes=2, process_index=rank,
            put_on_device=False, even_batches=False,
        )
        parts.append([k for keys, _ in shard for k in keys])
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(kept)
