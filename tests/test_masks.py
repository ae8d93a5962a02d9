"""Keep masks: the file format, lazy per-shard reads, random/key/class masks and index binding."""

from __future__ import annotations

import datetime as dt
import json
import os
import struct

import numpy as np
import pytest

from streamprune import (
    KeepMask,
    MaskFile,
    PrunedWebDataset,
    index_shards,
    mask_from_bool,
    mask_from_classes,
    mask_from_keys,
    random_mask,
)
from streamprune.errors import MaskMismatchError
from streamprune.keys import MissingKeysError, mask_from_key_list
from streamprune.ratios import check_ratio
from streamprune.writers import TarShardWriter


def test_mask_round_trips_through_the_file_with_counts_and_provenance(tmp_path, small_dataset):
    manifest = small_dataset
    mask = random_mask(manifest, 0.3, seed=5)
    path = mask.save(tmp_path / "m.spmask")
    with open(path, "rb") as fh:
        assert fh.read(8) == b"SPMASK01"
    mf = MaskFile(path)
    np.testing.assert_array_equal(mf.to_bool(), mask.keep)
    assert mf.kept == mask.kept == 28
    assert mf.num_samples == 40
    prov = mf.provenance
    assert (prov["method"], prov["ratio"], prov["seed"], prov["level"]) == ("random", 0.3, 5, "sample")
    created = dt.datetime.fromisoformat(prov["created"])
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 3600
    labels = manifest.labels()
    assert mf.header["kept_per_class"] == np.bincount(labels[mask.keep], minlength=4).tolist()
    assert mf.header["total_per_class"] == manifest.class_counts
    assert mf.header["classes"] == manifest.classes
    bounds = manifest.shard_offsets
    assert mf.shard_kept_counts().tolist() == [int(mask.keep[bounds[k] : bounds[k + 1]].sum()) for k in range(4)]
    assert mf.header["kept_bytes"] == int(manifest.sample_bytes()[mask.keep].sum())
    loaded = mf.load(manifest)
    np.testing.assert_array_equal(loaded.keep, mask.keep)


def _corrupt_bitset(path, header, k):
    """Overwrite shard k's bitset so its bit count disagrees with the header."""
    entry = header["shards"][k]
    assert entry["kept"] != entry["samples"]
    with open(path, "rb") as fh:
        fh.seek(8)
        (length,) = struct.unpack("<Q", fh.read(8))
    with open(path, "r+b") as fh:
        fh.seek(16 + length + entry["offset"])
        fh.write(b"\xff" * entry["nbytes"])


def test_mask_file_shard_reads_only_that_shards_bits(tmp_path, small_dataset):
    manifest = small_dataset
    keep = np.zeros(40, dtype=bool)
    keep[[1, 4, 12, 13, 19, 22, 23, 24, 30, 39]] = True
    path = mask_from_bool(manifest, keep).save(tmp_path / "m.spmask")
    mf = MaskFile(path)
    bounds = manifest.shard_offsets
    for k in range(4):
        np.testing.assert_array_equal(mf.shard(k), mf.to_bool()[bounds[k] : bounds[k + 1]])
        np.testing.assert_array_equal(mf.shard(k), keep[bounds[k] : bounds[k + 1]])
    for other in (0, 1, 3):
        _corrupt_bitset(path, mf.header, other)
    fresh = MaskFile(path)
    np.testing.assert_array_equal(fresh.shard(2), keep[20:30])  # untouched by the other shards' garbage
    with pytest.raises(MaskMismatchError, match="shard 0"):
        fresh.shard(0)  # the corruption is real: reading it would be detected


@pytest.mark.parametrize("ratio, kept", [(0.0, 40), (0.25, 30), (0.3, 28), (0.6, 16), (0.99, 0)])
def test_random_sample_mask_removes_round_n_times_ratio(small_dataset, ratio, kept):
    mask = random_mask(small_dataset, ratio, level="sample", seed=1)
    assert mask.kept == kept == 40 - round(40 * ratio)
    again = random_mask(small_dataset, ratio, level="sample", seed=1)
    np.testing.assert_array_equal(mask.keep, again.keep)


