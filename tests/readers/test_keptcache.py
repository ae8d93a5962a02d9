"""The kept-bytes cache: later epochs read cached kept samples locally, and never wrong bytes.

Samples are real tar shards written by ``write_shards``; the reference for every cached
sample is the shard file's own bytes over its index range, read with a plain ``open``.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

from streamprune.errors import CacheError, StreamPruneError
from streamprune.readers import keptcache
from streamprune.readers.keptcache import CHUNK_SUFFIX, KeptCache
from streamprune.tarindex import index_tar
from streamprune.writers import write_shards

DS = "fingerprint-a"


def _write(tmp_path, n_shards=3, per_shard=12, size=3000, seed=0, name="data"):
    """Tar shards of ``per_shard`` samples with ``bin`` members of about ``size`` bytes; (paths, indexes)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n_shards * per_shard):
        n = int(rng.integers(size // 2, size * 3 // 2 + 1))
        samples.append((f"s{i:05d}", {"bin": rng.bytes(n), "txt": f"sample {i}".encode()}, i % 3))
    out = tmp_path / name
    manifest = write_shards(samples, os.fspath(out), samples_per_shard=per_shard, shuffle=False, progress=False,
                            class_names=["a", "b", "c"])
    paths = [manifest.shard_path(k) for k in range(n_shards)]
    return paths, [index_tar(p, label_ext="cls") for p in paths]


def _truth(path, index, pos):
    with open(path, "rb") as fh:
        fh.seek(int(index.start[pos]))
        return fh.read(int(index.end[pos] - index.start[pos]))


def _fill(cache, path, index, positions, dataset=DS, etag="e1"):
    with cache.shard(dataset, path, os.path.getsize(path), etag, index) as sc:
        for pos in positions:
            sc.add(int(pos), _truth(path, index, pos))


def _chunks(directory):
    return sorted(f for f in os.listdir(directory) if f.endswith(CHUNK_SUFFIX)) if os.path.isdir(directory) else []


@pytest.fixture
def shards(tmp_path):
    return _write(tmp_path)


def test_round_trip_serves_the_shards_bytes_and_only_cached_positions(tmp_path, shards):
    paths, indexes = shards
    path, index = paths[0], indexes[0]
    kept = np.array([0, 2, 3, 7, 11])
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    _fill(cache, path, index, kept)
    # a new instance (another process, a restart) sees the same
    again = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    with again.shard(DS, path, os.path.getsize(path), "e1", index) as sc:
        expect = np.isin(np.arange(len(index)), kept)
        assert sc.cached(np.arange(len(index))).tolist() == expect.tolist()
        assert sc.cached(np.array([11, 1, 0])).tolist() == [True, False, True]
        for pos in range(len(index)):
            got = sc.get(pos)
            if pos in kept:
                assert bytes(got) == _truth(path, index, pos)
            else:
                assert got is None
    stats = again.stats()
    assert stats["hits"] == len(kept)
    assert stats["bytes_served"] == int((index.end[kept] - index.start[kept]).sum())
    assert stats["misses"] == (len(index) - len(kept)) + 1 + (len(index) - len(kept))  # cached() twice, get() on missing
    assert cache.stats()["chunks_written"] == 1 and cache.stats()["bytes_written"] == cache.total_bytes()


def test_pending_samples_are_served_before_commit_and_chunks_split_by_size(tmp_path, shards):
    paths, indexes = shards
    path, index = paths[1], indexes[1]
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30, chunk_bytes=8000)
    sc = cache.shard(DS, path, os.path.getsize(path), "e1", index)
    sc.add(4, _truth(path, index, 4))
    assert bytes(sc.get(4)) == _truth(path, index, 4) and sc.cached(np.array([4, 5])).tolist() == [True, False]
    for pos in range(len(index)):
        sc.add(pos, _truth(path, index, pos))
    sc.close()
    assert len(_chunks(sc.path)) > 1  # committed every ~8 KB
    with cache.shard(DS, path, os.path.getsize(path), "e1", index) as sc2:
        assert sc2.cached(np.arange(len(index))).all()
        assert all(bytes(sc2.get(p)) == _truth(path, index, p) for p in range(len(index)))


def test_changing_masks_add_chunks_and_compaction_keeps_every_sample(tmp_path, shards):
    paths, indexes = shards
    path, index = paths[0], indexes[0]
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30, max_chunks=3)
    rng = np.random.default_rng(1)
    seen: set[int] = set()
    for _ in range(8):  # one "epoch" each: a new mask, only the missing samples are fetched and added
        keep = np.flatnonzero(rng.random(len(index)) < 0.3)
        with cache.shard(DS, path, os.path.getsize(path), "e1", index) as sc:
            missing = keep[~sc.cached(keep)]
            assert set(missing.tolist()) == set(keep.tolist()) - seen
            for pos in missing:
                sc.add(int(pos), _truth(path, index, pos))
        seen |= set(keep.tolist())
        assert len(_chunks(sc.path)) <= 3
    with cache.shard(DS, path, os.path.getsize(path), "e1", index) as sc:
        assert np.flatnonzero(sc.cached(np.arange(len(index)))).tolist() == sorted(seen)
        assert all(bytes(sc.get(p)) == _truth(path, index, p) for p in seen)
    assert cache.total_bytes() < 1.05 * int((index.end - index.start)[sorted(seen)].sum()) + 4096


