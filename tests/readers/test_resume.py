"""Exact and elastic mid-epoch resume, mask digests, per-epoch mask switches (InfoBatch: models/test_schedules.py)."""

from __future__ import annotations

import collections
import copy

import numpy as np
import pytest
import torch
from _dist_worker import build_dataset, sample_key
from torchdata.stateful_dataloader import StatefulDataLoader

from streamprune import (
    KeptSampler,
    Manifest,
    MaskFile,
    PrunedMapDataset,
    PrunedWebDataset,
    random_mask,
)
from streamprune.errors import MaskMismatchError, StreamPruneError
from streamprune.readers import webdataset as wds_reader
from streamprune.readers.plan import epoch_sequence, plan_epoch, remainder_after

pytestmark = [
    pytest.mark.filterwarnings("ignore:Length of IterableDataset:UserWarning"),  # persistent workers keep the first epoch's len
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning"),
]

SIZES = (30, 12, 25, 1, 20)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    built = build_dataset(tmp / "data", shard_sizes=SIZES, big_fraction=0.0, seed=4)
    manifest = Manifest.load(built.manifest_path)
    mask = random_mask(manifest, 0.3, seed=1)
    path = mask.save(tmp / "m.spmask")
    return {"manifest": manifest, "mask": mask, "path": path, "keys": np.asarray(manifest.keys())}


def _expand(plan):
    return [(s.shard, i) for s in plan.segments for i in range(s.begin, s.end)]


def test_remainder_over_the_whole_epoch_is_the_plain_plan():
    rng = np.random.default_rng(0)
    for t in range(200):
        counts = rng.integers(0, 15, size=int(rng.integers(1, 7)))
        total = int(counts.sum())
        if total == 0:
            continue
        world, workers, uneven, epoch = int(rng.integers(1, 4)), int(rng.integers(1, 4)), ("pad", "drop")[t % 2], int(rng.integers(0, 5))
        sequence = epoch_sequence(total, world, uneven, epoch)
        for r in range(world):
            for w in range(workers):
                kw = dict(seed=3, epoch=epoch, shuffle=True, rank=r, world_size=world, worker=w, num_workers=workers, uneven=uneven)
                assert _expand(plan_epoch(counts, **kw)) == _expand(plan_epoch(counts, remainder=sequence, **kw))


def test_remainder_is_the_unconsumed_part_in_order():
    sequence = epoch_sequence(10, 2, "pad", 0)  # 2 ranks x 5, 2 workers: slices 0-2, 2-5, 5-7, 7-10
    assert remainder_after(sequence, 2, 2, "pad", [[1, 3], [0, 2]]) == [(1, 2), (5, 7), (9, 10)]
    assert remainder_after(sequence, 2, 2, "pad", [[2, 3], [2, 3]]) == []
    with pytest.raises(ValueError):
        remainder_after(sequence, 2, 2, "pad", [[3, 0], [0, 0]])


def test_digest_equal_for_file_and_loaded_mask(data):
    f = MaskFile(data["path"])
    assert f.digest() == data["mask"].digest() == f.load(data["manifest"]).digest()
    other = random_mask(data["manifest"], 0.3, seed=2)
    assert other.digest() != f.digest()


def _loader(data, workers, persistent=False, epoch=1, **kw):
    ds = PrunedWebDataset(data["manifest"], data["path"], shuffle=True, seed=3, **kw)
    ds.set_epoch(epoch)
    return ds, StatefulDataLoader(ds.map(sample_key), batch_size=4, num_workers=workers, persistent_workers=persistent)


@pytest.mark.integration
@pytest.mark.parametrize("workers,persistent", [(0, False), (1, False), (2, False), (2, True)])
def test_stateful_dataloader_resumes_exactly(data, workers, persistent):
    ds, loader = _loader(data, workers, persistent)
    full = [k for b in loader for k in b]
    assert sorted(full) == sorted(data["keys"][data["mask"].keep])
    ds, loader = _loader(data, workers, persistent)
    it = iter(loader)
    head = [k for _ in range(5) for k in next(it)]
    state = copy.deepcopy(loader.state_dict())
    del it
    ds2, loader2 = _loader(data, workers, persistent)
    loader2.load_state_dict(state)
    rest = [k for b in loader2 for k in b]
    assert head + rest == full
    # the next epoch after the resumed one is a whole, normal epoch
    ds2.set_epoch(2)
    ds3, loader3 = _loader(data, workers, persistent, epoch=2)
    assert [k for b in loader2 for k in b] == [k for b in loader3 for k in b]


