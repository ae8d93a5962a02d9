"""The tar header walk and sample grouping agree with tarfile and with webdataset itself."""

from __future__ import annotations

import io
import os
import random
import tarfile
import tempfile

import numpy as np
import pytest
import webdataset as wds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamprune import PrunedWebDataset, index_shards
from streamprune.indexfile import companion_path, load_index, save_index
from streamprune.readers import ShardFile, read_runs
from streamprune.shardindex import MemberTable
from streamprune.tarindex import BLOCK, RangedView, index_tar, index_tar_ranges, iter_tar_members, split_key_ext

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# name pieces: letters, digits, some punctuation and non-ASCII; no '.', '/' or NUL
_NAME_CHARS = "abcXYZ019-_ +~éß日中ñ"
_DIR_CHARS = _NAME_CHARS + "."
_EXTS = ["png", "seg.png", "cls", "json", "txt", "JPG", "tar.gz", "x", "depth.npy"]
_SKIPPED_FILES = ["__meta__", "__meta__/info.json", "README", "sub/__meta__", "__x__/y.txt"]

sizes = st.one_of(
    st.integers(0, 1500),
    st.just(0),
    st.just(BLOCK),
    st.integers(100_000, 300_000),
)
sample_spec = st.fixed_dictionaries(
    {
        "dirs": st.lists(
            st.one_of(st.text(_DIR_CHARS, min_size=1, max_size=8), st.text(_DIR_CHARS, min_size=40, max_size=120)).filter(
                lambda s: s not in (".", "..")
            ),
            max_size=3,
        ),
        # short names, and long ones (over 100 and over 255 bytes once directories are added)
        "tail": st.one_of(st.text(_NAME_CHARS, max_size=12), st.text(_NAME_CHARS, min_size=90, max_size=300)),
        "exts": st.lists(st.sampled_from(_EXTS), min_size=1, max_size=3, unique_by=str.lower),
        "sizes": st.lists(sizes, min_size=3, max_size=3),
    }
)
extra_spec = st.one_of(
    st.tuples(st.just("dir"), st.text(_DIR_CHARS, min_size=1, max_size=150)),
    st.tuples(st.just("symlink"), st.text(_NAME_CHARS, min_size=1, max_size=150)),
    st.tuples(st.just("hardlink"), st.just("")),
    st.tuples(st.just("skipped"), st.sampled_from(_SKIPPED_FILES)),
)
tar_spec = st.fixed_dictionaries(
    {
        "samples": st.lists(sample_spec, min_size=1, max_size=8),
        "extras": st.lists(st.tuples(st.integers(0, 30), extra_spec), max_size=6),
        "seed": st.integers(0, 2**32 - 1),
        "global_pax": st.booleans(),
    }
)


def _fits(name: str, fmt: int, linkname: str = "") -> bool:
    info = tarfile.TarInfo(name)
    info.linkname = linkname
    try:
        info.tobuf(fmt, "utf-8", "surrogateescape")
    except ValueError:
        return False
    return True