@pytest.mark.parametrize("other", [{"dataset": "fingerprint-b"}, {"etag": "e2"}, {"size": 1}, {"shard": "other.tar"}])
def test_another_dataset_object_version_or_shard_never_hits(tmp_path, shards, other):
    paths, indexes = shards
    path, index = paths[0], indexes[0]
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    _fill(cache, path, index, range(len(index)))
    size = os.path.getsize(path) + other.get("size", 0)
    with cache.shard(other.get("dataset", DS), other.get("shard", path), size, other.get("etag", "e1"), index) as sc:
        assert not sc.cached(np.arange(len(index))).any()
        assert sc.get(0) is None


def test_a_chunk_moved_under_another_key_is_rejected_by_its_header(tmp_path, shards, caplog):
    paths, indexes = shards
    path, index = paths[0], indexes[0]
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    _fill(cache, path, index, [1, 2])
    src = cache.shard_dir(DS, path, os.path.getsize(path), "e1")
    dst = cache.shard_dir(DS, path, os.path.getsize(path), "e2")
    os.makedirs(dst)
    name = _chunks(src)[0]
    os.rename(os.path.join(src, name), os.path.join(dst, name))
    with caplog.at_level(logging.WARNING, logger=keptcache.__name__):
        with cache.shard(DS, path, os.path.getsize(path), "e2", index) as sc:
            assert not sc.cached(np.array([1, 2])).any()
    assert "made for etag 'e1'" in caplog.text
    assert _chunks(dst) == []


def test_a_chunk_for_a_changed_index_is_rejected(tmp_path, shards):
    paths, indexes = shards
    path, index = paths[0], indexes[0]
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    _fill(cache, path, index, [0, 5])
    index.start = index.start.copy()
    index.start[5] += 512  # same dataset id, but the ranges differ: never serve those bytes
    with cache.shard(DS, path, os.path.getsize(path), "e1", index) as sc:
        assert not sc.cached(np.array([0, 5])).any()


def _corrupt_flip(path, where):
    size = os.path.getsize(path)
    offset = {"data": 100, "table": size - 300, "trailer": size - 50, "version": size - 24, "digest": size - 10,
              "magic": size - 1}[where]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("verify", ["read", "open"])
@pytest.mark.parametrize("damage", ["flip-data", "flip-table", "flip-trailer", "flip-version", "flip-digest", "flip-magic",
                                    "truncate", "truncate-tail", "empty"])
