"""The manifest (streamprune.manifest): what it records of the shards written, where its names resolve,
its fingerprint, and the manifest built from per-shard summaries.

Loading malformed or hostile manifests: tests/test_errors.py, tests/benchmarks/test_fuzz.py and
tests/readers/test_location_safety.py.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from builders import CLASSES, make_samples, saved_summaries

from streamprune.errors import DuplicateKeyError, ManifestError
from streamprune.manifest import Manifest, manifest_from_summaries, open_manifest


def test_what_the_manifest_records_is_what_was_written(small_dataset):
    samples = make_samples()  # what small_dataset wrote (shuffled, 10 per shard)
    m = Manifest.load(small_dataset.root)
    written = {key: (files, label) for key, files, label in samples}
    assert m.num_samples == 40 and len(m.shards) == 4 and m.classes == CLASSES
    assert sorted(m.keys()) == sorted(written)
    assert [int(x) for x in m.labels()] == [written[k][1] for k in m.keys()]
    assert m.class_counts == [10, 10, 10, 10]
    assert list(m.shard_offsets) == [0, 10, 20, 30, 40]
    # each sample's bytes on disk hold at least its members' payloads, in 512-byte tar blocks
    payload = np.array([sum(len(v) for v in written[k][0].values()) for k in m.keys()])
    on_disk = m.sample_bytes()
    assert (on_disk >= payload).all() and (on_disk % 512 == 0).all()
    assert m.total_bytes == sum(s.bytes for s in m.shards)


def test_save_and_load_round_trip_and_the_fingerprint_binds_the_indexes(small_dataset, tmp_path):
    m = Manifest.load(small_dataset.root)
    copy = tmp_path / "copy.json"
    m.save(copy)
    again = Manifest.load(copy)
    assert again.shards == m.shards and again.classes == m.classes and again.fingerprint == m.fingerprint
    obj = json.loads(copy.read_text())
    obj["shards"][2]["index_sha256"] = "0" * 64  # another index for shard 2
    copy.write_text(json.dumps(obj))
    assert Manifest.load(copy).fingerprint != m.fingerprint
    obj["num_samples"] = 41
    copy.write_text(json.dumps(obj))
    with pytest.raises(ManifestError, match=r"copy\.json: num_samples 41 disagrees with the shard counts \(40\)"):
        Manifest.load(copy)


def test_names_resolve_against_the_root_and_shards_against_the_base(small_dataset):
    m = Manifest.load(small_dataset.root)
    assert m.resolve(m.shards[1].index) == str(small_dataset.root) + "/" + m.shards[1].index
    moved = m.with_base("https://host/copy/")
    assert moved.shard_path(1) == "https://host/copy/" + m.shards[1].name
    assert moved.resolve(m.shards[1].index) == m.resolve(m.shards[1].index)  # indexes stay with the manifest
    assert m.shard_path(1) == str(small_dataset.root) + "/" + m.shards[1].name  # the original is unchanged
    assert open_manifest(m) is m and open_manifest(str(small_dataset.root)).fingerprint == m.fingerprint


def test_a_pickled_manifest_leaves_its_cached_indexes_behind(small_dataset):
    m = Manifest.load(small_dataset.root)
    m.keys()  # loads and caches every index
    assert len(m._indexes) == 4  # noqa: SLF001 - the cache is what this test is about
    clone = pickle.loads(pickle.dumps(m))
    assert clone._indexes == {} and clone.keys() == m.keys()  # noqa: SLF001


def test_manifest_from_summaries_counts_classes_and_names_the_duplicate(tmp_path):
    summaries, _ = saved_summaries(tmp_path, [["a", "b"], ["c", "d", "e"]], labels=[[0, 1], [1, 1, 3]])
    manifest = manifest_from_summaries(str(tmp_path), summaries, chunk=2)
    assert manifest.class_counts == [1, 3, 0, 1] and manifest.classes == ["0", "1", "2", "3"]
    assert [s.samples for s in manifest.shards] == [2, 3]
    dup_root = tmp_path / "dup"
    dup_root.mkdir()
    summaries, _ = saved_summaries(dup_root, [["a", "b"], ["c", "a"]])
    with pytest.raises(DuplicateKeyError, match=r"'a' occurs in both s0.tar and s1.tar"):
        manifest_from_summaries(str(dup_root), summaries, chunk=1)  # confirmed from the saved sidecars


def test_folded_class_counts_give_the_same_manifest(tmp_path):
    from streamprune.shardsummary import ClassCounts

    labels = [[0, 4], [1, 1, 3]]
    summaries, _ = saved_summaries(tmp_path, [["a", "b"], ["c", "d", "e"]], labels=labels)
    plain = manifest_from_summaries(str(tmp_path), summaries)
    counted = ClassCounts()
    for s in summaries:
        counted.fold(s)
    assert all(s.label_counts is None for s in summaries)
    folded = manifest_from_summaries(str(tmp_path), summaries, class_counts=counted.total)
    assert folded.class_counts == plain.class_counts == [1, 2, 0, 1, 1] and folded.classes == plain.classes
    with pytest.raises(Exception, match="out of range"):
        manifest_from_summaries(str(tmp_path), summaries, classes=["x", "y"], class_counts=counted.total)