def _sample_name_parts(i: int, spec: dict, fmt: int) -> tuple[str, list[str]]:
    """Key of sample ``i`` (unique thanks to the ``k{i}`` prefix) shortened until ustar can store it."""
    dirs, tail = list(spec["dirs"]), spec["tail"]
    while True:
        key = "/".join(dirs + [f"k{i}{tail}"])
        names = [f"{key}.{ext}" for ext in spec["exts"]]
        if all(_fits(n, fmt) for n in names):
            return key, names
        if dirs and len(tail) < 20:
            dirs.pop()
        else:
            tail = tail[: len(tail) // 2]


def _build_tar(path: str, spec: dict, fmt: int):
    """Write a tar described by ``spec``; return the expected (key, {ext: bytes}) samples."""
    rng = random.Random(spec["seed"])
    entries = []  # (TarInfo, data or None)
    expected = []
    for i, sample in enumerate(spec["samples"]):
        key, names = _sample_name_parts(i, sample, fmt)
        files = {}
        for ext, name, size in zip(sample["exts"], names, sample["sizes"]):
            data = rng.randbytes(size)
            info = tarfile.TarInfo(name)
            info.size = size
            info.mtime = 1_700_000_000
            entries.append((info, data))
            files[ext.lower()] = data
        expected.append((key, files))
    for j, (pos, (kind, text)) in enumerate(spec["extras"]):
        if kind == "dir":
            info = tarfile.TarInfo(f"d{j}{text}" if _fits(f"d{j}{text}", fmt) else f"d{j}")
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            data = None
        elif kind == "symlink":
            info = tarfile.TarInfo(f"ln{j}.png")
            info.type = tarfile.SYMTYPE
            info.linkname = text if _fits(info.name, fmt, text) else "target.png"
            data = None
        elif kind == "hardlink":
            info = tarfile.TarInfo(f"hl{j}.png")
            info.type = tarfile.LNKTYPE
            info.linkname = entries[0][0].name if _fits(info.name, fmt, entries[0][0].name) else "k0.png"
            data = None
        else:
            if any(e[0].name == text for e in entries):
                continue
            data = rng.randbytes(rng.randrange(0, 700))
            info = tarfile.TarInfo(text)
            info.size = len(data)
        entries.insert(min(pos, len(entries)), (info, data))
    pax_headers = {"comment": "global header ü"} if fmt == tarfile.PAX_FORMAT and spec["global_pax"] else None
    with tarfile.open(path, "w", format=fmt, encoding="utf-8", pax_headers=pax_headers) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return expected


def _check_against_tarfile(path: str) -> None:
    with tarfile.open(path, "r:", encoding="utf-8") as tf:
        reference = [(m.name, m.offset, m.offset_data, m.size) for m in tf.getmembers() if m.isreg()]
    ours = [(m.name, m.header_offset, m.data_offset, m.size) for m in iter_tar_members(path)]
    assert ours == reference


def _read(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def _check_against_webdataset(path: str, index) -> None:
    samples = list(wds.WebDataset(path, shardshuffle=False))
    assert index.keys == [s["__key__"] for s in samples]
    for i, sample in enumerate(samples):
        files = {k: v for k, v in sample.items() if not k.startswith("__")}
        assert sorted(ext for ext, _, _ in index.members[i]) == sorted(files)
        for ext, offset, size in index.members[i]:
            assert _read(path, offset, size) == files[ext]


def _check_byte_range_reader(path: str, index) -> None:
    """The pruned reader's header check accepts every sample and reads the same bytes as webdataset
    (verifying every sample's checksum as it goes)."""
    reference = list(wds.WebDataset(path, shardshuffle=False))
    with ShardFile(path, index, fadvise=False, verify=True) as shard:
        for i in range(len(index)):
            shard.check_sample(i)
        got = list(read_runs(shard, np.arange(len(index)), path, max_run_bytes=4096))
    assert len(got) == len(reference)
    for ours, theirs in zip(got, reference):
        assert {k: v for k, v in ours.items() if not k.startswith("__")} == {
            k: v for k, v in theirs.items() if not k.startswith("__")
        }
        assert ours["__key__"] == theirs["__key__"]


def _check_ranges(path: str, index) -> None:
    """Each sample's range starts at its first header and ends after its last member's padding."""
    with tarfile.open(path, "r:", encoding="utf-8") as tf:
        members = [m for m in tf.getmembers() if m.isreg()]
    by_data_offset = {m.offset_data: m for m in members}
    for i in range(len(index)):
        first = by_data_offset[index.members[i][0][1]]
        last_ext, last_offset, last_size = index.members[i][-1]
        assert index.start[i] == first.offset
        assert index.end[i] == last_offset + -(-last_size // BLOCK) * BLOCK
        assert index.start[i] % BLOCK == 0 and index.end[i] % BLOCK == 0
    assert list(index.start) == sorted(index.start)
    assert all(index.end[:-1] <= index.start[1:])


def _check_companion(path: str, index) -> None:
    """The compact companion rebuilds every field exactly (gaps of skipped entries included)."""
    sidecar = path + ".index.json"
    save_index(index, sidecar)
    got = load_index(sidecar)
    if any("\0" in k for k in index.keys) or not os.path.exists(companion_path(sidecar)):
        assert isinstance(got.members, list)  # keys a companion cannot hold: the JSON is used
    else:
        assert isinstance(got.members, MemberTable)
    assert got.keys == index.keys and np.array_equal(got.labels, index.labels)
    assert np.array_equal(got.start, index.start) and np.array_equal(got.end, index.end)
    assert list(got.members) == [list(g) for g in index.members]
    assert got.checksums.tolist() == index.checksums.tolist() and got.checksum_algorithm == index.checksum_algorithm


def _check_ranged_walk(path: str, index) -> None:
    """The header walk by ranged reads (remote --no-checksum) finds the same index, whatever the window sizes."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        fd = fh.fileno()
        # tiny windows: headers and PAX/long-name payloads straddle window ends
        for window, low in ((64 << 10, 4 << 10), (BLOCK + 100, BLOCK)):
            reads: list[tuple[int, int]] = []

            def read(a, b, reads=reads):
                reads.append((a, b))
                assert 0 <= a < b <= size
                return os.pread(fd, b - a, a)

            view = RangedView(read, size, window=window, min_window=low)
            got = index_tar_ranges(view, index.shard)
            assert got.keys == index.keys and got.shard_bytes == index.shard_bytes
            assert np.array_equal(got.start, index.start) and np.array_equal(got.end, index.end)
            assert list(got.members) == [list(g) for g in index.members] and got.checksums is None
            assert view.bytes_read == sum(b - a for a, b in reads)


@pytest.mark.integration
@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
@SETTINGS
@given(spec=tar_spec)
def test_index_matches_tarfile_and_webdataset_on_generated_tars(fmt_name, spec):
    fmt = FORMATS[fmt_name]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "shard.tar")
        expected = _build_tar(path, spec, fmt)
        _check_against_tarfile(path)
        index = index_tar(path)
        _check_against_webdataset(path, index)
        _check_ranges(path, index)
        _check_byte_range_reader(path, index)
        _check_companion(path, index)
        _check_ranged_walk(path, index)
        # and both agree with what was written
        assert index.keys == [key for key, _ in expected]
        for i, (_key, files) in enumerate(expected):
            got = {ext: _read(path, off, size) for ext, off, size in index.members[i]}
            assert got == files
        assert index.shard_bytes == os.path.getsize(path)


@SETTINGS
@given(
    samples=st.lists(
        st.tuples(
            st.text(_NAME_CHARS, min_size=0, max_size=250),
            st.lists(st.sampled_from(["png", "seg.png", "json", "txt"]), min_size=1, max_size=3, unique=True),
            st.integers(0, 120_000),
            st.integers(0, 99),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_index_matches_webdataset_tarwriter_output(samples):
    rng = random.Random(len(samples))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "wds.tar")
        written = []
        with wds.TarWriter(path) as sink:
            for i, (tail, exts, size, label) in enumerate(samples):
                obj = {"__key__": f"dir{i % 2}/k{i}{tail}", "cls": str(label).encode()}
                for ext in exts:
                    obj[ext] = rng.randbytes(size)
                sink.write(obj)
                written.append(obj)
        _check_against_tarfile(path)
        index = index_tar(path, label_ext="cls")
        _check_against_webdataset(path, index)
        _check_byte_range_reader(path, index)
        assert index.keys == [obj["__key__"] for obj in written]
        assert index.labels.tolist() == [label for *_, label in samples]
        for i, obj in enumerate(written):
            for ext, offset, size in index.members[i]:
                assert _read(path, offset, size) == obj[ext]


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
def test_long_and_non_ascii_names_index_and_read_back_through_the_pruned_reader(tmp_path, fmt_name):
    names = ["café.txt", "d" * 60 + "/" + "e" * 60 + ".seg.png", "日本語/ß" + "é" * 40 + ".json", "plain.cls"]
    path = tmp_path / f"{fmt_name}.tar"
    with tarfile.open(path, "w", format=FORMATS[fmt_name]) as tf:
        for n, name in enumerate(names):
            info = tarfile.TarInfo(name)
            info.size = 10 + n
            tf.addfile(info, io.BytesIO(name.encode()[: 10 + n].ljust(10 + n, b"#")))
    manifest = index_shards([path], tmp_path / "idx", label_ext=None, progress=False)
    got = {s["__key__"]: s for s in PrunedWebDataset(manifest)}
    expected = {s["__key__"]: s for s in wds.WebDataset(os.fspath(path), shardshuffle=False)}
    assert set(got) == set(expected) == {split_key_ext(n)[0] for n in names}
    for key, sample in expected.items():
        for ext, data in sample.items():
            if not ext.startswith("__"):
                assert got[key][ext] == data


def test_gnu_long_name_entry_is_parsed(tmp_path):
    name = "nested/" + "d" * 120 + "/" + "k" * 150 + ".seg.png"
    path = tmp_path / "gnu.tar"
    data = b"payload" * 100
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    raw = path.read_bytes()
    assert raw[156:157] == b"L" and raw[:13] == b"././@LongLink"  # a real GNU long-name entry
    (member,) = list(iter_tar_members(path))
    assert member.name == name
    assert member.header_offset == 0
    assert raw[member.data_offset : member.data_offset + member.size] == data
    index = index_tar(path)
    assert index.keys == ["nested/" + "d" * 120 + "/" + "k" * 150]
    assert [ext for ext, _, _ in index.members[0]] == ["seg.png"]
    assert index.start[0] == 0


def test_pax_path_record_overrides_truncated_header_name(tmp_path):
    name = "é" * 60 + "/" + "ü" * 200 + ".txt"
    path = tmp_path / "pax.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(name)
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    raw = path.read_bytes()
    assert raw[156:157] == b"x"
    (member,) = list(iter_tar_members(path))
    assert member.name == name and member.header_offset == 0 and member.size == 3


@pytest.mark.parametrize(
    "name, expected",
    [
        ("x.seg.png", ("x", "seg.png")),
        ("a/b.c/x.seg.png", ("a/b.c/x", "seg.png")),
        ("dir/x.JPG", ("dir/x", "JPG")),
        ("README", (None, None)),
        ("dir.d/README", (None, None)),
        (".hidden", (None, None)),
        ("日本/猫.png", ("日本/猫", "png")),
    ],
)
def test_split_key_ext_splits_at_first_dot_of_basename(name, expected):
    assert split_key_ext(name) == expected


@pytest.mark.integration
def test_parallel_index_shards_writes_the_same_index_and_manifest(tmp_path, labelled_samples, shard_writer):
    import json

    from streamprune.indexing import index_shards

    written = shard_writer(labelled_samples, tmp_path / "data")
    shards = [written.shard_path(k) for k in range(len(written.shards))]
    serial = index_shards(shards, tmp_path / "serial", progress=False)
    parallel = index_shards(shards, tmp_path / "parallel", progress=False, workers=2)
    assert parallel.fingerprint == serial.fingerprint
    for k in range(len(shards)):
        name = os.path.basename(shards[k]) + ".index.json"
        assert (tmp_path / "parallel" / name).read_bytes() == (tmp_path / "serial" / name).read_bytes()
    drop = lambda m: {k: v for k, v in json.load(open(m.path)).items() if k != "created"}  # noqa: E731
    assert drop(parallel) == drop(serial)
