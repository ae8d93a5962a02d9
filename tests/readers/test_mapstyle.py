"""Map-style access to kept samples (PrunedMapDataset) and the KeptSampler."""

from __future__ import annotations

import collections
import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler

from streamprune import KeptSampler, PrunedMapDataset, mask_from_bool, mask_from_classes, random_mask

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


BUILT = {"seed": 1}  # the dataset of the ``built`` fixture (readers/conftest.py)


def _one_shard_empty(manifest, built):
    keep = np.random.default_rng(3).random(manifest.num_samples) < 0.5
    keep[built.shard_of == 0] = False
    keep[built.shard_of == 6] = False
    return mask_from_bool(manifest, keep)


MASKS = {
    "none": lambda m, b: None,
    "random-0.4": lambda m, b: random_mask(m, 0.4, seed=5),
    "random-0.9": lambda m, b: random_mask(m, 0.9, seed=6),
    "class-level": lambda m, b: mask_from_classes(m, ["c0", "c5"]),
    "end-shards-pruned": _one_shard_empty,
}


@pytest.fixture(scope="module", params=sorted(MASKS))
def mask(request, manifest, built):
    return MASKS[request.param](manifest, built)


def kept_indices(mask, manifest):
    return np.arange(manifest.num_samples) if mask is None else np.flatnonzero(mask.keep)


@pytest.mark.parametrize("as_file", [False, True], ids=["keepmask", "maskfile"])
def test_random_access_matches_reference(mask, manifest, built, reference, tmp_path, as_file):
    if as_file and mask is not None:
        ds = PrunedMapDataset(manifest.path, mask.save(tmp_path / "m.spmask"))
    else:
        ds = PrunedMapDataset(manifest, mask)
    kept = kept_indices(mask, manifest)
    assert len(ds) == len(kept)
    # visit in a scrambled order: random access must not depend on reading order
    for i in np.random.default_rng(0).permutation(len(ds)).tolist():
        got, want = ds[i], reference[kept[i]]
        assert got == want  # same keys, same __url__, byte-identical members
        assert ds.global_index(i) == kept[i]
    assert ds[-1] == reference[kept[-1]]
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds[-len(ds) - 1]


def test_transform_is_applied(manifest, built):
    mask = random_mask(manifest, 0.5, seed=2)
    ds = PrunedMapDataset(manifest, mask, transform=lambda s: (s["__key__"], int(s["cls"])))
    kept = np.flatnonzero(mask.keep)
    assert [ds[i] for i in range(len(ds))] == [(built.keys[j], int(built.labels[j])) for j in kept]


def test_reads_only_the_requested_sample(manifest, built, monkeypatch):
    mask = random_mask(manifest, 0.5, seed=3)
    ds = PrunedMapDataset(manifest, mask)
    real = os.pread
    reads = []
    monkeypatch.setattr(os, "pread", lambda fd, n, off: reads.append((os.readlink(f"/proc/self/fd/{fd}"), off, n)) or real(fd, n, off))
    offsets = manifest.shard_offsets
    for i in np.random.default_rng(1).permutation(len(ds))[:80].tolist():
        reads.clear()
        ds[i]
        g = ds.global_index(i)
        k = int(np.searchsorted(offsets, g, side="right") - 1)
        index = manifest.index(k)
        pos = g - offsets[k]
        a, b = int(index.start[pos]), int(index.end[pos])
        assert reads, "nothing was read"
        for path, off, n in reads:
            assert os.path.realpath(path) == os.path.realpath(manifest.shard_path(k))
            assert a <= off and off + n <= b, (i, off, n, a, b)


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this platform")
def test_read_ahead_off_and_batches_prefetch_only_their_samples(manifest, built, monkeypatch):
    """Shards open with POSIX_FADV_RANDOM; __getitems__ announces exactly the batch's samples, then reads them."""
    mask = random_mask(manifest, 0.6, seed=4)
    ds = PrunedMapDataset(manifest, mask)
    want = [ds[i] for i in range(len(ds))]
    ds = PrunedMapDataset(manifest, mask)
    real = os.posix_fadvise
    calls = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: calls.append((os.readlink(f"/proc/self/fd/{fd}"), off, n, advice)) or real(fd, off, n, advice))
    offsets = manifest.shard_offsets
    batch = np.random.default_rng(5).permutation(len(ds))[:16].tolist()
    got = ds.__getitems__(batch)
    assert got == [want[i] for i in batch]
    opened = {os.path.realpath(p) for p, off, n, advice in calls if advice == os.POSIX_FADV_RANDOM and (off, n) == (0, 0)}
    willneed = [(os.path.realpath(p), off, n) for p, off, n, advice in calls if advice == os.POSIX_FADV_WILLNEED]
    expected = []
    for i in batch:
        g = ds.global_index(i)
        k = int(np.searchsorted(offsets, g, side="right") - 1)
        index = manifest.index(k)
        pos = g - offsets[k]
        expected.append((os.path.realpath(manifest.shard_path(k)), int(index.start[pos]), int(index.end[pos] - index.start[pos])))
    assert willneed == expected  # the batch's own byte ranges, in batch order, nothing pruned
    assert opened == {p for p, _, _ in expected}


def test_dataloader_batches_match_item_reads(manifest):
    mask = random_mask(manifest, 0.5, seed=6)
    ds = PrunedMapDataset(manifest, mask, transform=lambda s: s["__key__"])
    loader = DataLoader(ds, batch_size=7, shuffle=False, collate_fn=list)
    assert [k for batch in loader for k in batch] == [ds[i] for i in range(len(ds))]


