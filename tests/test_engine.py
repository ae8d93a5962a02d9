"""The engines: local processes and Ray give the same files; retries, resume, errors, the missing extra.

One local Ray instance (2 CPUs) serves the whole module; its workers import this worktree's
code and ``tests/`` (for the task wrappers in ``_engine_tasks``) through ``PYTHONPATH``.
"""

from __future__ import annotations

import filecmp
import functools
import json
import os
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from streamprune.engine import LocalEngine, RayEngine, ThreadEngine, make_engine
from streamprune.errors import StreamPruneError, TarFormatError
from streamprune.indexing import index_shards
from streamprune.masks import MaskFile
from streamprune.optional import MissingExtraError
from streamprune.scores import ScoreFile
from streamprune.scoring import score_source
from streamprune.scoring.features import embed_manifest, surrogate_embed
from streamprune.writers import write_shards
from streamprune_cli.main import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = "tiny_models:tiny"  # tests/ is on the workers' PYTHONPATH


@pytest.fixture(scope="module")
def ray_engine():
    """A Ray engine of 2 workers on one local instance for the module (shut down at the end)."""
    ray = pytest.importorskip("ray")
    path = os.pathsep.join([ROOT, os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        yield RayEngine(workers=2)
    finally:
        ray.shutdown()


def _npz(path, n, seed, label=None):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (n, 8, 8)).astype(np.uint8)
    labels = np.full(n, label) if label is not None else np.arange(n) % 4
    np.savez(path, images=images, labels=labels)
    return str(path)


def _same_files(a, b, ignore=("manifest.json",)):
    names = sorted(n for n in os.listdir(a) if os.path.isfile(os.path.join(a, n)) and n not in ignore)
    assert names == sorted(n for n in os.listdir(b) if os.path.isfile(os.path.join(b, n)) and n not in ignore)
    differ = [n for n in names if not filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False)]
    assert not differ, f"{differ} differ between {a} and {b}"
    return names


def _same_manifest(a, b):
    ma, mb = (json.loads(open(os.path.join(d, "manifest.json")).read()) for d in (a, b))
    ma.pop("created"), mb.pop("created")
    assert ma == mb


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """60 png samples in 9 shards (written by the local engine)."""
    d = tmp_path_factory.mktemp("src")
    return write_shards(_npz(d / "s.npz", 60, 0), d / "shards", samples_per_shard=7, image_format="png", progress=False)


@pytest.mark.slow  # starts a Ray runtime: the Ray engine tests run in the slow tier (CI runs it)
@pytest.mark.integration
def test_shards_and_index_are_identical_on_both_engines(tmp_path, ray_engine, source):
    src = _npz(tmp_path / "s.npz", 50, 3)
    write_shards(src, tmp_path / "local", samples_per_shard=6, progress=False, workers=2)
    write_shards(src, tmp_path / "ray", samples_per_shard=6, progress=False, engine=ray_engine)
    assert ray_engine.last_report.ran and len(ray_engine.last_report.ran) == 9
    assert len(_same_files(tmp_path / "local", tmp_path / "ray")) > 18
    _same_manifest(tmp_path / "local", tmp_path / "ray")
    shards = [source.shard_path(k) for k in range(len(source.shards))]
    index_shards(shards, tmp_path / "ix_local", progress=False, workers=2)
    index_shards(shards, tmp_path / "ix_ray", progress=False, engine=ray_engine)
    assert sorted(ray_engine.last_report.ran) == list(range(9)) and ray_engine.last_report.workers == 2
    _same_files(tmp_path / "ix_local", tmp_path / "ix_ray")
    _same_manifest(tmp_path / "ix_local", tmp_path / "ix_ray")


@pytest.mark.slow  # starts a Ray runtime: the Ray engine tests run in the slow tier (CI runs it)
@pytest.mark.integration
def test_features_scores_and_masks_are_identical_on_both_engines(tmp_path, ray_engine, source):
    target = _npz(tmp_path / "t.npz", 12, 1, label=2)
    kw = dict(target=target, surrogate=ARCH, input_size=10, batch_size=16, progress=False, clusters=4)
    runs = {}
    for name, engine in (("inproc", None), ("local", LocalEngine(2)), ("ray", ray_engine)):
        runs[name] = score_source(source, "fm", [0.5], tmp_path / name, engine=engine, **kw)
    descs = [r.desc for r in ray_engine.reports]
    assert "fm: target" in descs and "kmeans-assign" in descs  # the embedding passes, then k-means, ran on Ray
    for name in ("local", "ray"):  # the per-shard passes, and the in-process streaming pass, write the same cache
        for sub in ("features", os.path.join("features", "target")):
            assert _same_files(tmp_path / "inproc" / sub, tmp_path / name / sub)
        a, b = ScoreFile.load(runs["inproc"]["scores"]), ScoreFile.load(runs[name]["scores"])
        assert np.array_equal(a.scores, b.scores) and np.array_equal(a.assignments, b.assignments)
        assert np.array_equal(MaskFile(runs["inproc"]["masks"][0.5]).to_bool(), MaskFile(runs[name]["masks"][0.5]).to_bool())


