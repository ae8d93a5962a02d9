"""Keys from a column of an MDS dataset (``index --key-field uid``): a DataComp uid list as a mask, no resharding."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from click.testing import CliRunner

from streamprune import Manifest, PrunedSource
from streamprune.errors import ArgumentError, DuplicateKeyError
from streamprune.indexing import index_files, index_foreign
from streamprune.masks import open_mask
from streamprune_cli.main import cli

# found, not imported, at collection (mosaicml-streaming takes seconds to import, paid by every worker)
pytestmark = [pytest.mark.integration, pytest.mark.skipif(importlib.util.find_spec("streaming") is None, reason="mosaicml-streaming is not installed")]

N = 40


def _uids(n: int, seed: int = 0) -> np.ndarray:
    """DataComp's uid files: two uint64 columns, ``hi`` then ``lo`` (``np.dtype("u8,u8")``)."""
    raw = np.random.default_rng(seed).integers(0, 2**63, size=(n, 2), dtype=np.int64).astype(np.uint64)
    out = np.empty(n, dtype=np.dtype("u8,u8"))
    out["f0"], out["f1"] = raw[:, 0], raw[:, 1]
    return out


def _hex(pairs: np.ndarray) -> list[str]:
    return [f"{int(hi):016x}{int(lo):016x}" for hi, lo in zip(pairs["f0"], pairs["f1"])]


def _write(out: str, uids: list[str]) -> None:
    columns = {"uid": "str", "data": "bytes", "cls": "int"}
    import streaming  # deferred: see pytestmark

    with streaming.MDSWriter(out=out, columns=columns, size_limit=4_000) as writer:
        for i, uid in enumerate(uids):
            writer.write({"uid": uid, "data": bytes([i]) * (300 + 11 * i), "cls": i % 3})


@pytest.fixture
def pool(tmp_path):
    pairs = _uids(N)
    _write(str(tmp_path / "mds"), _hex(pairs))
    return tmp_path, pairs


def test_datacomp_uid_npy_keeps_exactly_those_uids_through_the_cli(pool):
    tmp_path, pairs = pool
    kept = pairs[np.random.default_rng(1).permutation(N)[:13]]
    np.save(tmp_path / "subset.npy", kept)  # as a DataComp baseline writes it
    runner = CliRunner()
    r = runner.invoke(cli, ["index", str(tmp_path / "mds"), "--out", str(tmp_path / "sp"), "--key-field", "uid", "-q"])
    assert r.exit_code == 0, r.output
    manifest = Manifest.load(str(tmp_path / "sp"))
    assert len(manifest.shards) > 2 and list(manifest.keys()) == _hex(pairs)  # the column, in the dataset's order
    r = runner.invoke(cli, ["mask", "keys", str(tmp_path / "sp"), str(tmp_path / "subset.npy"), "--out", str(tmp_path / "m.spmask")])
    assert r.exit_code == 0, r.output
    mask = open_mask(str(tmp_path / "m.spmask"), manifest)
    assert mask.provenance["matched"] == 13 and mask.provenance["missing"] == 0
    got = list(PrunedSource(str(tmp_path / "sp"), mask))
    want = set(_hex(kept))
    assert sorted(s["uid"] for s in got) == sorted(want)  # each kept uid once, no other
    assert all(s["__key__"] == s["uid"] for s in got)
    positions = {u: i for i, u in enumerate(_hex(pairs))}
    assert all(s["data"] == bytes([positions[s["uid"]]]) * (300 + 11 * positions[s["uid"]]) for s in got)


def test_default_keys_stay_global_positions(pool):
    tmp_path, pairs = pool
    manifest = index_files([str(tmp_path / "mds")], str(tmp_path / "sp"), progress=False)
    assert list(manifest.keys()) == [str(i) for i in range(N)]


def test_key_field_errors_name_the_field_or_the_duplicate(pool, tmp_path_factory):
    tmp_path, pairs = pool
    with pytest.raises(ArgumentError, match="no field 'id'.*fields: cls, data, uid"):
        index_foreign(str(tmp_path / "mds"), str(tmp_path / "sp1"), key_field="id", progress=False)
    blank = _hex(pairs)
    blank[5] = ""
    other = tmp_path_factory.mktemp("blank")
    _write(str(other / "mds"), blank)
    with pytest.raises(ArgumentError, match="sample 5 .*field 'uid' holds '', not a key"):
        index_foreign(str(other / "mds"), str(other / "sp"), key_field="uid", progress=False)
    twice = _hex(pairs)
    twice[7] = twice[3]
    other = tmp_path_factory.mktemp("dup")
    _write(str(other / "mds"), twice)
    with pytest.raises(DuplicateKeyError, match=twice[3]):
        index_foreign(str(other / "mds"), str(other / "sp"), key_field="uid", progress=False)
    with pytest.raises(ArgumentError, match="for MDS and LitData"):
        index_files([str(tmp_path / "mds" / "shard.00000.mds")], str(tmp_path / "sp3"), key_field="uid", progress=False)
