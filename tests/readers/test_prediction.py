"""``predict_epoch`` / ``inspect --plan`` against what the reader really sends to nginx."""

from __future__ import annotations

import json

import pytest
from builders import blob_samples
from click.testing import CliRunner

from streamprune import Manifest, PrunedSource  # noqa: E402
from streamprune.masks import random_mask  # noqa: E402
from streamprune.readers.planner import StoreModel  # noqa: E402
from streamprune.readers.prediction import predict_epoch  # noqa: E402
from streamprune.readers.scheduler import FetchPolicy  # noqa: E402
from streamprune.writers import write_shards  # noqa: E402
from streamprune_cli.main import cli  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict-ds")
    write_shards(blob_samples(240, (20_000, 60_000), 7), root / "ds", samples_per_shard=60, shuffle=False, progress=False)
    return str(root / "ds")


@pytest.mark.integration
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.8])
@pytest.mark.parametrize("model", [StoreModel(), StoreModel(latency=0.2, cpu_per_request=2e-3), StoreModel(latency=0.0)])
def test_prediction_equals_the_requests_and_bytes_the_reader_sends(dataset, nginx, ratio, model):
    m = Manifest.load(dataset)
    keep = random_mask(m, ratio, level="sample", seed=3)
    # no calibration, so the reader plans with exactly the model the prediction used
    policy = FetchPolicy(store=model, calibrate=False, max_request=256 << 10)
    predicted = predict_epoch(m, keep, model, max_request=policy.max_request, max_depth=policy.max_depth)
    nginx.clear_log()
    source = PrunedSource(dataset, keep, base=nginx.url, fetch=policy)
    assert sum(1 for _ in source) == keep.kept
    data = [e for e in nginx.log_entries() if e["uri"].endswith(".tar") and e["method"] == "GET"]
    assert len(data) == predicted["planned"]["requests"] == source.read_stats.requests
    assert sum(e["body_bytes"] for e in data) == predicted["planned"]["bytes"] == source.read_stats.fetched_bytes
    assert predicted["planned"]["kept_bytes"] == source.read_stats.kept_bytes
    assert predicted["whole"]["requests"] == source.read_stats.whole_requests
    # never predicted slower than whole shards; pruned bytes are what was fetched beyond the kept
    assert predicted["planned"]["seconds"] <= predicted["whole"]["seconds"] * (1 + 1e-9)
    assert predicted["planned"]["pruned_bytes"] == predicted["planned"]["bytes"] - predicted["planned"]["kept_bytes"]
    others = [e for e in nginx.log_entries() if not e["uri"].endswith(".tar") and not e["uri"].endswith("manifest.json")]
    assert len(others) <= predicted["planned"]["metadata_requests"]


def test_inspect_plan_prints_planned_and_whole_and_json(dataset, tmp_path):
    m = Manifest.load(dataset)
    mask = random_mask(m, 0.8, level="sample", seed=1).save(str(tmp_path / "keep.spmask"))
    runner = CliRunner()
    out = runner.invoke(cli, ["inspect", dataset, "--mask", mask, "--plan", "--store", "s3-standard"])
    assert out.exit_code == 0, out.output
    assert "planned" in out.output and "whole shards" in out.output and "predicted speed-up" in out.output
    out = runner.invoke(cli, ["inspect", dataset, "--mask", mask, "--plan", "--json", "--latency", "0.08", "--objective", "cost"])
    assert out.exit_code == 0, out.output
    plan = json.loads(out.output)["plan"]
    assert plan["model"]["latency"] == 0.08 and plan["objective"] == "cost"
    assert plan["planned"]["kept_bytes"] < plan["whole"]["bytes"]
    # the cost objective never pays more than reading whole shards (one of its candidates)
    assert plan["planned"]["dollars"] <= plan["whole"]["dollars"] * (1 + 1e-9)
    bad = runner.invoke(cli, ["inspect", dataset, "--plan", "--bandwidth", "0"])
    assert bad.exit_code != 0 and "conn_bandwidth" in bad.output
