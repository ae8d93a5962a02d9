"""Ray across nodes, simulated: several Ray nodes on this machine (``ray.cluster_utils.Cluster``).

A node is added and another removed while a pass runs; the files the pass writes are the
local engine's, byte for byte. The cluster's start costs about a minute on a loaded 2-core
machine, so the module is marked slow.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from streamprune.engine import LocalEngine, RayEngine
from streamprune.indexing import index_shards
from streamprune.scoring.kmeans import ShardedArray, kmeans_by_shard
from streamprune.topk import ArrayScores, top_mask_by_shard
from streamprune.writers import write_shards

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster():
    """A head and two worker nodes of 1 CPU each, joined by this process."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster  # deferred: the ray extra

    path = os.pathsep.join([ROOT, os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH", "")])
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    np.savez(d / "s.npz", images=rng.integers(0, 255, (48, 8, 8)).astype(np.uint8), labels=np.arange(48) % 4)
    manifest = write_shards(str(d / "s.npz"), d / "shards", samples_per_shard=4, image_format="png", progress=False)
    return manifest, [manifest.shard_path(k) for k in range(len(manifest.shards))]


def _files(d):
    out = {}
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as fh:
            data = fh.read()
        if name == "manifest.json":
            obj = json.loads(data)
            obj.pop("created")
            data = json.dumps(obj).encode()
        out[name] = data
    return out


class _Churn(RayEngine):
    """A Ray engine that adds a node and removes another after the pass's first result."""

    def __init__(self, cluster, victim, **kwargs):
        super().__init__(**kwargs)
        self.cluster, self.victim, self.churned = cluster, victim, False

    def map(self, fn, tasks, **kwargs):
        user = kwargs.pop("on_result", None)

        def on_result(i, summary):
            if not self.churned:
                self.churned = True
                self.cluster.add_node(num_cpus=1)
                self.cluster.remove_node(self.victim)
            if user is not None:
                user(i, summary)

        return super().map(fn, tasks, on_result=on_result, **kwargs)


def test_index_across_nodes_with_a_node_added_and_one_removed_mid_pass_equals_local(tmp_path, cluster, shards):
    c, workers = cluster
    _, paths = shards
    index_shards(paths, tmp_path / "local", progress=False, engine=LocalEngine(1))
    engine = _Churn(c, workers[0], workers=3, max_retries=5)
    index_shards(paths, tmp_path / "ray", progress=False, engine=engine)
    assert engine.churned and sorted(engine.last_report.ran) == list(range(len(paths)))
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def test_selection_and_kmeans_across_nodes_equal_local(tmp_path, cluster, shards):
    manifest, _ = shards
    scores = np.random.default_rng(1).integers(0, 4, size=manifest.num_samples).astype(np.float64)
    source = ArrayScores(scores, manifest.shard_offsets)
    ray_mask = top_mask_by_shard(manifest, source, 0.7, str(tmp_path / "ray.spmask"), engine=RayEngine(workers=2), gather=2)
    local_mask = top_mask_by_shard(manifest, source, 0.7, str(tmp_path / "local.spmask"), engine=LocalEngine(1), gather=2)
    assert np.array_equal(ray_mask.to_bool(), local_mask.to_bool()) and ray_mask.header["shards"] == local_mask.header["shards"]
    x = np.random.default_rng(2).normal(size=(manifest.num_samples, 3)).astype(np.float32)
    store = ShardedArray(x, manifest.shard_offsets)
    a = kmeans_by_shard(store, 3, engine=RayEngine(workers=2), iters=5, seed=0)
    b = kmeans_by_shard(store, 3, engine=LocalEngine(1), iters=5, seed=0)
    np.testing.assert_allclose(a.centroids, b.centroids, rtol=1e-6, atol=1e-6)
    assert np.array_equal(a.assignments, b.assignments)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
