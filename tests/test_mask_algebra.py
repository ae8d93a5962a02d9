"""Mask algebra: operators on KeepMask / MaskFile, combine_masks, provenance, translation, the CLI."""

import os

import numpy as np
import pytest
from click.testing import CliRunner

from streamprune.errors import MaskMismatchError
from streamprune.masks import KeepMask, MaskFile, combine_masks, mask_from_bool, random_mask
from streamprune_cli.main import cli


@pytest.fixture
def two(small_dataset):
    a = random_mask(small_dataset, 0.5, seed=1)
    b = random_mask(small_dataset, 0.3, seed=2)
    return small_dataset, a, b


def test_operators_match_numpy(two):
    m, a, b = two
    x, y = a.keep, b.keep
    assert np.array_equal((a & b).keep, x & y)
    assert np.array_equal((a | b).keep, x | y)
    assert np.array_equal((~a).keep, ~x)
    assert np.array_equal((a - b).keep, x & ~y)
    out = a & b
    assert isinstance(out, KeepMask) and out.manifest is m
    assert out.provenance["operation"] == "and" and len(out.provenance["operands"]) == 2
    assert out.provenance["operands"][0]["digest"] == a.digest()
    assert out.provenance["operands"][1]["provenance"]["seed"] == 2
    assert out.provenance["ratio"] == pytest.approx(1 - out.kept / m.num_samples, abs=1e-6)


def test_mask_files_combine_and_record_their_paths(two, tmp_path):
    m, a, b = two
    fa = MaskFile(a.save(tmp_path / "a.spmask"))
    fb = MaskFile(b.save(tmp_path / "b.spmask"))
    assert np.array_equal((fa & b).keep, a.keep & b.keep)  # a file with an in-memory mask: its manifest
    assert np.array_equal((a | fb).keep, a.keep | b.keep)
    with pytest.raises(MaskMismatchError, match="do not know their manifest"):
        fa & fb
    out = combine_masks("minus", [fa, os.fspath(tmp_path / "b.spmask")], manifest=m)
    assert np.array_equal(out.keep, a.keep & ~b.keep)
    assert out.provenance["operands"][0]["path"] == os.path.abspath(fa.path)
    assert fa.digest() == a.digest()
    saved = MaskFile(out.save(tmp_path / "c.spmask"))
    assert saved.provenance["operands"][1]["path"].endswith("b.spmask")


def test_arity_and_unknown_operations(two):
    m, a, b = two
    with pytest.raises(ValueError, match="two or more"):
        combine_masks("and", [a])
    with pytest.raises(ValueError, match="takes 1 mask"):
        combine_masks("not", [a, b])
    with pytest.raises(ValueError, match="must be one of"):
        combine_masks("xor", [a, b])
    assert combine_masks("or", [a, b, ~a]).kept == m.num_samples


def test_other_dataset_is_refused_naming_both(tmp_path, shard_writer, sample_factory, small_dataset):
    other = shard_writer(sample_factory(40, prefix="o"), tmp_path / "other")
    a = random_mask(small_dataset, 0.5, seed=0)
    b = random_mask(other, 0.5, seed=0)
    with pytest.raises(MaskMismatchError) as err:
        a & b
    assert str(other.path) in str(err.value) and str(small_dataset.path) in str(err.value)
    fb = MaskFile(b.save(tmp_path / "b.spmask"))
    with pytest.raises(MaskMismatchError, match="b.spmask"):
        a & fb


def test_same_samples_other_layout_are_translated(tmp_path, shard_writer, labelled_samples, small_dataset):
    wide = shard_writer(labelled_samples, tmp_path / "wide", samples_per_shard=20)  # same keys, another manifest
    assert wide.fingerprint != small_dataset.fingerprint
    a = random_mask(small_dataset, 0.5, seed=3)
    b = random_mask(wide, 0.5, seed=4)
    out = a & b  # b is carried over to a's manifest by key
    keys_a, keys_b = small_dataset.keys(), wide.keys()
    kept_b = {k for k, keep in zip(keys_b, b.keep) if keep}
    expected = np.array([keep and k in kept_b for k, keep in zip(keys_a, a.keep)])
    assert np.array_equal(out.keep, expected)
    assert out.provenance["operands"][1]["translated_from"] == wide.fingerprint
    fb = MaskFile(b.save(tmp_path / "b.spmask"))
    with pytest.raises(MaskMismatchError, match="give the manifest it was made for"):
        combine_masks("and", [a, fb])
    assert np.array_equal(combine_masks("and", [a, fb], source_manifests=[wide.path]).keep, expected)


def test_cli_algebra(two, tmp_path):
    m, a, b = two
    pa, pb = a.save(tmp_path / "a.spmask"), b.save(tmp_path / "b.spmask")
    runner = CliRunner()
    for flag, args, expected in [
        ("--and", [pa, pb], a.keep & b.keep), ("--or", [pa, pb, pb], a.keep | b.keep),
        ("--not", [pa], ~a.keep), ("--minus", [pa, pb], a.keep & ~b.keep),
    ]:
        out = tmp_path / f"{flag[2:]}.spmask"
        r = runner.invoke(cli, ["mask", m.path, flag, *args, "--out", str(out)])
        assert r.exit_code == 0, r.output
        assert np.array_equal(MaskFile(out).to_bool(), expected)
    r = runner.invoke(cli, ["mask", m.path, "--not", pa, pb, "--out", str(tmp_path / "x.spmask")])
    assert r.exit_code == 1 and "takes 1 mask" in r.output  # the library's error: exit 1, usage errors exit 2
    r = runner.invoke(cli, ["mask", m.path, pa, "--random", "--ratio", "0.5", "--out", str(tmp_path / "x.spmask")])
    assert r.exit_code == 2 and "operands of --and" in r.output
    r = runner.invoke(cli, ["mask", m.path, "--and", "--or", pa, pb, "--out", str(tmp_path / "x.spmask")])
    assert r.exit_code == 2


def test_a_mask_combined_with_itself(small_dataset):
    keep = np.zeros(small_dataset.num_samples, bool)
    keep[::3] = True
    m = mask_from_bool(small_dataset, keep)
    assert (m & m).kept == m.kept and (m - m).kept == 0
