"""Bad input gives a specific error that names the file, shard or sample at fault."""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile

import numpy as np
import pytest

from streamprune import Manifest, PrunedWebDataset, index_shards, random_mask
from streamprune.errors import (
    CompressedShardError,
    DuplicateKeyError,
    IndexMismatchError,
    LabelError,
    ManifestError,
    StreamPruneError,
    TarFormatError,
)
from streamprune.indexfile import save_index
from streamprune.ratios import check_ratio
from streamprune.tarindex import index_tar, iter_tar_members
from streamprune.writers import TarShardWriter, write_shards


def _tar(path, members, fmt=tarfile.USTAR_FORMAT):
    """Write ``members`` (name, bytes) with tarfile; return the path."""
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _named(path) -> str:
    return re.escape(os.fspath(path))


@pytest.fixture
def good_tar(tmp_path):
    members = []
    for i in range(4):
        members += [(f"k{i}.bin", bytes([i]) * (700 + i)), (f"k{i}.cls", str(i % 2).encode())]
    return _tar(tmp_path / "good.tar", members)


def test_tar_cut_inside_a_member_raises_tar_format_error_naming_the_file(tmp_path, good_tar):
    raw = good_tar.read_bytes()
    index = index_tar(good_tar)
    _, offset, size = index.members[2][0]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: offset + size // 2])
    with pytest.raises(TarFormatError, match=_named(cut) + ".*truncated"):
        index_tar(cut)
    with pytest.raises(TarFormatError, match=_named(cut)):
        index_shards([cut], tmp_path / "idx", progress=False)


def test_tar_cut_inside_a_header_raises_tar_format_error(tmp_path, good_tar):
    raw = good_tar.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: 512 * 3 + 100])  # one member, then part of the next header
    with pytest.raises(TarFormatError, match=_named(cut)):
        list(iter_tar_members(cut))


def test_empty_file_raises_tar_format_error(tmp_path):
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(TarFormatError, match="empty file"):
        index_tar(tmp_path / "empty.tar")


def test_flipped_header_bytes_raise_tar_format_error_with_offset(tmp_path, good_tar):
    raw = bytearray(good_tar.read_bytes())
    second_header = index_tar(good_tar).start[1]
    raw[second_header + 3] ^= 0xFF  # a byte of the member name
    raw[second_header + 20] ^= 0x55
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(raw))
    with pytest.raises(TarFormatError, match=_named(bad) + f".*corrupt tar header at byte {second_header}"):
        index_tar(bad)


def test_non_octal_size_field_raises_tar_format_error(tmp_path, good_tar):
    raw = bytearray(good_tar.read_bytes())
    raw[124:136] = b"zz not octal"
    # recompute the checksum so only the size field is wrong
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(raw))
    with pytest.raises(TarFormatError, match=_named(bad) + ".*not octal"):
        index_tar(bad)