def test_a_corrupted_chunk_is_detected_deleted_and_a_miss(tmp_path, shards, damage, verify, caplog):
    paths, indexes = shards
    path, index = paths[2], indexes[2]
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    _fill(cache, path, index, range(len(index)))
    directory = cache.shard_dir(DS, path, os.path.getsize(path), "e1")
    (name,) = _chunks(directory)
    chunk = os.path.join(directory, name)
    if damage.startswith("flip-"):
        _corrupt_flip(chunk, damage[5:])
    else:
        keep = {"truncate": os.path.getsize(chunk) // 2, "truncate-tail": os.path.getsize(chunk) - 1, "empty": 0}[damage]
        os.truncate(chunk, keep)
    reader = KeptCache(tmp_path / "cache", limit_bytes=1 << 30, verify=verify)
    with caplog.at_level(logging.WARNING, logger=keptcache.__name__):
        with reader.shard(DS, path, os.path.getsize(path), "e1", index) as sc:
            reported = sc.cached(np.arange(len(index)))
            # only damage to the sample bytes can go unnoticed until they are read, and only with verify="read"
            assert reported.all() if (damage == "flip-data" and verify == "read") else not reported.any()
            assert sc.get(0) is None  # the damaged sample (offset 100 is in the first)
            served = {p: sc.get(p) for p in range(len(index))}
            assert all(v is None for v in served.values())  # the whole chunk is dropped
            assert not sc.cached(np.arange(len(index))).any()
    assert "invalid" in caplog.text and name in caplog.text
    assert not os.path.exists(chunk)
    assert reader.stats()["invalid_chunks"] == 1 and reader.stats()["hits"] == 0
    with reader.shard(DS, path, os.path.getsize(path), "e1", index) as sc:
        assert not sc.cached(np.arange(len(index))).any()


def test_damaged_sample_bytes_are_never_served_as_they_are_read(tmp_path, shards):
    paths, indexes = shards
    path, index = paths[0], indexes[0]
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    _fill(cache, path, index, range(len(index)))
    directory = cache.shard_dir(DS, path, os.path.getsize(path), "e1")
    chunk = os.path.join(directory, _chunks(directory)[0])
    victim = 5
    with cache.shard(DS, path, os.path.getsize(path), "e1", index) as sc:
        before = [bytes(sc.get(p)) for p in range(victim)]  # verified and handed out before the damage
        offset = int((index.end - index.start)[:victim].sum()) + 700  # inside sample 5 (chunks store by position)
        with open(chunk, "r+b") as fh:  # damage after the shard was opened: the mapping sees it
            fh.seek(offset)
            b = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([b[0] ^ 0xFF]))
        assert sc.get(victim) is None
        assert all(sc.get(p) is None for p in range(len(index)))
    assert before == [_truth(path, index, p) for p in range(victim)]
    assert not os.path.exists(chunk)


def test_full_disk_warns_once_stops_writing_and_keeps_serving(tmp_path, shards, monkeypatch, caplog):
    paths, indexes = shards
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    _fill(cache, paths[0], indexes[0], [0, 1, 2])
    served = cache.shard(DS, paths[0], os.path.getsize(paths[0]), "e1", indexes[0])

    def fsync_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write_quota(fd, data):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    with caplog.at_level(logging.WARNING, logger=keptcache.__name__):
        monkeypatch.setattr(os, "fsync", fsync_full)
        _fill(cache, paths[1], indexes[1], [0, 1, 2])  # no exception
        monkeypatch.setattr(os, "write", write_quota)
        _fill(cache, paths[2], indexes[2], [0, 1])
    monkeypatch.undo()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "No space left" in warnings[0].getMessage()
    assert cache.stats()["writable"] is False
    for k in (1, 2):
        directory = cache.shard_dir(DS, paths[k], os.path.getsize(paths[k]), "e1")
        assert not os.path.isdir(directory) or os.listdir(directory) == []  # no temporary left
    with cache.shard(DS, paths[1], os.path.getsize(paths[1]), "e1", indexes[1]) as sc:
        sc.add(5, _truth(paths[1], indexes[1], 5))  # ignored now
        assert not sc.cached(np.arange(len(indexes[1]))).any()
    assert all(bytes(served.get(p)) == _truth(paths[0], indexes[0], p) for p in (0, 1, 2))
    served.close()
    # a new instance (after space was freed) writes again
    fresh = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    _fill(fresh, paths[1], indexes[1], [3])
    with fresh.shard(DS, paths[1], os.path.getsize(paths[1]), "e1", indexes[1]) as sc:
        assert sc.cached(np.array([3])).all()


def test_an_unwritable_cache_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    with pytest.raises(CacheError, match=str(blocker / "cache")) as info:
        KeptCache(blocker / "cache", limit_bytes=1 << 20)
    assert isinstance(info.value, StreamPruneError)
    with pytest.raises(CacheError, match="limit_bytes"):
        KeptCache(tmp_path / "c", limit_bytes=0)


