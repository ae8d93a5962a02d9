"""Per-shard summaries and the duplicate-key check over sorted key-hash files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from builders import saved_summaries

from streamprune.shardsummary import (
    find_duplicate_key,
    key_hashes,
    keyhash_path,
    write_keyhashes,
)


def _reference(shards: list[list[str]]) -> set[str]:
    """Every key that occurs more than once, by a plain count."""
    counts: dict[str, int] = {}
    for keys in shards:
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
    return {k for k, c in counts.items() if c > 1}


def test_summary_carries_what_the_manifest_needs_and_writes_sorted_hashes(tmp_path):
    (summary,), (index,) = saved_summaries(tmp_path, [["a", "b", "c", "d"]], labels=[[2, 0, -1, 2]])
    assert (summary.samples, summary.shard_bytes, summary.shard, summary.index) == (4, index.shard_bytes, "s0.tar", "s0.tar.index.json")
    assert summary.label_counts.tolist() == [1, 0, 2] and summary.unlabelled == 1 and summary.first_unlabelled == "c"
    stored = np.load(keyhash_path(os.path.join(tmp_path, "s0.tar.index.json")))
    assert stored.tolist() == sorted(key_hashes(["a", "b", "c", "d"]).tolist())
    assert len(summary.index_sha256) == 64


@pytest.mark.integration
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
        summaries, indexes = saved_summaries(root, shards)
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
    summaries, indexes = saved_summaries(tmp_path, [["a", "b"], ["c", "d", "c"]])
    assert find_duplicate_key(summaries, lambda k: indexes[k], chunk=1) == ("c", "s1.tar", "s1.tar")


def test_a_hash_collision_of_distinct_keys_is_not_a_duplicate(tmp_path, monkeypatch):
    summaries, indexes = saved_summaries(tmp_path, [["a", "b"], ["c", "d"]])
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