def test_random_bytes_are_not_a_tar(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(TarFormatError, match=_named(junk)):
        index_tar(junk)


def test_gzip_shard_raises_compressed_shard_error_saying_to_decompress(tmp_path, good_tar):
    gz = tmp_path / "good.tar.gz"
    gz.write_bytes(gzip.compress(good_tar.read_bytes()))
    with pytest.raises(CompressedShardError) as info:
        index_tar(gz)
    message = str(info.value)
    assert os.fspath(gz) in message
    assert "no I/O" in message and "Decompress" in message
    assert isinstance(info.value, TarFormatError)
    with pytest.raises(CompressedShardError, match=_named(gz)):
        index_shards([good_tar, gz], tmp_path / "idx", progress=False)


def test_missing_shard_in_index_shards_raises_manifest_error(tmp_path, good_tar):
    missing = tmp_path / "missing.tar"
    with pytest.raises(ManifestError, match=_named(missing) + ".*not found"):
        index_shards([good_tar, missing], tmp_path / "idx", progress=False)
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_two_shards_with_the_same_file_name_raise_manifest_error(tmp_path, good_tar):
    (tmp_path / "other").mkdir()
    twin = _tar(tmp_path / "other" / "good.tar", [("z.cls", b"0")])
    with pytest.raises(ManifestError, match="'good.tar'"):
        index_shards([good_tar, twin], tmp_path / "idx", progress=False)


def test_edited_or_foreign_manifest_raises_manifest_error(tmp_path, small_dataset):
    text = open(small_dataset.path).read()
    (tmp_path / "edited.json").write_text(text.replace('"num_samples":40', '"num_samples":41'))
    with pytest.raises(ManifestError, match="edited.json.*num_samples 41"):
        Manifest.load(tmp_path / "edited.json")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(ManifestError, match="other.json.*not a streamprune manifest"):
        Manifest.load(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ManifestError, match="broken.json.*not valid JSON"):
        Manifest.load(tmp_path / "broken.json")


def test_missing_manifest_and_index_raise_manifest_error(tmp_path, small_dataset):
    with pytest.raises(ManifestError, match="manifest not found"):
        Manifest.load(tmp_path / "nowhere")
    from streamprune.indexfile import companion_path

    index_file = small_dataset.resolve(small_dataset.shards[2].index)
    os.unlink(index_file)  # the manifest-bound binary companion still holds the index
    assert Manifest.load(small_dataset.path).index(2).keys == small_dataset.index(2).keys
    os.unlink(companion_path(index_file))
    with pytest.raises(ManifestError, match=_named(index_file) + ".*missing"):
        Manifest.load(small_dataset.path).index(2)


def _unshuffled(tmp_path, labelled_samples, shard_writer):
    return shard_writer(labelled_samples, tmp_path / "data", shuffle=False)


def test_shard_rewritten_with_other_size_raises_index_mismatch_when_read(tmp_path, labelled_samples, shard_writer):
    manifest = _unshuffled(tmp_path, labelled_samples, shard_writer)
    shard = manifest.shard_path(1)
    with TarShardWriter(shard) as writer:
        for key, files, label in labelled_samples[10:20]:
            writer.write(key, {"bin": files["bin"] + b"extra" * 200}, label)
        writer.close()
    with pytest.raises(IndexMismatchError, match=_named(shard)):
        list(PrunedWebDataset(manifest.path))


def test_shard_rewritten_with_same_size_raises_index_mismatch_naming_the_sample(tmp_path, labelled_samples, shard_writer):
    manifest = _unshuffled(tmp_path, labelled_samples, shard_writer)
    shard = manifest.shard_path(1)
    size = os.path.getsize(shard)
    with TarShardWriter(shard) as writer:
        for key, files, label in labelled_samples[10:20]:
            writer.write("x" + key[1:], files, label)  # same lengths, other names
        writer.close()
    assert os.path.getsize(shard) == size
    with pytest.raises(IndexMismatchError, match=_named(shard) + ".*s00010"):
        list(PrunedWebDataset(manifest.path))
    # with a mask that keeps only samples of shard 1 as well
    keep = random_mask(manifest, 0.0)
    keep.keep[:] = False
    keep.keep[15] = True
    mask_path = keep.save(tmp_path / "one.spmask")
    with pytest.raises(IndexMismatchError, match="s00015"):
        list(PrunedWebDataset(manifest.path, mask_path))


@pytest.mark.parametrize("stem", ["short", "long" * 30, "é" * 70], ids=["short", "long-ascii", "long-non-ascii"])
def test_same_size_rewrite_is_caught_and_untouched_shard_reads_for_any_key_length(tmp_path, stem):
    samples = [(f"{stem}{i:03d}", {"bin": bytes([i]) * 100}, i % 2) for i in range(6)]
    manifest = write_shards(samples, tmp_path / "data", samples_per_shard=3, shuffle=False, progress=False)
    assert len(list(PrunedWebDataset(manifest.path))) == 6  # valid shards read back
    shard = manifest.shard_path(1)
    size = os.path.getsize(shard)
    with TarShardWriter(shard) as writer:
        for key, files, label in samples[3:]:
            writer.write(key[:-3] + "9" + key[-2:], files, label)  # same length, other key
        writer.close()
    assert os.path.getsize(shard) == size
    with pytest.raises(IndexMismatchError, match=_named(shard)):
        list(PrunedWebDataset(manifest.path))


def test_index_rewritten_after_manifest_raises_index_mismatch(tmp_path, labelled_samples, shard_writer):
    manifest = _unshuffled(tmp_path, labelled_samples, shard_writer)
    shard = manifest.shard_path(3)
    _tar(shard, [(f"other{i}.cls", b"1") for i in range(10)])
    sidecar = manifest.resolve(manifest.shards[3].index)
    save_index(index_tar(shard, label_ext="cls"), sidecar)  # re-indexed, manifest not rewritten
    fresh = Manifest.load(manifest.path)
    with pytest.raises(IndexMismatchError, match=_named(sidecar)):
        fresh.index(3)
    with pytest.raises(IndexMismatchError, match=_named(sidecar)):
        list(PrunedWebDataset(fresh))


def test_missing_label_member_raises_label_error_naming_the_key(tmp_path):
    path = _tar(tmp_path / "l.tar", [("a.jpg", b"1"), ("a.cls", b"3"), ("b.jpg", b"2"), ("c.jpg", b"3"), ("c.cls", b"0")])
    with pytest.raises(LabelError, match=_named(path) + ".*'b'.*no .cls"):
        index_tar(path, label_ext="cls")
    assert index_tar(path).labels.tolist() == [-1, -1, -1]  # unlabelled indexing is fine
    with pytest.raises(LabelError, match="'b'"):
        index_shards([path], tmp_path / "idx", label_ext="cls", progress=False)


@pytest.mark.parametrize("content", [b"cat", b"1.5", b"", b"\xff\xfe", b"-2"])
def test_non_integer_or_negative_label_raises_label_error_naming_the_key(tmp_path, content):
    path = _tar(tmp_path / "l.tar", [("a.cls", b"3"), ("dir/odd.cls", content)])
    with pytest.raises(LabelError, match=_named(path) + ".*'dir/odd'"):
        index_tar(path, label_ext="cls")


def test_label_with_whitespace_is_accepted(tmp_path):
    path = _tar(tmp_path / "l.tar", [("a.cls", b" 7\n")])
    assert index_tar(path, label_ext="cls").labels.tolist() == [7]


def test_non_adjacent_duplicate_key_in_a_shard_raises_duplicate_key_error(tmp_path):
    path = _tar(tmp_path / "d.tar", [("a.jpg", b"1"), ("b.jpg", b"2"), ("a.cls", b"0")])
    with pytest.raises(DuplicateKeyError, match=_named(path) + ".*'a'"):
        index_tar(path)


def test_same_member_twice_in_a_sample_raises_duplicate_key_error(tmp_path):
    path = _tar(tmp_path / "d.tar", [("a.jpg", b"1"), ("a.JPG", b"2")])
    with pytest.raises(DuplicateKeyError, match="'a'"):
        index_tar(path)


def test_duplicate_key_across_shards_raises_duplicate_key_error_naming_both(tmp_path):
    one = _tar(tmp_path / "one.tar", [("a.cls", b"0"), ("shared.cls", b"1")])
    two = _tar(tmp_path / "two.tar", [("shared.cls", b"1"), ("z.cls", b"0")])
    with pytest.raises(DuplicateKeyError, match="'shared'.*one.tar.*two.tar"):
        index_shards([one, two], tmp_path / "idx", progress=False)


def test_duplicate_keys_in_a_source_are_rejected_by_write_shards(tmp_path):
    samples = [(f"k{i}", {"txt": b"x"}, 0) for i in range(5)] + [("k1", {"txt": b"y"}, 0)]
    with pytest.raises(DuplicateKeyError, match="'k1'"):
        write_shards(samples, tmp_path / "a", samples_per_shard=3, shuffle=False, progress=False)
    with pytest.raises(DuplicateKeyError, match="'k1'"):
        write_shards(samples, tmp_path / "b", samples_per_shard=10, progress=False)
    assert not (tmp_path / "a" / "manifest.json").exists() and not (tmp_path / "b" / "manifest.json").exists()


@pytest.mark.parametrize("ratio", [1.0, -0.01, 2])
def test_ratio_outside_range_raises_value_error_naming_the_argument(ratio):
    with pytest.raises(ValueError, match=r"keep_ratio=.*\[0, 1\)"):
        check_ratio(ratio, "keep_ratio")


def test_all_errors_share_one_base_class():
    for exc in (TarFormatError, CompressedShardError, ManifestError, IndexMismatchError, LabelError, DuplicateKeyError):
        assert issubclass(exc, StreamPruneError)


@pytest.mark.integration
def test_parallel_indexing_reports_the_bad_shard_and_leaves_no_manifest(tmp_path, good_tar):
    gz = tmp_path / "bad.tar.gz"
    gz.write_bytes(gzip.compress(good_tar.read_bytes()))
    out = tmp_path / "idx"
    index_shards([good_tar], out, progress=False)  # an earlier, complete index in the same directory
    assert (out / "manifest.json").exists()
    with pytest.raises(CompressedShardError, match=_named(gz)):
        index_shards([good_tar, gz], out, progress=False, workers=2)
    assert not (out / "manifest.json").exists()  # the old manifest no longer describes the directory


def test_index_labels_auto_every_none_or_some(tmp_path, caplog):
    labelled = _tar(tmp_path / "a.tar", [("x.jpg", b"1"), ("x.cls", b"2"), ("y.jpg", b"2"), ("y.cls", b"0")])
    unlabelled = _tar(tmp_path / "b.tar", [("u.jpg", b"1"), ("v.jpg", b"2")])
    also_unlabelled = _tar(tmp_path / "c.tar", [("w.jpg", b"1")])
    # every sample labelled: labels, as with label_ext="cls"
    m = index_shards([labelled], tmp_path / "i1", progress=False)
    assert m.label_ext == "cls" and m.labels().tolist() == [2, 0]
    # no sample labelled: indexed without labels, and one warning line says so
    with caplog.at_level("WARNING", logger="streamprune.indexing"):
        m = index_shards([unlabelled, also_unlabelled], tmp_path / "i2", progress=False)
    assert m.label_ext is None and m.labels().tolist() == [-1, -1, -1] and m.classes == []
    assert sum("no sample has a .cls member" in r.getMessage() for r in caplog.records) == 1
    # some labelled, some not (here across shards): an error naming the first sample without one, no manifest
    with pytest.raises(LabelError, match=r"b\.tar.*'u'.*no \.cls member.*2 of 4"):
        index_shards([labelled, unlabelled], tmp_path / "i3", progress=False)
    assert not (tmp_path / "i3" / "manifest.json").exists()
    # an explicitly named label member is required on every sample
    with pytest.raises(LabelError, match="'u'"):
        index_shards([unlabelled], tmp_path / "i4", label_ext="cls", progress=False)


def test_cli_index_third_party_shards_without_labels(tmp_path):
    from click.testing import CliRunner

    from streamprune_cli.main import cli

    shard = _tar(tmp_path / "s.tar", [("000000.jpg", b"1"), ("000001.jpg", b"2")])
    result = CliRunner().invoke(cli, ["index", str(shard), "--out", str(tmp_path / "idx"), "-q"])
    assert result.exit_code == 0, result.output
    assert "2 samples in 1 shards" in result.output
    assert Manifest.load(tmp_path / "idx").label_ext is None


def _rename_member_in_place(path, old: bytes, new: bytes) -> None:
    """Rewrite one ustar header's name (same length) and fix its checksum, as a rewritten shard would."""
    raw = bytearray(open(path, "rb").read())
    at = raw.index(old)
    block = at - at % 512
    raw[at : at + len(old)] = new
    raw[block + 148 : block + 156] = b" " * 8
    raw[block + 148 : block + 156] = b"%06o\0 " % sum(raw[block : block + 512])
    open(path, "wb").write(bytes(raw))


@pytest.mark.parametrize("mode", ["coalesced", "direct", "map"])
def test_every_read_checks_its_first_header_not_only_the_shards_first(tmp_path, mode):
    from streamprune import PrunedMapDataset, mask_from_bool

    size = 40_000 if mode == "direct" else 300  # large members are read member by member
    members = []
    for i in range(8):
        members += [(f"k{i}.bin", bytes([i]) * size), (f"k{i}.cls", b"1")]
    path = _tar(tmp_path / "s.tar", members)
    manifest = index_shards([path], tmp_path / "idx", progress=False)
    # keep samples 0, 1 and 5, 6: two runs; the second run's first header is rewritten
    mask = mask_from_bool(manifest, np.isin(np.arange(8), [0, 1, 5, 6]))
    assert len(list(PrunedWebDataset(manifest, mask))) == 4
    _rename_member_in_place(path, b"k5.bin", b"q5.bin")
    if mode == "map":
        ds = PrunedMapDataset(manifest, mask)
        assert ds[0]["__key__"] == "k0"
        with pytest.raises(IndexMismatchError, match=_named(manifest.shard_path(0)) + ".*'k5'"):
            ds[2]
    else:
        with pytest.raises(IndexMismatchError, match=_named(manifest.shard_path(0)) + ".*'k5'"):
            list(PrunedWebDataset(manifest, mask))


def test_a_short_read_is_an_error_naming_the_shard_and_sample(tmp_path, good_tar):
    from streamprune.readers.byterange import ShardFile, read_runs

    manifest = index_shards([good_tar], tmp_path / "idx", progress=False)
    with ShardFile(manifest.shard_path(0), manifest.index(0)) as shard:
        os.truncate(good_tar, int(manifest.index(0).start[2]) + 600)  # cut after opening
        with pytest.raises(IndexMismatchError, match=_named(manifest.shard_path(0)) + ".*'k0'.*read \\d+ of"):
            list(read_runs(shard, np.arange(4), "u"))
