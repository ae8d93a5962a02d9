"""The command line's error contract: a user's mistake is one line naming it, a bug is a traceback.

Every error a user can cause is a :class:`StreamPruneError` (the library's contract); the CLI
turns exactly those into ``Error: ...`` and exit status 1. Click's own usage errors (a flag's
value it parses, such as ``--ratio``) exit with 2, also without a traceback. Anything else is a
bug and must not be hidden.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner

from streamprune import ArgumentError, MissingKeysError, StorageError, StreamPruneError
from streamprune_cli.main import cli


def _run(*args):
    return CliRunner().invoke(cli, [os.fspath(a) for a in args])


@pytest.fixture
def two_datasets(tmp_path):
    """Two datasets of one source (4 and 2 shards) and a mask made for the first."""
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "ds.npz", images=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), labels=np.arange(40) % 5)
    for name, per_shard in (("data", "10"), ("other", "20")):
        result = _run("shard", tmp_path / "ds.npz", tmp_path / name, "--samples-per-shard", per_shard, "--quiet")
        assert result.exit_code == 0, result.output
    result = _run("mask", "random", tmp_path / "data", "--ratio", "0.5", "--out", tmp_path / "m.spmask")
    assert result.exit_code == 0, result.output
    return tmp_path / "data" / "manifest.json", tmp_path / "other" / "manifest.json", tmp_path / "m.spmask"


def _damaged_shard(tmp_path, shard) -> str:
    """A copy of ``shard`` cut inside the data of its third member (a truncated download)."""
    with tarfile.open(shard) as tar:
        member = tar.getmembers()[3]
    raw = open(shard, "rb").read()
    path = os.fspath(tmp_path / "damaged.tar")
    with open(path, "wb") as fh:
        fh.write(raw[: member.offset_data + member.size // 2])
    return path


def test_common_bad_inputs_are_one_line_naming_the_thing_and_exit_1(tmp_path, two_datasets):
    manifest, other, mask = two_datasets
    (tmp_path / "keys.txt").write_text("no-such-key\n")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY junk")
    shard = sorted(p for p in os.listdir(tmp_path / "data") if p.endswith(".tar"))[0]
    damaged = _damaged_shard(tmp_path, tmp_path / "data" / shard)
    cases = [  # (command, what the one line must name)
        (("inspect", manifest, "--mask", tmp_path / "nope.spmask"), [os.fspath(tmp_path / "nope.spmask"), "not found"]),
        (("inspect", other, "--mask", mask), [os.fspath(mask), "made for manifest", os.fspath(other)]),
        (("mask", "combine", other, "and", mask, mask, "--out", tmp_path / "x.spmask"), [os.fspath(mask), "masks of different manifests"]),
        (("inspect", tmp_path / "nope" / "manifest.json"), [os.fspath(tmp_path / "nope" / "manifest.json"), "not found"]),
        (("score", manifest, "--method", "no-such-method", "--ratio", "0.5", "--out", tmp_path / "s"),
         ["scoring method 'no-such-method'", "available: "]),
        (("mask", "classes", manifest, "zebra", "--out", tmp_path / "x.spmask"), ["class 'zebra'"]),
        (("mask", "keys", manifest, tmp_path / "keys.txt", "--out", tmp_path / "x.spmask"), ["no-such-key", os.fspath(manifest)]),
        (("mask", "keys", manifest, tmp_path / "junk.npy", "--out", tmp_path / "x.spmask"),
         [os.fspath(tmp_path / "junk.npy"), "not a readable key list"]),
        (("mask", "random", manifest, "--ratio", "0.5", "--out", tmp_path / "afile" / "x.spmask"),
         [os.fspath(tmp_path / "afile" / "x.spmask"), "cannot write"]),
        (("shard", tmp_path / "ds.npz", tmp_path / "afile" / "out", "--quiet"), [os.fspath(tmp_path / "afile" / "out")]),
        (("index", tmp_path / "gone.tar", "--out", tmp_path / "idx", "--quiet"), [os.fspath(tmp_path / "gone.tar"), "not found"]),
        (("index", damaged, "--out", tmp_path / "idx", "--quiet"), [damaged, "truncated"]),
        (("shard", tmp_path / "ds.npz", tmp_path / "beton", "--layout", "class-sorted", "--format", "beton", "--quiet"),
         ["class-sorted", "tar shards"]),
    ]
    for command, needles in cases:
        result = _run(*command)
        assert result.exit_code == 1, (command, result.output, repr(result.exception))
        assert isinstance(result.exception, SystemExit), (command, repr(result.exception))
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (command, result.output)
        for needle in needles:
            assert needle in lines[0], (command, needle, lines[0])
    assert not (tmp_path / "x.spmask").exists() and not (tmp_path / "beton" / "manifest.json").exists()
    # the report is printed before the export fails: the error is still one line, naming the path
    result = _run("inspect", manifest, "--export", tmp_path / "afile" / "kept.txt")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {tmp_path / 'afile' / 'kept.txt'}: cannot write it")


def test_flag_values_click_parses_are_usage_errors_naming_the_flag(tmp_path, two_datasets):
    manifest, _, _ = two_datasets
    for command in (("mask", "random", manifest, "--ratio", "1.5", "--out", tmp_path / "x.spmask"),
                    ("mask", "random", manifest, "--ratio", "-0.1", "--out", tmp_path / "x.spmask"),
                    ("score", manifest, "--method", "random-classes", "--ratio", "0.5,1", "--out", tmp_path / "s")):
        result = _run(*command)
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (command, result.output)
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and "--ratio=" in errors[0] and "must be in [0, 1)" in errors[0], result.output
        assert "Traceback" not in result.output


@pytest.mark.integration
def test_a_bug_shows_its_traceback(tmp_path, two_datasets, monkeypatch):
    """A KeyError or ValueError from a bug is not a user's error: it is not turned into one line."""
    import streamprune_cli.main as main

    manifest, _, _ = two_datasets

    def broken(*args, **kwargs):
        raise KeyError("num_samples")  # what a bug in the report would raise

    monkeypatch.setattr(main, "describe", broken)
    result = _run("inspect", manifest)
    assert isinstance(result.exception, KeyError) and result.exit_code == 1
    assert "Error:" not in result.output
    # the same through the real entry point: Python prints the traceback
    code = ("import streamprune_cli.main as m\n"
            "def broken(*a, **k):\n    raise ValueError('a bug, not a user error')\n"
            "m.describe = broken\nm.main()\n")
    proc = subprocess.run([sys.executable, "-c", code, "inspect", os.fspath(manifest)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "ValueError: a bug, not a user error" in proc.stderr
    assert not any(line.startswith("Error:") for line in (proc.stderr + proc.stdout).splitlines())


def test_user_errors_are_streamprune_errors_with_the_python_base_convention_expects(tmp_path, two_datasets):
    from streamprune.keys import mask_from_keys
    from streamprune.manifest import Manifest
    from streamprune.masks import random_mask
    from streamprune.shardindex import checksum_hasher
    from streamprune.storage import LocalObject, LocalReadError, RemoteError

    manifest = Manifest.load(two_datasets[0])
    with pytest.raises(ArgumentError, match=r"ratio=1.5: must be in \[0, 1\)") as info:
        random_mask(manifest, 1.5)
    assert isinstance(info.value, ValueError)
    with pytest.raises(MissingKeysError) as info:
        mask_from_keys(manifest, ["no-such-key"])
    assert isinstance(info.value, KeyError) and str(info.value).startswith("1 of 1 ids in the key list are not in ")  # the message, not its repr
    with pytest.raises(KeyError) as info:
        checksum_hasher("no-such-hash")
    assert isinstance(info.value, StreamPruneError) and str(info.value).startswith("checksum algorithm 'no-such-hash'")
    short = tmp_path / "short.bin"
    short.write_bytes(b"x" * 10)
    with LocalObject(os.fspath(short)) as obj, pytest.raises(LocalReadError, match=r"short.bin: bytes 5-20: read 5 of 15") as info:
        obj.read(5, 20)
    assert isinstance(info.value, StorageError) and isinstance(info.value, OSError) and not isinstance(info.value, RemoteError)
    assert (info.value.url, info.value.start, info.value.end) == (os.fspath(short), 5, 20)


def test_bad_arguments_of_the_library_calls_are_argument_errors():
    """Arguments a caller gives (not bugs): each is an ArgumentError, so also the ValueError callers catch."""
    from streamprune import rangeclient
    from streamprune.shardmask import CombineMasks
    from streamprune.topk import find_cut

    cases = [
        (lambda: rangeclient.configure(max_connections=0), "max_connections=0 must be positive"),
        (lambda: CombineMasks(["a.spmask"], "xor"), "op='xor': must be one of"),
        (lambda: CombineMasks(["a.spmask"], "and"), "op='and' takes two or more masks, got 1"),
        (lambda: find_cut([2, 3], lambda k: np.zeros(0), 6), "k=6: must be within 0..5"),
    ]
    for call, message in cases:
        with pytest.raises(ArgumentError, match=message) as info:
            call()
        assert isinstance(info.value, ValueError)
