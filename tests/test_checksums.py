"""Per-sample checksums: recorded by the tar writer and by indexing (the same values), checked on
read with ``verify=True`` (a flipped byte is an error naming shard, key and byte range, never a
silently returned sample), and absent from old indexes without breaking them."""

from __future__ import annotations

import json
import os
import pickle
import tarfile

import numpy as np
import pytest

from streamprune import Manifest, PrunedSource, PrunedWebDataset, mask_from_bool, pruned_tarfile_samples
from streamprune.errors import ChecksumError, ManifestError
from streamprune.indexfile import companion_path, load_index, save_index
from streamprune.indexing import index_shards
from streamprune.readers import PrunedMapDataset
from streamprune.readers.byterange import ShardFile, default_verify, read_runs
from streamprune.shardindex import CHECKSUM_ALGORITHMS, DEFAULT_CHECKSUM, sample_checksum
from streamprune.tarindex import index_tar
from streamprune.writers.tar import TarShardWriter


def _tarfile_checksums(path: str, algorithm: str = DEFAULT_CHECKSUM) -> list[int]:
    """Reference: each sample's member data in archive order, read with the tarfile module."""
    groups: dict[str, list[bytes]] = {}
    with tarfile.open(path, "r:") as tf:
        for m in tf.getmembers():
            if m.isreg():
                groups.setdefault(m.name.split(".", 1)[0], []).append(tf.extractfile(m).read())
    return [sample_checksum(parts, algorithm) for parts in groups.values()]


def test_default_algorithm_is_the_measured_fastest_and_crc32_stays_readable():
    assert DEFAULT_CHECKSUM == "xxh3_64"
    assert set(CHECKSUM_ALGORITHMS) >= {"xxh3_64", "crc32"}
    # the definition: the concatenation of the members' data, however it is split
    assert sample_checksum([b"ab", b"cd"]) == sample_checksum([b"abcd"]) == sample_checksum([b"a", b"", b"bcd"])
    assert sample_checksum([b"abcd"], "crc32") == 0xED82CD11  # zlib.crc32(b"abcd")


@pytest.mark.parametrize("algorithm", ["xxh3_64", "crc32"])
def test_sharding_and_indexing_record_the_same_checksums(tmp_path, labelled_samples, shard_writer, algorithm):
    m = shard_writer(labelled_samples, tmp_path / "data")
    for k in range(len(m.shards)):
        written = m.index(k)
        assert written.checksum_algorithm == DEFAULT_CHECKSUM and written.checksums.dtype == np.uint64
        path = m.shard_path(k)
        indexed = index_tar(path, label_ext="cls", checksum_algorithm=DEFAULT_CHECKSUM)
        assert np.array_equal(written.checksums, indexed.checksums)
        assert written.checksums.tolist() == _tarfile_checksums(path)
    # another algorithm, through the writer directly: the same as indexing with it
    path = tmp_path / "one.tar"
    with TarShardWriter(path, checksum_algorithm=algorithm) as writer:
        for key, files, label in labelled_samples[:7]:
            writer.write(key, files, label)
        index = writer.close()
    again = index_tar(path, label_ext="cls", checksum_algorithm=algorithm)
    assert index.checksum_algorithm == again.checksum_algorithm == algorithm
    assert index.checksums.tolist() == again.checksums.tolist() == _tarfile_checksums(str(path), algorithm)
    save_index(index, str(path) + ".index.json")
    loaded = load_index(str(path) + ".index.json")
    assert loaded.checksum_algorithm == algorithm and loaded.checksums.tolist() == index.checksums.tolist()


