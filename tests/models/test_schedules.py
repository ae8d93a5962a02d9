"""Per-epoch mask schedules (streamprune.schedules): InfoBatch's masks and loss weights, by hand
and through the training loop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _dist_worker import build_dataset

from streamprune import InfoBatch, Manifest, PrunedWebDataset, mask_from_bool
from streamprune.errors import ArgumentError, StreamPruneError
from streamprune.train import BatchOutput, fit

pytestmark = [
    pytest.mark.filterwarnings("ignore:Length of IterableDataset:UserWarning"),  # persistent workers keep the first epoch's len
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Five shards of 30, 12, 25, 1 and 20 samples (``_dist_worker.build_dataset``)."""
    built = build_dataset(tmp_path_factory.mktemp("schedules") / "data", shard_sizes=(30, 12, 25, 1, 20), big_fraction=0.0, seed=4)
    return {"manifest": Manifest.load(built.manifest_path)}


# ten samples' losses: mean 0.505, so the five below it are well learned
LOSSES = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.05, 1.0], dtype=np.float32)
WELL = np.array([0, 2, 4, 6, 8])


@pytest.fixture
def ten(shard_writer, sample_factory, tmp_path):
    """A manifest of ten samples."""
    return shard_writer(sample_factory(10), tmp_path / "ten")


def test_infobatch_by_hand_at_known_epochs(ten):
    # 10 epochs, delta 0.5: epochs 0-4 prune (scores known from the start), 5-9 anneal;
    # ratio 0.4 of the 5 well-learned samples = 2 pruned; the other 3 weighted 1 / 0.6
    ib = InfoBatch(ten, epochs=10, ratio=0.4, delta=0.5, seed=3, initial_scores=LOSSES)
    assert ib.anneal_epoch == 5
    for epoch in range(5):
        keep = ib.mask_for_epoch(epoch).to_bool()
        assert keep.sum() == 8 and keep[np.setdiff1d(np.arange(10), WELL)].all()
        dropped = np.flatnonzero(~keep)
        assert set(dropped) <= set(WELL)
        weights = ib.loss_weights(epoch, np.arange(10))
        expected = np.ones(10, dtype=np.float32)
        expected[np.setdiff1d(WELL, dropped)] = np.float32(1 / 0.6)
        assert np.array_equal(weights, expected)
        assert ib.history[-1] == {"epoch": epoch, "kept": 8, "well_learned": 5, "pruned": 2}
    for epoch in range(5, 10):
        assert ib.mask_for_epoch(epoch).to_bool().all()
        assert np.array_equal(ib.loss_weights(epoch, np.arange(10)), np.ones(10, dtype=np.float32))
        assert ib.history[-1] == {"epoch": epoch, "kept": 10, "well_learned": 0, "pruned": 0}
    # the pruning is the seed's and the epoch's: another schedule with the same settings agrees
    again = InfoBatch(ten, epochs=10, ratio=0.4, delta=0.5, seed=3, initial_scores=LOSSES)
    assert np.array_equal(again.mask_for_epoch(2).to_bool(), ib.mask_for_epoch(2).to_bool())


def test_infobatch_unknown_losses_are_kept_and_the_mean_is_over_the_known_ones(ten):
    # samples 1, 3, 5 never seen (NaN): always kept; the mean of the other seven
    # (0.1, 0.2, 0.3, 0.4, 0.6, 0.05, 1.0) is 0.3786, so 0, 2, 4 and 8 are well learned
    scores = LOSSES.copy()
    scores[[1, 3, 5]] = np.nan
    ib = InfoBatch(ten, epochs=4, ratio=0.5, delta=1.0, initial_scores=scores)
    keep = ib.mask_for_epoch(0).to_bool()
    assert keep[[1, 3, 5, 6, 7, 9]].all() and keep[[0, 2, 4, 8]].sum() == 2
    assert ib.history[-1]["well_learned"] == 4 and ib.history[-1]["pruned"] == 2


def test_infobatch_stays_inside_its_base_mask(ten):
    # base drops samples 0, 1 and 8: never kept; the mean is over the other seven
    # (0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 1.0: 0.5714), so 2, 4 and 6 are well learned
    base = np.ones(10, dtype=bool)
    base[[0, 1, 8]] = False
    ib = InfoBatch(ten, epochs=4, ratio=0.5, delta=1.0, base_mask=mask_from_bool(ten, base), initial_scores=LOSSES)
    keep = ib.mask_for_epoch(1).to_bool()
    assert not keep[[0, 1, 8]].any()
    assert keep[[3, 5, 7, 9]].all() and keep[[2, 4, 6]].sum() == 1  # round(0.5 * 3) = 2 pruned
    assert ib.history[-1] == {"epoch": 1, "kept": 5, "well_learned": 3, "pruned": 2}