@pytest.mark.slow  # starts a Ray runtime: the Ray engine tests run in the slow tier (CI runs it)
@pytest.mark.integration
def test_a_killed_worker_is_retried_and_the_output_is_unchanged(tmp_path, ray_engine, source):
    from _engine_tasks import DieOnce

    class DyingEngine(RayEngine):
        def map(self, fn, tasks, **kwargs):
            return super().map(DieOnce(fn, str(markers)), tasks, **kwargs)

    markers = tmp_path / "markers"
    markers.mkdir()
    shards = [source.shard_path(k) for k in range(3)]
    engine = DyingEngine(workers=2, max_retries=5)  # a queued task can also lose its actor once
    index_shards(shards, tmp_path / "dying", progress=False, engine=engine)
    assert len(os.listdir(markers)) == 3  # every task's first attempt killed its worker
    assert sorted(engine.last_report.ran) == [0, 1, 2]
    index_shards(shards, tmp_path / "plain", progress=False)
    _same_files(tmp_path / "dying", tmp_path / "plain")


@pytest.mark.slow  # starts a Ray runtime: the Ray engine tests run in the slow tier (CI runs it)
@pytest.mark.integration
def test_an_interrupted_embedding_pass_resumes_with_the_remaining_shards(tmp_path, ray_engine, source):
    from _engine_tasks import StopAt

    class InterruptedEngine(RayEngine):
        def map(self, fn, tasks, **kwargs):
            return super().map(StopAt(fn, 5), tasks, **kwargs)

    request = _request(source)
    ident = {"features": "tiny", "seed": 0}
    kw = dict(input_size=10, batch_size=16, progress=False, embed_factory=_factory(request))
    with pytest.raises(StreamPruneError, match="interrupted before shard"):
        embed_manifest(source, tmp_path / "f", None, ident, engine=InterruptedEngine(workers=1), **kw)  # one more actor is enough: the interruption is by shard
    finished = [k for k in range(9) if os.path.exists(tmp_path / "f" / f"shard-{k:06d}.json")]
    assert set(finished) <= set(range(5))
    embed_manifest(source, tmp_path / "f", None, ident, engine=ray_engine, **kw)
    report = ray_engine.last_report
    assert sorted(report.skipped) == finished and sorted(report.ran) == sorted(set(range(9)) - set(finished))
    embed_manifest(source, tmp_path / "g", None, ident, engine=LocalEngine(1), **kw)
    _same_files(tmp_path / "f", tmp_path / "g")
    embed_manifest(source, tmp_path / "f", None, ident, engine=ray_engine, **kw)
    assert ray_engine.last_report.ran == [] and len(ray_engine.last_report.skipped) == 9


def _request(source):
    from streamprune.scoring.request import ScoreRequest

    return ScoreRequest(source=source, surrogate=ARCH, input_size=10, device="cpu", seed=0, progress=False)


def _factory(request):
    import functools

    return functools.partial(surrogate_embed, request)


@pytest.mark.slow  # starts a Ray runtime: the Ray engine tests run in the slow tier (CI runs it)
@pytest.mark.integration
def test_index_resume_skips_finished_sidecars_and_counts_them(tmp_path, ray_engine, source):
    shards = [source.shard_path(k) for k in range(len(source.shards))]
    index_shards(shards, tmp_path / "ix", progress=False, engine=ray_engine)
    os.unlink(tmp_path / "ix" / "shard-000004.tar.index.json")  # as if the driver died before shards 4 and 7
    os.unlink(tmp_path / "ix" / "shard-000007.tar.index.npz")
    m = index_shards(shards, tmp_path / "ix", progress=False, engine=ray_engine, resume=True)
    assert sorted(ray_engine.last_report.ran) == [4, 7] and len(ray_engine.last_report.skipped) == 7
    index_shards(shards, tmp_path / "ref", progress=False)
    _same_files(tmp_path / "ix", tmp_path / "ref")
    assert m.num_samples == 60
    index_shards(shards, tmp_path / "ix", progress=False, engine=ray_engine, resume=True, checksum=False)
    assert len(ray_engine.last_report.ran) == 9  # other options: nothing is kept


