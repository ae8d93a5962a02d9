"""The command line: shard, index, mask, inspect, and one-line errors instead of tracebacks."""

from __future__ import annotations

import gzip
import io
import json
import os

import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner
from PIL import Image

from streamprune import Manifest, MaskFile
from streamprune_cli.main import cli


def _run(*args):
    return CliRunner().invoke(cli, [os.fspath(a) for a in args])


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    return result.output


def _fails_cleanly(result, *needles):
    """Non-zero exit, click handled it (no traceback), and one 'Error:' line naming the problem."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], result.output
    return errors[0]


@pytest.fixture
def npz_path(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (18, 10, 10), dtype=np.uint8)
    labels = np.arange(18) % 3
    path = tmp_path / "d.npz"
    np.savez(path, images=images, labels=labels, class_names=np.array(["a", "b", "c"]))
    return path


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(1)
    for _c, cls in enumerate(["zebra", "ape", "moth", "kiwi"]):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(buf, format="PNG")
            (root / cls / f"img {i}.png").write_bytes(buf.getvalue())
    return root


def test_shard_npz_with_options(tmp_path, npz_path):
    out = tmp_path / "out"
    output = _ok(
        _run("shard", npz_path, out, "--samples-per-shard", "5", "--no-shuffle", "--seed", "3",
             "--workers", "2", "--quality", "40", "--quiet")
    )
    assert output.strip() == f"18 samples, 4 shards, 3 classes -> {out / 'manifest.json'}"
    manifest = Manifest.load(out)
    assert [s.samples for s in manifest.shards] == [5, 5, 5, 3]
    assert manifest.classes == ["a", "b", "c"]
    assert manifest.keys() == [f"{i:08d}" for i in range(18)]  # --no-shuffle keeps order
    jpg = {ext for k in range(4) for g in manifest.index(k).members for ext, _, _ in g}
    assert jpg == {"jpg", "cls"}


def test_shard_class_sorted_layout_and_a_layout_of_the_other_format(tmp_path, npz_path):
    _ok(_run("shard", npz_path, tmp_path / "out", "--samples-per-shard", "6", "--layout", "class-sorted", "--quiet"))
    labels = Manifest.load(tmp_path / "out").labels().tolist()
    assert labels == sorted(labels) and len(set(labels)) == 3
    result = _run("shard", npz_path, tmp_path / "bad", "--layout", "page-aware", "--quiet")
    assert result.exit_code == 1 and "layout='page-aware' is a layout for .beton files" in result.output
    assert not (tmp_path / "bad" / "manifest.json").exists()


def test_shard_quality_option_changes_jpeg_size(tmp_path, npz_path):
    sizes = {}
    for quality in ("10", "95"):
        _ok(_run("shard", npz_path, tmp_path / quality, "--quality", quality, "--quiet"))
        m = Manifest.load(tmp_path / quality)
        sizes[quality] = sum(size for g in m.index(0).members for ext, _, size in g if ext == "jpg")
    assert sizes["10"] < sizes["95"]


def test_shard_image_folder_seeded_and_parallel(tmp_path, image_folder):
    _ok(_run("shard", image_folder, tmp_path / "a", "--samples-per-shard", "5", "--seed", "4", "--workers", "2", "--quiet"))
    _ok(_run("shard", image_folder, tmp_path / "b", "--samples-per-shard", "5", "--seed", "4", "--quiet"))
    a, b = Manifest.load(tmp_path / "a"), Manifest.load(tmp_path / "b")
    assert a.classes == ["ape", "kiwi", "moth", "zebra"]
    assert a.num_samples == 12 and [s.samples for s in a.shards] == [5, 5, 2]
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    assert set(a.keys()) == {f"{c}/img_{i}" for c in a.classes for i in range(3)}
    # files copied unchanged
    sample = next(iter(wds.WebDataset(a.shard_path(0), shardshuffle=False)))
    cls, name = sample["__key__"].split("/")
    assert sample["png"] == (image_folder / cls / (name.replace("_", " ") + ".png")).read_bytes()


@pytest.fixture
def tarwriter_shards(tmp_path):
    paths = []
    for s in range(2):
        path = tmp_path / "wds" / f"part-{s}.tar"
        path.parent.mkdir(exist_ok=True)
        with wds.TarWriter(os.fspath(path)) as sink:
            for i in range(8):
                sink.write({"__key__": f"p{s}_{i:02d}", "txt": f"text {s} {i}" * (i + 1), "cls": i % 4})
        paths.append(path)
    return paths


def test_index_tarwriter_shards_with_out(tmp_path, tarwriter_shards):
    out = tmp_path / "idx"
    output = _ok(_run("index", *tarwriter_shards, "--out", out, "--quiet"))
    assert output.strip() == f"16 samples in 2 shards -> {out / 'manifest.json'}"
    manifest = Manifest.load(out)
    assert manifest.keys() == [f"p{s}_{i:02d}" for s in range(2) for i in range(8)]
    assert manifest.labels().tolist() == [i % 4 for _ in range(2) for i in range(8)]
    assert manifest.class_counts == [4, 4, 4, 4]
    assert (out / "part-0.tar.index.json").exists()
    assert os.path.realpath(manifest.shard_path(1)) == os.path.realpath(tarwriter_shards[1])


def _sharded(tmp_path, npz_path=None):
    out = tmp_path / "data"
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (40, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "ds.npz", images=images, labels=np.arange(40) % 5)
    _ok(_run("shard", tmp_path / "ds.npz", out, "--samples-per-shard", "10", "--quiet"))
    return out / "manifest.json"


def test_mask_random_class_level_and_inspect_json(tmp_path):
    manifest_path = _sharded(tmp_path)
    mask_path = tmp_path / "m.spmask"
    output = _ok(_run("mask", "random", manifest_path, "--ratio", "0.6", "--level", "class", "--seed", "1", "--out", mask_path))
    mf = MaskFile(mask_path)
    manifest = Manifest.load(manifest_path)
    labels = manifest.labels()
    kept_classes = sorted(set(labels[mf.to_bool()].tolist()))
    assert len(kept_classes) == 5 - round(5 * 0.6)
    assert mf.kept == 8 * len(kept_classes)
    assert output.strip() == f"kept {mf.kept} of 40 samples -> {mask_path}"
    assert mf.provenance["level"] == "class" and mf.provenance["seed"] == 1

    info = json.loads(_ok(_run("inspect", manifest_path, "--mask", mask_path, "--json")))
    keep = mf.to_bool()
    sizes = manifest.sample_bytes()
    assert info["samples"] == 40 and info["kept"] == mf.kept
    assert [row["kept"] for row in info["per_shard"]] == mf.shard_kept_counts().tolist()
    assert [row["samples"] for row in info["per_shard"]] == [10, 10, 10, 10]
    bounds = manifest.shard_offsets
    assert [row["kept_bytes"] for row in info["per_shard"]] == [
        int(sizes[bounds[k] : bounds[k + 1]][keep[bounds[k] : bounds[k + 1]]].sum()) for k in range(4)
    ]
    assert [row["kept"] for row in info["per_class"]] == [8 if c in kept_classes else 0 for c in range(5)]
    assert [row["samples"] for row in info["per_class"]] == [8] * 5
    assert info["kept_bytes"] == int(sizes[keep].sum()) == sum(row["kept_bytes"] for row in info["per_shard"])
    assert info["expected_speedup"] == pytest.approx(40 / mf.kept)
    assert info["classes_kept"] == len(kept_classes)
    assert info["provenance"]["method"] == "random"


def test_mask_by_classes_and_keys_then_inspect_table(tmp_path):
    manifest_path = _sharded(tmp_path)
    _ok(_run("mask", "classes", manifest_path, "0,3", "--out", tmp_path / "c.spmask"))  # no --ratio needed
    assert MaskFile(tmp_path / "c.spmask").kept == 16
    assert MaskFile(tmp_path / "c.spmask").provenance["kept_classes"] == [0, 3]
    keys = Manifest.load(manifest_path).keys()[:7]
    (tmp_path / "keys.txt").write_text("\n".join(keys) + "\n")
    _ok(_run("mask", "keys", manifest_path, tmp_path / "keys.txt", "--out", tmp_path / "k.spmask"))
    assert MaskFile(tmp_path / "k.spmask").kept == 7
    table = _ok(_run("inspect", manifest_path, "--mask", tmp_path / "k.spmask"))
    assert "7 kept of 40" in table


def test_the_old_mask_flags_are_deprecated_aliases_of_the_subcommands(tmp_path, caplog):
    from streamprune.scores import ScoreFile

    manifest_path = _sharded(tmp_path)
    manifest = Manifest.load(manifest_path)
    keys = manifest.keys()
    (tmp_path / "keys.txt").write_text("\n".join(keys[:7]) + "\n")
    scores = ScoreFile(method="test", level="sample", scores=np.arange(40.0), ranking=np.arange(40)[::-1].copy(), harder="higher",
                       manifest_fingerprint=manifest.fingerprint)
    scores_path = scores.save(tmp_path / "scores.json")
    _ok(_run("mask", "random", manifest_path, "--ratio", "0.5", "--out", tmp_path / "a.spmask"))
    _ok(_run("mask", "random", manifest_path, "--ratio", "0.25", "--seed", "2", "--out", tmp_path / "b.spmask"))
    pairs = [  # (subcommand form, old flag form, the subcommand the warning names)
        (["random", manifest_path, "--ratio", "0.5", "--level", "class", "--seed", "4"],
         [manifest_path, "--random", "--ratio", "0.5", "--level", "class", "--seed", "4"], "random"),
        (["scores", manifest_path, scores_path, "--ratio", "0.3", "--selector", "ccs", "--strata", "4"],
         [manifest_path, "--scores", scores_path, "--ratio", "0.3", "--selector", "ccs", "--strata", "4"], "scores"),
        (["keys", manifest_path, tmp_path / "keys.txt"], [manifest_path, "--keys", tmp_path / "keys.txt"], "keys"),
        (["keys", manifest_path, tmp_path / "keys.txt", "--drop"], [manifest_path, "--keys-drop", tmp_path / "keys.txt"], "keys"),
        (["classes", manifest_path, "1,4"], [manifest_path, "--classes", "1,4"], "classes"),
        (["combine", manifest_path, "minus", tmp_path / "a.spmask", tmp_path / "b.spmask"],
         [manifest_path, "--minus", tmp_path / "a.spmask", tmp_path / "b.spmask"], "combine"),
    ]
    for k, (new, old, name) in enumerate(pairs):
        caplog.clear()
        new_out, old_out = _ok(_run("mask", *new, "--out", tmp_path / f"new{k}.spmask")), _ok(_run("mask", *old, "--out", tmp_path / f"old{k}.spmask"))
        assert new_out.replace(f"new{k}", f"old{k}") == old_out
        assert np.array_equal(MaskFile(tmp_path / f"new{k}.spmask").to_bool(), MaskFile(tmp_path / f"old{k}.spmask").to_bool())
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warned) == 1 and "is deprecated" in warned[0] and f"use `streamprune mask {name} MANIFEST ...`" in warned[0], warned
    assert MaskFile(tmp_path / "new1.spmask").provenance["selector_options"] == {"strata": 4}
    # an option the chosen selector does not declare is refused, naming it
    result = _run("mask", "scores", manifest_path, scores_path, "--ratio", "0.3", "--gamma", "0.2", "--out", tmp_path / "x.spmask")
    assert result.exit_code == 2 and "--gamma is not an option of --selector top (its options: none)" in result.output
    # without an old kind flag, a first word that is no subcommand is a typo, not an old-form manifest
    result = _run("mask", "randm", manifest_path, "--ratio", "0.5", "--out", tmp_path / "x.spmask")
    assert result.exit_code == 2 and "No such command 'randm'" in result.output


def test_mask_ratio_one_fails_with_one_line_error(tmp_path):
    manifest_path = _sharded(tmp_path)
    result = _run("mask", "random", manifest_path, "--ratio", "1.0", "--out", tmp_path / "m.spmask")
    _fails_cleanly(result, "--ratio", "[0, 1)")
    assert not (tmp_path / "m.spmask").exists()


def test_mask_random_needs_ratio_and_the_old_flag_form_needs_exactly_one_method(tmp_path):
    manifest_path = _sharded(tmp_path)
    _fails_cleanly(_run("mask", "random", manifest_path, "--out", tmp_path / "m.spmask"), "--ratio")
    _fails_cleanly(_run("mask", manifest_path, "--random", "--out", tmp_path / "m.spmask"), "--ratio")
    _fails_cleanly(
        _run("mask", manifest_path, "--random", "--ratio", "0.5", "--classes", "1", "--out", tmp_path / "m.spmask"),
        "exactly one",
    )
    assert not (tmp_path / "m.spmask").exists()


def test_mask_unknown_key_fails_cleanly(tmp_path):
    manifest_path = _sharded(tmp_path)
    (tmp_path / "keys.txt").write_text("nope\n")
    result = _run("mask", "keys", manifest_path, tmp_path / "keys.txt", "--out", tmp_path / "m.spmask")
    _fails_cleanly(result, "nope")


def test_index_missing_shard_fails_with_one_line_error(tmp_path, tarwriter_shards):
    missing = tmp_path / "wds" / "gone.tar"
    result = _run("index", tarwriter_shards[0], missing, "--out", tmp_path / "idx", "--quiet")
    _fails_cleanly(result, os.fspath(missing), "not found")


def test_index_corrupt_tar_fails_with_one_line_error(tmp_path, tarwriter_shards):
    raw = bytearray(tarwriter_shards[1].read_bytes())
    raw[1000:1010] = b"\xff" * 10
    raw = raw[: len(raw) // 2 + 7]
    bad = tmp_path / "wds" / "bad.tar"
    bad.write_bytes(bytes(raw))
    result = _run("index", bad, "--out", tmp_path / "idx", "--quiet")
    _fails_cleanly(result, os.fspath(bad))


def test_index_gzip_shard_fails_saying_to_decompress(tmp_path, tarwriter_shards):
    gz = tmp_path / "wds" / "x.tar.gz"
    gz.write_bytes(gzip.compress(tarwriter_shards[0].read_bytes()))
    result = _run("index", gz, "--out", tmp_path / "idx", "--quiet")
    _fails_cleanly(result, "gzip", "Decompress")


def test_inspect_mask_of_other_dataset_fails_cleanly(tmp_path):
    manifest_path = _sharded(tmp_path)
    _ok(_run("mask", "random", manifest_path, "--ratio", "0.5", "--out", tmp_path / "m.spmask"))
    other = tmp_path / "other"
    other.mkdir()
    _ok(_run("shard", tmp_path / "ds.npz", other / "data", "--samples-per-shard", "20", "--quiet"))
    result = _run("inspect", other / "data" / "manifest.json", "--mask", tmp_path / "m.spmask")
    _fails_cleanly(result, "m.spmask")


def test_os_errors_on_paths_fail_cleanly_naming_the_path(tmp_path, npz_path):
    (tmp_path / "adir.tar").mkdir()
    _fails_cleanly(_run("index", tmp_path / "adir.tar", "--out", tmp_path / "idx", "--quiet"), "adir.tar")
    (tmp_path / "afile").write_text("x")
    _fails_cleanly(_run("shard", npz_path, tmp_path / "afile" / "out", "--quiet"), "afile")


def test_shard_missing_source_fails_cleanly(tmp_path):
    result = _run("shard", tmp_path / "nope", tmp_path / "out", "--quiet")
    _fails_cleanly(result, "nope")


def test_model_flag_is_one_name_with_hidden_deprecated_aliases(tmp_path):
    manifest_path = _sharded(tmp_path)
    for command in ("score", "train-surrogate", "dynamics"):
        help_text = _ok(_run(command, "--help"))
        assert "--model" in help_text
        assert "--surrogate" not in help_text and "--arch" not in help_text
    # an alias still reaches the command (here it fails later, on the missing --out), with a deprecation notice
    result = _run("train-surrogate", manifest_path, "--arch", "resnet18")
    assert "deprecated" in result.output and "--model" in result.output
    _fails_cleanly(result, "--out")
    _fails_cleanly(_run("dynamics", manifest_path, "--arch", "a", "--model", "b", "--epochs", "1", "--out", tmp_path / "d"), "--model")
    _fails_cleanly(_run("train-surrogate", manifest_path, "--out", tmp_path / "c.pt"), "--model")


def test_score_ratio_repeated_or_comma_separated_and_method_options_checked(tmp_path):
    manifest_path = _sharded(tmp_path)
    out = tmp_path / "s"
    output = _ok(_run("score", manifest_path, "--method", "random-classes", "--ratio", "0.2,0.6", "--ratio", "0.4", "--out", out, "-q"))
    written = sorted(p.name for p in out.glob("*.spmask"))
    assert written == ["random-classes-0.2.spmask", "random-classes-0.4.spmask", "random-classes-0.6.spmask"]
    assert output.count("ratio ") == 3
    _fails_cleanly(_run("score", manifest_path, "--method", "random-classes", "--ratio", "0.5,x", "--out", out), "'x'")
    # an option another method declares is refused, naming the method
    _fails_cleanly(
        _run("score", manifest_path, "--method", "random-classes", "--levels", "3", "--ratio", "0.5", "--out", out),
        "--levels", "random-classes",
    )


@pytest.mark.integration
def test_cli_start_up_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, streamprune_cli.main; print(sorted(m for m in ('torch', 'numba', 'webdataset') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_shard_into_another_dataset_refuses_overwrite_replaces_and_resume_says_what_it_skipped(tmp_path, npz_path, caplog):
    out = tmp_path / "out"
    _ok(_run("shard", npz_path, out, "--samples-per-shard", "3", "--quiet"))  # 6 shards
    mask = tmp_path / "m.spmask"
    _ok(_run("mask", "random", out, "--ratio", "0.5", "--out", mask))
    error = _fails_cleanly(_run("shard", npz_path, out, "--samples-per-shard", "9", "--quiet"),
                           f"{out}: already holds another dataset: {out / 'manifest.json'} (6 shards, 18 samples)", "--overwrite")
    assert "--resume" in error
    _ok(_run("inspect", out, "--mask", mask))  # nothing was touched: the mask still holds
    with caplog.at_level("WARNING"):
        output = _ok(_run("shard", npz_path, out, "--samples-per-shard", "9", "--overwrite", "--quiet"))
    assert output.strip() == f"18 samples, 2 shards, 3 classes -> {out / 'manifest.json'}"
    assert "removed the previous dataset's 6 shard(s) and 12 index file(s)" in caplog.text
    assert sorted(n for n in os.listdir(out) if n.endswith(".tar")) == ["shard-000000.tar", "shard-000001.tar"]
    output = _ok(_run("shard", npz_path, out, "--samples-per-shard", "9", "--resume", "--quiet"))
    assert output.splitlines()[-1] == "--resume: ran 0, skipped 2 (already complete) of 2 shards"
    os.unlink(out / "shard-000001.tar")
    output = _ok(_run("shard", npz_path, out, "--samples-per-shard", "9", "--resume", "--quiet"))
    assert output.splitlines()[-1] == "--resume: ran 1, skipped 1 (already complete) of 2 shards"


def test_index_a_directory_indexes_its_tar_shards_in_name_order_and_resume_says_what_it_skipped(tmp_path, tarwriter_shards):
    (tmp_path / "wds" / "notes.txt").write_text("not a shard")
    output = _ok(_run("index", tmp_path / "wds", "--out", tmp_path / "idx", "--quiet"))
    assert output.strip() == f"16 samples in 2 shards -> {tmp_path / 'idx' / 'manifest.json'}"
    by_files = _ok(_run("index", *reversed(tarwriter_shards), "--out", tmp_path / "files", "--quiet"))
    assert "16 samples in 2 shards" in by_files
    m = Manifest.load(tmp_path / "idx")
    assert [s.name for s in m.shards] == ["../wds/part-0.tar", "../wds/part-1.tar"]  # sorted, whatever order the OS lists
    assert m.keys() == sorted(Manifest.load(tmp_path / "files").keys())
    output = _ok(_run("index", tmp_path / "wds", "--out", tmp_path / "idx", "--resume", "--quiet"))
    assert output.splitlines()[-1] == "--resume: ran 0, skipped 2 (already complete) of 2 shards"
    (tmp_path / "empty").mkdir()
    _fails_cleanly(_run("index", tmp_path / "empty", "--out", tmp_path / "x", "--quiet"), str(tmp_path / "empty"), "no *.tar shards")
    assert "directory" in _ok(_run("index", "--help"))


def test_inspect_names_a_url_mask_as_given_not_its_local_copy(tmp_path, monkeypatch):
    from streamprune import storage

    # the in-memory store has no ETags, so a cached copy from an earlier run of this test would be taken for this one's
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    manifest_path = _sharded(tmp_path)
    _ok(_run("mask", manifest_path, "--random", "--ratio", "0.5", "--out", tmp_path / "m.spmask"))
    url = "memory://edges-inspect/masks/m.spmask"
    storage.put_file(os.fspath(tmp_path / "m.spmask"), url)
    table = _ok(_run("inspect", manifest_path, "--mask", url))
    assert f"mask:     {url}\n" in table
    assert json.loads(_ok(_run("inspect", manifest_path, "--mask", url, "--json")))["mask"] == url
    other = tmp_path / "other"
    _ok(_run("shard", tmp_path / "ds.npz", other, "--samples-per-shard", "20", "--quiet"))
    _fails_cleanly(_run("inspect", other, "--mask", url), f"Error: {url}: mask was made for manifest {manifest_path}")


def _help(*args):
    result = CliRunner().invoke(cli, [*args, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # one line: click wraps help at the terminal width


def test_help_texts_read_right():
    score_help = _help("score")
    assert "--clusters INTEGER fm/semdedup/ssp: number of k-means clusters K [default: fm 1000; semdedup N / 1000, at least 1; " \
           "ssp the number of classes]." in score_help
    # the selectors' options come from their declarations, as the methods' do
    assert "--gamma FLOAT flexrand: easy fraction of each class [default: 0.5]." in score_help
    assert "--strata INTEGER ccs: number of equal-width score strata [default: 50]." in score_help
    mask_help = _help("mask", "scores")
    assert "--selector TEXT How the SCORES become a mask: " in mask_help and "With --scores: How" not in mask_help
    assert "--beta FLOAT ccs: fraction of ALL samples dropped first, the hardest [default: 0 when keeping >= 50%, rising to 0.3 " \
           "at 10% kept]." in mask_help
    group_help = _help("mask")
    for sub in ("random", "scores", "keys", "classes", "combine"):
        assert f" {sub} " in group_help
    assert "is deprecated" in group_help


def test_ratio_errors_name_the_flag_that_was_typed(tmp_path):
    manifest_path = _sharded(tmp_path)
    for command in (("score", manifest_path, "--method", "random-classes", "--ratio", "0.5,1.2", "--out", tmp_path / "s"),
                    ("mask", "random", manifest_path, "--ratio", "1.2", "--out", tmp_path / "m.spmask"),
                    ("mask", manifest_path, "--random", "--ratio", "1.2", "--out", tmp_path / "m.spmask")):  # the old form too
        error = _fails_cleanly(_run(*command), "--ratio=1.2: must be in [0, 1)")
        assert "--ratios" not in error


def test_bench_help_lists_every_registered_suite():
    from benchmarks.registry import SUITES

    listed = _help("bench").split("Suites: ", 1)[1].split(".", 1)[0]
    assert listed.split(", ") == list(SUITES) and len(SUITES) >= 11


def test_score_says_which_classes_or_clusters_it_kept(tmp_path, small_dataset):
    from streamprune.masks import random_mask
    from streamprune.report import kept_summary
    from streamprune.scores import ScoreFile
    from streamprune.selection import mask_from_scores

    output = _ok(_run("score", small_dataset.path, "--method", "random-classes", "--ratio", "0.5", "--out", tmp_path / "s", "-q"))
    mask = MaskFile(tmp_path / "s" / "random-classes-0.5.spmask")
    kept = mask.provenance["kept_classes"]
    assert f"ratio 0.5: kept classes {kept} (20 of 40 samples) -> " in output and len(kept) == 2
    assert kept_summary(mask) == f"classes {kept} (20 of 40 samples)"
    assign = np.arange(40) % 25  # 25 clusters of 1 or 2 samples
    scores = ScoreFile.ranked("fm", "cluster", np.arange(25.0)[::-1], higher_is="keep", score_name="votes",
                              manifest_fingerprint=small_dataset.fingerprint, assignments=assign)
    assert kept_summary(mask_from_scores(small_dataset, scores, 0.6)) == "clusters [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] (20 of 40 samples)"
    many = kept_summary(mask_from_scores(small_dataset, scores, 0.0))  # more than 20 ids: the rest counted
    assert many == f"clusters [{', '.join(map(str, range(20)))}, ... 5 more] (40 of 40 samples)"
    assert kept_summary(random_mask(small_dataset, 0.5)) == "20 of 40 samples"