@pytest.mark.parametrize("ratio, removed", [(0.0, 0), (0.1, 0), (0.5, 2), (0.6, 2), (0.75, 3)])
def test_random_class_mask_removes_round_c_times_ratio_whole_classes(small_dataset, ratio, removed):
    labels = small_dataset.labels()
    mask = random_mask(small_dataset, ratio, level="class", seed=2)
    kept_classes = sorted(set(labels[mask.keep].tolist()))
    assert len(kept_classes) == 4 - removed
    np.testing.assert_array_equal(mask.keep, np.isin(labels, kept_classes))  # whole classes, nothing partial
    assert mask.provenance["level"] == "class"
    assert mask.provenance["kept_classes"] == kept_classes
    assert mask.provenance["seed"] == 2


def test_random_masks_differ_by_seed(small_dataset):
    a = random_mask(small_dataset, 0.5, seed=1)
    b = random_mask(small_dataset, 0.5, seed=2)
    assert not np.array_equal(a.keep, b.keep)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_ratio_outside_zero_one_raises_value_error(small_dataset, ratio):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        check_ratio(ratio)
    with pytest.raises(ValueError, match="ratio"):
        random_mask(small_dataset, ratio)
    with pytest.raises(ValueError, match="ratio"):
        random_mask(small_dataset, ratio, level="class")


def test_unknown_level_raises_value_error(small_dataset):
    with pytest.raises(ValueError, match="level"):
        random_mask(small_dataset, 0.5, level="shard")


def test_mask_from_keys_keeps_exactly_those_keys(small_dataset):
    keys = small_dataset.keys()
    wanted = {keys[0], keys[17], keys[39]}
    mask = mask_from_keys(small_dataset, wanted)
    assert {k for k, kept in zip(keys, mask.keep) if kept} == wanted
    assert mask.provenance["method"] == "keys"
    with pytest.raises(MissingKeysError, match="not-a-key"):
        mask_from_keys(small_dataset, wanted | {"not-a-key"})
    assert mask_from_keys(small_dataset, wanted | {"not-a-key"}, allow_missing=True).kept == 3
    assert mask_from_key_list is mask_from_keys  # the documented old name


def test_mask_from_classes_by_id_and_by_name(small_dataset):
    labels = small_dataset.labels()
    by_id = mask_from_classes(small_dataset, [1, 3])
    by_name = mask_from_classes(small_dataset, ["bee", "dog"])
    by_digit_string = mask_from_classes(small_dataset, ["1", "3"])
    np.testing.assert_array_equal(by_id.keep, np.isin(labels, [1, 3]))
    np.testing.assert_array_equal(by_name.keep, by_id.keep)
    np.testing.assert_array_equal(by_digit_string.keep, by_id.keep)
    assert by_id.kept == 20
    assert by_id.provenance["ratio"] == 0.5
    with pytest.raises(ValueError, match="'emu'"):
        mask_from_classes(small_dataset, ["emu"])
    with pytest.raises(ValueError, match=r"\[7\]"):
        mask_from_classes(small_dataset, [7])


def test_keep_array_of_wrong_length_is_rejected(small_dataset):
    with pytest.raises(MaskMismatchError, match="40 samples"):
        KeepMask(np.ones(39, dtype=bool), small_dataset)


def _rewrite_shard(path, n, seed):
    """Replace a shard with one holding ``n`` different samples of other sizes."""
    rng = np.random.default_rng(seed)
    with TarShardWriter(path) as writer:
        for i in range(n):
            writer.write(f"new{seed}_{i:03d}", {"bin": rng.bytes(700 + 50 * i)}, i % 4)
        writer.close()


def test_mask_for_a_rewritten_and_reindexed_shard_raises_mismatch(tmp_path, small_dataset):
    manifest = small_dataset
    path = random_mask(manifest, 0.5, seed=0).save(tmp_path / "m.spmask")
    MaskFile(path).check(manifest)  # fine for the dataset it was made for
    root = manifest.root
    shards = [manifest.shard_path(k) for k in range(4)]
    _rewrite_shard(shards[1], n=10, seed=9)  # same sample count, different content
    reindexed = index_shards(shards, root, classes=manifest.classes, progress=False)
    with pytest.raises(MaskMismatchError, match=r"shard 1 \(shard-000001.tar\)"):
        MaskFile(path).check(reindexed)
    with pytest.raises(MaskMismatchError, match="shard 1"):
        MaskFile(path).load(reindexed)
    with pytest.raises(MaskMismatchError):
        PrunedWebDataset(os.path.join(root, "manifest.json"), path)