def test_add_checks_position_and_length(tmp_path, shards):
    paths, indexes = shards
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    with cache.shard(DS, paths[0], 1, "", indexes[0]) as sc:
        with pytest.raises(CacheError, match="position 99"):
            sc.add(99, b"")
        with pytest.raises(CacheError, match="s00000"):
            sc.add(0, b"short")


def test_eviction_keeps_the_total_under_the_limit_least_recently_used_first(tmp_path):
    paths, indexes = _write(tmp_path, n_shards=4, per_shard=10, size=4000)
    per_shard = [int((ix.end - ix.start).sum()) for ix in indexes]
    limit = int(max(per_shard) * 2.5)  # room for two shards, not three
    cache = KeptCache(tmp_path / "cache", limit_bytes=limit, low_water=1.0)

    def dir_of(k):
        return cache.shard_dir(DS, paths[k], os.path.getsize(paths[k]), "e1")

    _fill(cache, paths[0], indexes[0], range(10))
    time.sleep(0.02)
    _fill(cache, paths[1], indexes[1], range(10))
    time.sleep(0.02)
    cache.shard(DS, paths[0], os.path.getsize(paths[0]), "e1", indexes[0]).close()  # shard 0 used again: 1 is LRU
    time.sleep(0.02)
    other = KeptCache(tmp_path / "cache", limit_bytes=limit, low_water=1.0)  # another process: one shared usage count
    _fill(other, paths[2], indexes[2], range(10))
    assert not os.path.exists(dir_of(1)) and _chunks(dir_of(0)) and _chunks(dir_of(2))
    assert cache.total_bytes() <= limit
    time.sleep(0.02)
    _fill(cache, paths[3], indexes[3], range(10))  # now 0 is the least recently used
    assert not os.path.exists(dir_of(0)) and _chunks(dir_of(2)) and _chunks(dir_of(3))
    assert cache.total_bytes() <= limit
    assert cache.stats()["evictions"] + other.stats()["evictions"] == 2


def test_a_reader_keeps_its_bytes_when_another_process_evicts_them(tmp_path, shards):
    paths, indexes = shards
    path, index = paths[0], indexes[0]
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    _fill(cache, path, index, range(len(index)))
    sc = cache.shard(DS, path, os.path.getsize(path), "e1", index)
    other = KeptCache(tmp_path / "cache", limit_bytes=1)  # evicts everything at construction
    assert other.total_bytes() == 0 and other.stats()["evictions"] == 1
    assert all(bytes(sc.get(p)) == _truth(path, index, p) for p in range(len(index)))
    sc.close()


def _killed_writer(cache_dir, path, index, ready):
    """Child: fill a shard's cache, and block for ever after the first write of its chunk."""
    real_write = os.write
    calls = []

    def slow_write(fd, data):
        n = real_write(fd, data)
        calls.append(n)
        if len(calls) == 2:
            ready.send(os.getpid())
            time.sleep(600)
        return n

    os.write = slow_write
    cache = KeptCache(cache_dir, limit_bytes=1 << 30)
    sc = cache.shard(DS, path, os.path.getsize(path), "e1", index)
    for pos in range(len(index)):
        sc.add(pos, _truth(path, index, pos))
    sc.commit()


@pytest.mark.integration
def test_a_writer_killed_mid_write_leaves_nothing_read_as_valid(tmp_path):
    paths, indexes = _write(tmp_path, n_shards=1, per_shard=8, size=400_000)  # samples written one by one
    path, index = paths[0], indexes[0]
    cache_dir = os.fspath(tmp_path / "cache")
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_killed_writer, args=(cache_dir, path, index, child))
    proc.start()
    assert parent.poll(60), "the writer never got to write"
    parent.recv()
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    cache = KeptCache(cache_dir, limit_bytes=1 << 30)
    directory = cache.shard_dir(DS, path, os.path.getsize(path), "e1")
    left = os.listdir(directory)
    assert len(left) == 1 and left[0].endswith(f"{CHUNK_SUFFIX}.tmp-{proc.pid}") and os.path.getsize(os.path.join(directory, left[0]))
    with cache.shard(DS, path, os.path.getsize(path), "e1", index) as sc:
        assert not sc.cached(np.arange(len(index))).any()
    assert os.listdir(directory) == []  # the dead writer's temporary was removed
    assert cache.total_bytes() == 0


