"""The one library call behind each thin CLI command, and what it owns.

``write_dataset`` (``shard``) and ``index_dataset`` (``index``) take paths or URLs and hold the
writers' and indexers' rules; an engine is a context manager; selectors declare their options
as scoring methods do.
"""

from __future__ import annotations

import filecmp
import os

import numpy as np
import pytest

from streamprune import ArgumentError, index_dataset, index_files, storage, write_dataset, write_shards
from streamprune.engine import Engine, LocalEngine
from streamprune.registry import MethodOption
from streamprune.selection import register_selector, selector_options


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, images=rng.integers(0, 256, (30, 8, 8), dtype=np.uint8), labels=np.arange(30) % 3)
    return os.fspath(path)


def _tars(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".tar"))


def test_write_dataset_writes_what_write_shards_writes(tmp_path, npz):
    ours = write_dataset(npz, tmp_path / "a", samples_per_shard=7, seed=3, progress=False)
    reference = write_shards(npz, os.fspath(tmp_path / "b"), samples_per_shard=7, seed=3, progress=False)
    assert _tars(tmp_path / "a") == _tars(tmp_path / "b") and len(_tars(tmp_path / "a")) == 5
    for name in _tars(tmp_path / "a"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False)
    assert ours.keys() == reference.keys() and ours.fingerprint == reference.fingerprint


def test_write_dataset_refuses_what_the_chosen_writer_cannot_do(tmp_path, npz):
    with pytest.raises(ArgumentError, match=r"s3://bucket/ds: FFCV .beton files are written to local disk only"):
        write_dataset(npz, "s3://bucket/ds", format="beton")
    with pytest.raises(ArgumentError, match="resume are for tar shards"):
        write_dataset(npz, tmp_path / "b", format="beton", resume=True)
    with pytest.raises(ArgumentError, match="resume are for tar shards"):
        write_dataset(npz, tmp_path / "b", format="beton", engine="ray")
    with pytest.raises(ArgumentError, match="options of .beton files"):
        write_dataset(npz, tmp_path / "t", write_mode="jpg")
    with pytest.raises(ArgumentError, match="format='zip'"):
        write_dataset(npz, tmp_path / "t", format="zip")
    with pytest.raises(ArgumentError, match="'page-aware' is a layout for .beton files"):
        write_dataset(npz, tmp_path / "t", layout="page-aware")
    with pytest.raises(ArgumentError, match="'class-sorted' is a layout for tar shards"):
        write_dataset(npz, tmp_path / "b", format="beton", layout="class-sorted")
    assert not os.path.exists(tmp_path / "t") and not os.path.exists(tmp_path / "b")  # refused before anything was written


@pytest.mark.integration
def test_index_dataset_indexes_paths_and_urls(tmp_path, npz):
    written = write_shards(npz, os.fspath(tmp_path / "w"), samples_per_shard=10, progress=False)
    local = index_dataset([tmp_path / "w"], tmp_path / "i", workers=1, progress=False)
    reference = index_files([os.fspath(tmp_path / "w")], tmp_path / "r", workers=1, progress=False)
    assert local.keys() == reference.keys() == written.keys()
    assert local.labels().tolist() == written.labels().tolist()
    prefix = "memory://thin-calls/shards"
    urls = []
    for name in _tars(tmp_path / "w"):
        storage.put_file(os.fspath(tmp_path / "w" / name), f"{prefix}/{name}")
        urls.append(f"{prefix}/{name}")
    remote = index_dataset(urls, tmp_path / "u", workers=2, progress=False)
    assert remote.keys() == written.keys() and [remote.shard_path(k) for k in range(len(urls))] == urls
    with pytest.raises(ArgumentError, match="resume is for local shards"):
        index_dataset(urls, tmp_path / "u2", resume=True)


class _Counting(Engine):
    name = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


@pytest.mark.integration
def test_an_engine_is_closed_on_leaving_its_with_block_however_it_ends():
    with _Counting() as engine:
        pass
    assert engine.closed == 1
    failing = _Counting()
    with pytest.raises(RuntimeError, match="inside"), failing:
        raise RuntimeError("inside")
    assert failing.closed == 1
    with LocalEngine(1) as local:
        assert local.map(_double, [1, 2, 3]) == [2, 4, 6]


def _double(state, x):
    return 2 * x


def test_selectors_declare_their_options_with_defaults_from_the_signature():
    assert [(o.name, o.type, o.default) for o in selector_options("ccs")] == [("beta", float, None), ("strata", int, 50)]
    assert [(o.name, o.default) for o in selector_options("flexrand")] == [("gamma", 0.5)]
    assert selector_options("top") == ()

    def picky(scores, ratio, ctx, width: int = 3):
        return np.arange(1)

    register_selector("test-only-picky", options=(MethodOption("width", int, "how wide"),))(picky)
    assert selector_options("test-only-picky")[0].default == 3
    with pytest.raises(TypeError, match="declares option 'depth' but takes no such argument"):
        register_selector("test-only-bad", options=(MethodOption("depth", int, "how deep"),))(picky)