def test_infobatch_records_losses_at_their_manifest_positions(ten):
    ib = InfoBatch(ten, epochs=2)
    assert not ib.prunes(0)  # no losses yet
    out = BatchOutput(epoch=0, step=1, keys=None, indices=np.array([7, 2]), labels=torch.zeros(2, dtype=torch.int64),
                      logits=torch.zeros(2, 4), losses=torch.tensor([0.25, 0.75]))
    ib.record(out)
    assert ib.scores[7] == 0.25 and ib.scores[2] == 0.75 and np.isnan(np.delete(ib.scores, [2, 7])).all()
    assert ib.prunes(0) and not ib.prunes(1)  # delta 0.875 of 2 epochs: annealing from epoch 1
    with pytest.raises(StreamPruneError, match="index_of"):
        ib.record(dataclasses.replace(out, indices=None))


def test_infobatch_refuses_bad_settings_and_foreign_states(ten, small_dataset):
    with pytest.raises(ArgumentError, match=r"ratio=1\.0"):
        InfoBatch(ten, epochs=4, ratio=1.0)
    with pytest.raises(ArgumentError, match=r"delta=1\.5"):
        InfoBatch(ten, epochs=4, delta=1.5)
    with pytest.raises(ArgumentError, match=r"initial_scores has shape \(3,\); the manifest has 10 samples"):
        InfoBatch(ten, epochs=4, initial_scores=np.zeros(3))
    ib = InfoBatch(ten, epochs=4, initial_scores=LOSSES)
    with pytest.raises(StreamPruneError, match=r"call mask_for_epoch\(1\) first"):
        ib.loss_weights(1, np.arange(10))
    ib.mask_for_epoch(1)
    state = ib.state_dict()
    with pytest.raises(StreamPruneError, match="another manifest"):
        InfoBatch(small_dataset, epochs=4).load_state_dict(state)
    with pytest.raises(StreamPruneError, match=r"\(ratio, delta, epochs, seed\)"):
        InfoBatch(ten, epochs=4, seed=1).load_state_dict(state)


def test_infobatch_schedule(data):
    m = data["manifest"]
    n = m.num_samples
    ib = InfoBatch(m, epochs=8, ratio=0.5, delta=0.875, seed=0)
    assert ib.anneal_epoch == 7
    assert ib.mask_for_epoch(0).kept == n  # no losses yet: full data
    losses = np.linspace(0.0, 1.0, n).astype(np.float32)
    ib.scores[:] = losses
    mask = ib.mask_for_epoch(1)
    well = losses < losses.mean()
    assert mask.kept == n - round(0.5 * well.sum())
    assert mask.keep[~well].all()
    w = ib.loss_weights(1, np.arange(n))
    assert np.allclose(w[mask.keep & well], 2.0) and np.allclose(w[~well], 1.0)
    assert ib.mask_for_epoch(1).digest() == mask.digest()  # cached for a resumed epoch
    state = ib.state_dict()
    again = InfoBatch(m, epochs=8, seed=0)
    again.load_state_dict(state)
    assert again.mask_for_epoch(1).digest() == mask.digest()
    assert ib.mask_for_epoch(7).kept == n and np.all(ib.loss_weights(7, np.arange(n)) == 1.0)  # annealing


@pytest.mark.integration
def test_infobatch_through_fit(data):
    m = data["manifest"]
    index_of = {k: i for i, k in enumerate(m.keys())}
    ds = PrunedWebDataset(m, shuffle=True, dynamic_masks=True)

    def to_batch(sample):
        x = torch.frombuffer(bytearray(sample["seg.png"][:64].ljust(64, b"\0")), dtype=torch.uint8).float() / 255
        return sample["__key__"], x, int(sample["cls"])

    loader = torch.utils.data.DataLoader(ds.map(to_batch), batch_size=16, num_workers=1, persistent_workers=True)
    model = torch.nn.Linear(64, 6)
    ib = InfoBatch(m, epochs=4, ratio=0.5, seed=0)
    seen = []
    fit(
        model, loader, epochs=4, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), device=torch.device("cpu"),
        index_of=index_of, progress=False,
        on_epoch_start=lambda e: ds.set_epoch(e, mask=ib.mask_for_epoch(e)),
        on_batch=ib.record, loss_weights=ib.loss_weights,
        on_epoch_end=lambda stats: (seen.append(stats.samples), ib.sync()),
    )
    assert seen[0] == m.num_samples and seen[1] < m.num_samples and seen[3] == m.num_samples
    assert [h["kept"] for h in ib.history] == seen
    keep = mask_from_bool(m, np.ones(m.num_samples, dtype=bool))
    assert keep.digest() != ib.mask_for_epoch(3).digest() or seen[3] == m.num_samples
