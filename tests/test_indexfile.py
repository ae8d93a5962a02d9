"""The index sidecar's binary companion: same index as the JSON, ignored whenever it is not
made from the JSON bytes on disk, and member lists that behave like lists."""

import json
import os

import numpy as np
import pytest

from streamprune.errors import IndexMismatchError
from streamprune.indexfile import companion_path, load_index
from streamprune.indexing import index_shards
from streamprune.shardindex import MemberTable


def _json_only(path):
    """The index as the JSON alone gives it (companion moved away)."""
    c = companion_path(path)
    os.rename(c, c + ".off")
    try:
        return load_index(path)
    finally:
        os.rename(c + ".off", c)


def _same(a, b):
    assert a.shard == b.shard and a.shard_bytes == b.shard_bytes and a.sha256 == b.sha256
    assert a.keys == b.keys
    for name in ("labels", "start", "end"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert [list(m) for m in a.members] == [list(m) for m in b.members]


def test_writer_and_indexer_write_a_companion_that_loads_the_same_index(tmp_path, small_dataset):
    m = small_dataset
    for k in range(len(m.shards)):
        path = m.resolve(m.shards[k].index)
        assert os.path.exists(companion_path(path))
        fast = load_index(path, expected_sha256=m.shards[k].index_sha256)
        assert isinstance(fast.members, MemberTable)
        _same(fast, _json_only(path))
    shards = [m.shard_path(k) for k in range(len(m.shards))]
    again = index_shards(shards, tmp_path / "idx", progress=False)
    for k in range(len(again.shards)):
        path = again.resolve(again.shards[k].index)
        _same(load_index(path), _json_only(path))


def test_a_companion_made_from_other_json_bytes_is_ignored(tmp_path, small_dataset):
    m = small_dataset
    path = m.resolve(m.shards[0].index)
    obj = json.load(open(path))
    obj["keys"][0] = "renamed"  # edit the JSON, leave the companion as it was
    with open(path, "w") as fh:
        json.dump(obj, fh)
    assert load_index(path).keys[0] == "renamed"  # the JSON wins, not the stale companion
    with pytest.raises(IndexMismatchError, match="does not match the manifest"):
        load_index(path, expected_sha256=m.shards[0].index_sha256)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong-count"])
def test_a_damaged_companion_is_ignored(small_dataset, damage):
    m = small_dataset
    path = m.resolve(m.shards[1].index)
    c = companion_path(path)
    reference = _json_only(path)
    if damage == "garbage":
        open(c, "wb").write(b"not an npz at all")
    elif damage == "truncated":
        data = open(c, "rb").read()
        open(c, "wb").write(data[: len(data) // 2])
    else:
        with np.load(c) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["start"] = arrays["start"][:-1]
        np.savez(c, **arrays)
    got = load_index(path, expected_sha256=m.shards[1].index_sha256)
    assert isinstance(got.members, list)  # parsed from the JSON
    _same(got, reference)


def test_member_table_behaves_like_the_list_of_member_lists():
    groups = [[("cls", 512, 1), ("jpg", 1536, 300)], [], [("x.seg.png", 4096, 7)]]
    counts = [len(g) for g in groups]
    first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rows = [r for g in groups for r in g]
    exts = ["cls", "jpg", "x.seg.png"]
    table = MemberTable(first, np.array([exts.index(r[0]) for r in rows]), np.array([r[1] for r in rows]),
                        np.array([r[2] for r in rows]), exts)
    assert len(table) == 3 and table[0] == groups[0] and table[1] == [] and table[-1] == groups[2]
    assert list(table) == groups and table == groups and table.tolist() == groups
    with pytest.raises(IndexError, match="sample 3 out of range"):
        table[3]
