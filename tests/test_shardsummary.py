"""Per-shard summaries and the duplicate-key check over sorted key-hash files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from streamprune.errors import DuplicateKeyError
from streamprune.indexfile import save_index
from streamprune.manifest import manifest_from_summaries
from streamprune.shardindex import ShardIndex
from streamprune.shardsummary import (
    ShardSummary,
    find_duplicate_key,
    key_hashes,
    keyhash_path,
    summarize_index,
    write_keyhashes,
)


def _index(name: str, keys: list[str], labels: list[int]) -> ShardIndex:
    n = len(keys)
    start = np.arange(n, dtype=np.int64) * 1024
    return ShardIndex(
        shard=name, shard_bytes=n * 1024 + 1024, keys=keys, labels=np.asarray(labels, dtype=np.int64), start=start,
        end=start + 1024, members=[[("bin", int(s) + 512, 10)] for s in start],
    )


def _saved(tmp_path, shards: list[list[str]], labels=None) -> tuple[list[ShardSummary], list[ShardIndex]]:
    summaries, indexes = [], []
    for k, keys in enumerate(shards):
        index = _index(f"s{k}.tar", keys, labels[k] if labels else [k % 3] * len(keys))
        path = os.path.join(tmp_path, f"s{k}.tar.index.json")
        save_index(index, path)
        summaries.append(summarize_index(index, path, f"s{k}.tar", f"s{k}.tar.index.json"))
        indexes.append(index)
    return summaries, indexes


def _reference(shards: list[list[str]]) -> set[str]:
    """Every key that occurs more than once, by a plain count."""
    counts: dict[str, int] = {}
    for keys in shards:
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
    return {k for k, c in counts.items() if c > 1}


def test_summary_carries_what_the_manifest_needs_and_writes_sorted_hashes(tmp_path):
    (summary,), (index,) = _saved(tmp_path, [["a", "b", "c", "d"]], labels=[[2, 0, -1, 2]])
    assert (summary.samples, summary.shard_bytes, summary.shard, summary.index) == (4, index.shard_bytes, "s0.tar", "s0.tar.index.json")
    assert summary.label_counts.tolist() == [1, 0, 2] and summary.unlabelled == 1 and summary.first_unlabelled == "c"
    stored = np.load(keyhash_path(os.path.join(tmp_path, "s0.tar.index.json")))
    assert stored.tolist() == sorted(key_hashes(["a", "b", "c", "d"]).tolist())
    assert len(summary.index_sha256) == 64


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
@pytest.mark.parametrize("group", [1, 2, 128])
def test_duplicate_check_agrees_with_a_plain_count_on_random_key_sets(tmp_path, chunk, group):
    rng = np.random.default_rng(chunk)
    for trial in range(6):
        root = tmp_path / f"t{trial}"
        root.mkdir()
        pool = [f"k{i}" for i in range(400)]
        shards = [list(rng.choice(pool, size=int(rng.integers(0, 40)), replace=False)) for _ in range(5)]
        if trial % 2:  # no duplicate at all
            flat = rng.permutation(pool)[:200].tolist()
            shards = [flat[i * 40 : (i + 1) * 40] for i in range(5)]
        summaries, indexes = _saved(root, shards)
        found = find_duplicate_key(summaries, indexes.__getitem__, chunk=chunk, group=group)
        dups = _reference(shards)
        if not dups:
            assert found is None
            continue
        key, first, second = found
        assert key in dups
        holders = [f"s{k}.tar" for k, keys in enumerate(shards) if key in keys]
        assert (first, second) == (holders[0], holders[1])


def test_a_key_twice_in_one_shard_is_found(tmp_path):
    summaries, indexes = _saved(tmp_path, [["a", "b"], ["c", "d", "c"]])
    assert find_duplicate_key(summaries, lambda k: indexes[k], chunk=1) == ("c", "s1.tar", "s1.tar")


def test_a_hash_collision_of_distinct_keys_is_not_a_duplicate(tmp_path, monkeypatch):
    summaries, indexes = _saved(tmp_path, [["a", "b"], ["c", "d"]])
    # forge the key-hash files: "b" and "c" get the same hash, as two distinct keys could past 10^9 keys
    fake = {"a": 1, "b": 5, "c": 5, "d": 9}
    loads: list[int] = []
    for s, keys in zip(summaries, (["a", "b"], ["c", "d"])):
        write_keyhashes(np.array([fake[k] for k in keys], dtype=np.uint64), s.keyhash)

    def index_of(k):
        loads.append(k)
        return indexes[k]

    monkeypatch.setattr("streamprune.shardsummary.key_hashes", lambda keys: np.array([fake[k] for k in keys], dtype=np.uint64))
    assert find_duplicate_key(summaries, index_of, chunk=1) is None
    assert sorted(loads) == [0, 1]  # the candidate was checked against the keys themselves


def test_manifest_from_summaries_counts_classes_and_names_the_duplicate(tmp_path):
    summaries, _ = _saved(tmp_path, [["a", "b"], ["c", "d", "e"]], labels=[[0, 1], [1, 1, 3]])
    manifest = manifest_from_summaries(str(tmp_path), summaries, chunk=2)
    assert manifest.class_counts == [1, 3, 0, 1] and manifest.classes == ["0", "1", "2", "3"]
    assert [s.samples for s in manifest.shards] == [2, 3]
    dup_root = tmp_path / "dup"
    dup_root.mkdir()
    summaries, _ = _saved(dup_root, [["a", "b"], ["c", "a"]])
    with pytest.raises(DuplicateKeyError, match=r"'a' occurs in both s0.tar and s1.tar"):
        manifest_from_summaries(str(dup_root), summaries, chunk=1)  # confirmed from the saved sidecars


def test_folded_class_counts_give_the_same_manifest(tmp_path):
    from streamprune.shardsummary import ClassCounts

    labels = [[0, 4], [1, 1, 3]]
    summaries, _ = _saved(tmp_path, [["a", "b"], ["c", "d", "e"]], labels=labels)
    plain = manifest_from_summaries(str(tmp_path), summaries)
    counted = ClassCounts()
    for s in summaries:
        counted.fold(s)
    assert all(s.label_counts is None for s in summaries)
    folded = manifest_from_summaries(str(tmp_path), summaries, class_counts=counted.total)
    assert folded.class_counts == plain.class_counts == [1, 2, 0, 1, 1] and folded.classes == plain.classes
    with pytest.raises(Exception, match="out of range"):
        manifest_from_summaries(str(tmp_path), summaries, classes=["x", "y"], class_counts=counted.total)