def test_an_old_temporary_is_removed_even_if_its_pid_looks_alive(tmp_path, shards):
    paths, indexes = shards
    path, index = paths[0], indexes[0]
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30, max_temp_age=60)
    directory = cache.shard_dir(DS, path, os.path.getsize(path), "e1")
    os.makedirs(directory)
    fresh = os.path.join(directory, f"x{CHUNK_SUFFIX}.tmp-1")  # pid 1 is alive
    old = os.path.join(directory, f"y{CHUNK_SUFFIX}.tmp-1")
    for p in (fresh, old):
        with open(p, "wb") as fh:
            fh.write(b"partial")
    os.utime(old, (time.time() - 120, time.time() - 120))
    cache.shard(DS, path, os.path.getsize(path), "e1", index).close()
    assert os.path.exists(fresh) and not os.path.exists(old)


def _concurrent_filler(cache_dir, path, index, positions, barrier):
    cache = KeptCache(cache_dir, limit_bytes=1 << 30)
    sc = cache.shard(DS, path, os.path.getsize(path), "e1", index)
    for pos in positions:
        sc.add(int(pos), _truth(path, index, pos))
    barrier.wait(30)
    sc.close()


@pytest.mark.integration
def test_two_processes_filling_one_shard(tmp_path):
    paths, indexes = _write(tmp_path, n_shards=1, per_shard=40, size=20_000)
    path, index = paths[0], indexes[0]
    cache_dir = os.fspath(tmp_path / "cache")
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    sets = [np.arange(0, 30), np.arange(10, 40)]  # overlapping: duplicates are harmless
    procs = [ctx.Process(target=_concurrent_filler, args=(cache_dir, path, index, s, barrier)) for s in sets]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = KeptCache(cache_dir, limit_bytes=1 << 30)
    with cache.shard(DS, path, os.path.getsize(path), "e1", index) as sc:
        assert len(_chunks(sc.path)) == 2
        assert sc.cached(np.arange(len(index))).all()
        assert all(bytes(sc.get(p)) == _truth(path, index, p) for p in range(len(index)))
    assert cache.stats()["invalid_chunks"] == 0


def test_cache_bytes_stay_within_5_percent_of_the_kept_bytes_for_120kb_samples(tmp_path):
    paths, indexes = _write(tmp_path, n_shards=2, per_shard=40, size=120_000)
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    kept_bytes = 0
    rng = np.random.default_rng(0)
    for path, index in zip(paths, indexes):
        keep = np.flatnonzero(rng.random(len(index)) < 0.5)
        _fill(cache, path, index, keep)
        kept_bytes += int((index.end - index.start)[keep].sum())
    allocated = 0
    for root, _, files in os.walk(tmp_path / "cache"):
        allocated += sum(os.stat(os.path.join(root, f)).st_blocks * 512 for f in files)
    assert cache.total_bytes() <= 1.05 * kept_bytes
    assert allocated <= 1.05 * kept_bytes


def test_a_pickled_cache_works_in_another_process(tmp_path, shards):
    import pickle  # only this test pickles

    paths, indexes = shards
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    clone = pickle.loads(pickle.dumps(cache))
    _fill(clone, paths[0], indexes[0], [3])
    with cache.shard(DS, paths[0], os.path.getsize(paths[0]), "e1", indexes[0]) as sc:
        assert bytes(sc.get(3)) == _truth(paths[0], indexes[0], 3)


def test_a_whole_chunk_of_another_version_is_left_alone_and_not_used(tmp_path, shards):
    import struct  # only this test rewrites a trailer

    import xxhash  # the chunk digest's algorithm, to forge a valid file of another version

    paths, indexes = shards
    path, index = paths[0], indexes[0]
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    _fill(cache, path, index, [0, 1])
    directory = cache.shard_dir(DS, path, os.path.getsize(path), "e1")
    chunk = os.path.join(directory, _chunks(directory)[0])
    with open(chunk, "rb") as fh:
        data = bytearray(fh.read())
    assert data[-8:] == b"SPKCHUNK" and struct.unpack_from("<Q", data, len(data) - 24)[0] == 1
    footer = struct.unpack_from("<Q", data, len(data) - 32)[0]
    struct.pack_into("<Q", data, len(data) - 24, 2)
    struct.pack_into("<Q", data, len(data) - 16, xxhash.xxh3_64_intdigest(bytes(data[-16 - footer : -16])))
    with open(chunk, "wb") as fh:
        fh.write(data)
    with cache.shard(DS, path, os.path.getsize(path), "e1", index) as sc:
        assert not sc.cached(np.array([0, 1])).any()
    assert os.path.exists(chunk) and cache.stats()["invalid_chunks"] == 0


