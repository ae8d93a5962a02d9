"""write_shards: webdataset-compatible, reproducible, verified and atomic shards plus manifest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile

import numpy as np
import pytest
import webdataset as wds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from streamprune import Manifest, index_shards
from streamprune.errors import LabelError, StreamPruneError
from streamprune.tarindex import index_tar
from streamprune.writers import TarShardWriter, write_shards


def _shard_files(out_dir) -> list[str]:
    return sorted(os.path.join(out_dir, n) for n in os.listdir(out_dir) if n.endswith(".tar"))


def _read_with_webdataset(out_dir) -> list[dict]:
    return list(wds.WebDataset(_shard_files(out_dir), shardshuffle=False))


def _sorted_by_class(n=40, n_classes=4):
    """Samples whose source order is grouped by class (all class 0 first, ...)."""
    per = n // n_classes
    return [(f"c{i // per}_{i:04d}", {"txt": f"item {i}".encode()}, i // per) for i in range(n)]


def test_shards_from_a_generator_are_read_unchanged_by_plain_webdataset(tmp_path, labelled_samples, shard_writer):
    out = tmp_path / "out"
    shard_writer((s for s in labelled_samples), out)  # a one-shot iterator is enough
    got = {s["__key__"]: s for s in _read_with_webdataset(out)}
    assert len(got) == len(labelled_samples)
    for key, files, label in labelled_samples:
        sample = got[key]
        assert sample["bin"] == files["bin"]
        assert sample["txt"] == files["txt"]
        assert sample["cls"] == str(label).encode()
        assert set(sample) - {"__key__", "__url__", "__local_path__"} == {"bin", "txt", "cls"}


def test_already_encoded_images_are_copied_byte_for_byte(tmp_path, shard_writer):
    rng = np.random.default_rng(1)
    samples = []
    for i in range(6):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=37)
        samples.append((f"img{i}", {"jpg": buf.getvalue()}, i % 2))
    manifest = shard_writer(samples, tmp_path / "out", samples_per_shard=4, class_names=None)
    by_key = {key: files["jpg"] for key, files, _ in samples}
    for sample in _read_with_webdataset(tmp_path / "out"):
        assert sample["jpg"] == by_key[sample["__key__"]]
    # the index points at exactly those bytes
    for k in range(len(manifest.shards)):
        index = manifest.index(k)
        with open(manifest.shard_path(k), "rb") as fh:
            raw = fh.read()
        for key, group in zip(index.keys, index.members):
            (ext, offset, size), *_ = [m for m in group if m[0] == "jpg"]
            assert raw[offset : offset + size] == by_key[key]


@pytest.mark.timeout(60)  # an endless loop in the PAX record writer once hung here
def test_long_nested_and_non_ascii_keys_are_read_back_by_tarfile_and_webdataset(tmp_path):
    # name lengths around the PAX record's digit-count boundaries (records of 999/1000 and 9999/10000 bytes)
    keys = [f"n{n:04d}" + "x" * (n - 9) for n in list(range(82, 104)) + list(range(984, 1000))]
    keys += ["y" * 9988, "dir/sub/" + "é" * 80, "日本/猫" * 30, "a/b/c"]
    samples = [(key, {"txt": key.encode(), "seg.png": bytes(i)}, i % 2) for i, key in enumerate(keys)]
    out = tmp_path / "out"
    manifest = write_shards(samples, out, samples_per_shard=16, shuffle=False, progress=False)
    assert manifest.keys() == keys
    names = []
    for k in range(len(manifest.shards)):
        with tarfile.open(manifest.shard_path(k)) as tf:
            names += [m.name for m in tf.getmembers()]
    assert names == [f"{key}.{ext}" for key in keys for ext in ("cls", "seg.png", "txt")]
    got = _read_with_webdataset(out)
    assert [s["__key__"] for s in got] == keys
    for sample, (_key, files, _label) in zip(got, samples):
        assert sample["txt"] == files["txt"] and sample["seg.png"] == files["seg.png"]


_KEY_CHARS = "abcXYZ09-_ +éß日"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    samples=st.lists(
        st.tuples(
            st.lists(st.text(_KEY_CHARS + ".", min_size=1, max_size=40).filter(lambda p: p not in (".", "..")), max_size=3),
            st.text(_KEY_CHARS, min_size=1, max_size=200),
            st.dictionaries(st.sampled_from(["jpg", "seg.png", "json", "TXT"]), st.binary(max_size=1500), min_size=1),
            st.one_of(st.none(), st.integers(0, 9)),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_tar_shard_writer_output_matches_tarfile_and_webdataset(samples):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.tar")
        expected = []
        with TarShardWriter(path) as writer:
            for i, (dirs, stem, files, label) in enumerate(samples):
                key = "/".join(dirs + [f"k{i}{stem}"])
                if key.startswith("__"):  # reserved for webdataset metadata; the writer refuses it
                    key = "d" + key
                writer.write(key, files, label)
                want = {ext.lower(): data for ext, data in files.items()}
                if label is not None:
                    want["cls"] = str(label).encode()
                expected.append((key, want))
            index = writer.close()
        assert not [n for n in os.listdir(tmp) if ".tmp-" in n]
        with tarfile.open(path) as tf:
            members = tf.getmembers()
            by_name = {m.name: tf.extractfile(m).read() for m in members}
        assert [m.name for m in members] == [f"{key}.{ext}" for key, want in expected for ext in sorted(want)]
        for key, want in expected:
            for ext, data in want.items():
                assert by_name[f"{key}.{ext}"] == data
        got = list(wds.WebDataset(path, shardshuffle=False))
        assert [g["__key__"] for g in got] == index.keys == [key for key, _ in expected]
        for g, (_key, want) in zip(got, expected):
            assert {k: v for k, v in g.items() if not k.startswith("__")} == want
        labelled = all(label is not None for *_, label in samples)
        reread = index_tar(path, label_ext="cls" if labelled else None)
        assert reread.members == index.members
        if labelled:
            assert reread.labels.tolist() == index.labels.tolist()
        assert reread.start.tolist() == index.start.tolist() and reread.end.tolist() == index.end.tolist()


def test_default_shuffle_mixes_classes_across_shards(tmp_path, shard_writer):
    manifest = shard_writer(_sorted_by_class(), tmp_path / "out")
    for k in range(len(manifest.shards)):
        assert len(set(manifest.index(k).labels.tolist())) >= 2, f"shard {k} holds a single class"
    assert sorted(manifest.keys()) == sorted(key for key, _, _ in _sorted_by_class())


def test_no_shuffle_keeps_source_order(tmp_path, shard_writer):
    samples = _sorted_by_class()
    manifest = shard_writer(samples, tmp_path / "out", shuffle=False)
    assert manifest.keys() == [key for key, _, _ in samples]
    for k in range(len(manifest.shards)):
        assert set(manifest.index(k).labels.tolist()) == {k}
    assert [s["__key__"] for s in _read_with_webdataset(tmp_path / "out")] == [key for key, _, _ in samples]


def test_class_sorted_layout_writes_class_after_class_in_the_shuffled_order(tmp_path, labelled_samples, shard_writer):
    shuffled = shard_writer(labelled_samples, tmp_path / "shuffled", seed=3)
    grouped = shard_writer(labelled_samples, tmp_path / "grouped", seed=3, layout="class-sorted")
    labels = grouped.labels().tolist()
    assert labels == sorted(labels)  # class after class
    # within a class, the order the default layout shuffled them into
    want = {c: [k for k, lab in zip(shuffled.keys(), shuffled.labels().tolist()) if lab == c] for c in set(labels)}
    got = {c: [k for k, lab in zip(grouped.keys(), labels) if lab == c] for c in set(labels)}
    assert got == want
    # a class-level mask now keeps whole runs: one per kept class, where the shuffled copy had many
    keep = np.isin(grouped.labels(), [0, 2])
    runs = int(np.count_nonzero(np.diff(np.concatenate([[0], keep.astype(int), [0]])) == 1))
    assert runs == 2
    assert {s["__key__"] for s in _read_with_webdataset(tmp_path / "grouped")} == {k for k, _, _ in labelled_samples}


def test_unknown_layout_is_refused(tmp_path, labelled_samples, shard_writer):
    with pytest.raises(ValueError, match="layout='page-aware'"):
        shard_writer(labelled_samples, tmp_path / "out", layout="page-aware")


def _shard_bytes(out_dir) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(out_dir)):
        if name.endswith((".tar", ".index.json")):
            with open(os.path.join(out_dir, name), "rb") as fh:
                out[name] = fh.read()
    return out


def test_same_seed_gives_byte_identical_shards_and_other_seed_another_order(tmp_path, labelled_samples, shard_writer):
    a = shard_writer(labelled_samples, tmp_path / "a", seed=7)
    b = shard_writer(labelled_samples, tmp_path / "b", seed=7)
    c = shard_writer(labelled_samples, tmp_path / "c", seed=8)
    assert _shard_bytes(tmp_path / "a") == _shard_bytes(tmp_path / "b")
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    assert a.fingerprint == b.fingerprint
    assert a.keys() != c.keys()
    assert sorted(a.keys()) == sorted(c.keys())


@pytest.mark.integration
def test_two_workers_write_the_same_shards_as_one(tmp_path, labelled_samples, shard_writer):
    one = shard_writer(labelled_samples, tmp_path / "one", workers=1, seed=3)
    two = shard_writer(labelled_samples, tmp_path / "two", workers=2, seed=3)
    assert _shard_bytes(tmp_path / "one") == _shard_bytes(tmp_path / "two")
    assert [s.to_json() for s in one.shards] == [s.to_json() for s in two.shards]
    assert one.class_counts == two.class_counts


@pytest.mark.parametrize("workers", [1, 2])
def test_on_shard_reports_each_complete_shard_once_and_resumed_ones_first(tmp_path, labelled_samples, shard_writer, workers):
    seen = []

    def on_shard(k, path, index):  # the shard and its index are in place when reported
        seen.append(k)
        assert index.shard == os.path.basename(path) and os.path.getsize(path) == index.shard_bytes
        assert os.path.exists(path + ".index.json")

    shard_writer(labelled_samples, tmp_path / "out", workers=workers, on_shard=on_shard)
    assert sorted(seen) == [0, 1, 2, 3]
    os.unlink(tmp_path / "out" / "shard-000002.tar")
    seen.clear()
    shard_writer(labelled_samples, tmp_path / "out", workers=workers, on_shard=on_shard, resume=True)
    assert seen == [0, 1, 3, 2]


def test_manifest_records_shards_checksums_classes_and_totals(tmp_path, sample_factory, shard_writer):
    samples = sample_factory(n=45, n_classes=4)
    out = tmp_path / "out"
    manifest = shard_writer(samples, out)
    with open(out / "manifest.json", "rb") as fh:
        obj = json.load(fh)
    assert obj["format"] == "streamprune-manifest"
    assert obj["version"] == 1
    assert obj["classes"] == ["ant", "bee", "cat", "dog"]
    assert obj["class_counts"] == [12, 11, 11, 11]
    assert obj["num_samples"] == 45
    assert obj["label_ext"] == "cls"
    assert [s["samples"] for s in obj["shards"]] == [10, 10, 10, 10, 5]  # the last shard is smaller
    total = 0
    for entry in obj["shards"]:
        path = out / entry["name"]
        data = path.read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["index_sha256"] == hashlib.sha256((out / entry["index"]).read_bytes()).hexdigest()
        total += len(data)
    assert obj["total_bytes"] == total
    reloaded = Manifest.load(out)
    assert reloaded.num_samples == manifest.num_samples == 45
    assert reloaded.labels().tolist().count(0) == 12


@pytest.mark.integration
def test_no_temporary_files_are_left_behind(tmp_path, labelled_samples, shard_writer):
    out = tmp_path / "out"
    shard_writer(labelled_samples, out, workers=2)
    names = os.listdir(out)
    assert not [n for n in names if ".tmp-" in n]
    assert "manifest.json" in names


class _FailingSource:
    """A source that raises when asked for sample ``fail_at``."""

    def __init__(self, samples, fail_at):
        self.samples = samples
        self.fail_at = fail_at
        self.class_names = []

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError(f"source broke at sample {i}")
        return self.samples[i]


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_mid_write_leaves_no_complete_looking_shard_or_manifest(tmp_path, labelled_samples, shard_writer, workers):
    out = tmp_path / "out"
    shard_writer(labelled_samples, out)  # a previous complete run in the same directory
    assert (out / "manifest.json").exists()
    # sample 25 lives in shard 2 (no shuffle, 10 per shard)
    for name in ("shard-000002.tar", "shard-000002.tar.index.json"):
        os.unlink(out / name)
    with pytest.raises(RuntimeError, match="sample 25"):
        write_shards(
            _FailingSource(labelled_samples, 25), out, samples_per_shard=10, shuffle=False, workers=workers, progress=False,
            overwrite=True,
        )
    names = os.listdir(out)
    assert "manifest.json" not in names
    assert "shard-000002.tar" not in names
    assert "shard-000002.tar.index.json" not in names
    assert not [n for n in names if ".tmp-" in n]


def test_iterable_that_raises_writes_nothing(tmp_path, labelled_samples):
    def broken():
        yield from labelled_samples[:15]
        raise RuntimeError("iterable broke")

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="iterable broke"):
        write_shards(broken(), out, samples_per_shard=10, progress=False)
    assert not out.exists() or not [n for n in os.listdir(out) if n.endswith((".tar", ".json")) or ".tmp-" in n]


def test_label_member_given_in_files_is_what_the_manifest_records(tmp_path):
    samples = [("a", {"txt": b"x", "cls": b"3"}, None), ("b", {"txt": b"y", "cls": b"1"}, 1), ("c", {"txt": b"z"}, 2)]
    manifest = write_shards(samples, tmp_path / "out", shuffle=False, progress=False)
    assert manifest.labels().tolist() == [3, 1, 2]
    assert manifest.class_counts == [0, 1, 1, 1]
    reindexed = index_shards([manifest.shard_path(0)], tmp_path / "re", progress=False)
    assert reindexed.labels().tolist() == manifest.labels().tolist()


@pytest.mark.parametrize("files, label", [({"cls": b"3"}, 2), ({"cls": b"three"}, None)])
def test_label_member_that_disagrees_or_is_not_an_integer_raises_label_error(tmp_path, files, label):
    with pytest.raises(LabelError, match="'bad'"):
        write_shards([("ok", {"cls": b"1"}, 1), ("bad", files, label)], tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_empty_source_and_bad_arguments_are_rejected(tmp_path, labelled_samples):
    with pytest.raises(StreamPruneError, match="no samples"):
        write_shards([], tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="samples_per_shard"):
        write_shards(labelled_samples, tmp_path / "b", samples_per_shard=0, progress=False)
    with pytest.raises(ValueError, match="workers"):
        write_shards(labelled_samples, tmp_path / "c", workers=0, progress=False)


@pytest.mark.integration
def test_rerun_after_a_killed_shard_run_removes_only_its_own_temporaries(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    code = f"""
import os
from streamprune.writers import write_shards
samples = [(f"k{{i:03d}}", {{"bin": os.urandom(4 << 20)}}, i % 2) for i in range(48)]
write_shards(samples, {str(out)!r}, samples_per_shard=4, shuffle=False, progress=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and any(".tmp-" in n for n in os.listdir(out)):
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = [n for n in os.listdir(out) if ".tmp-" in n]
    assert left, "the killed run left no temporary file; the test did not catch it mid-write"
    assert not (out / "manifest.json").exists()
    strangers = ["notes.txt.tmp-1", f"other.tar.tmp-{proc.pid}", f"shard-000009.tar.tmp-{os.getpid()}"]
    for name in strangers:  # not this writer's pattern, or a process that is alive (this one)
        (out / name).write_bytes(b"x")
    samples = [(f"k{i:03d}", {"bin": bytes([i]) * 10}, i % 2) for i in range(8)]
    manifest = write_shards(samples, out, samples_per_shard=4, shuffle=False, progress=False)
    assert manifest.num_samples == 8
    assert sorted(n for n in os.listdir(out) if ".tmp-" in n) == sorted(strangers)


def _listing(out_dir) -> dict[str, bytes]:
    return {n: (out_dir / n).read_bytes() for n in sorted(os.listdir(out_dir))}


def test_writing_over_another_dataset_is_refused_and_overwrite_leaves_no_orphan_shard(tmp_path, labelled_samples, shard_writer, caplog):
    from streamprune.errors import OutputExistsError
    from streamprune.masks import MaskFile, random_mask

    out = tmp_path / "out"
    first = shard_writer(labelled_samples, out, samples_per_shard=5)  # 8 shards
    mask = random_mask(first, 0.5).save(tmp_path / "m.spmask")
    before = _listing(out)
    for resume in (False, True):  # other options: --resume cannot continue it either
        with pytest.raises(OutputExistsError) as info:
            shard_writer(labelled_samples, out, samples_per_shard=20, resume=resume)
        message = str(info.value)
        assert message.startswith(f"{out}: already holds another dataset: {out / 'manifest.json'} (8 shards, 40 samples)")
        assert "--overwrite" in message and ("other options" in message) == resume
    assert _listing(out) == before  # refused before anything was touched
    MaskFile(mask).check(Manifest.load(out))  # the mask made for it still holds

    with caplog.at_level("WARNING", logger="streamprune.writers.output"):
        second = shard_writer(labelled_samples, out, samples_per_shard=20, overwrite=True)
    assert "removed the previous dataset's 8 shard(s) and 16 index file(s)" in caplog.text
    assert [s.name for s in second.shards] == ["shard-000000.tar", "shard-000001.tar"]
    listed = {n for s in second.shards for n in (s.name, s.index, s.index[: -len(".json")] + ".npz", s.index[: -len(".json")] + ".keyhash.npy")}
    assert set(os.listdir(out)) == listed | {"manifest.json", ".streamprune-shard-options.json"}  # no orphan
    assert sorted(second.keys()) == sorted(k for k, _, _ in labelled_samples)


@pytest.mark.integration
def test_resuming_the_same_run_is_not_refused_and_counts_what_it_skipped(tmp_path, labelled_samples, shard_writer):
    from streamprune.engine import LocalEngine
    from streamprune.errors import OutputExistsError

    out = tmp_path / "out"
    done = shard_writer(labelled_samples, out)
    engine = LocalEngine(1)
    again = shard_writer(labelled_samples, out, resume=True, engine=engine)  # a finished run: nothing to write
    assert (len(engine.last_report.ran), len(engine.last_report.skipped)) == (0, 4)
    assert [s.to_json() for s in again.shards] == [s.to_json() for s in done.shards]
    os.unlink(out / "manifest.json")  # an unfinished run: shards 0, 1, 3 written, no manifest yet
    os.unlink(out / "shard-000002.tar")
    with pytest.raises(OutputExistsError, match=r"3 shard file\(s\) of another run with no manifest .* --resume"):
        shard_writer(labelled_samples, out)
    resumed = shard_writer(labelled_samples, out, resume=True, engine=engine)
    assert engine.last_report.ran == [2] and engine.last_report.skipped == [0, 1, 3]
    assert [s.to_json() for s in resumed.shards] == [s.to_json() for s in done.shards]


def test_overwrite_removes_only_what_is_inside_the_directory(tmp_path, labelled_samples, shard_writer):
    elsewhere = shard_writer(labelled_samples, tmp_path / "shards")
    out = tmp_path / "out"
    index_shards([elsewhere.shard_path(k) for k in range(4)], out, progress=False)  # a manifest in out naming ../shards/*.tar
    assert os.path.exists(out / "shard-000000.tar.index.json")
    os.symlink(elsewhere.shard_path(3), out / "shard-000007.tar")  # a link there: removed itself, not what it points to
    shard_writer(labelled_samples, out, samples_per_shard=40, overwrite=True)
    assert all(os.path.exists(elsewhere.shard_path(k)) for k in range(4))  # not this directory's to remove
    assert Manifest.load(tmp_path / "shards").num_samples == 40
    assert sorted(n for n in os.listdir(out) if n.endswith(".tar")) == ["shard-000000.tar"]
    assert not os.path.exists(out / "shard-000003.tar.index.json")


def test_writing_to_a_url_holding_a_dataset_is_refused_and_overwrite_removes_its_objects(tmp_path, labelled_samples):
    from streamprune import storage
    from streamprune.errors import OutputExistsError
    from streamprune.writers.remote import write_shards_to

    url = "memory://edges-writer/ds"
    options = dict(shuffle=False, progress=False, class_names=["ant", "bee", "cat", "dog"], tmp_dir=str(tmp_path))
    write_shards_to(labelled_samples, url, samples_per_shard=10, **options)
    assert storage.exists(url + "/shard-000003.tar")
    with pytest.raises(OutputExistsError, match=rf"{url}: already holds another dataset: {url}/manifest.json \(4 shards, 40 samples\)"):
        write_shards_to(labelled_samples, url, samples_per_shard=20, **options)
    assert storage.exists(url + "/manifest.json") and Manifest.load(url).num_samples == 40
    m = write_shards_to(labelled_samples, url, samples_per_shard=20, overwrite=True, **options)
    assert len(m.shards) == 2 and m.path == url + "/manifest.json"
    for k in (2, 3):
        name = f"{url}/shard-{k:06d}.tar"
        assert not storage.exists(name) and not storage.exists(name + ".index.json") and not storage.exists(name + ".index.npz")


@pytest.mark.parametrize("n", [1, 17, 5000])
def test_write_order_is_numpys_seeded_permutation_in_four_bytes_a_sample(n):
    from streamprune.writers.order import sample_order

    order = sample_order(n, shuffle=True, seed=7)
    assert order.dtype == np.uint32  # the driver's one array over every sample
    assert order.tolist() == np.random.default_rng(7).permutation(n).tolist()  # shards written before stay the same
    labels = np.random.default_rng(1).integers(-1, 3, n)
    grouped = sample_order(n, shuffle=True, seed=7, labels=labels)
    reference = sorted(range(n), key=lambda j: labels[order[j]])  # stable: shuffled order within a class
    assert grouped.tolist() == [int(order[j]) for j in reference]