def test_state_is_small_and_bound(data):
    ds, loader = _loader(data, 0)
    it = iter(loader)
    next(it)
    state = loader.state_dict()["dataset_state"]
    assert state["format"] == "streamprune-reader-state" and state["version"] == 1
    assert state["consumed"] == 4 and state["mask_digest"] == data["mask"].digest()
    assert len(repr(state)) < 1000
    other = PrunedWebDataset(data["manifest"], random_mask(data["manifest"], 0.3, seed=9), shuffle=True, seed=3)
    with pytest.raises(MaskMismatchError, match="mask"):
        other.load_state_dict(state)
    with pytest.raises(StreamPruneError, match="rewritten"):
        ds.source._binding().check({**state, "manifest_fingerprint": "f" * 64}, "reader state")
    with pytest.raises(StreamPruneError, match="world size"):
        PrunedWebDataset(data["manifest"], data["path"], shuffle=True, seed=3, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(StreamPruneError, match="seed"):
        PrunedWebDataset(data["manifest"], data["path"], shuffle=True, seed=4).load_state_dict(state)


def test_resumed_slice_does_not_read_skipped_samples(data, monkeypatch):
    ds, loader = _loader(data, 0)
    it = iter(loader)
    for _ in range(6):
        next(it)
    state = loader.state_dict()
    read = []
    real = wds_reader.read_runs

    def counting(shard, order, *a, **kw):
        read.append(len(order))
        return real(shard, order, *a, **kw)

    monkeypatch.setattr(wds_reader, "read_runs", counting)
    ds2, loader2 = _loader(data, 0)
    loader2.load_state_dict(state)
    rest = [k for b in loader2 for k in b]
    assert sum(read) == len(rest) == data["mask"].kept - 24


def test_shuffle_buffer_is_reported(data):
    ds = PrunedWebDataset(data["manifest"], data["path"]).shuffle(10)
    state = ds.state_dict()
    assert state["buffered"] == ["shuffle"]
    with pytest.warns(UserWarning, match="buffering"):
        ds.load_state_dict(state)


@pytest.mark.integration
@pytest.mark.parametrize("uneven", ["pad", "drop"])
def test_elastic_resume_covers_the_unseen_once(data, uneven):
    kept = data["keys"][data["mask"].keep]
    seen, states = [], []
    for rank in range(2):  # old run: 2 ranks x 2 workers, interrupted at different steps
        ds = PrunedWebDataset(data["manifest"], data["path"], shuffle=True, seed=3, rank=rank, world_size=2, uneven=uneven)
        ds.set_epoch(2)
        loader = StatefulDataLoader(ds.map(sample_key), batch_size=3, num_workers=2)
        it = iter(loader)
        seen += [k for _ in range(2 + rank) for k in next(it)]
        states.append(copy.deepcopy(loader.state_dict()))
        del it
    point = ds.resume_point(states)
    assert point["format"] == "streamprune-resume-point" and (point["world_size"], point["num_workers"]) == (2, 2)
    assert len(repr(point)) < 1500
    unseen = set(kept) - set(seen)
    for world, workers in [(3, 1), (1, 2), (2, 0)]:
        rest = []
        for rank in range(world):
            ds = PrunedWebDataset(data["manifest"], data["path"], shuffle=True, seed=3, rank=rank, world_size=world, uneven=uneven)
            ds.load_resume_point(point)
            ds.set_epoch(2)
            rest += [k for b in StatefulDataLoader(ds.map(sample_key), batch_size=3, num_workers=workers) for k in b]
        counts = collections.Counter(rest)
        assert set(counts) <= unseen and not set(counts) & set(seen)
        total = sum(e - b for b, e in point["remainder"])
        if uneven == "pad":
            assert set(counts) == unseen and len(rest) == -(-total // world) * world
        else:
            assert max(counts.values()) == 1 and len(rest) == total // world * world
        ds.set_epoch(3)  # another epoch forgets the point
        assert ds.source._elastic is None


def test_resume_point_needs_every_rank(data):
    ds = PrunedWebDataset(data["manifest"], data["path"], rank=0, world_size=2)
    with pytest.raises(StreamPruneError, match="missing"):
        ds.resume_point(ds.state_dict())
    with pytest.raises(StreamPruneError, match="no streamprune-reader-state"):
        ds.resume_point({"something": 1})


@pytest.mark.integration
@pytest.mark.parametrize("workers,persistent", [(0, False), (2, True)])
def test_keptsampler_and_map_dataset_resume(data, workers, persistent):
    def make():
        sampler = KeptSampler(data["manifest"], data["path"], seed=2)
        sampler.set_epoch(1)
        ds = PrunedMapDataset(data["manifest"], None, transform=sample_key)  # KeptSampler indexes the full dataset
        return sampler, StatefulDataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers, persistent_workers=persistent)

    _, loader = make()
    full = [k for b in loader for k in b]
    sampler, loader = make()
    it = iter(loader)
    head = [k for _ in range(3) for k in next(it)]
    state = copy.deepcopy(loader.state_dict())
    del it
    sampler2, loader2 = make()
    loader2.load_state_dict(state)
    assert head + [k for b in loader2 for k in b] == full
    # elastic: the sampler's own state into 2 ranks
    point = sampler.resume_point(state)
    rest = []
    for rank in range(2):
        s = KeptSampler(data["manifest"], data["path"], seed=2, rank=rank, world_size=2)
        s.load_resume_point(point)
        s.set_epoch(1)
        rest += list(s)
    assert collections.Counter(rest) == collections.Counter(
        [int(i) for i in sampler.epoch_order(1)[12:]] + ([int(sampler.epoch_order(1)[12])] if (len(full) - 12) % 2 else [])
    )
    with pytest.raises(MaskMismatchError):
        PrunedMapDataset(data["manifest"], random_mask(data["manifest"], 0.5, seed=3)).load_state_dict(
            PrunedMapDataset(data["manifest"], data["path"]).state_dict()
        )


def test_keptsampler_plain_order_unchanged(data):
    # KeptSampler's epoch split is what it was before resume support: np.resize padding, contiguous shares.
    s = [KeptSampler(data["manifest"], data["path"], seed=5, rank=r, world_size=3) for r in range(3)]
    for x in s:
        x.set_epoch(4)
    order = s[0].epoch_order(4)
    per = -(-len(order) // 3)
    padded = np.resize(order, per * 3)
    assert [list(x) for x in s] == [padded[r * per : (r + 1) * per].tolist() for r in range(3)]


@pytest.mark.integration
@pytest.mark.parametrize("dynamic", [True, False])
def test_mask_switch_reaches_persistent_workers(data, dynamic):
    other = random_mask(data["manifest"], 0.6, seed=7)
    ds = PrunedWebDataset(data["manifest"], data["path"], dynamic_masks=dynamic)
    loader = torch.utils.data.DataLoader(ds.map(sample_key), batch_size=None, num_workers=2, persistent_workers=True)
    assert sorted(loader) == sorted(data["keys"][data["mask"].keep])
    ds.set_epoch(1, mask=other)
    if dynamic:
        assert sorted(loader) == sorted(data["keys"][other.keep])
        assert len(ds) == other.kept
        ds.set_epoch(2, mask=None)
        assert len(list(loader)) == data["manifest"].num_samples
    else:
        with pytest.raises(StreamPruneError, match="dynamic_masks=True"):
            list(loader)


def test_mask_switch_without_workers_and_state_binds_new_mask(data):
    other = random_mask(data["manifest"], 0.6, seed=7)
    ds = PrunedWebDataset(data["manifest"], data["path"])
    ds.set_epoch(1, mask=other)
    assert sorted(k for k in ds.map(sample_key)) == sorted(data["keys"][other.keep])
    assert ds.state_dict()["mask_digest"] == other.digest()
