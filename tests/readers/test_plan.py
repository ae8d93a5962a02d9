"""Epoch planning: the kept samples of all shards, split over ranks and workers by kept counts.

The model the plan is checked against: lay the shards' kept samples end to end in the epoch's
shard order, repeat that sequence cyclically (padding), and cut it into ``world_size`` equal
contiguous slices of ``per_rank`` samples; each rank's slice is cut again, contiguously and
as evenly as possible, over its workers.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
from _dist_worker import sample_key
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from streamprune import PrunedSource, PrunedWebDataset, mask_from_bool, random_mask
from streamprune.readers.plan import Segment, plan_epoch, rank_sizes, shard_order, within_shard_order

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

counts_st = st.lists(st.integers(0, 40), min_size=1, max_size=12)
common = settings(max_examples=150, deadline=None)


def expand(segments):
    """(shard, position) pairs a list of segments stands for, in order."""
    out = []
    for seg in segments:
        assert isinstance(seg, Segment)
        out.extend((seg.shard, p) for p in range(seg.begin, seg.end))
    return out


def epoch_sequence(counts, seed, epoch, shuffle):
    order = shard_order(len(counts), seed, epoch, shuffle)
    return [(int(k), p) for k in order for p in range(counts[k])]


def all_plans(counts, world, workers, uneven, seed=0, epoch=0, shuffle=False):
    return {
        (r, w): plan_epoch(
            counts,
            seed=seed,
            epoch=epoch,
            shuffle=shuffle,
            rank=r,
            world_size=world,
            worker=w,
            num_workers=workers,
            uneven=uneven,
        )
        for r in range(world)
        for w in range(workers)
    }


def check_segments_valid(counts, plans):
    for plan in plans.values():
        for seg in plan.segments:
            assert 0 <= seg.begin < seg.end <= counts[seg.shard], seg  # non-empty, inside the shard
        assert plan.total == sum(s.end - s.begin for s in plan.segments)


@pytest.mark.integration
@common
@given(
    counts=counts_st,
    world=st.integers(1, 6),
    workers=st.integers(1, 4),
    uneven=st.sampled_from(["pad", "drop"]),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    epoch=st.integers(0, 50),
)
def test_plan_matches_model(counts, world, workers, uneven, shuffle, seed, epoch):
    total = sum(counts)
    plans = all_plans(counts, world, workers, uneven, seed, epoch, shuffle)
    check_segments_valid(counts, plans)
    per_rank = total // world if uneven == "drop" else -(-total // world)
    # "drop" starts each epoch's sequence further on by the number skipped, so the skipped rotate
    start = epoch * (total - per_rank * world) % total if uneven == "drop" and total else 0
    seq = epoch_sequence(counts, seed, epoch, shuffle)
    for r in range(world):
        rank_items = []
        sizes = []
        for w in range(workers):
            plan = plans[(r, w)]
            assert plan.per_rank == per_rank  # every rank, every worker agrees on the rank size
            items = expand(plan.segments)
            sizes.append(len(items))
            rank_items.extend(items)
        # workers partition the rank's share, contiguously, in worker order, evenly
        want = [seq[(i + start) % total] for i in range(r * per_rank, (r + 1) * per_rank)] if total else []
        assert rank_items == want
        assert max(sizes) - min(sizes) <= 1
        assert sum(sizes) == per_rank


@pytest.mark.integration
@common
@given(counts=counts_st, world=st.integers(1, 6), workers=st.integers(1, 4), shuffle=st.booleans(), seed=st.integers(0, 1000))
def test_divisible_total_covers_every_kept_sample_exactly_once(counts, world, workers, shuffle, seed):
    counts = list(counts)
    counts[0] += -sum(counts) % world  # make the total divisible by world
    for uneven in ("pad", "drop"):
        plans = all_plans(counts, world, workers, uneven, seed=seed, shuffle=shuffle)
        got = collections.Counter(item for plan in plans.values() for item in expand(plan.segments))
        want = collections.Counter((k, p) for k, n in enumerate(counts) for p in range(n))
        assert got == want


def _plans_and_rank_totals(counts, world, workers, uneven, seed, shuffle):
    """Every (rank, worker)'s plan, and each rank's kept total (its workers' plans added)."""
    plans = all_plans(counts, world, workers, uneven, seed=seed, shuffle=shuffle)
    return plans, [sum(plans[(r, w)].total for w in range(workers)) for r in range(world)]


@pytest.mark.integration
@common
@given(counts=counts_st, world=st.integers(1, 7), workers=st.integers(1, 3), shuffle=st.booleans())
def test_drop_gives_floor_without_duplicates(counts, world, workers, shuffle):
    total = sum(counts)
    plans, per_rank = _plans_and_rank_totals(counts, world, workers, "drop", seed=1, shuffle=shuffle)
    assert per_rank == [total // world] * world
    items = [item for plan in plans.values() for item in expand(plan.segments)]
    assert len(items) == len(set(items)) == world * (total // world)
    assert all(0 <= p < counts[k] for k, p in items)


@pytest.mark.integration
@common
@given(counts=counts_st, world=st.integers(1, 7), workers=st.integers(1, 3), shuffle=st.booleans())
def test_pad_gives_ceil_and_covers_everything(counts, world, workers, shuffle):
    total = sum(counts)
    plans, per_rank = _plans_and_rank_totals(counts, world, workers, "pad", seed=2, shuffle=shuffle)
    assert per_rank == [-(-total // world)] * world
    got = collections.Counter(item for plan in plans.values() for item in expand(plan.segments))
    assert set(got) == {(k, p) for k, n in enumerate(counts) for p in range(n)}
    # padding repeats few samples: each at most ceil(world*per_rank / total) times
    if total:
        assert sum(got.values()) - total == world * (-(-total // world)) - total
        assert max(got.values()) <= -(-world * (-(-total // world)) // total)


@pytest.mark.parametrize("uneven", ["pad", "drop"])
def test_zero_kept_everywhere(uneven):
    for world, workers in [(1, 1), (3, 2)]:
        plans = all_plans([0, 0, 0], world, workers, uneven)
        for plan in plans.values():
            assert plan.segments == [] and plan.total == 0 and plan.per_rank == 0


def test_shards_with_nothing_kept_get_no_segments():
    counts = [0, 5, 0, 0, 3, 0]
    plans = all_plans(counts, 2, 2, "pad")
    shards = {seg.shard for plan in plans.values() for seg in plan.segments}
    assert shards == {1, 4}


@pytest.mark.parametrize("world", [5, 8, 13])
def test_world_larger_than_total(world):
    counts = [0, 2, 0, 1]  # 3 kept samples
    drop = all_plans(counts, world, 2, "drop")
    assert all(p.total == 0 and p.per_rank == 0 and not p.segments for p in drop.values())
    pad = all_plans(counts, world, 2, "pad")
    per_rank = [sum(pad[(r, w)].total for w in range(2)) for r in range(world)]
    assert per_rank == [1] * world  # every rank still gets a sample, so no rank idles
    got = collections.Counter(item for p in pad.values() for item in expand(p.segments))
    assert set(got) == {(1, 0), (1, 1), (3, 0)}


def test_more_workers_than_rank_share():
    counts = [1, 0, 1]
    plans = all_plans(counts, 1, 4, "pad")
    sizes = [plans[(0, w)].total for w in range(4)]
    assert sorted(sizes) == [0, 0, 1, 1]
    assert sorted(item for p in plans.values() for item in expand(p.segments)) == [(0, 0), (2, 0)]


def test_shuffle_is_a_function_of_seed_and_epoch():
    counts = [7, 0, 12, 3, 9, 4, 1]
    a = all_plans(counts, 2, 2, "pad", seed=3, epoch=1, shuffle=True)
    assert a == all_plans(counts, 2, 2, "pad", seed=3, epoch=1, shuffle=True)
    orders = {tuple(shard_order(len(counts), 3, e, True)) for e in range(10)}
    assert len(orders) > 1
    assert {tuple(shard_order(len(counts), s, 0, True)) for s in range(10)} != {tuple(range(len(counts)))}
    assert list(shard_order(len(counts), 3, 1, False)) == list(range(len(counts)))


@given(n=st.integers(0, 60), seed=st.integers(0, 100), epoch=st.integers(0, 100), shard=st.integers(0, 20))
@settings(max_examples=60, deadline=None)
def test_within_shard_order_is_a_deterministic_permutation(n, seed, epoch, shard):
    kept = np.sort(np.random.default_rng(n).choice(200, size=n, replace=False))
    a = within_shard_order(kept, seed, epoch, shard, True)
    assert sorted(a.tolist()) == kept.tolist()
    assert np.array_equal(a, within_shard_order(kept, seed, epoch, shard, True))
    assert np.array_equal(within_shard_order(kept, seed, epoch, shard, False), kept)


def test_within_shard_order_changes_with_epoch_seed_and_shard():
    kept = np.arange(0, 300, 3)
    base = within_shard_order(kept, 1, 0, 2, True)
    assert not np.array_equal(base, kept)
    assert not np.array_equal(base, within_shard_order(kept, 1, 1, 2, True))  # epoch
    assert not np.array_equal(base, within_shard_order(kept, 2, 0, 2, True))  # seed
    assert not np.array_equal(base, within_shard_order(kept, 1, 0, 3, True))  # shard


@pytest.mark.integration
def test_bad_arguments():
    with pytest.raises(ValueError):
        plan_epoch([3, 4], rank=2, world_size=2)
    with pytest.raises(ValueError):
        plan_epoch([3, 4], rank=-1, world_size=2)
    with pytest.raises(ValueError):
        plan_epoch([3, 4], worker=1, num_workers=1)
    with pytest.raises(ValueError):
        plan_epoch([3, 4], uneven="spread")
    with pytest.raises(ValueError):
        rank_sizes(10, 3, "round")
    assert rank_sizes(10, 3, "drop") == 3 and rank_sizes(10, 3, "pad") == 4


# ---------------------------------------------------------------------------------------------
# the plan as the reader applies it, without torch.distributed (rank and world given)


BUILT = {"big_fraction": 0.0}  # the dataset of the ``built`` fixture (readers/conftest.py)


@pytest.fixture(scope="module")
def uneven_mask(manifest, built):
    """Most kept samples in two shards, an odd kept total, some shards with nothing kept."""
    rng = np.random.default_rng(0)
    keep = np.zeros(manifest.num_samples, dtype=bool)
    keep[built.shard_of == 0] = rng.random(90) < 0.9
    keep[built.shard_of == 5] = rng.random(110) < 0.8
    keep[np.flatnonzero(built.shard_of == 4)[:3]] = True
    keep[np.flatnonzero(built.shard_of == 3)] = True
    if keep.sum() % 2 == 0:
        keep[np.flatnonzero(built.shard_of == 6)[0]] = True
    mask = mask_from_bool(manifest, keep)
    assert mask.kept % 2 == 1 and mask.kept % 3 != 0
    return mask


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("uneven", ["drop", "pad"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_get_equal_shares(manifest, uneven_mask, world, uneven, shuffle):
    keys = manifest.keys()
    kept = [keys[i] for i in np.flatnonzero(uneven_mask.keep)]
    per_rank = []
    everything = collections.Counter()
    for rank in range(world):
        ds = PrunedWebDataset(manifest, uneven_mask, rank=rank, world_size=world, uneven=uneven, shuffle=shuffle, seed=4)
        ds.set_epoch(2)
        got = [s["__key__"] for s in ds]
        assert len(got) == len(ds)
        per_rank.append(len(got))
        everything.update(got)
    n = len(kept)
    if uneven == "drop":
        assert per_rank == [n // world] * world
        assert max(everything.values()) == 1 and set(everything) <= set(kept)
        assert sum(everything.values()) == world * (n // world)
    else:
        assert per_rank == [-(-n // world)] * world
        assert set(everything) == set(kept)
        assert sum(everything.values()) == world * (-(-n // world))


@pytest.mark.integration
def test_ranks_with_dataloader_workers(manifest, uneven_mask):
    keys = manifest.keys()
    kept = collections.Counter(keys[i] for i in np.flatnonzero(uneven_mask.keep))
    world = 2
    got = collections.Counter()
    for rank in range(world):
        ds = PrunedSource(manifest, uneven_mask, rank=rank, world_size=world, uneven="pad")
        rank_keys = list(DataLoader(ds, batch_size=None, num_workers=2, collate_fn=sample_key))
        assert len(rank_keys) == len(ds) == -(-sum(kept.values()) // world)
        got.update(rank_keys)
    assert set(got) == set(kept) and sum(got.values()) == sum(kept.values()) + 1


def test_rank_and_world_from_environment(manifest, monkeypatch):
    mask = random_mask(manifest, 0.5, seed=1)
    shares = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = PrunedWebDataset(manifest, mask, uneven="drop")
        assert (ds.source.rank, ds.source.world_size) == (rank, 2)
        shares.append([s["__key__"] for s in ds])
    assert len(shares[0]) == len(shares[1]) == mask.kept // 2
    assert not set(shares[0]) & set(shares[1])


def test_bad_uneven_is_rejected_by_the_reader(manifest):
    with pytest.raises(ValueError, match="uneven"):
        PrunedSource(manifest, None, uneven="spread")


def test_drop_rotates_the_skipped_samples_with_the_epoch():
    counts = np.array([3, 4])  # 7 kept samples, 2 ranks: 3 each, one skipped per epoch
    skipped = []
    for epoch in range(7):
        plans = all_plans(counts, 2, 1, "drop", epoch=epoch)
        seen = [(s.shard, p) for plan in plans.values() for s in plan.segments for p in range(s.begin, s.end)]
        assert len(seen) == len(set(seen)) == 6 and all(plan.total == 3 for plan in plans.values())
        skipped += sorted({(k, p) for k in range(2) for p in range(int(counts[k]))} - set(seen))
    # without shuffling, each epoch skips another sample: over 7 epochs every sample once
    assert sorted(skipped) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)]
    # pad is not rotated: epoch 0 and 5 read the same order
    assert all_plans(counts, 2, 1, "pad", epoch=0) == all_plans(counts, 2, 1, "pad", epoch=5)
