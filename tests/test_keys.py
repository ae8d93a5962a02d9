"""Key lists in and out: text / .npy / parquet, 128-bit uids, missing keys, export, the CLI."""

import json
import os
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner

from streamprune.errors import IndexMismatchError
from streamprune.keys import (
    MissingKeysError,
    export_keys,
    manifest_uids,
    mask_from_keys,
    read_key_list,
    read_member_data,
    uid_hex,
    uid_pair,
)
from streamprune.masks import MaskFile, random_mask
from streamprune.scores import ScoreFile
from streamprune_cli.main import cli
from tests.builders import uid_for

_uid = uid_for


@pytest.fixture
def uid_keyed(tmp_path, shard_writer):
    """12 samples keyed by their uid hex (DataComp's resharded layout)."""
    samples = [(_uid(i), {"bin": bytes([i]) * 10}, i % 4) for i in range(12)]
    return shard_writer(samples, tmp_path / "dc", samples_per_shard=5)


@pytest.fixture
def uid_member(tmp_path, shard_writer):
    """12 samples with plain keys and a ``uid`` member (8 of them) or a ``json`` member with a uid (4)."""
    samples = []
    for i in range(12):
        members = {"bin": bytes([i]) * 10}
        if i < 8:
            members["uid"] = _uid(i).upper().encode()
        else:
            members["json"] = json.dumps({"uid": _uid(i)}).encode()
        samples.append((f"k{i:03d}", members, i % 4))
    return shard_writer(samples, tmp_path / "um", samples_per_shard=5, shuffle=False)


def _tar_members(manifest):
    """Every sample's members ``[(ext, bytes), ...]`` by global position, read with tarfile (the reference)."""
    out = []
    for k in range(len(manifest.shards)):
        by_key: dict = {}
        with tarfile.open(manifest.shard_path(k)) as tar:
            for info in tar:
                key, ext = info.name.split(".", 1)
                by_key.setdefault(key, []).append((ext, tar.extractfile(info).read()))
        out.extend(by_key[key] for key in manifest.index(k).keys)
    return out


def test_read_member_data_equals_tarfile(uid_member):
    reference = _tar_members(uid_member)
    wanted = [11, 0, 3, 4, 5, 9, 3]  # any order, repeats: yielded once each, ascending
    got = list(read_member_data(uid_member, wanted))
    assert [pos for pos, _ in got] == sorted(set(wanted))
    assert all(parts == reference[pos] for pos, parts in got)
    some = dict(read_member_data(uid_member, range(12), ("uid", "json")))
    assert some == {pos: [(e, d) for e, d in reference[pos] if e in ("uid", "json")] for pos in range(12)}


def test_read_member_data_checks_headers_like_the_readers(uid_member):
    path = uid_member.shard_path(0)
    index = uid_member.index(0)
    start = int(index.start[2])
    with open(path, "r+b") as fh:  # rename sample 2's first member in its header (same size, new name)
        fh.seek(start)
        fh.write(b"x")
    with pytest.raises(IndexMismatchError, match="does not match the index"):
        list(read_member_data(uid_member, [2]))
    os.truncate(path, index.shard_bytes - 512)
    with pytest.raises(IndexMismatchError, match="bytes but its index describes"):
        list(read_member_data(uid_member, [0]))


def test_uid_hex_round_trip():
    u = uid_hex(1, 2**64 - 1)
    assert u == "0000000000000001ffffffffffffffff" and uid_pair(u) == (1, 2**64 - 1)
    with pytest.raises(ValueError):
        uid_pair("xyz")


def test_text_keys_keep_and_drop(small_dataset, tmp_path):
    keys = small_dataset.keys()
    path = tmp_path / "k.txt"
    path.write_text("\n".join([keys[3], "  " + keys[0] + " ", "", keys[3]]) + "\n")
    m = mask_from_keys(small_dataset, path)
    assert set(np.flatnonzero(m.keep)) == {0, 3}
    p = m.provenance
    assert (p["method"], p["ids"], p["duplicates"], p["missing"], p["matched_by"]) == ("keys", 2, 1, 0, "key")
    d = mask_from_keys(small_dataset, path, drop=True)
    assert d.kept == small_dataset.num_samples - 2 and d.provenance["method"] == "keys-drop"