def test_mask_for_a_manifest_with_other_shard_count_raises_mismatch(tmp_path, small_dataset, labelled_samples, shard_writer):
    path = random_mask(small_dataset, 0.5).save(tmp_path / "m.spmask")
    other = shard_writer(labelled_samples, tmp_path / "other", samples_per_shard=20)
    with pytest.raises(MaskMismatchError, match="2"):
        MaskFile(path).check(other)


def _pack_little(bits: list[int]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def test_hand_written_version_1_mask_file_is_read(tmp_path, small_dataset):
    """Protects the documented on-disk format: magic, <Q header length, JSON header, bitsets."""
    manifest = small_dataset
    per_shard = [[1 if (i + k) % 3 == 0 else 0 for i in range(s.samples)] for k, s in enumerate(manifest.shards)]
    shards, blobs, offset = [], [], 0
    for entry, bits in zip(manifest.shards, per_shard):
        packed = _pack_little(bits)
        shards.append(
            {
                "name": entry.name,
                "samples": entry.samples,
                "kept": sum(bits),
                "kept_bytes": 0,
                "index_sha256": entry.index_sha256,
                "offset": offset,
                "nbytes": len(packed),
            }
        )
        blobs.append(packed + b"\0" * (-len(packed) % 8))
        offset += len(blobs[-1])
    header = {
        "format": "streamprune-mask",
        "version": 1,
        "manifest_fingerprint": manifest.fingerprint,
        "num_samples": manifest.num_samples,
        "kept": sum(map(sum, per_shard)),
        "kept_bytes": 0,
        "total_bytes": 0,
        "provenance": {"method": "by-hand", "ratio": 0.66, "seed": None, "created": "2024-01-02T03:04:05+00:00"},
        "classes": manifest.classes,
        "kept_per_class": [0, 0, 0, 0],
        "total_per_class": manifest.class_counts,
        "shards": shards,
    }
    raw = json.dumps(header).encode("utf-8")
    path = tmp_path / "hand.spmask"
    path.write_bytes(b"SPMASK01" + struct.pack("<Q", len(raw)) + raw + b"".join(blobs))

    mf = MaskFile(path)
    assert mf.kept == header["kept"]
    assert mf.num_samples == 40
    assert mf.provenance["method"] == "by-hand"
    assert mf.provenance["created"] == "2024-01-02T03:04:05+00:00"
    for k, bits in enumerate(per_shard):
        assert mf.shard(k).tolist() == [bool(b) for b in bits]
    mf.check(manifest)
    expected = np.array([b for bits in per_shard for b in bits], dtype=bool)
    np.testing.assert_array_equal(mf.load(manifest).keep, expected)
    # the library writes the same bits in the same layout
    written = mask_from_bool(manifest, expected).save(tmp_path / "lib.spmask")
    with open(written, "rb") as fh:
        assert fh.read(8) == b"SPMASK01"
        (length,) = struct.unpack("<Q", fh.read(8))
        lib_header = json.loads(fh.read(length))
        assert fh.read() == b"".join(blobs)
    assert [(s["offset"], s["nbytes"], s["kept"]) for s in lib_header["shards"]] == [
        (s["offset"], s["nbytes"], s["kept"]) for s in shards
    ]


def test_bad_mask_files_raise_mismatch(tmp_path, small_dataset):
    (tmp_path / "junk.spmask").write_bytes(b"NOTAMASK" + bytes(20))
    with pytest.raises(MaskMismatchError, match="bad magic"):
        MaskFile(tmp_path / "junk.spmask")
    path = random_mask(small_dataset, 0.5).save(tmp_path / "m.spmask")
    with open(path, "ab") as fh:
        fh.write(b"\0" * 8)
    with pytest.raises(MaskMismatchError, match="bytes"):
        MaskFile(path)
    with pytest.raises(MaskMismatchError, match="not found"):
        MaskFile(tmp_path / "missing.spmask")


def _upload_dataset(manifest, url):
    """Copy a local dataset's files (manifest, shards, index files) under ``url`` (fsspec's in-memory store)."""
    from streamprune import storage

    for name in os.listdir(manifest.root):
        storage.put_file(os.path.join(manifest.root, name), f"{url}/{name}")
    return f"{url}/manifest.json"


def test_mask_constructors_take_a_manifest_path_directory_or_url(tmp_path, small_dataset):
    m = small_dataset
    url = _upload_dataset(m, "memory://edges-masks/ds")
    keys = m.keys()
    for where in (m.path, m.root, url):
        assert np.array_equal(random_mask(where, 0.5, seed=3).keep, random_mask(m, 0.5, seed=3).keep)
        assert np.array_equal(random_mask(where, 0.5, level="class", seed=3).keep, random_mask(m, 0.5, level="class", seed=3).keep)
        assert mask_from_bool(where, np.arange(40) % 3 == 0).kept == 14
        assert mask_from_keys(where, keys[:5]).kept == 5
        assert np.array_equal(mask_from_classes(where, ["bee"]).keep, m.labels() == 1)
    made = random_mask(url, 0.5, seed=3)
    assert made.manifest.path == url and made.manifest.fingerprint == m.fingerprint
    MaskFile(made.save(tmp_path / "m.spmask")).check(m)  # a mask of the URL copy is a mask of the same dataset


def test_reprs_of_masks_and_manifests_are_one_short_line(tmp_path, sample_factory, shard_writer):
    m = shard_writer(sample_factory(120), tmp_path / "ds")  # 12 shards: the default reprs printed kilobytes
    mask = random_mask(m, 0.25, seed=0)
    mask_file = MaskFile(mask.save(tmp_path / "m.spmask"))
    expected = {
        repr(m): f"Manifest({m.path!r}, shards=12, samples=120, classes=4)",
        repr(mask): f"KeepMask(manifest={m.path!r}, shards=12, samples=120, kept=90, method='random')",
        repr(mask_file): f"MaskFile({str(tmp_path / 'm.spmask')!r}, shards=12, samples=120, kept=90, method='random')",
    }
    for got, want in expected.items():
        assert got == want and "\n" not in got


def test_mask_of_another_dataset_of_the_same_shape_names_both_manifests(tmp_path, sample_factory, shard_writer):
    ours = shard_writer(sample_factory(40, seed=0), tmp_path / "ours")
    theirs = shard_writer(sample_factory(40, seed=1, prefix="t"), tmp_path / "theirs")  # same shard names and counts
    path = random_mask(ours, 0.5).save(tmp_path / "m.spmask")
    assert MaskFile(path).header["manifest"] == ours.path
    with pytest.raises(MaskMismatchError) as info:
        MaskFile(path).check(theirs)
    message = str(info.value)
    assert f"made for manifest {ours.path} (fingerprint {ours.fingerprint[:12]})" in message
    assert f"not for {theirs.path} (fingerprint {theirs.fingerprint[:12]})" in message
    assert "shard 0 (shard-000000.tar)" in message and "Another dataset" in message
    other_shape = shard_writer(sample_factory(40, seed=1, prefix="t"), tmp_path / "two", samples_per_shard=20)
    with pytest.raises(MaskMismatchError, match=rf"made for manifest {ours.path} .* not for {other_shape.path} .* covers 4 shards, the manifest has 2"):
        MaskFile(path).check(other_shape)



def test_save_creates_the_directory_and_translate_takes_mask_manifest(tmp_path, small_dataset, labelled_samples, shard_writer):
    from streamprune.masks import combine_masks, translate_mask

    other = shard_writer(labelled_samples, tmp_path / "other", samples_per_shard=20)  # same keys, another manifest
    path = random_mask(other, 0.5, seed=1).save(tmp_path / "new" / "dir" / "m.spmask")
    kept_keys = {k for k, keep in zip(other.keys(), MaskFile(path).to_bool()) if keep}
    assert len(kept_keys) == 20
    translated = translate_mask(path, small_dataset, mask_manifest=other)
    assert {k for k, keep in zip(small_dataset.keys(), translated.to_bool()) if keep} == kept_keys
    with pytest.raises(MaskMismatchError):
        translate_mask(path, small_dataset)
    assert translate_mask(path, small_dataset, other).kept == 20  # mask_manifest is also the third positional argument
    both = combine_masks("and", [path, translated], manifest=small_dataset, mask_manifests=[other])
    assert both.kept == 20
