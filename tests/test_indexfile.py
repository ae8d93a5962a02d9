"""The index sidecar's binary companion: same index as the JSON, ignored whenever it is not
made from the JSON bytes on disk, refused (named error) when damaged, and member lists that
behave like lists."""

import json
import os

import numpy as np
import pytest

from streamprune.errors import IndexMismatchError
from streamprune.indexfile import companion_path, load_index
from streamprune.indexing import index_shards
from streamprune.shardindex import MemberTable
from streamprune.tarindex import index_tar


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


def _rewrite_meta(c, edit):
    """Rewrite the companion ``c`` with ``edit(meta)`` applied, its columns and digest unchanged."""
    with np.load(c) as z:
        meta, columns = json.loads(str(z["meta"])), z["columns"]
    edit(meta)
    np.savez(c, meta=np.array(json.dumps(meta)), columns=columns)


def _shard_bytes_plus_one(meta):
    meta["shard_bytes"] += 1


def _start_gap_shorter(meta):
    for column in meta["columns"]:
        if column["name"] == "start_gap":
            column["length"] -= 1


def _extensions_swapped(meta):
    meta["extensions"] = meta["extensions"][::-1]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong-count", "shard-bytes", "extensions", "column-bit"])
def test_a_damaged_companion_is_refused_naming_the_file(small_dataset, damage):
    """Damage anywhere in the companion, meta fields included (which version 2 did not cover:
    such a companion loaded silently as a different index), is an error naming the companion."""
    m = small_dataset
    path = m.resolve(m.shards[1].index)
    c = companion_path(path)
    if damage == "garbage":
        open(c, "wb").write(b"not an npz at all")
    elif damage == "truncated":
        data = open(c, "rb").read()
        open(c, "wb").write(data[: len(data) // 2])
    elif damage == "column-bit":
        with np.load(c) as z:
            meta, columns = str(z["meta"]), z["columns"].copy()
        columns[len(columns) // 2] ^= 0x01
        np.savez(c, meta=np.array(meta), columns=columns)
    else:
        edit = {"wrong-count": _start_gap_shorter, "shard-bytes": _shard_bytes_plus_one, "extensions": _extensions_swapped}[damage]
        _rewrite_meta(c, edit)
    with pytest.raises(IndexMismatchError, match=r"index\.npz: index companion is damaged"):
        load_index(path, expected_sha256=m.shards[1].index_sha256)
    os.unlink(c)  # what the message says to do: the JSON is then the index
    assert isinstance(load_index(path, expected_sha256=m.shards[1].index_sha256).members, list)


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


def _companion_arrays(path):
    """The companion's meta and its columns, decoded as FORMATS.md documents them."""
    with np.load(companion_path(path)) as z:
        meta, data = json.loads(str(z["meta"])), z["columns"]
    assert z.files == ["meta", "columns"]
    arrays = {c["name"]: np.frombuffer(data, np.dtype(c["dtype"]), c["length"], c["offset"]) for c in meta["columns"]}
    return meta, arrays


def _round_trip(index, path):
    """Save ``index``; the companion-loaded index equals the JSON-loaded one and the original."""
    from streamprune.indexfile import save_index  # local: only these tests write hand-built indexes

    save_index(index, path)
    assert os.path.exists(companion_path(path))
    fast = load_index(path)
    assert isinstance(fast.members, MemberTable)
    slow = _json_only(path)
    for got in (fast, slow):
        _same(got, index)
        assert got.checksum_algorithm == index.checksum_algorithm
        assert (got.checksums is None) == (index.checksums is None)
        if index.checksums is not None:
            assert got.checksums.dtype == np.uint64 and got.checksums.tolist() == list(index.checksums)
    return fast


def test_compact_companion_round_trips_unicode_long_keys_and_pax_headers(tmp_path):
    from streamprune.writers.tar import TarShardWriter  # local: the writer is only needed here

    keys = ["ключ/日本語-" * 12 + "a", "s0", "dir/🙂", "x" * 300, "plain"]
    with TarShardWriter(tmp_path / "u.tar", label_ext=None) as writer:
        for i, key in enumerate(keys):
            writer.write(key, {"txt": bytes(i * 700), "seg.png": b"p" * (i + 1)})
        index = writer.close()
    path = str(tmp_path / "u.tar.index.json")
    _round_trip(index, path)
    meta, arrays = _companion_arrays(path)
    assert meta["version"] == 3 and meta["checksum"] == "xxh3_64"
    assert arrays["member_gap"].max() > 1  # PAX path records before long names: more than one header block
    assert arrays["labels"].dtype == np.int8 and arrays["member_size"].dtype == np.uint16


def test_compact_companion_round_trips_an_empty_shard(tmp_path):
    from streamprune.writers.tar import TarShardWriter  # local: the writer is only needed here

    with TarShardWriter(tmp_path / "e.tar") as writer:
        index = writer.close()
    assert len(index) == 0 and index.checksums is not None and len(index.checksums) == 0
    got = _round_trip(index, str(tmp_path / "e.tar.index.json"))
    assert got.keys == [] and len(got.members) == 0
    again = index_shards([tmp_path / "e.tar"], tmp_path / "idx", progress=False, label_ext=None)
    assert again.num_samples == 0 and again.index(0).keys == []


def test_compact_companion_keeps_gaps_of_skipped_members(tmp_path):
    """Directories and ``__meta__`` members between and inside samples: offsets still rebuild exactly."""
    import io
    import tarfile  # local: a tar with skipped members needs the standard writer

    path = tmp_path / "gaps.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        def add(name, data=b"", kind=tarfile.REGTYPE):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("__meta__", b"m" * 2000)
        add("a.txt", b"a" * 10)
        add("somedir", kind=tarfile.DIRTYPE)
        add("a.cls", b"1")
        add("__meta2__", b"z" * 5000)
        add("b/" + "long" * 40 + ".txt", b"b" * 513)
        add("b/" + "long" * 40 + ".cls", b"2")
    index = index_tar(path, label_ext="cls")
    assert len(index) == 2
    _round_trip(index, str(tmp_path / "gaps.tar.index.json"))


def test_companion_is_at_most_24_bytes_per_sample_plus_keys(small_dataset):
    m = small_dataset
    for k in range(len(m.shards)):
        _, arrays = _companion_arrays(m.resolve(m.shards[k].index))
        n = m.shards[k].samples
        fixed = sum(a.nbytes for name, a in arrays.items() if name != "keys")
        assert fixed / n <= 24, {name: a.dtype for name, a in arrays.items()}
        assert arrays["keys"].nbytes == sum(len(key.encode()) + 1 for key in m.index(k).keys) - 1


def test_an_index_whose_ranges_are_not_a_tar_layout_gets_no_companion(tmp_path):
    from streamprune.indexfile import save_index  # local: only this test writes a hand-built index
    from streamprune.shardindex import ShardIndex  # local: as above

    index = ShardIndex("x.tar", 5000, ["a", "b"], np.array([0, 1]), np.array([0, 700]), np.array([700, 1400]),
                       [[("txt", 100, 600)], [("txt", 800, 600)]])
    path = str(tmp_path / "x.tar.index.json")
    save_index(index, path)
    assert not os.path.exists(companion_path(path))
    got = load_index(path)
    _same(got, index)
    assert got.checksums is None


def test_an_old_version_1_companion_is_ignored_and_rebuilt(tmp_path, small_dataset, caplog, monkeypatch):
    """A companion in the version-1 layout (int64 columns, written by hand as FORMATS.md documents it)
    is not used, even when made from the same JSON bytes; re-indexing replaces it with version 3."""
    import hashlib  # local: only this test hashes a sidecar by hand

    m = small_dataset
    path = m.resolve(m.shards[0].index)
    reference = _json_only(path)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    exts = sorted({e for g in reference.members for e, _, _ in g})
    rows = [r for g in reference.members for r in g]
    meta = {"format": "streamprune-index-companion", "version": 1, "json_sha256": digest, "shard": reference.shard,
            "shard_bytes": reference.shard_bytes, "sha256": reference.sha256, "extensions": exts,
            "num_samples": len(reference)}
    with open(companion_path(path), "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta)), keys=np.frombuffer("\0".join(reference.keys).encode(), np.uint8),
                 labels=reference.labels, start=reference.start, end=reference.end,
                 member_first=np.concatenate([[0], np.cumsum([len(g) for g in reference.members])]).astype(np.int64),
                 member_ext=np.array([exts.index(r[0]) for r in rows], np.int32),
                 member_offset=np.array([r[1] for r in rows], np.int64), member_size=np.array([r[2] for r in rows], np.int64))
    monkeypatch.setattr("streamprune.indexfile._warned_old_companion", False)
    with caplog.at_level("WARNING", logger="streamprune.indexfile"):
        got = load_index(path, expected_sha256=m.shards[0].index_sha256)
        load_index(path, expected_sha256=m.shards[0].index_sha256)
    # the user learns why reads got slower, and how to fix it, once
    warned = [r.getMessage() for r in caplog.records if "index companion version 1" in r.getMessage()]
    assert len(warned) == 1 and "Re-run `streamprune index`" in warned[0] and companion_path(path) in warned[0]
    assert isinstance(got.members, list)  # the JSON was parsed: the old companion was not trusted
    _same(got, reference)
    assert got.checksums.tolist() == reference.checksums.tolist()
    again = index_shards([m.shard_path(0)], m.root, progress=False, label_ext="cls")
    assert _companion_arrays(path)[0]["version"] == 3
    assert isinstance(load_index(again.resolve(again.shards[0].index)).members, MemberTable)


def test_manifest_bound_companion_loads_without_reading_the_json(tmp_path, small_dataset):
    from streamprune.manifest import Manifest

    m = small_dataset
    assert all(s.companion_sha256 for s in m.shards)  # the writer binds each companion in the manifest
    expected = [_json_only(m.resolve(s.index)) for s in m.shards]
    for s in m.shards:  # the JSON is never opened: move it away
        os.rename(m.resolve(s.index), m.resolve(s.index) + ".off")
    fresh = Manifest.load(m.path)
    for k in range(len(m.shards)):
        _same(fresh.index(k), expected[k])
    for s in m.shards:
        os.rename(m.resolve(s.index) + ".off", m.resolve(s.index))


def test_a_damaged_companion_is_never_the_index(tmp_path, small_dataset):
    from streamprune.manifest import Manifest

    m = small_dataset
    path = m.resolve(m.shards[0].index)
    expected = _json_only(path)
    comp = companion_path(path)
    pristine = open(comp, "rb").read()
    raw = bytearray(pristine)
    raw[len(raw) // 2] ^= 0xFF  # a flipped bit inside the columns
    open(comp, "wb").write(bytes(raw))
    # bound to the manifest: its digest no longer matches; not bound: its own digest catches it;
    # either way an error names the companion, never a silently different index
    with pytest.raises(IndexMismatchError, match="index companion is damaged"):
        Manifest.load(m.path).index(0)
    with pytest.raises(IndexMismatchError, match="index companion is damaged"):
        load_index(path, expected_sha256=m.shards[0].index_sha256)
    # and old manifests without the field load as before (the intact companion)
    open(comp, "wb").write(pristine)
    obj = json.load(open(m.path))
    for s in obj["shards"]:
        s.pop("companion_sha256", None)
    json.dump(obj, open(m.path, "w"))
    _same(Manifest.load(m.path).index(0), expected)


@pytest.mark.parametrize("value", [9223372036854775807, "abc", {"a": 1}, None])
def test_a_sidecar_whose_checksums_are_not_a_list_is_refused_naming_the_field(small_dataset, value):
    """Found by the fuzz suite: an integer there raised a TypeError from len()."""
    from streamprune.errors import ManifestError

    path = os.path.join(os.path.dirname(small_dataset.path), small_dataset.shards[0].index)
    obj = json.load(open(path))
    obj["checksums"] = value
    os.unlink(companion_path(path)) if os.path.exists(companion_path(path)) else None
    with open(path, "w") as fh:
        json.dump(obj, fh)
    with pytest.raises(ManifestError, match="checksums"):
        load_index(path)
