"""A real 2-rank gloo job: ranks get equal sample counts from an uneven mask and never hang.

Each rank is a separate Python process (``tests/_dist_worker.py`` run as a script, like
``torchrun`` would), iterates :class:`PrunedWebDataset` through a DataLoader with 2 workers,
runs collectives afterwards, and writes the keys it saw to a JSON file. The mask puts most
kept samples in two shards and has an odd kept total, so a shard-based split would give the
ranks different counts (and DDP would hang at the next collective).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from _dist_worker import CONFIGS, build_dataset
from builders import TESTS_DIR
from remote_servers import free_port

from streamprune import Manifest, mask_from_bool

pytestmark = [pytest.mark.distributed, pytest.mark.integration]  # gloo ranks as processes

WORLD = 2
DEADLINE_S = 90  # guard against a hang; a healthy run takes ~5-20 s on 2 busy cores


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    built = build_dataset(tmp / "data", big_fraction=0.02, seed=2)
    manifest = Manifest.load(built.manifest_path)
    rng = np.random.default_rng(0)
    keep = np.zeros(manifest.num_samples, dtype=bool)
    keep[built.shard_of == 2] = rng.random(130) < 0.85  # most kept samples in two shards
    keep[built.shard_of == 5] = rng.random(110) < 0.7
    keep[np.flatnonzero(built.shard_of == 0)[:2]] = True
    keep[np.flatnonzero(built.shard_of == 6)[-1]] = True  # a lone sample at a shard's end
    if keep.sum() % 2 == 0:
        keep[np.flatnonzero(built.shard_of == 3)] = True  # the 1-sample shard
    mask = mask_from_bool(manifest, keep)
    assert mask.kept % 2 == 1
    mask_path = mask.save(tmp / "uneven.spmask")
    kept_keys = [manifest.keys()[i] for i in np.flatnonzero(keep)]

    port = free_port()
    worker = os.path.join(TESTS_DIR, "_dist_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    if "GLOO_SOCKET_IFNAME" not in env and os.path.exists("/sys/class/net/lo"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # stay on loopback whatever the host name resolves to
    procs, outs, logs = [], [], []
    for rank in range(WORLD):
        out = str(tmp / f"rank{rank}.json")
        log = open(tmp / f"rank{rank}.log", "w")
        cmd = [sys.executable, worker, str(rank), str(WORLD), str(port), built.manifest_path, mask_path, out]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        outs.append(out)
        logs.append(log)
    deadline = time.monotonic() + DEADLINE_S
    hung = []
    try:
        for rank, p in enumerate(procs):
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                hung.append(rank)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        for log in logs:
            log.close()
    tails = {r: open(tmp / f"rank{r}.log").read()[-3000:] for r in range(WORLD)}
    if hung:
        pytest.fail(f"ranks {hung} did not finish within {DEADLINE_S} s (hang?); logs: {tails}")
    for rank, p in enumerate(procs):
        assert p.returncode == 0, f"rank {rank} exited with {p.returncode}:\n{tails[rank]}"
    results = [json.load(open(o)) for o in outs]
    return {"results": results, "kept": kept_keys, "manifest": manifest}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_ranks_get_equal_counts(job, config):
    results = [r[config] for r in job["results"]]
    n = len(job["kept"])
    per_rank = n // WORLD if CONFIGS[config][0]["uneven"] == "drop" else -(-n // WORLD)
    for rank, r in enumerate(results):
        assert (r["rank"], r["world_size"]) == (rank, WORLD)  # picked up from torch.distributed
        assert len(r["keys"]) == r["len"] == per_rank
        # the collectives after iteration completed and agree with what each rank saw
        assert r["sum"] == WORLD * per_rank
        assert r["counts"] == [per_rank] * WORLD


@pytest.mark.parametrize("config", ["drop", "drop_shuffle"])
def test_drop_union_is_a_duplicate_free_subset(job, config):
    kept = job["kept"]
    union = collections.Counter(k for r in job["results"] for k in r[config]["keys"])
    assert max(union.values()) == 1
    assert set(union) <= set(kept)
    assert sum(union.values()) == WORLD * (len(kept) // WORLD)


@pytest.mark.parametrize("config", ["pad", "pad_shuffle"])
def test_pad_union_covers_every_kept_key(job, config):
    kept = job["kept"]
    union = collections.Counter(k for r in job["results"] for k in r[config]["keys"])
    assert set(union) == set(kept)
    assert sum(union.values()) == len(kept) + 1  # odd total: exactly one sample repeated


def test_ranks_read_different_samples(job):
    for config in CONFIGS:
        a, b = (set(r[config]["keys"]) for r in job["results"])
        overlap = a & b
        assert len(overlap) <= (1 if config.startswith("pad") else 0), config