def test_missing_keys_are_an_error_unless_allowed(small_dataset, tmp_path):
    path = tmp_path / "k.txt"
    path.write_text(small_dataset.keys()[1] + "\nnope\n")
    with pytest.raises(MissingKeysError, match="1 of 2 ids .* e.g. \\['nope'\\]"):
        mask_from_keys(small_dataset, path)
    m = mask_from_keys(small_dataset, path, allow_missing=True)
    assert m.kept == 1 and m.provenance["missing"] == 1 and m.provenance["missing_examples"] == ["nope"]


def test_npy_strings_and_uint64_uid_pairs(uid_keyed, tmp_path):
    keys = uid_keyed.keys()
    np.save(tmp_path / "s.npy", np.array([keys[2], keys[5].upper()]))
    m = mask_from_keys(uid_keyed, tmp_path / "s.npy")  # the upper-case one is found as a uid
    assert set(np.flatnonzero(m.keep)) == {2, 5} and m.provenance["matched_by"] == "key+uid"
    pairs = np.array([uid_pair(keys[i]) for i in (1, 7, 11)], dtype=np.dtype("u8,u8"))  # DataComp subset layout
    np.save(tmp_path / "u.npy", pairs)
    assert read_key_list(tmp_path / "u.npy").kind == "uid"
    m = mask_from_keys(uid_keyed, tmp_path / "u.npy")
    assert set(np.flatnonzero(m.keep)) == {1, 7, 11} and m.provenance["matched_by"] == "uid"
    np.save(tmp_path / "u2.npy", np.array([uid_pair(keys[4])], dtype=np.uint64))  # [N, 2] uint64
    assert set(np.flatnonzero(mask_from_keys(uid_keyed, tmp_path / "u2.npy").keep)) == {4}


def test_uids_from_uid_and_json_members(uid_member, tmp_path):
    assert manifest_uids(uid_member) == [_uid(i) for i in range(12)]
    assert manifest_uids(uid_member, [9, 2]) == [_uid(9), _uid(2)]
    np.save(tmp_path / "u.npy", np.array([uid_pair(_uid(i)) for i in (0, 9)], dtype=np.uint64))
    m = mask_from_keys(uid_member, tmp_path / "u.npy")
    assert set(np.flatnonzero(m.keep)) == {0, 9}
    (tmp_path / "t.txt").write_text(_uid(3) + "\n")  # a text list of uids: not keys, so looked up as uids
    assert set(np.flatnonzero(mask_from_keys(uid_member, tmp_path / "t.txt").keep)) == {3}


def test_parquet_key_column_and_uids(uid_member, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["k001", "k004"], "x": [1, 2]}), tmp_path / "k.parquet")
    with pytest.raises(Exception, match="no key column"):
        mask_from_keys(uid_member, tmp_path / "k.parquet")
    m = mask_from_keys(uid_member, tmp_path / "k.parquet", key_column="id")
    assert set(np.flatnonzero(m.keep)) == {1, 4} and m.provenance["key_column"] == "id"
    raw = pa.array([bytes.fromhex(_uid(10))], type=pa.binary(16))
    pq.write_table(pa.table({"uid": raw}), tmp_path / "u.parquet")
    assert set(np.flatnonzero(mask_from_keys(uid_member, tmp_path / "u.parquet").keep)) == {10}


def _scores(manifest):
    s = np.linspace(0, 1, manifest.num_samples)
    return ScoreFile.ranked("x", "sample", s, higher_is="keep", score_name="x", manifest_fingerprint=manifest.fingerprint)