def test_a_later_epoch_in_the_same_process_reuses_the_mapped_checked_chunks(tmp_path, shards):
    paths, indexes = shards
    path, index = paths[0], indexes[0]
    writer = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    _fill(writer, path, index, range(len(index)))
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30, max_mapped_bytes=1 << 20)
    for _epoch in range(3):
        with cache.shard(DS, path, os.path.getsize(path), "e1", index) as sc:
            assert all(bytes(sc.get(p)) == _truth(path, index, p) for p in range(len(index)))
    assert cache.stats()["chunks_opened"] == 1
    directory = cache.shard_dir(DS, path, os.path.getsize(path), "e1")
    (name,) = _chunks(directory)
    os.unlink(os.path.join(directory, name))  # evicted by another process: not served from the old mapping
    with cache.shard(DS, path, os.path.getsize(path), "e1", index) as sc:
        assert not sc.cached(np.arange(len(index))).any()
    cache.close()


def test_verify_none_trusts_the_bytes_and_discard_drops_the_chunk(tmp_path, shards, caplog):
    paths, indexes = shards
    path, index = paths[0], indexes[0]
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30, verify="none")
    _fill(cache, path, index, range(len(index)))
    directory = cache.shard_dir(DS, path, os.path.getsize(path), "e1")
    chunk = os.path.join(directory, _chunks(directory)[0])
    _corrupt_flip(chunk, "data")  # inside sample 0: the reader's own index checksum would catch it
    with caplog.at_level(logging.WARNING, logger=keptcache.__name__):
        with cache.shard(DS, path, os.path.getsize(path), "e1", index) as sc:
            assert sc.cached(np.arange(len(index))).all()
            assert bytes(sc.get(0)) != _truth(path, index, 0)
            sc.discard(0, "checksum mismatch")
            assert sc.get(0) is None and not sc.cached(np.arange(len(index))).any()
    assert "checksum mismatch" in caplog.text and not os.path.exists(chunk)
    with pytest.raises(CacheError, match="verify"):
        KeptCache(tmp_path / "cache", limit_bytes=1 << 30, verify="sometimes")


def test_merging_chunks_never_rewrites_damaged_bytes_under_a_fresh_digest(tmp_path, shards):
    paths, indexes = shards
    path, index = paths[0], indexes[0]
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30, max_chunks=1, verify="none")
    _fill(cache, path, index, range(6))
    directory = cache.shard_dir(DS, path, os.path.getsize(path), "e1")
    (first,) = _chunks(directory)
    _corrupt_flip(os.path.join(directory, first), "data")  # inside sample 0
    _fill(cache, path, index, [6])  # a second chunk would exceed max_chunks: everything is merged into one
    assert first not in _chunks(directory) and len(_chunks(directory)) == 1
    checked = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    with checked.shard(DS, path, os.path.getsize(path), "e1", index) as sc:
        assert not sc.cached(np.array([0])).any() and bytes(sc.get(6)) == _truth(path, index, 6)
        for p in range(len(index)):
            got = sc.get(p)
            assert got is None or bytes(got) == _truth(path, index, p)
    assert checked.stats()["invalid_chunks"] == 0


def test_eviction_leaves_other_files_in_the_cache_dir_alone(tmp_path, shards):
    paths, indexes = shards
    root = tmp_path / "cache"
    (root / "notes").mkdir(parents=True)
    (root / "0123456789abcdef01234567" / "empty").mkdir(parents=True)  # a dataset-like name, a foreign subdirectory
    (root / "readme.txt").write_text("mine")
    cache = KeptCache(root, limit_bytes=1 << 30)
    _fill(cache, paths[0], indexes[0], range(5))
    cache.limit_bytes = 1
    assert cache.evict() == 0
    assert (root / "notes").is_dir() and (root / "0123456789abcdef01234567" / "empty").is_dir()
    assert (root / "readme.txt").read_text() == "mine"