def test_few_open_files_still_correct(manifest, reference):
    mask = random_mask(manifest, 0.3, seed=4)
    ds = PrunedMapDataset(manifest, mask, max_open_files=2)
    kept = kept_indices(mask, manifest)
    for i in np.random.default_rng(2).permutation(len(ds))[:200].tolist():
        assert ds[i] == reference[kept[i]]
        assert len(ds._files) <= 2


def test_pickles_and_reads_after_unpickling(manifest, reference):
    mask = random_mask(manifest, 0.3, seed=4)
    ds = PrunedMapDataset(manifest, mask)
    ds[0]  # open a shard before pickling
    clone = pickle.loads(pickle.dumps(ds))
    kept = kept_indices(mask, manifest)
    assert len(clone) == len(ds)
    assert [clone[i] for i in range(0, len(ds), 7)] == [reference[kept[i]] for i in range(0, len(ds), 7)]


def _keys(batch):
    return [s["__key__"] for s in batch]


@pytest.mark.integration
@pytest.mark.parametrize("batch_size", [None, 8])
def test_dataloader_workers_with_random_sampler(manifest, built, batch_size):
    mask = random_mask(manifest, 0.4, seed=5)
    ds = PrunedMapDataset(manifest, mask)
    ds[3]  # a descriptor opened in the parent must not confuse the forked workers
    kept_keys = [built.keys[j] for j in np.flatnonzero(mask.keep)]
    orders = []
    for _ in range(2):
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(0))
        if batch_size is None:
            loader = DataLoader(ds, batch_size=None, sampler=sampler, num_workers=2, collate_fn=lambda s: s["__key__"])
            got = list(loader)
        else:
            loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=2, collate_fn=_keys)
            got = [k for batch in loader for k in batch]
        assert collections.Counter(got) == collections.Counter(kept_keys)
        orders.append(got)
    assert orders[0] == orders[1] != kept_keys


# ---------------------------------------------------------------------------------------------
# KeptSampler


def test_sampler_in_order_yields_exactly_the_kept_indices(mask, manifest):
    sampler = KeptSampler(manifest, mask, shuffle=False, rank=0, world_size=1)
    kept = kept_indices(mask, manifest)
    assert list(sampler) == kept.tolist()
    assert len(sampler) == len(kept)


@pytest.mark.integration
def test_sampler_drives_an_unpruned_map_dataset(manifest, built, reference):
    mask = mask_from_classes(manifest, [2])
    full = PrunedMapDataset(manifest, None)  # i-th item is the i-th sample in manifest order
    sampler = KeptSampler(manifest, mask, shuffle=True, seed=1, rank=0, world_size=1)
    loader = DataLoader(full, batch_size=None, sampler=sampler, num_workers=2)
    got = list(loader)
    assert collections.Counter(s["__key__"] for s in got) == collections.Counter(
        built.keys[j] for j in np.flatnonzero(mask.keep)
    )
    for s in got:
        assert int(s["cls"]) == 2
        assert s == reference[built.keys.index(s["__key__"])]


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_sampler_equal_shares_over_ranks(manifest, world, drop_last, shuffle):
    mask = random_mask(manifest, 182 / manifest.num_samples, seed=8)
    kept = np.flatnonzero(mask.keep)
    n = len(kept)
    assert n == manifest.num_samples - 182 and n % world  # uneven split: padding or dropping must happen
    per = n // world if drop_last else -(-n // world)
    shares = []
    for rank in range(world):
        s = KeptSampler(manifest, mask, shuffle=shuffle, seed=3, rank=rank, world_size=world, drop_last=drop_last)
        s.set_epoch(4)
        share = list(s)
        assert len(share) == len(s) == per
        shares.append(share)
    everything = collections.Counter(i for share in shares for i in share)
    assert set(everything) <= set(kept.tolist())
    if drop_last:
        assert max(everything.values()) == 1 and sum(everything.values()) == world * per
    else:
        assert set(everything) == set(kept.tolist())
        assert sum(everything.values()) == world * per
        assert sum(c - 1 for c in everything.values()) == world * per - n
    if not shuffle:
        # in order: consecutive slices of the manifest-order kept indices
        flat = [i for share in shares for i in share]
        assert flat == np.resize(kept, world * per).tolist()


def test_sampler_is_deterministic_per_epoch(manifest):
    mask = random_mask(manifest, 0.5, seed=9)
    s = KeptSampler(manifest, mask, shuffle=True, seed=11, rank=1, world_size=2)
    orders = {}
    for epoch in (0, 1, 0, 1):
        s.set_epoch(epoch)
        got = list(s)
        if epoch in orders:
            assert got == orders[epoch]
        orders[epoch] = got
    assert orders[0] != orders[1]
    fresh = KeptSampler(manifest.path, mask, shuffle=True, seed=11, rank=1, world_size=2)
    fresh.set_epoch(1)
    assert list(fresh) == orders[1]
    other_seed = KeptSampler(manifest, mask, shuffle=True, seed=12, rank=1, world_size=2)
    assert list(other_seed) != orders[0]


def test_sampler_rank_from_environment(manifest, monkeypatch):
    mask = random_mask(manifest, 0.5, seed=9)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    s = KeptSampler(manifest, mask, shuffle=False)
    explicit = KeptSampler(manifest, mask, shuffle=False, rank=1, world_size=3)
    assert list(s) == list(explicit) and len(s) == -(-mask.kept // 3)