@pytest.mark.slow  # starts a Ray runtime: the Ray engine tests run in the slow tier (CI runs it)
@pytest.mark.integration
def test_write_shards_resume_keeps_verified_shards_only(tmp_path, ray_engine):
    src = _npz(tmp_path / "s.npz", 30, 5)
    out = tmp_path / "out"
    write_shards(src, out, samples_per_shard=10, progress=False, engine=ray_engine)
    with open(out / "shard-000001.tar", "r+b") as fh:  # damage one shard
        fh.seek(700)
        fh.write(b"X")
    engine = LocalEngine(1)
    write_shards(src, out, samples_per_shard=10, progress=False, engine=engine, resume=True)
    assert engine.last_report.ran == [1] and engine.last_report.skipped == [0, 2]
    write_shards(src, tmp_path / "ref", samples_per_shard=10, progress=False)
    _same_files(out, tmp_path / "ref")


@pytest.mark.slow  # starts a Ray runtime: the Ray engine tests run in the slow tier (CI runs it)
@pytest.mark.integration
def test_bad_input_in_a_task_is_the_same_error_on_both_engines(tmp_path, ray_engine, source):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file" * 40)
    shards = [source.shard_path(0), str(bad)]
    errors = []
    for engine in (LocalEngine(1), LocalEngine(2), ray_engine):
        with pytest.raises(StreamPruneError) as info:
            index_shards(shards, tmp_path / "ix", progress=False, engine=engine)
        errors.append(info.value)
    assert all(type(e) is type(errors[0]) for e in errors) and isinstance(errors[0], TarFormatError)
    assert len({str(e) for e in errors}) == 1 and "bad.tar" in str(errors[0])


@pytest.mark.slow  # starts a Ray runtime: the Ray engine tests run in the slow tier (CI runs it)
@pytest.mark.integration
def test_cli_index_and_shard_with_ray(tmp_path, ray_engine, source):
    runner = CliRunner()
    shards = [source.shard_path(k) for k in range(len(source.shards))]
    r = runner.invoke(cli, ["index", *shards, "--out", str(tmp_path / "ix"), "--engine", "ray", "--workers", "2", "-q"])
    assert r.exit_code == 0, r.output
    index_shards(shards, tmp_path / "ref", progress=False)
    _same_files(tmp_path / "ix", tmp_path / "ref")
    r = runner.invoke(cli, ["index", *shards, "--out", str(tmp_path / "x"), "--ray-address", "auto"])
    assert r.exit_code == 2 and "--ray-address needs --engine ray" in r.output


def test_missing_ray_extra_is_one_error_naming_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"streamprune\[ray\]"):
        make_engine("ray")
    r = CliRunner().invoke(cli, ["index", str(tmp_path / "x.tar"), "--out", str(tmp_path / "o"), "--engine", "ray"])
    assert r.exit_code == 1 and "pip install 'streamprune[ray]'" in r.output and "Traceback" not in r.output


def _mark_started(marker_dir, state, i):
    open(os.path.join(marker_dir, str(i)), "w").close()
    return i


@pytest.mark.integration
def test_local_engine_hands_out_tasks_only_as_results_are_taken(tmp_path):
    """A slow on_result holds the worker processes back: tasks start a window ahead of the results delivered."""
    engine = LocalEngine(2)
    window = engine.WINDOW * 2 + 1  # the first window, and the task handed out as the first result is delivered
    started = []

    def on_result(i, _):
        if not started:  # give unbounded workers time to start everything; a windowed pool stops at the window
            for _ in range(100):
                if len(os.listdir(tmp_path)) > window:
                    break
                time.sleep(0.01)
            started.append(len(os.listdir(tmp_path)))

    out = engine.map(functools.partial(_mark_started, str(tmp_path)), list(range(20)), on_result=on_result)
    assert out == list(range(20)) and len(os.listdir(tmp_path)) == 20
    assert started[0] <= window


@pytest.mark.integration
def test_make_engine_names():
    assert isinstance(make_engine(None), LocalEngine) and make_engine("local", workers=3).processes == 3
    with pytest.raises(ValueError, match="unknown engine 'spark'"):
        make_engine("spark")
    with pytest.raises(ValueError, match="needs --engine ray"):
        make_engine("local", address="auto")


def test_thread_engine_runs_tasks_at_once_skips_done_ones_and_reraises_an_error():
    barrier = threading.Barrier(3, timeout=20)  # passes only when three tasks run at the same time

    def task(state, i):
        if i != 0:
            barrier.wait()
        return (state, i * 2)

    engine = ThreadEngine(3)
    got = engine.map(task, [0, 1, 2, 3], setup=lambda: "s", done=lambda i: i == 0, desc="t")
    assert got == [None, ("s", 2), ("s", 4), ("s", 6)]
    assert engine.last_report.workers == 3 and sorted(engine.last_report.ran) == [1, 2, 3] and engine.last_report.skipped == [0]

    def failing(state, i):
        if i == 2:
            raise TarFormatError(f"shard {i} is bad")
        return i

    with pytest.raises(TarFormatError, match="shard 2 is bad"):
        ThreadEngine(2).map(failing, range(5))
