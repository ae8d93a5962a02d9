"""Fuzzing the readers: every mutated input reads correctly or raises a named StreamPruneError.

Hypothesis draws the mutations (what ``tests/fuzzer.py`` draws from a seeded Random in its
longer runs: ``python -m tests.fuzzer`` or ``python -m benchmarks fuzz``) and shrinks a failing
one; each input runs under a watchdog, so a hang fails the test instead of stalling it. The tests at the end pin the bugs
the fuzzer found.
"""

from __future__ import annotations

import json
import os
import re
import struct

import pytest
from fuzzer import build_corpus, extended_header, fix_checksum, make_targets, run_one
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamprune.errors import IndexMismatchError, ManifestError, MaskMismatchError, TarFormatError
from streamprune.indexfile import load_index
from streamprune.manifest import Manifest
from streamprune.masks import MaskFile, random_mask
from streamprune.tarindex import index_tar, iter_tar_members

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class HypothesisDraw:
    """The mutators' draw interface, backed by hypothesis (so failures shrink)."""

    def __init__(self, data) -> None:
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def bytes(self, n: int) -> bytes:
        return self.data.draw(st.binary(min_size=n, max_size=n))

    def choice(self, seq):
        return seq[self.int(0, len(seq) - 1)]


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    corpus = build_corpus(str(tmp_path_factory.mktemp("fuzz")))
    made = make_targets(corpus)
    yield made
    for target in made.values():
        target.cleanup()


def _fuzz_one(target, data) -> None:
    inp = target.make(HypothesisDraw(data))
    try:
        outcome = run_one(target.check, inp, hang_seconds=10.0)
    finally:
        target.cleanup()
    # "stale" (a damaged index companion loaded as a different index) is a failure like the
    # others: the companion's digest covers its meta and columns, so damage must be refused
    assert outcome.kind in ("ok", "named"), outcome.describe(inp)


@pytest.mark.integration
@FUZZ
@given(data=st.data())
def test_tar_walker_and_index_tar_on_mutated_tars(targets, data):
    _fuzz_one(targets["tar"], data)


@pytest.mark.integration
@pytest.mark.parametrize("target", ["index", "mask", "manifest"])  # load_index, MaskFile, Manifest.load
@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_loading_a_mutated_file(targets, target, data):
    _fuzz_one(targets[target], data)


@pytest.mark.integration
@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_pruned_webdataset_over_a_mutated_shard(targets, data):
    _fuzz_one(targets["e2e"], data)


# ---------------------------------------------------------------------------------------------
# the bugs the fuzzer found, pinned


def _tar_with(tmp_path, before: bytes, member_size_field: bytes | None = None) -> str:
    head = bytearray(extended_header(b"0", b"")[:512])  # a regular member header
    head[0:6] = b"k.cls\0"
    if member_size_field is not None:
        head[124:136] = member_size_field
    fix_checksum(head, 0)
    path = tmp_path / "x.tar"
    path.write_bytes(before + bytes(head) + bytes(1024))
    return str(path)


@pytest.mark.timeout(20)
def test_negative_base256_size_of_an_extended_header_is_an_error_not_an_endless_walk(tmp_path):
    ext = bytearray(extended_header(b"x", b""))
    ext[124:136] = b"\xff" * 12  # base-256 -1
    fix_checksum(ext, 0)
    path = _tar_with(tmp_path, bytes(ext))
    with pytest.raises(TarFormatError, match="negative size"):
        list(iter_tar_members(path))


def test_signed_octal_member_size_is_a_tar_format_error(tmp_path):
    path = _tar_with(tmp_path, b"", b"-1".ljust(12, b"\0"))
    with pytest.raises(TarFormatError, match=r"x\.tar: corrupt tar header at byte 0: negative size"):
        index_tar(path, label_ext=None)


@pytest.mark.parametrize("size", [b"1_000", b"abc", b"-5", b" 12"])
def test_pax_size_that_is_not_a_decimal_number_is_a_tar_format_error(tmp_path, size):
    record = b" size=" + size + b"\n"
    record = str(len(record) + 2).encode() + record
    path = _tar_with(tmp_path, extended_header(b"x", record))
    with pytest.raises(TarFormatError, match="PAX header.*not a decimal number"):
        list(iter_tar_members(path))


