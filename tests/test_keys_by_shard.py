"""Key-list masks shard by shard (``mask_from_keys(out=...)``) against the in-memory path and brute force."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from streamprune.engine import LocalEngine
from streamprune.keys import MissingKeysError, iter_key_list, mask_from_keys, read_key_list, uid_pair
from streamprune.keytable import KeyTable, build_key_table, id_digests
from streamprune.masks import MaskFile
from streamprune_cli.main import cli
from tests.builders import uid_for

_uid = uid_for


@pytest.fixture
def uid_member(tmp_path, shard_writer):
    """14 samples with plain keys; 10 carry a ``uid`` member, 4 a ``json`` member with a uid."""
    samples = []
    for i in range(14):
        members = {"bin": bytes([i]) * 10}
        if i < 10:
            members["uid"] = _uid(i).upper().encode()
        else:
            members["json"] = json.dumps({"uid": _uid(i)}).encode()
        samples.append((f"k{i:03d}", members, i % 4))
    return shard_writer(samples, tmp_path / "um", samples_per_shard=4, shuffle=False)


def _same(manifest, keys, tmp_path, **kw):
    """The per-shard mask equals the in-memory one: bits and provenance (bar the creation time)."""
    memory = mask_from_keys(manifest, keys, **kw)
    written = mask_from_keys(manifest, keys, out=tmp_path / "k.spmask", **kw)
    assert isinstance(written, MaskFile)
    assert np.array_equal(written.to_bool(), memory.keep)
    strip = lambda p: {k: v for k, v in p.items() if k != "created"}  # noqa: E731
    assert strip(written.provenance) == strip(memory.provenance)
    return written


def test_text_keys_keep_and_drop_equal_the_in_memory_path(small_dataset, tmp_path):
    keys = small_dataset.keys()
    path = tmp_path / "k.txt"
    path.write_text("\n".join([keys[3], "  " + keys[0] + " ", "", keys[3], keys[-1]]) + "\n")
    m = _same(small_dataset, path, tmp_path)
    assert set(np.flatnonzero(m.to_bool())) == {0, 3, len(keys) - 1}
    assert (m.provenance["ids"], m.provenance["duplicates"], m.provenance["matched_by"]) == (3, 1, "key")
    d = _same(small_dataset, path, tmp_path, drop=True)
    assert d.kept == small_dataset.num_samples - 3 and d.provenance["method"] == "keys-drop"


def test_random_lists_equal_brute_force(small_dataset, tmp_path):
    keys = small_dataset.keys()
    rng = np.random.default_rng(4)
    for size in (0, 1, 7, len(keys)):
        listed = rng.choice(len(keys), size=size, replace=False)
        chosen = [keys[i] for i in listed] + [keys[i] for i in listed[: size // 3]]  # some repeated
        written = _same(small_dataset, chosen, tmp_path)
        assert set(np.flatnonzero(written.to_bool())) == set(listed.tolist())


def test_missing_ids_error_and_examples_in_list_order(small_dataset, tmp_path):
    path = tmp_path / "k.txt"
    path.write_text("\n".join(["zz-missing", small_dataset.keys()[1], "aa-missing", "zz-missing", "mm-missing"]) + "\n")
    with pytest.raises(MissingKeysError, match=r"3 of 4 ids .* e.g. \['zz-missing', 'aa-missing', 'mm-missing'\]"):
        mask_from_keys(small_dataset, path, out=tmp_path / "k.spmask")
    assert not (tmp_path / "k.spmask").exists()
    assert not list(tmp_path.glob("*.keys"))  # the work directory is removed
    m = _same(small_dataset, path, tmp_path, allow_missing=True)
    assert m.kept == 1 and m.provenance["missing_examples"] == ["zz-missing", "aa-missing", "mm-missing"]


def test_uids_from_members_typed_lists_and_key_then_uid(uid_member, tmp_path):
    np.save(tmp_path / "u.npy", np.array([uid_pair(_uid(i)) for i in (0, 9, 12)], dtype=np.dtype("u8,u8")))
    m = _same(uid_member, tmp_path / "u.npy", tmp_path)
    assert set(np.flatnonzero(m.to_bool())) == {0, 9, 12} and m.provenance["matched_by"] == "uid"
    (tmp_path / "t.txt").write_text(f"k001\n{_uid(3).upper()}\nk013\n{_uid(11)}\n")  # keys, then uids not found as keys
    m = _same(uid_member, tmp_path / "t.txt", tmp_path)
    assert set(np.flatnonzero(m.to_bool())) == {1, 3, 11, 13} and m.provenance["matched_by"] == "key+uid"
    d = _same(uid_member, tmp_path / "t.txt", tmp_path, drop=True)
    assert set(np.flatnonzero(~d.to_bool())) == {1, 3, 11, 13}
    (tmp_path / "o.txt").write_text(f"{_uid(5)}\n")
    assert _same(uid_member, tmp_path / "o.txt", tmp_path).provenance["matched_by"] == "uid"


def test_engine_of_two_processes_writes_the_same_mask(small_dataset, tmp_path):
    keys = small_dataset.keys()
    chosen = keys[::3]
    local = mask_from_keys(small_dataset, chosen, out=tmp_path / "a.spmask")
    with LocalEngine(2) as engine:
        spread = mask_from_keys(small_dataset, chosen, out=tmp_path / "b.spmask", engine=engine)
    assert np.array_equal(local.to_bool(), spread.to_bool()) and spread.provenance["matched"] == len(chosen)


@pytest.mark.parametrize("kind", ["text", "table", "npy-str", "npy-pairs", "npy-field", "parquet"])
def test_chunked_reading_equals_whole_reading(tmp_path, kind):
    ids = [f"key-{i:04d}" for i in range(23)]
    uids = [_uid(i) for i in range(23)]
    path = tmp_path / {"text": "k.txt", "table": "k.txt", "parquet": "k.parquet"}.get(kind, "k.npy")
    if kind == "text":
        path.write_text("\n".join(ids) + "\n\n")
    elif kind == "table":
        path.write_text("score\tkey\n" + "".join(f"{i}\t{k}\n" for i, k in enumerate(ids)))
    elif kind == "npy-str":
        np.save(path, np.array(ids))
    elif kind == "npy-pairs":
        np.save(path, np.array([uid_pair(u) for u in uids], dtype=np.uint64))
    elif kind == "npy-field":
        np.save(path, np.array([(k, 1.0) for k in ids], dtype=[("key", "U16"), ("x", "f4")]))
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"key": ids}), path, row_group_size=5)
    whole = read_key_list(path)
    chunks = list(iter_key_list(path, chunk=4))
    assert [i for c in chunks for i in c.ids] == whole.ids == (uids if kind == "npy-pairs" else ids)
    assert {(c.kind, c.column) for c in chunks} == {(whole.kind, whole.column)}
    assert max(len(c.ids) for c in chunks) <= 4


def test_key_table_rows_duplicates_and_lookup_equal_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"id{v}" for v in rng.integers(0, 300, size=500)]
    table = build_key_table((ids[i : i + 37] for i in range(0, len(ids), 37)), str(tmp_path / "t"), buckets=8)
    first = {}
    for row, i in enumerate(ids):
        first.setdefault(i, row)
    assert (table.ids, table.listed, table.duplicates) == (len(first), 500, 500 - len(first))
    probe = [f"id{v}" for v in range(-20, 320)]
    at = table.lookup(*id_digests(probe))
    rows = table.column("row")
    assert [int(rows[a]) if a >= 0 else None for a in at] == [first.get(p) for p in probe]
    assert KeyTable.open(table.path) == table


def test_key_table_lookup_walks_equal_high_halves(tmp_path):
    """Digests whose high halves are equal (rare at 64 bits) are told apart by the low half."""
    path = tmp_path / "t"
    path.mkdir()
    hi = np.array([5, 5, 5, 9], dtype="<u8")
    lo = np.array([1, 4, 8, 2], dtype="<u8")
    for name, col in (("hi", hi), ("lo", lo), ("row", np.arange(4, dtype="<u8"))):
        col.tofile(path / f"{name}.u8")
    (path / "matched.u1").write_bytes(bytes(4))
    (path / "table.json").write_text(json.dumps({"ids": 4, "listed": 4}))
    table = KeyTable.open(str(path))
    got = table.lookup(np.array([5, 5, 5, 9, 9, 7], dtype=np.uint64), np.array([8, 4, 3, 2, 1, 1], dtype=np.uint64))
    assert got.tolist() == [2, 1, -1, 3, -1, -1]


def test_cli_mask_keys_writes_shard_by_shard(small_dataset, tmp_path):
    keys = small_dataset.keys()
    (tmp_path / "k.txt").write_text("\n".join(keys[:5]) + "\n")
    out = tmp_path / "m.spmask"
    res = CliRunner().invoke(cli, ["mask", "keys", small_dataset.path, str(tmp_path / "k.txt"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "5 of 5 listed ids found (by key)" in res.output and f"kept 5 of {len(keys)}" in res.output
    assert set(np.flatnonzero(MaskFile(out).to_bool())) == set(range(5))
    res = CliRunner().invoke(cli, ["mask", "keys", small_dataset.path, str(tmp_path / "k.txt"), "--out", str(out), "--ray-address", "x"])
    assert res.exit_code == 2 and "--ray-address needs --engine ray" in res.output


def test_an_output_that_cannot_be_written_is_a_storage_error(small_dataset, tmp_path):
    from streamprune.errors import StorageError

    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="cannot write it"):
        mask_from_keys(small_dataset, small_dataset.keys()[:2], out=tmp_path / "file" / "m.spmask")


def test_one_uid_listed_in_two_cases_is_found_twice(uid_member, tmp_path):
    (tmp_path / "t.txt").write_text(f"{_uid(2).upper()}\n{_uid(2)}\nk005\n")
    m = _same(uid_member, tmp_path / "t.txt", tmp_path)
    assert set(np.flatnonzero(m.to_bool())) == {2, 5}
    assert (m.provenance["ids"], m.provenance["matched"], m.provenance["missing"]) == (3, 3, 0)


def test_arrow_ipc_and_a_parquet_directory_read_in_chunks(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    ids = [f"key-{i:03d}" for i in range(30)]
    feather.write_feather(pa.table({"key": ids, "x": list(range(30))}), tmp_path / "k.feather", chunksize=7)
    assert [i for c in iter_key_list(tmp_path / "k.feather", chunk=4) for i in c.ids] == ids
    (tmp_path / "d.parquet").mkdir()  # a directory of parts, as Spark writes one
    pq.write_table(pa.table({"key": ids[:12]}), tmp_path / "d.parquet" / "part-0.parquet")
    pq.write_table(pa.table({"key": ids[12:]}), tmp_path / "d.parquet" / "part-1.parquet")
    assert sorted(read_key_list(tmp_path / "d.parquet").ids) == ids


def test_text_lines_split_as_str_splitlines(tmp_path):
    (tmp_path / "k.txt").write_text("a\u2028b\r\nc\x0bd\n\n e \n", encoding="utf-8")
    assert read_key_list(tmp_path / "k.txt").ids == "a\u2028b\r\nc\x0bd\n\n e \n".split() == ["a", "b", "c", "d", "e"]


def test_key_table_lookup_across_fence_blocks_and_batches(tmp_path):
    """More ids than one fence block and more probes than one batch: the same as a dict."""
    ids = [f"id{i}" for i in range(0, 20_000, 3)]
    table = build_key_table([ids], str(tmp_path / "t"))
    assert len(table.fence()) > 10
    probe = [f"id{i}" for i in range(20_100)]
    at = table.lookup(*id_digests(probe))
    rows = table.column("row")
    where = {k: r for r, k in enumerate(ids)}
    assert [int(rows[a]) if a >= 0 else None for a in at] == [where.get(p) for p in probe]
