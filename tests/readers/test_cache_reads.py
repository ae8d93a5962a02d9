"""The kept-bytes cache in the remote reader: later epochs read locally, fetch only what is missing, never wrong bytes."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch
from builders import blob_samples
from remote_servers import Nginx

from streamprune import Manifest, PrunedSource  # noqa: E402
from streamprune.masks import random_mask  # noqa: E402
from streamprune.writers import write_shards  # noqa: E402


def _samples(seed=0):
    return blob_samples(200, (5_000, 30_000), 5, seed=seed)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-ds")
    write_shards(_samples(), root / "ds", samples_per_shard=50, shuffle=False, progress=False)
    return str(root / "ds")


def _epoch(source) -> list[tuple[str, bytes]]:
    return [(s["__key__"], s["bin"]) for s in source]


def _tar_gets(nginx) -> list[dict]:
    return [e for e in nginx.log_entries() if e["uri"].endswith(".tar") and e["method"] == "GET"]


def _cache_bytes(cache_dir) -> int:
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(cache_dir, "*", "*", "*.spcache")))


@pytest.mark.integration
def test_second_epoch_reads_the_cache_and_fetches_nothing(dataset, nginx, tmp_path):
    m = Manifest.load(dataset)
    keep = random_mask(m, 0.6, level="sample", seed=2)
    want = _epoch(PrunedSource(dataset, keep))
    source = PrunedSource(dataset, keep, base=nginx.url, cache_dir=tmp_path / "cache")
    nginx.clear_log()
    assert _epoch(source) == want
    first = _tar_gets(nginx)
    assert first and source.read_stats.cached_samples == 0
    kept_bytes = sum(int((m.index(k).end - m.index(k).start)[keep.shard(k)].sum()) for k in range(len(m.shards)))
    # the cache holds the kept samples only (their tar records), with a small footer per file
    assert kept_bytes <= _cache_bytes(tmp_path / "cache") <= 1.05 * kept_bytes
    nginx.clear_log()
    source.set_epoch(1)
    assert sorted(_epoch(source)) == sorted(want)
    assert _tar_gets(nginx) == []
    assert source.read_stats.cached_samples == keep.kept and source.read_stats.requests == 0
    # a new process (here: a new reader) over the same cache directory: still nothing fetched
    nginx.clear_log()
    again = PrunedSource(dataset, keep, base=nginx.url, cache_dir=tmp_path / "cache")
    assert _epoch(again) == want and _tar_gets(nginx) == []


@pytest.mark.integration
def test_a_changed_mask_fetches_only_the_samples_not_cached(dataset, nginx, tmp_path):
    m = Manifest.load(dataset)
    first, second = random_mask(m, 0.5, level="sample", seed=1), random_mask(m, 0.5, level="sample", seed=7)
    source = PrunedSource(dataset, first, base=nginx.url, cache_dir=tmp_path / "cache", dynamic_masks=True)
    _epoch(source)
    source.set_epoch(1, mask=second)
    nginx.clear_log()
    got = _epoch(source)
    assert got == _epoch(PrunedSource(dataset, second))
    new = second.to_bool() & ~first.to_bool()
    assert source.read_stats.cached_samples == int((second.to_bool() & first.to_bool()).sum())
    fetched_keys = set()
    keys = np.asarray(m.keys())
    offsets = m.shard_offsets
    for e in _tar_gets(nginx):
        k = next(i for i, entry in enumerate(m.shards) if e["uri"] == "/" + entry.name)
        index = m.index(k)
        lo, hi = (int(x) for x in e["range"][len("bytes="):].split("-"))
        inside = np.flatnonzero((index.start >= lo) & (index.end <= hi + 1))
        fetched_keys |= set(keys[offsets[k] + inside].tolist())
    assert set(keys[new].tolist()) <= fetched_keys
    # nothing cached was fetched again: the only cached keys in a request are none at all
    assert not (fetched_keys & set(keys[second.to_bool() & first.to_bool()].tolist()))


@pytest.mark.integration
def test_damaged_cache_file_is_refetched_never_served(dataset, nginx, tmp_path, caplog):
    m = Manifest.load(dataset)
    keep = random_mask(m, 0.5, level="sample", seed=3)
    want = _epoch(PrunedSource(dataset, keep))
    cache = tmp_path / "cache"
    _epoch(PrunedSource(dataset, keep, base=nginx.url, cache_dir=cache))
    files = sorted(glob.glob(os.path.join(cache, "*", "*", "*.spcache")))
    assert files
    with open(files[0], "r+b") as fh:  # flip a byte in the first sample's data
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    nginx.clear_log()
    assert _epoch(PrunedSource(dataset, keep, base=nginx.url, cache_dir=cache)) == want
    assert _tar_gets(nginx)  # the damaged samples were fetched again
    assert "invalid" in caplog.text or "digest" in caplog.text


@pytest.mark.integration
def test_cache_of_another_dataset_never_hits(dataset, nginx, tmp_path):
    m = Manifest.load(dataset)
    keep = random_mask(m, 0.5, level="sample", seed=3)
    cache = tmp_path / "cache"
    _epoch(PrunedSource(dataset, keep, base=nginx.url, cache_dir=cache))
    other = tmp_path / "other"
    write_shards(_samples(seed=9), other, samples_per_shard=50, shuffle=False, progress=False)
    server = Nginx(str(other), str(tmp_path / "ng"))
    try:
        same_shape = random_mask(Manifest.load(str(other)), 0.5, level="sample", seed=3)
        source = PrunedSource(str(other), same_shape, base=server.url, cache_dir=cache)
        assert _epoch(source) == _epoch(PrunedSource(str(other), same_shape))
        assert source.read_stats.cached_samples == 0
    finally:
        server.stop()


@pytest.mark.integration
def test_dataloader_workers_share_the_cache(dataset, nginx, tmp_path):
    m = Manifest.load(dataset)
    keep = random_mask(m, 0.4, level="sample", seed=5)
    source = PrunedSource(dataset, keep, base=nginx.url, cache_dir=tmp_path / "cache")
    loader = torch.utils.data.DataLoader(source, batch_size=None, num_workers=2)
    want = sorted(_epoch(PrunedSource(dataset, keep)))
    assert sorted((s["__key__"], s["bin"]) for s in loader) == want
    nginx.clear_log()
    source.set_epoch(1)
    assert sorted((s["__key__"], s["bin"]) for s in loader) == want
    assert _tar_gets(nginx) == []
