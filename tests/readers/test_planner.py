"""The fetch planner: coverage, request caps, the never-slower guarantee, cost vs time, calibration."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamprune.errors import StreamPruneError
from streamprune.readers.planner import (
    STORE_PRESETS,
    Calibrator,
    StoreModel,
    plan_shard,
    store_model,
    whole_shard_cost,
)
from streamprune.shardindex import ShardIndex


def _index(sizes: list[int]) -> ShardIndex:
    """A shard of contiguous samples of ``sizes`` bytes (each a 512-byte header then its data)."""
    sizes_arr = np.asarray(sizes, dtype=np.int64)
    end = np.cumsum(sizes_arr)
    start = end - sizes_arr
    members = [[("jpg", int(s) + 512, int(n) - 512)] for s, n in zip(start, sizes_arr)]
    n = len(sizes)
    return ShardIndex("s.tar", int(end[-1]), [f"k{i}" for i in range(n)], np.zeros(n, dtype=np.int64), start, end, members)


models = st.builds(
    StoreModel,
    latency=st.floats(0.0, 0.2),
    conn_bandwidth=st.floats(1e6, 1e9),
    total_bandwidth=st.floats(1e7, 1e10),
    cpu_per_request=st.floats(0.0, 2e-3),
    cpu_per_byte=st.floats(0.0, 1e-8),
    price_per_1000_requests=st.floats(0.0, 0.01),
    price_per_gb=st.floats(0.0, 0.1),
    free_bytes_per_request=st.sampled_from([0, 512 << 10]),
)


@st.composite
def shards(draw):
    sizes = draw(st.lists(st.integers(1024, 400_000), min_size=1, max_size=120))
    keep = draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)))
    order = np.flatnonzero(keep)
    if draw(st.booleans()):
        order = draw(st.permutations(order.tolist())) if len(order) else order
    return _index(sizes), np.asarray(order, dtype=np.int64)


def _check_covers(index: ShardIndex, order: np.ndarray, requests: list) -> None:
    """Every kept sample served once, in yield order, by a request holding all its bytes."""
    served = []
    for a, b, lo, hi in requests:
        for pos in order[a:b].tolist():
            assert lo <= int(index.start[pos]) and int(index.end[pos]) <= hi
            served.append(pos)
    assert served == order.tolist()


@pytest.mark.integration
@settings(max_examples=150, deadline=None)
@given(shards(), models, st.integers(1, 256), st.sampled_from([64 << 10, 1 << 20, 2 << 20]))
def test_plan_covers_every_kept_byte_once_and_respects_the_cap(shard, model, depth, max_request):
    index, order = shard
    plan = plan_shard(index, order, model, depth, max_request)
    _check_covers(index, order, plan.requests)
    for a, b, lo, hi in plan.requests:
        # a request over the cap holds one sample that is itself over the cap
        assert hi - lo <= max_request or b - a == 1
    # requests never overlap: no byte is fetched twice
    spans = sorted((lo, hi) for _, _, lo, hi in plan.requests)
    assert all(h <= lo for (_, h), (lo, _) in zip(spans, spans[1:]))
    assert plan.kept_bytes == int((index.end[order] - index.start[order]).sum())
    assert plan.fetched_bytes >= plan.kept_bytes


@pytest.mark.integration
@settings(max_examples=150, deadline=None)
@given(shards(), models, st.integers(1, 256))
def test_pruned_plan_never_predicted_slower_than_reading_the_shard_whole(shard, model, depth):
    index, order = shard
    order = np.sort(order)  # archive order, as the unpruned reader reads the shard whole
    max_request = 1 << 20
    plan = plan_shard(index, order, model, depth, max_request)
    requests, nbytes = whole_shard_cost(index, max_request)
    assert plan.seconds <= model.seconds(requests, nbytes, depth) * (1 + 1e-9)


@pytest.mark.integration
@settings(max_examples=150, deadline=None)
@given(shards(), models, st.integers(1, 256))
def test_cost_objective_never_pays_more_than_the_time_plan(shard, model, depth):
    index, order = shard
    fastest = plan_shard(index, order, model, depth, objective="time")
    cheapest = plan_shard(index, order, model, depth, objective="cost")
    assert cheapest.dollars <= fastest.dollars * (1 + 1e-9) + 1e-15
    assert fastest.seconds <= cheapest.seconds * (1 + 1e-9)


@pytest.mark.integration
@settings(max_examples=100, deadline=None)
@given(shards(), models, st.floats(0.0, 0.5))
def test_waste_cap_bounds_the_pruned_bytes_fetched(shard, model, cap):
    index, order = shard
    plan = plan_shard(index, order, model, 32, max_waste=cap)
    assert plan.fetched_bytes - plan.kept_bytes <= cap * plan.kept_bytes + 1e-6


def _brute_force_seconds(index: ShardIndex, order: np.ndarray, model: StoreModel, depth: int, max_request: int) -> float:
    """The best predicted time over every subset of mergeable gaps (small shards only)."""
    starts, ends = index.start[order], index.end[order]
    gaps = (starts[1:] - ends[:-1]).tolist()
    best = np.inf
    for bits in range(1 << len(gaps)):
        requests, nbytes, a, b = 0, 0, int(starts[0]), int(ends[0])
        for k, gap in enumerate(gaps):
            joined = bits >> k & 1 and gap >= 0
            if joined and int(ends[k + 1]) - a <= max_request:
                b = int(ends[k + 1])
                continue
            requests, nbytes = requests + 1, nbytes + b - a
            a, b = int(starts[k + 1]), int(ends[k + 1])
        requests, nbytes = requests + 1, nbytes + b - a
        best = min(best, model.seconds(requests, nbytes, depth))
    return best


@pytest.mark.integration
@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(10_000, 300_000), min_size=2, max_size=12), st.data(), models, st.integers(1, 128))
def test_time_plan_is_close_to_the_brute_force_optimum(sizes, data, model, depth):
    index = _index(sizes)
    keep = data.draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)).filter(lambda k: sum(k) >= 2))
    order = np.flatnonzero(keep)
    plan = plan_shard(index, order, model, depth, max_request=1 << 30)
    best = _brute_force_seconds(index, order, model, depth, 1 << 30)
    # with no request cap, merging the k smallest gaps reaches every (requests, fewest bytes) point
    assert plan.seconds <= best * (1 + 1e-9) + 1e-12


def test_scattered_mask_prefers_small_requests_when_latency_is_cheap_and_bytes_dear():
    index = _index([120_000] * 400)
    order = np.arange(0, 400, 5)  # every fifth sample: r = 0.8, scattered
    cheap_requests = StoreModel(latency=0.001, cpu_per_request=1e-6, cpu_per_byte=1e-8)
    plan = plan_shard(index, order, cheap_requests, 64)
    assert len(plan.requests) == len(order) and plan.fetched_bytes == plan.kept_bytes
    dear_requests = StoreModel(latency=0.2, cpu_per_request=5e-3, cpu_per_byte=1e-12, conn_bandwidth=1e9)
    plan = plan_shard(index, order, dear_requests, 4)
    assert len(plan.requests) <= len(order) / 4  # as few as 2 MiB requests allow


def test_store_model_presets_and_errors():
    assert store_model("s3-standard") == STORE_PRESETS["s3-standard"]
    assert store_model("s3-express", latency=0.01).latency == 0.01
    assert store_model(None, latency=None).latency == StoreModel().latency
    with pytest.raises(StreamPruneError, match="unknown"):
        store_model("gcs-nearline")
    with pytest.raises(StreamPruneError, match="must be positive"):
        store_model(None, conn_bandwidth=0)
    with pytest.raises(StreamPruneError, match="'time' or 'cost'"):
        plan_shard(_index([1000]), np.array([0]), StoreModel(), 4, objective="speed")


def test_calibrator_recovers_latency_and_bandwidth_from_request_timings():
    rng = np.random.default_rng(0)
    cal = Calibrator(StoreModel(latency=0.1, conn_bandwidth=10e6))
    for _ in range(200):
        size = int(rng.integers(100_000, 2_000_000))
        queueing = float(rng.exponential(0.005))  # a busy client only ever adds time
        cal.observe(size, 0.03 + size / 100e6 + queueing)
    model = cal.model()
    assert model.latency == pytest.approx(0.03, abs=0.004)
    assert model.conn_bandwidth == pytest.approx(100e6, rel=0.15)
    # equal-sized requests (a scattered mask): the prior bandwidth stays, the latency is learnt
    cal = Calibrator(StoreModel(latency=0.1, conn_bandwidth=100e6))
    for _ in range(50):
        cal.observe(120_000, 0.01 + 120_000 / 100e6)
    assert cal.model().latency == pytest.approx(0.01, abs=1e-3)
    assert cal.model().conn_bandwidth == 100e6


def test_adaptive_depth_follows_littles_law():
    model = StoreModel(latency=0.03, conn_bandwidth=100e6, cpu_per_request=250e-6, cpu_per_byte=0.0)
    # (30 ms + 1.2 ms) in flight per 0.25 ms of client work: ~125 requests keep the client busy
    assert model.depth_for(120_000, max_depth=1000) == 125
    assert model.depth_for(120_000, max_depth=64) == 64
    assert StoreModel(latency=0.0).depth_for(120_000, max_depth=64) >= 4