@pytest.mark.parametrize("ext", [".txt", ".npy", ".parquet", ".arrow"])
def test_export_round_trips(uid_member, tmp_path, ext):
    if ext in (".parquet", ".arrow"):
        pytest.importorskip("pyarrow")
    mask = random_mask(uid_member, 0.5, seed=0)
    kept = np.flatnonzero(mask.keep)
    keys = uid_member.keys()
    plain = tmp_path / f"plain{ext}"
    assert export_keys(uid_member, mask, plain)["rows"] == len(kept)
    assert read_key_list(plain).ids == [keys[i] for i in kept]
    full = tmp_path / f"full{ext}"
    out = export_keys(uid_member, mask, full, scores=_scores(uid_member), uids=True)
    assert out["columns"] == ["key", "uid", "score"]
    assert read_key_list(full).ids == [keys[i] for i in kept]
    assert read_key_list(full, key_column="uid").ids == [_uid(i) for i in kept]
    assert np.array_equal(mask_from_keys(uid_member, full).keep, mask.keep)


def test_cli_keys_and_export(small_dataset, tmp_path):
    runner = CliRunner()
    keys = small_dataset.keys()
    (tmp_path / "k.txt").write_text("\n".join(keys[:5] + ["ghost"]))
    out = tmp_path / "m.spmask"
    r = runner.invoke(cli, ["mask", small_dataset.path, "--keys", str(tmp_path / "k.txt"), "--out", str(out)])
    assert r.exit_code != 0 and "--allow-missing" in r.output
    r = runner.invoke(cli, ["mask", small_dataset.path, "--keys", str(tmp_path / "k.txt"), "--allow-missing", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "5 of 6 listed ids found (by key), 1 missing" in r.output and MaskFile(out).kept == 5
    r = runner.invoke(cli, ["mask", small_dataset.path, "--keys-drop", str(tmp_path / "k.txt"), "--allow-missing", "--out", str(out)])
    assert r.exit_code == 0 and MaskFile(out).kept == small_dataset.num_samples - 5
    scores = _scores(small_dataset).save(tmp_path / "scores.json")
    r = runner.invoke(cli, ["inspect", small_dataset.path, "--mask", str(out), "--export", str(tmp_path / "e.txt"), "--scores", scores])
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "e.txt").read_text().splitlines()
    assert lines[0] == "key\tscore" and lines[1].split("\t")[0] == keys[5] and len(lines) == small_dataset.num_samples - 5 + 1
    r = runner.invoke(cli, ["inspect", small_dataset.path, "--uids"])
    assert r.exit_code == 2 and "go with --export" in r.output


def test_parquet_without_pyarrow_is_one_clear_error(small_dataset, tmp_path, monkeypatch):
    from streamprune.optional import MissingExtraError

    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)
    (tmp_path / "k.parquet").write_bytes(b"PAR1")
    with pytest.raises(MissingExtraError, match=r"streamprune\[parquet\]"):
        read_key_list(tmp_path / "k.parquet")
    with pytest.raises(MissingExtraError, match="pyarrow"):
        export_keys(small_dataset, None, tmp_path / "o.parquet")


def test_export_uids_of_samples_without_one_is_an_error_naming_the_first(uid_member, small_dataset, tmp_path):
    from streamprune.keys import MissingUidError

    keys = small_dataset.keys()
    with pytest.raises(MissingUidError, match=rf"sample '{keys[0]}' \(shard shard-000000.tar\) has no uid, and 39 more"):
        export_keys(small_dataset, None, tmp_path / "e.txt", uids=True)
    assert not (tmp_path / "e.txt").exists()  # no file of empty uids
    mask = mask_from_keys(small_dataset, keys[7:9])
    with pytest.raises(MissingUidError, match=rf"sample '{keys[7]}' .* and 1 more"):  # the first *kept* sample
        export_keys(small_dataset, mask, tmp_path / "e.txt", uids=True)
    r = CliRunner().invoke(cli, ["inspect", small_dataset.path, "--export", str(tmp_path / "e.txt"), "--uids"])
    assert r.exit_code == 1 and f"Error: {small_dataset.path}: sample '{keys[0]}'" in r.output and "Traceback" not in r.output
    assert export_keys(uid_member, None, tmp_path / "u.txt", uids=True)["rows"] == 12  # every sample has one: fine


def test_mask_from_keys_takes_a_manifest_path(small_dataset):
    keys = small_dataset.keys()
    for where in (small_dataset.path, small_dataset.root):
        assert set(np.flatnonzero(mask_from_keys(where, [keys[2], keys[9]]).keep)) == {2, 9}