def _flip_a_byte(m: Manifest, k: int, i: int, ext: str = "txt") -> tuple[str, str, int, int]:
    """Flip one byte inside sample ``i``'s ``ext`` member of shard ``k``; sizes and headers stay."""
    index = m.index(k)
    (offset, size) = next((o, s) for e, o, s in index.members[i] if e == ext)
    path = m.shard_path(k)
    with open(path, "r+b") as fh:
        fh.seek(offset + size // 2)
        byte = fh.read(1)
        fh.seek(offset + size // 2)
        fh.write(bytes([byte[0] ^ 0x20]))
    return path, index.keys[i], int(index.start[i]), int(index.end[i])


def _only(m: Manifest, k: int, i: int):
    keep = np.zeros(m.num_samples, dtype=bool)
    keep[int(m.shard_offsets[k]) + i] = True
    return mask_from_bool(m, keep)


@pytest.mark.parametrize("which", ["all", "alone"])  # a coalesced run, and a lone sample read member by member
def test_a_flipped_byte_is_detected_with_verify_and_returned_unchanged_without(small_dataset, which):
    m = small_dataset
    before = {s["__key__"]: s for s in PrunedSource(m)}
    path, key, start, end = _flip_a_byte(m, 1, 4)
    mask = None if which == "all" else _only(m, 1, 4)
    pattern = rf"{path}: sample '{key}' \(#4, bytes {start}-{end}\) fails its xxh3_64 checksum"
    with pytest.raises(ChecksumError, match=pattern) as info:
        list(PrunedSource(m, mask, verify=True))
    assert (info.value.shard, info.value.key, info.value.start, info.value.end) == (path, key, start, end)
    with pytest.raises(ChecksumError, match=pattern):
        list(PrunedWebDataset(m, mask, verify=True))
    with pytest.raises(ChecksumError, match=pattern):
        list(pruned_tarfile_samples(m, mask, verify=True)([path]))
    ds = PrunedMapDataset(m, mask, verify=True)
    with pytest.raises(ChecksumError, match=pattern):
        [ds[j] for j in range(len(ds))]
    # unverified (the default for local shards): read as before, the damaged byte included
    assert default_verify(path) is False
    for got in (list(PrunedSource(m, mask)), list(PrunedSource(m, mask, verify=False))):
        assert len(got) == (m.num_samples if which == "all" else 1)
        for s in got:
            if s["__key__"] == key:
                assert s["txt"] != before[key]["txt"] and len(s["txt"]) == len(before[key]["txt"])
                assert s["bin"] == before[key]["bin"]
            else:
                assert s == before[s["__key__"]]


def test_verified_reads_of_an_intact_dataset_equal_unverified_reads(small_dataset):
    m = small_dataset
    assert list(PrunedSource(m, verify=True)) == list(PrunedSource(m))
    ds, plain = PrunedMapDataset(m, verify=True), PrunedMapDataset(m)
    assert [ds[i] for i in range(len(ds))] == [plain[i] for i in range(len(plain))]


def test_checksum_error_survives_pickling():
    err = pickle.loads(pickle.dumps(ChecksumError("msg", shard="a.tar", key="k", start=512, end=2048)))
    assert (str(err), err.shard, err.key, err.start, err.end) == ("msg", "a.tar", "k", 512, 2048)


def test_an_index_without_checksums_loads_and_reads_but_cannot_verify(tmp_path, small_dataset):
    m = small_dataset
    shards = [m.shard_path(k) for k in range(len(m.shards))]
    old = index_shards(shards, tmp_path / "old", progress=False, sample_checksums=False)
    index_json = json.load(open(old.resolve(old.shards[0].index)))
    assert "checksums" not in index_json and "checksum" not in index_json  # what indexes before checksums look like
    assert old.index(0).checksums is None and old.index(0).checksum_algorithm == ""
    # its JSON alone (the companion moved away) loads the same
    c = companion_path(old.resolve(old.shards[0].index))
    os.rename(c, c + ".off")
    assert load_index(old.resolve(old.shards[0].index)).checksums is None
    def strip(samples):
        return [{k: v for k, v in s.items() if k != "__url__"} for s in samples]

    assert strip(PrunedSource(old)) == strip(PrunedSource(m))
    assert list(PrunedSource(old, verify=None)) == list(PrunedSource(old, verify=False)) == list(PrunedSource(old))
    with pytest.raises(ManifestError, match="verify=True, but the shard's index has no per-sample checksums"):
        list(PrunedSource(old, verify=True))
    with pytest.raises(ManifestError, match="no per-sample checksums"):
        PrunedMapDataset(old, verify=True)[0]


def test_an_unknown_checksum_algorithm_cannot_verify_but_reads(small_dataset):
    m = small_dataset
    index = m.index(0)
    index.checksum_algorithm = "sha3-whatever"
    with pytest.raises(ManifestError, match="cannot verify: checksum algorithm 'sha3-whatever' is not available"):
        ShardFile(m.shard_path(0), index, verify=True)
    with ShardFile(m.shard_path(0), index, verify=False) as shard:
        assert len(list(read_runs(shard, np.arange(len(index)), "u"))) == len(index)