def test_manifest_nested_too_deeply_is_a_manifest_error(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text('{"format": "streamprune-manifest", "version": 1, "shards": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.load(path)


@pytest.mark.parametrize(
    "change, field",
    [({"samples": "6"}, "samples"), ({"bytes": -1}, "bytes"), ({"name": 3}, "name"), ({"index": "\udcff"}, "index"),
     ({"samples": 2**64}, "samples")],
)
def test_manifest_shard_entry_of_the_wrong_type_names_the_field(tmp_path, small_dataset, change, field):
    with open(small_dataset.path, "rb") as fh:
        obj = json.load(fh)
    obj["shards"][0].update(change)
    obj["num_samples"] = sum(s["samples"] for s in obj["shards"]) if field != "samples" else obj["num_samples"]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(ManifestError, match=f"shard entry 0: '{field}'"):
        Manifest.load(path)


def test_load_index_of_a_directory_or_ill_typed_fields_is_a_manifest_error(tmp_path, small_dataset):
    with pytest.raises(ManifestError, match="cannot be read"):
        load_index(tmp_path)
    src = small_dataset.resolve(small_dataset.shards[0].index)
    obj = json.loads(open(src, "rb").read())
    obj["members"][0][0][1] = [1]
    path = tmp_path / "x.index.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(ManifestError, match="x.index.json: malformed shard index: sample 0: members"):
        load_index(path)


def test_mask_header_length_past_the_file_and_bad_fields_are_mask_mismatch_errors(tmp_path, small_dataset):
    good = tmp_path / "good.spmask"
    random_mask(small_dataset, 0.5).save(good)
    raw = good.read_bytes()
    bad = tmp_path / "bad.spmask"
    bad.write_bytes(raw[:8] + struct.pack("<Q", 2**64 - 1) + raw[16:])
    with pytest.raises(MaskMismatchError, match="bad.spmask: mask header is truncated"):
        MaskFile(bad)
    (length,) = struct.unpack("<Q", raw[8:16])
    header = json.loads(raw[16 : 16 + length])
    header["shards"][0]["nbytes"] = 2.5
    text = json.dumps(header).encode()
    bad.write_bytes(raw[:8] + struct.pack("<Q", len(text)) + text + raw[16 + length :])
    with pytest.raises(MaskMismatchError, match="malformed mask header: shard entry 0"):
        MaskFile(bad)


def test_damaged_index_companion_is_refused(tmp_path, small_dataset):
    """A truncated companion is never read as the index: the error names it; without it the JSON is."""
    src = small_dataset.resolve(small_dataset.shards[0].index)
    # the index's own companion(s); the key-hash sidecar of the duplicate-key check is not read by load_index
    companions = [n for n in os.listdir(os.path.dirname(src))
                  if n.startswith(os.path.basename(src)[: -len(".json")]) and not n.endswith(".keyhash.npy")]
    assert companions  # whatever save_index writes beside the JSON
    expected = load_index(src)
    for name in companions:
        path = os.path.join(os.path.dirname(src), name)
        if path == src:
            continue
        data = open(path, "rb").read()
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
        with pytest.raises(IndexMismatchError, match=re.escape(name)):
            load_index(src)
        os.unlink(path)
        index = load_index(src)
        assert index.keys == expected.keys and list(index.start) == list(expected.start)


def test_a_json_mutation_that_nests_a_document_in_itself_falls_back_to_byte_mutations(monkeypatch):
    """A cyclic document cannot be a file: the mutator mutates bytes instead of failing the campaign."""
    from tests import fuzzer

    def cyclic(obj, draw, ops):
        obj = {"a": 1}
        obj["self"] = obj
        return obj

    monkeypatch.setattr(fuzzer, "mutate_json_obj", cyclic)
    draw = fuzzer.RandomDraw(__import__("random").Random(0))
    for _ in range(20):
        out = fuzzer.mutate_json(b'{"k": [1, 2]}', draw, ["flip"])
        assert isinstance(out, bytes)


def test_length_preserving_tar_mutations_of_an_empty_shard_do_not_fail():
    """An earlier mutation can empty a shard; the next length-preserving one has no byte to overwrite."""
    import random

    from tests import fuzzer

    draw = fuzzer.RandomDraw(random.Random(1))
    for _ in range(500):
        assert isinstance(fuzzer.mutate_tar(b"", draw, [], length_preserving=True), bytes)
