"""MDS and LitData datasets indexed in place and read pruned, checked against the peers' own readers.

The datasets are written by the real writers (``streaming.MDSWriter``, ``litdata.optimize``)
and read back by the peers' own ``StreamingDataset``s: an unpruned streamprune epoch must
equal theirs sample for sample.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os

import numpy as np
import pytest
import torch
from PIL import Image
from remote_servers import NGINX, Nginx

from streamprune import Manifest, PrunedMapDataset, PrunedSource
from streamprune.errors import CompressedShardError, IndexMismatchError, LabelError
from streamprune.indexing import index_files, index_foreign
from streamprune.masks import random_mask

# the peers are found, not imported, at collection (importing them takes seconds, which every pytest
# worker would pay); the tests that write or read with them import them where they do
pytestmark = [pytest.mark.integration, pytest.mark.skipif(importlib.util.find_spec("streaming") is None or importlib.util.find_spec("litdata") is None,
                                reason="the peers mosaicml-streaming and litdata are not installed")]

N = 60


def _image(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8))


def _row(i: int) -> dict:
    """Sample ``i``: raw bytes of varying size (a few KB, so that pruned bytes are most of a shard), an int, a string, an image."""
    return {"data": bytes([i % 251]) * (1000 + 37 * i), "cls": i % 4, "text": f"sample {i}", "image": _image(i)}


def _litdata_row(i: int) -> dict:
    row = _row(i)
    row["label"] = row.pop("cls")
    return row


@pytest.fixture(scope="module")
def mds_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("mds") / "data")
    import streaming  # deferred: see pytestmark

    columns = {"data": "bytes", "cls": "int", "text": "str", "image": "png"}
    with streaming.MDSWriter(out=out, columns=columns, size_limit=20_000, hashes=["sha1", "xxh64"]) as writer:
        for i in range(N):
            writer.write(_row(i))
    return out


@pytest.fixture(scope="module")
def lit_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("lit") / "data")
    # litdata.optimize forces the process-wide start method to "spawn"; put it back, or every later
    # test's DataLoader workers would need picklable arguments
    import litdata  # deferred: see pytestmark

    method = multiprocessing.get_start_method(allow_none=True)
    try:
        litdata.optimize(fn=_litdata_row, inputs=list(range(N)), output_dir=out, chunk_bytes=20_000, num_workers=1)
    finally:
        multiprocessing.set_start_method(method, force=True)
    return out


@pytest.fixture(scope="module")
def indexed(mds_dir, lit_dir, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sp")
    out = {}
    for name, src in (("mds", mds_dir), ("litdata", lit_dir)):
        index_files([src], str(root / name), progress=False)
        out[name] = str(root / name)
    return out


def _peer_samples(fmt: str, src: str) -> list[dict]:
    import litdata  # deferred: see pytestmark
    import streaming

    if fmt == "mds":
        ds = streaming.StreamingDataset(local=src, shuffle=False, batch_size=1)
    else:
        ds = litdata.StreamingDataset(input_dir=src)
    return [ds[i] for i in range(len(ds))]


def _same(a, b) -> bool:
    if isinstance(a, Image.Image) or isinstance(b, Image.Image):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(b, memoryview):  # LitData's own reader hands raw bytes out as views of its mapped chunk
        return type(a) is bytes and a == bytes(b)
    return type(a) is type(b) and a == b


def _fields(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if not k.startswith("__")}


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["mds", "litdata"])
def test_manifest_records_format_keys_labels(fmt, indexed):
    m = Manifest.load(indexed[fmt])
    assert m.num_samples == N and len(m.shards) > 2
    assert {e.format for e in m.shards} == {fmt}
    assert m.keys() == [str(i) for i in range(N)]  # keys: global positions
    assert m.labels().tolist() == [i % 4 for i in range(N)]
    assert m.label_ext == ("cls" if fmt == "mds" else "label")


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["mds", "litdata"])
def test_unpruned_read_equals_peer_reader(fmt, indexed, mds_dir, lit_dir):
    src = mds_dir if fmt == "mds" else lit_dir
    peer = _peer_samples(fmt, src)
    ours = list(PrunedSource(indexed[fmt]))
    assert [s["__key__"] for s in ours] == [str(i) for i in range(N)]
    assert len(ours) == len(peer)
    for i, (a, b) in enumerate(zip(ours, peer)):
        fa = _fields(a)
        assert set(fa) == set(b), i
        for name in b:
            assert _same(fa[name], b[name]), (i, name)
    # the map-style reader returns the same samples
    mapped = PrunedMapDataset(indexed[fmt])
    for i in (0, 7, N - 1):
        assert all(_same(_fields(mapped[i])[k], peer[i][k]) for k in peer[i])


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["mds", "litdata"])
def test_pruned_read_is_exactly_the_kept_positions_and_reads_little(fmt, indexed, monkeypatch):
    m = Manifest.load(indexed[fmt])
    mask = random_mask(m, 0.8, level="sample", seed=1)
    kept = np.flatnonzero(np.concatenate([mask.shard(k) for k in range(len(m.shards))]))
    read = [0]
    real = os.pread

    def counting(fd, n, offset):
        data = real(fd, n, offset)
        read[0] += len(data)
        return data

    monkeypatch.setattr(os, "pread", counting)
    samples = list(PrunedSource(indexed[fmt], mask))
    monkeypatch.undo()
    assert [s["__key__"] for s in samples] == [str(int(p)) for p in kept]
    label = "cls" if fmt == "mds" else "label"
    assert [s[label] for s in samples] == [int(p) % 4 for p in kept]
    total = sum(e.bytes for e in m.shards)
    assert 0 < read[0] <= 0.25 * total, (read[0], total)


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["mds", "litdata"])
def test_ranks_split_the_kept_samples(fmt, indexed):
    m = Manifest.load(indexed[fmt])
    mask = random_mask(m, 0.5, level="sample", seed=2)
    parts = [[s["__key__"] for s in PrunedSource(indexed[fmt], mask, rank=r, world_size=2, uneven="drop")] for r in range(2)]
    assert not set(parts[0]) & set(parts[1])
    whole = {s["__key__"] for s in PrunedSource(indexed[fmt], mask)}
    assert set(parts[0]) | set(parts[1]) <= whole and len(parts[0]) == len(parts[1]) >= len(whole) // 2


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["mds", "litdata"])
def test_resume_mid_epoch(fmt, indexed):
    mask = random_mask(Manifest.load(indexed[fmt]), 0.3, level="sample", seed=3)
    source = PrunedSource(indexed[fmt], mask, shuffle=True, seed=5)
    it = iter(source)
    first = [next(it)["__key__"] for _ in range(10)]
    state = source.state_dict()
    rest = [s["__key__"] for s in it]
    resumed = PrunedSource(indexed[fmt], mask, shuffle=True, seed=5)
    resumed.load_state_dict(state)
    assert [s["__key__"] for s in resumed] == rest
    assert len(set(first + rest)) == len(first) + len(rest)


@pytest.mark.integration
def test_no_labels_and_named_label_field(mds_dir, tmp_path):
    m = index_foreign(mds_dir, str(tmp_path / "a"), label_field=None, progress=False)
    assert m.label_ext is None and (m.labels() == -1).all()
    with pytest.raises(LabelError, match="'text'"):
        index_foreign(mds_dir, str(tmp_path / "b"), label_field="text", progress=False)
    with pytest.raises(LabelError, match="no field 'nope'"):
        index_foreign(mds_dir, str(tmp_path / "c"), label_field="nope", progress=False)


def test_compressed_mds_is_refused_naming_the_shard(tmp_path):
    import streaming  # deferred: see pytestmark

    out = str(tmp_path / "z")
    with streaming.MDSWriter(out=out, columns={"data": "bytes"}, compression="zstd") as writer:
        writer.write({"data": b"x" * 100})
    with pytest.raises(CompressedShardError, match=r"shard\.00000\.mds.*zstd.*compression=None"):
        index_foreign(out, str(tmp_path / "sp"), progress=False)


def test_compressed_litdata_is_refused_naming_the_chunk(tmp_path):
    # deferred: litdata's writer, only this test writes a compressed chunk directly
    from litdata.streaming.writer import BinaryWriter

    out = str(tmp_path / "z")
    os.makedirs(out)
    writer = BinaryWriter(out, chunk_bytes=10_000, compression="zstd")
    for i in range(5):
        writer[i] = {"data": b"x" * 100, "label": i}
    writer.done()
    writer.merge(1)
    with pytest.raises(CompressedShardError, match=r"chunk-0-0\.bin.*Arrow.*compression=None"):
        index_foreign(out, str(tmp_path / "sp"), progress=False)


@pytest.mark.integration
def test_recorded_hash_mismatch_names_the_shard(mds_dir, tmp_path):
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(mds_dir, copy)
    shard = os.path.join(copy, "shard.00001.mds")
    data = bytearray(open(shard, "rb").read())
    data[-5] ^= 0xFF  # inside the last sample's data: the offset table still holds
    open(shard, "wb").write(bytes(data))
    with pytest.raises(IndexMismatchError, match=r"shard\.00001\.mds: sha1 digest"):
        index_foreign(copy, str(tmp_path / "sp"), progress=False)
    # the recorded count is checked against the shard's own table
    obj = json.load(open(os.path.join(mds_dir, "index.json")))
    obj["shards"][0]["samples"] += 1
    os.makedirs(tmp_path / "bad")
    for name in os.listdir(mds_dir):
        if name != "index.json":
            shutil.copy(os.path.join(mds_dir, name), tmp_path / "bad" / name)
    json.dump(obj, open(tmp_path / "bad" / "index.json", "w"))
    with pytest.raises(IndexMismatchError, match="shard.00000.mds"):
        index_foreign(str(tmp_path / "bad" / "index.json"), str(tmp_path / "sp2"), progress=False, checksum=False)


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["mds", "litdata"])
def test_remote_reads_equal_local(fmt, indexed, mds_dir, lit_dir, tmp_path):
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed")
    src = mds_dir if fmt == "mds" else lit_dir
    server = Nginx(src, str(tmp_path / "ng"))
    try:
        remote = index_foreign(server.url + "/index.json", str(tmp_path / "sp"), progress=False)
        assert all(e.name.startswith("http") for e in remote.shards)
        mask = random_mask(remote, 0.6, level="sample", seed=4)
        got = list(PrunedSource(str(tmp_path / "sp"), mask))  # remote: verified against the sample checksums
        # the kept-bytes cache: a second epoch served from local disk gives the same samples
        cached = PrunedSource(str(tmp_path / "sp"), mask, cache_dir=str(tmp_path / "cache"))
        first, second = list(cached), list(cached)
        assert cached.read_stats.cached_samples == len(second) > 0
        assert [s["__key__"] for s in first] == [s["__key__"] for s in second] == [s["__key__"] for s in got]
        local_mask = random_mask(Manifest.load(indexed[fmt]), 0.6, level="sample", seed=4)
        want = list(PrunedSource(indexed[fmt], local_mask))
        assert [s["__key__"] for s in got] == [s["__key__"] for s in want]
        for a, b in zip(got, want):
            fa, fb = _fields(a), _fields(b)
            assert set(fa) == set(fb) and all(_same(fa[k], fb[k]) for k in fb)
    finally:
        server.stop()


@pytest.mark.integration
def test_cli_index_of_a_dataset_directory_and_its_index_json(mds_dir, lit_dir, tmp_path):
    # deferred: the CLI module is only needed here
    from click.testing import CliRunner

    from streamprune_cli.main import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["index", mds_dir, "--out", str(tmp_path / "a"), "-q"])
    assert result.exit_code == 0, result.output
    assert f"{N} samples" in result.output and "mds shards" in result.output
    assert Manifest.load(str(tmp_path / "a")).label_ext == "cls"
    result = runner.invoke(cli, ["index", os.path.join(lit_dir, "index.json"), "--out", str(tmp_path / "b"), "--no-labels", "-q"])
    assert result.exit_code == 0, result.output
    assert Manifest.load(str(tmp_path / "b")).label_ext is None
    # the keys are positions: a key list of positions is a mask
    (tmp_path / "keep.txt").write_text("3\n17\n42\n")
    result = runner.invoke(cli, ["mask", str(tmp_path / "b"), "--keys", str(tmp_path / "keep.txt"), "--out", str(tmp_path / "k.spmask")])
    assert result.exit_code == 0, result.output
    assert [s["__key__"] for s in PrunedSource(str(tmp_path / "b"), str(tmp_path / "k.spmask"))] == ["3", "17", "42"]


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["mds", "litdata"])
def test_scoring_inference_reads_image_and_label_fields(fmt, indexed):
    # deferred: the inference module loads the model stack, only this test needs it
    from streamprune.infer import eval_batches

    m = Manifest.load(indexed[fmt])
    mask = random_mask(m, 0.5, level="sample", seed=6)
    batches = eval_batches(indexed[fmt], mask, transform=lambda img: torch.from_numpy(np.asarray(img).copy()), batch_size=7)
    positions, images, labels = [], [], []
    for pos, x, y in batches:
        positions += pos.tolist()
        images.append(x)
        labels += y.tolist()
    kept = np.flatnonzero(np.concatenate([mask.shard(k) for k in range(len(m.shards))])).tolist()
    assert positions == kept
    assert labels == [p % 4 for p in kept]
    first = torch.cat(images)[0].numpy()
    assert np.array_equal(first, np.asarray(_image(kept[0])))


@pytest.mark.integration
def test_pruned_tarfile_stage_decodes_foreign_shards(indexed):
    # deferred: the stage is only used here
    from streamprune.readers.webdataset import pruned_tarfile_samples

    m = Manifest.load(indexed["mds"])
    mask = random_mask(m, 0.5, level="sample", seed=7)
    stage = pruned_tarfile_samples(indexed["mds"], mask)
    got = list(stage(m.shard_path(k) for k in reversed(range(len(m.shards)))))  # shards in the caller's order
    want = {s["__key__"]: s for s in PrunedSource(indexed["mds"], mask)}
    assert sorted(s["__key__"] for s in got) == sorted(want)
    for s in got:
        assert s["text"] == want[s["__key__"]]["text"] == f"sample {s['__key__']}"


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["mds", "litdata"])
def test_dataloader_workers_decode_in_their_processes(fmt, indexed):
    source = PrunedSource(indexed[fmt], shuffle=True, seed=1)
    loader = torch.utils.data.DataLoader(source, batch_size=None, num_workers=2)
    got = list(loader)
    assert sorted(int(s["__key__"]) for s in got) == list(range(N))
    label = "cls" if fmt == "mds" else "label"
    assert all(s[label] == int(s["__key__"]) % 4 for s in got)
