"""Crash test: a trainer killed with SIGKILL after a checkpoint resumes its epoch exactly.

The trainer (``tests/_resume_worker.py``, one process per gloo rank) consumes one epoch through
a ``StatefulDataLoader`` and checkpoints after every step. The test kills every rank with SIGKILL
at a random step, restarts from the checkpoint with the same world size (the loader's own
state) or with 1 <-> 2 ranks (the elastic resume point), and checks that the samples consumed up
to the checkpoint plus everything the resumed run consumed are exactly the kept set, with no
repeats beyond the padding the ``uneven="pad"`` rule adds to the remainder.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from _dist_worker import build_dataset
from builders import ROOT, TESTS_DIR
from remote_servers import free_port

from streamprune import Manifest, random_mask

pytestmark = [pytest.mark.distributed, pytest.mark.integration]  # gloo ranks as processes

DEADLINE_S = 120


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crash")
    built = build_dataset(tmp / "data", shard_sizes=(40, 12, 30, 1, 25), big_fraction=0.0, seed=6)
    manifest = Manifest.load(built.manifest_path)
    mask = random_mask(manifest, 0.25, seed=3)
    kept = sorted(np.asarray(manifest.keys())[mask.keep].tolist())
    return {"manifest": built.manifest_path, "mask": mask.save(tmp / "m.spmask"), "kept": kept}


def _start(world, workers, mode, dataset, workdir):
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    if "GLOO_SOCKET_IFNAME" not in env and os.path.exists("/sys/class/net/lo"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    procs = []
    for rank in range(world):
        cmd = [sys.executable, os.path.join(TESTS_DIR, "_resume_worker.py"), str(rank), str(world), str(port),
               dataset["manifest"], dataset["mask"], str(workdir), mode, str(workers)]
        log = open(os.path.join(workdir, f"log-{mode}-{rank}.txt"), "w")
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return procs


def _read_log(path):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by the kill
                break
    return out


def _wait(procs, workdir, mode):
    deadline = time.monotonic() + DEADLINE_S
    try:
        for p, _ in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
            log.close()
    for rank, (p, _) in enumerate(procs):
        tail = open(os.path.join(workdir, f"log-{mode}-{rank}.txt")).read()[-3000:]
        assert p.returncode == 0, f"{mode} rank {rank} exited with {p.returncode}:\n{tail}"


def _run_killed(world, workers, dataset, workdir, kill_at):
    procs = _start(world, workers, "fresh", dataset, workdir)
    deadline = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline:
            if len(_read_log(os.path.join(workdir, "keys-fresh-0.jsonl"))) >= kill_at:
                break
            if any(p.poll() is not None for p, _ in procs):
                break
            time.sleep(0.01)
        for p, _ in procs:
            os.kill(p.pid, signal.SIGKILL)  # our own child, by pid
    finally:
        for p, log in procs:
            p.wait(timeout=30)
            log.close()
    assert all(p.returncode == -signal.SIGKILL for p, _ in procs), "a rank finished before it was killed"


@pytest.mark.parametrize(
    "old,new",
    [
        pytest.param((1, 0), (1, 0), id="w1-nw0-same"),
        pytest.param((1, 2), (1, 2), id="w1-nw2-same", marks=pytest.mark.slow),  # ~25 s each on 2 busy cores
        pytest.param((2, 2), (2, 2), id="w2-nw2-same", marks=pytest.mark.slow),
        pytest.param((1, 2), (2, 0), id="w1-to-w2-elastic", marks=pytest.mark.slow),
        pytest.param((2, 0), (1, 2), id="w2-to-w1-elastic"),
    ],
)
def test_killed_trainer_resumes_the_epoch_exactly(dataset, tmp_path, old, new):
    (world, workers), (new_world, new_workers) = old, new
    mode = "same" if old == new else "elastic"
    steps = -(-len(dataset["kept"]) // world) // 4  # about the steps per rank
    kill_at = int(np.random.default_rng(hash((old, new)) % 2**32).integers(2, max(3, steps - 2)))
    _run_killed(world, workers, dataset, tmp_path, kill_at)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    last = ckpt["step"]
    before = [k for r in range(world) for line in _read_log(tmp_path / f"keys-fresh-{r}.jsonl") if line["step"] <= last for k in line["keys"]]
    assert 0 < len(before) < len(dataset["kept"])
    _wait(_start(new_world, new_workers, mode, dataset, tmp_path), tmp_path, mode)
    after = [k for r in range(new_world) for line in _read_log(tmp_path / f"keys-{mode}-{r}.jsonl") for k in line["keys"]]
    seen = collections.Counter(before + after)
    assert sorted(seen) == dataset["kept"]
    remainder = sum(e - b for b, e in ckpt["point"]["remainder"])
    assert remainder == len(dataset["kept"]) - len(set(before))
    padding = (-remainder) % new_world if mode == "elastic" else 0
    if mode == "same":  # the epoch's own padding: kept count rounded up to the world size
        padding = (-len(dataset["kept"])) % world
    assert sum(seen.values()) == len(dataset["kept"]) + padding
    assert max(seen.values()) <= 2