def test_reads_on_threads_while_samples_are_added_and_merged(tmp_path):
    import threading  # only this test runs threads

    paths, indexes = _write(tmp_path, n_shards=1, per_shard=60, size=2000)
    path, index = paths[0], indexes[0]
    truth = [_truth(path, index, p) for p in range(len(index))]
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30, chunk_bytes=6000, max_chunks=2)
    sc = cache.shard(DS, path, os.path.getsize(path), "e1", index)
    wrong, done = [], threading.Event()

    def reader():
        while not done.is_set():
            for p in range(len(index)):
                got = sc.get(p)
                if got is not None and bytes(got) != truth[p]:
                    wrong.append(p)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for p in np.random.default_rng(0).permutation(len(index)).tolist():
        sc.add(p, truth[p])  # commits every ~6 KB, merging whenever a third chunk would appear
    sc.commit()
    done.set()
    for t in threads:
        t.join()
    assert not wrong
    assert sc.cached(np.arange(len(index))).all() and len(_chunks(sc.path)) <= 2
    assert all(bytes(sc.get(p)) == truth[p] for p in range(len(index)))
    sc.close()


def _hand_chunk(samples, index, head):
    """A chunk file built from FORMATS.md ("Kept-bytes cache") alone, without the writer; ``head``: the header's bytes."""
    import struct  # only the hand-built format fixtures need these

    import xxhash

    data = b"".join(d for _, d in samples)
    data += b"\0" * (-len(data) % 8)
    pos = [p for p, _ in samples]
    table = b"".join(struct.pack(f"<{len(pos)}Q", *col) for col in (
        pos, [int(index.start[p]) for p in pos], [len(d) for _, d in samples], [xxhash.xxh3_64_intdigest(d) for _, d in samples]))
    footer = table + head + struct.pack("<5Q", len(data), len(pos), len(head), 32 * len(pos) + len(head) + 40, 1)
    return data + footer + struct.pack("<Q", xxhash.xxh3_64_intdigest(footer)) + b"SPKCHUNK"


def test_the_documented_chunk_layout_is_what_is_read_and_written(tmp_path, shards):
    import hashlib  # only this test computes the documented directory names
    import json
    import struct

    paths, indexes = shards
    path, index = paths[1], indexes[1]
    size = os.path.getsize(path)
    cache = KeptCache(tmp_path / "cache", limit_bytes=1 << 30)
    directory = cache.shard_dir(DS, path, size, "e1")

    def h(text, n):
        return hashlib.sha256(text.encode()).hexdigest()[:n]

    assert directory == os.path.join(cache.cache_dir, h(DS, 24), f"{os.path.basename(path)}-{h(path, 16)}-{size}-{h('e1', 12)}")
    header = {"format": "streamprune-kept-cache", "version": 1, "dataset_id": DS, "shard_id": path, "size": size, "etag": "e1",
              "samples": len(index)}
    os.makedirs(directory)
    with open(os.path.join(directory, f"hand{CHUNK_SUFFIX}"), "wb") as fh:
        fh.write(_hand_chunk([(p, _truth(path, index, p)) for p in (7, 2, 4)], index, json.dumps(header).encode()))
    with cache.shard(DS, path, size, "e1", index) as sc:
        assert np.flatnonzero(sc.cached(np.arange(len(index)))).tolist() == [2, 4, 7]
        assert all(bytes(sc.get(p)) == _truth(path, index, p) for p in (2, 4, 7))
        sc.add(9, _truth(path, index, 9))
    (written,) = [n for n in _chunks(directory) if not n.startswith("hand")]
    with open(os.path.join(directory, written), "rb") as fh:
        raw = fh.read()
    d, n, hl, f, version, _digest = struct.unpack_from("<6Q", raw, len(raw) - 56)
    assert raw[-8:] == b"SPKCHUNK" and version == 1 and n == 1 and f == 32 + hl + 40 and d + f + 16 == len(raw)
    assert raw[: len(_truth(path, index, 9))] == _truth(path, index, 9)
    assert json.loads(raw[d + 32 : d + 32 + hl]) == header
    assert raw == _hand_chunk([(9, _truth(path, index, 9))], index, raw[d + 32 : d + 32 + hl])
