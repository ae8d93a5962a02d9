"""Fetch planning for remote shards: which kept runs share a request, chosen for time or for cost.

A pruned read from an object store pays per request as well as per byte: each request waits
``latency`` for its first byte and costs the client CPU, and stores bill requests. Reading one
request per kept run minimises bytes; reading whole shards minimises requests. Which is faster
depends on the store, the mask and the client, so the planner decides per shard from a
:class:`StoreModel`:

* ``t_net = (requests * latency + bytes / conn_bandwidth) / depth``: ``depth`` requests in
  flight, each holding a connection for its latency plus its transfer (Little's law);
* ``t_bw = bytes / total_bandwidth``: the link (or the store's per-prefix throughput);
* ``t_cpu = requests * cpu_per_request + bytes * cpu_per_byte``: the client's own work;

and a plan's predicted time is ``max(t_net, t_bw, t_cpu)``; its price is
``requests * price_per_1000_requests / 1000 + billed GB * price_per_gb``.

The candidates for one shard, all read in the order samples are yielded:

1. merge the ``k`` smallest pruned gaps between consecutive kept samples (``k = 0``: one
   request per kept run; for a given number of requests this fetches the fewest bytes), for a
   spread of ``k`` from none to all; requests are cut at ``max_request`` bytes;
2. the unpruned reader's own plan (the shard in ``max_request`` pieces, as read with no mask),
   keeping only the pieces that hold a kept sample, each trimmed to its kept samples.

Candidate 2 is never worse than reading the whole shard in any term of the model (no more
requests, no more bytes), so with ``objective="time"`` a pruned shard is never predicted slower
than the same shard read unpruned: the guarantee that pruning never slows an epoch down, as far
as the model is right. It holds for reads in archive order (the readers' default,
``shuffle=False``); a shuffled order within a shard costs a request per out-of-order sample,
pruned or not. The model starts from defaults (or the user's values) and is calibrated
from the first requests' timings (:class:`Calibrator`).

Worked example (defaults: 30 ms, 100 MB/s per connection, 0.3 ms and 2 ns/byte of client CPU,
adaptive depth): a 256 MB shard of 120 KB samples read whole takes 126 requests of 2 MiB with
12 in flight: ``t_net = (126*0.03 + 256e6/1e8)/12 = 0.53 s``, ``t_cpu = 0.04 + 0.51 = 0.55 s``:
0.55 s, CPU-bound (receiving bytes). At r = 0.8 with a scattered mask (426 kept samples in 345
runs), one request per run with 53 in flight is ``t_net = (345*0.03 + 51e6/1e8)/53 = 0.21 s``,
``t_cpu = 0.10 + 0.10 = 0.21 s``; merging the 75 smallest gaps (270 requests, 60 MB) gives
0.20 s: a predicted speed-up of 2.7x, not 5x, because requests, not bytes, bound a scattered
epoch with this client and latency. ``streamprune inspect --plan`` prints these figures for a
real manifest and mask.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Literal

import numpy as np

from ..errors import StreamPruneError
from ..shardindex import ShardIndex

__all__ = [
    "StoreModel", "STORE_PRESETS", "store_model", "Calibrator", "ShardPlan", "plan_shard", "whole_shard_cost", "cut_requests",
    "Objective",
]

Objective = Literal["time", "cost"]


@dataclass(frozen=True)
class StoreModel:
    """What a request costs, in time and money.

    Attributes:
        latency: Seconds to first byte of one request.
        conn_bandwidth: Bytes/s of one connection (one request's transfer).
        total_bandwidth: Bytes/s of all connections together (the link or the store's limit).
        cpu_per_request: Seconds of client CPU per request (sending, parsing, scheduling); the
            default is what the lean client measured on this project's 2-core machine
            (``python -m benchmarks.remote_clients``: 0.31-0.40 ms at 120 KB).
        cpu_per_byte: Seconds of client CPU per byte fetched (receiving, copying, checksums,
            slicing samples; measured 2.5-3.6 ns/byte for 2 MiB ranges from nginx throttled to
            100 MB/s per connection, which sends small packets; less on an unthrottled link).
        price_per_1000_requests: Dollars per 1,000 GETs.
        price_per_gb: Dollars per GB retrieved (beyond ``free_bytes_per_request`` of each request).
        free_bytes_per_request: Bytes of each request not billed per GB (S3 Express One Zone
            bills retrieval only past 512 KiB of a request).
    """

    latency: float = 0.03
    conn_bandwidth: float = 100e6
    total_bandwidth: float = 1.25e9
    cpu_per_request: float = 300e-6
    cpu_per_byte: float = 2e-9
    price_per_1000_requests: float = 0.0
    price_per_gb: float = 0.0
    free_bytes_per_request: int = 0

    def seconds(self, requests: float, nbytes: float, depth: float) -> float:
        """Predicted time of ``requests`` requests moving ``nbytes``, ``depth`` in flight."""
        t_net = (requests * self.latency + nbytes / self.conn_bandwidth) / max(1.0, depth)
        t_bw = nbytes / self.total_bandwidth
        t_cpu = requests * self.cpu_per_request + nbytes * self.cpu_per_byte
        return max(t_net, t_bw, t_cpu)

    def dollars(self, requests: float, billed_bytes: float) -> float:
        """Price of ``requests`` requests with ``billed_bytes`` bytes billed per GB."""
        return requests * self.price_per_1000_requests / 1000.0 + billed_bytes / 1e9 * self.price_per_gb

    def depth_for(self, request_bytes: float, max_depth: int, min_depth: int = 4) -> int:
        """Requests in flight that keep the client busy (Little's law), within ``[min_depth, max_depth]``.

        One request is in flight for ``latency + request_bytes / conn_bandwidth``; the client
        completes at most ``1 / cpu_per_request`` requests per second, so more than
        ``(latency + transfer) / cpu_per_request`` in flight only queue.
        """
        per_request = self.latency + request_bytes / self.conn_bandwidth
        cpu = self.cpu_per_request + request_bytes * self.cpu_per_byte
        return int(min(max_depth, max(min_depth, math.ceil(per_request / max(cpu, 1e-6)))))


#: Approximate list prices (us-east-1; check your region and date) with typical latencies.
STORE_PRESETS: dict[str, StoreModel] = {
    # S3 Standard: $0.0004 per 1,000 GETs; in-region transfer is not billed per GB
    "s3-standard": StoreModel(latency=0.03, conn_bandwidth=90e6, price_per_1000_requests=0.0004),
    # S3 Express One Zone: cheaper, faster requests; retrieval billed per GB past 512 KiB of a request
    "s3-express": StoreModel(latency=0.005, conn_bandwidth=90e6, price_per_1000_requests=0.00003, price_per_gb=0.0006,
                             free_bytes_per_request=512 << 10),
}


def store_model(preset: str | None = None, **overrides: float | None) -> StoreModel:
    """A :class:`StoreModel` from a preset name (or the defaults) with some fields overridden.

    Args:
        preset: A key of :data:`STORE_PRESETS`, or ``None`` for the defaults.
        **overrides: Field values; ``None`` values are ignored (unset CLI options).

    Raises:
        StreamPruneError: An unknown preset or field, or a non-positive latency/bandwidth.
    """
    if preset is None:
        model = StoreModel()
    elif preset in STORE_PRESETS:
        model = STORE_PRESETS[preset]
    else:
        raise StreamPruneError(f"store preset {preset!r}: unknown; choose one of {sorted(STORE_PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - set(StoreModel.__dataclass_fields__)
    if unknown:
        raise StreamPruneError(f"store model: unknown field(s) {sorted(unknown)}")
    for name in ("conn_bandwidth", "total_bandwidth"):
        if name in given and not given[name] > 0:
            raise StreamPruneError(f"store model: {name}={given[name]!r} must be positive (bytes per second)")
    if "latency" in given and not given["latency"] >= 0:
        raise StreamPruneError(f"store model: latency={given['latency']!r} must be >= 0 seconds")
    return replace(model, **given)


class Calibrator:
    """Latency and per-connection bandwidth, re-estimated from the requests of this read.

    Each finished request is observed as ``(bytes, seconds from submission to its last byte)``.
    Those times include any wait for a busy client (its CPU, its event loop), which would make
    the store look slower than it is, so the estimates take the good end: the bandwidth is the
    slope of a line through the fast end (10th percentile) of each of eight size bins, and the
    latency a low percentile of ``seconds - bytes / bandwidth``. When the sizes hardly vary (a
    scattered mask's requests are all one sample long) the prior bandwidth stays.

    Thread-safe: requests finish on the fetch threads or the client's event loop.

    Args:
        prior: The model before any observation (and for every field not calibrated).
        window: Most recent observations used.
        min_samples: Observations before the prior is replaced.
    """

    def __init__(self, prior: StoreModel, window: int = 256, min_samples: int = 16) -> None:
        self.prior = prior
        self.min_samples = min_samples
        self._obs: deque[tuple[int, float]] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._model = prior
        self._dirty = False

    def observe(self, nbytes: int, seconds: float) -> None:
        """Record one finished request."""
        with self._lock:
            self._obs.append((nbytes, seconds))
            self._dirty = True

    def model(self) -> StoreModel:
        """The prior with ``latency`` and ``conn_bandwidth`` from the observations so far."""
        with self._lock:
            if not self._dirty or len(self._obs) < self.min_samples:
                return self._model
            obs = np.array(self._obs, dtype=np.float64)
            self._dirty = False
        x, y = obs[:, 0], obs[:, 1]
        bandwidth = self.prior.conn_bandwidth
        if x.max() > 2 * max(1.0, x.min()):
            # the lower envelope: the fast end of each size bin, then a line through those points
            edges = np.quantile(x, np.linspace(0, 1, 9))
            bins = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, 7)
            points = [(float(np.median(x[bins == b])), float(np.percentile(y[bins == b], 10)))
                      for b in range(8) if (bins == b).sum() >= 2]
            if len(points) >= 2:
                px, py = np.array(points).T
                slope, _ = np.polyfit(px, py, 1)
                if slope > 0:
                    bandwidth = float(np.clip(1.0 / slope, 1e6, 1e11))
        latency = float(np.clip(np.percentile(y - x / bandwidth, 5), 0.0, 10.0))
        model = replace(self.prior, latency=latency, conn_bandwidth=bandwidth)
        with self._lock:
            self._model = model
        return model


@dataclass(frozen=True)
class ShardPlan:
    """The requests chosen for one shard, with what the model predicts for them.

    Attributes:
        requests: Per request ``(first, last_exclusive, lo, hi)``: positions
            ``order[first:last]`` are served by bytes ``[lo, hi)`` of the shard.
        kept_bytes: Bytes of the kept samples.
        fetched_bytes: Bytes requested (kept plus pruned bytes fetched along).
        seconds: Predicted time of these requests alone.
        dollars: Predicted price.
        candidate: Which candidate won: ``"runs"`` (gaps merged) or ``"whole"`` (the unpruned
            plan's pieces holding kept samples).
    """

    requests: list[tuple[int, int, int, int]]
    kept_bytes: int
    fetched_bytes: int
    seconds: float
    dollars: float
    candidate: str


def cut_requests(lo: list[int], hi: list[int], join: list[bool], max_request: int) -> list[tuple[int, int, int, int]]:
    """Requests from per-sample spans: consecutive samples share one while joined and under ``max_request``.

    Args:
        lo: Each sample's first byte, in yield order.
        hi: Each sample's end byte (exclusive).
        join: ``join[k]``: sample ``k + 1`` may share sample ``k``'s request.
        max_request: Largest request, bytes (a single sample may exceed it).

    Returns:
        Per request ``(first, last_exclusive, lo, hi)``.
    """
    n = len(lo)
    out: list[tuple[int, int, int, int]] = []
    first, a, b = 0, lo[0], hi[0]
    for k in range(1, n):
        if join[k - 1] and hi[k] - a <= max_request:
            b = hi[k]
            continue
        out.append((first, k, a, b))
        first, a, b = k, lo[k], hi[k]
    out.append((first, n, a, b))
    return out


def _summary(requests: list[tuple[int, int, int, int]], free_bytes: int) -> tuple[int, int, int]:
    """``(requests, bytes, billed bytes)`` of a plan."""
    sizes = [hi - lo for _, _, lo, hi in requests]
    billed = sum(max(0, s - free_bytes) for s in sizes) if free_bytes else sum(sizes)
    return len(sizes), sum(sizes), billed


def whole_shard_cost(index: ShardIndex, max_request: int) -> tuple[int, int]:
    """``(requests, bytes)`` of reading every sample of a shard, as the unpruned reader plans it."""
    n = len(index)
    if n == 0:
        return 0, 0
    lo, hi = index.start.tolist(), index.end.tolist()
    join = [True] * (n - 1)
    requests = cut_requests(lo, hi, join, max_request)
    return len(requests), sum(b - a for _, _, a, b in requests)


def _whole_candidate(index: ShardIndex, order: np.ndarray, max_request: int) -> list[tuple[int, int, int, int]] | None:
    """The unpruned plan's pieces that hold kept samples, trimmed to them (``order`` ascending on disk only)."""
    n_all = len(index)
    lo_all, hi_all = index.start.tolist(), index.end.tolist()
    pieces = cut_requests(lo_all, hi_all, [True] * (n_all - 1), max_request)
    piece_of = np.empty(n_all, dtype=np.int64)
    for j, (a, b, _, _) in enumerate(pieces):
        piece_of[a:b] = j
    owner = piece_of[order]
    # order is ascending, so each piece's kept samples are consecutive in it
    bounds = np.flatnonzero(np.diff(owner)) + 1
    firsts = np.concatenate([[0], bounds]).tolist()
    lasts = np.concatenate([bounds, [len(order)]]).tolist()
    starts = index.start[order].tolist()
    ends = index.end[order].tolist()
    return [(a, b, starts[a], ends[b - 1]) for a, b in zip(firsts, lasts)]


def plan_shard(index: ShardIndex, order: np.ndarray, model: StoreModel, depth: float | Callable[[float], float],
               max_request: int = 2 << 20,
               objective: Objective = "time", max_waste: float | None = None) -> ShardPlan:
    """Choose the requests that read ``order`` (positions, in yield order) of one shard.

    Args:
        index: The shard's index.
        order: Sample positions in the order they will be yielded.
        model: The store and client model.
        depth: Requests in flight, or a function of a plan's mean request size giving them
            (adaptive depth: small requests are worth more in flight than large ones).
        max_request: Largest request, in bytes (a lone sample larger than it is one request).
        objective: ``"time"``: the fastest predicted plan (ties: fewer bytes); ``"cost"``: the
            cheapest (ties: the faster).
        max_waste: Pruned bytes fetched along, at most this fraction of the kept bytes; ``None``:
            no cap (the objective decides). A cap can rule out the unpruned plan's pieces, and
            with them the never-slower guarantee.

    Returns:
        The chosen :class:`ShardPlan`.
    """
    if objective not in ("time", "cost"):
        raise StreamPruneError(f"objective={objective!r}: must be 'time' or 'cost'")
    order = np.asarray(order, dtype=np.int64)
    n = len(order)
    if n == 0:
        return ShardPlan([], 0, 0, 0.0, 0.0, "runs")
    starts = index.start[order].astype(np.int64)
    ends = index.end[order].astype(np.int64)
    kept = int((ends - starts).sum())
    gaps = starts[1:] - ends[:-1]
    free = model.free_bytes_per_request
    budget = math.inf if max_waste is None else max_waste * kept

    def depth_of(requests: int, nbytes: int) -> float:
        return depth(nbytes / max(1, requests)) if callable(depth) else depth

    def score(requests: int, nbytes: int, billed: int) -> tuple[float, float, float]:
        seconds = model.seconds(requests, nbytes, depth_of(requests, nbytes))
        dollars = model.dollars(requests, billed)
        key = (seconds, nbytes) if objective == "time" else (dollars, seconds)
        return key[0], key[1], seconds

    # candidate 1, estimated in bulk for a spread of k (the k smallest gaps merged); the
    # number of requests of a merged group is estimated as ceil(span / max_request)
    # a gap is fetched along only if it holds no kept sample (a shuffled order yields that one
    # elsewhere: fetching it here too would fetch its bytes twice)
    sorted_starts = np.sort(starts)
    inside = np.searchsorted(sorted_starts, starts[1:], side="left") - np.searchsorted(sorted_starts, ends[:-1], side="left")
    mergeable = np.flatnonzero((gaps >= 0) & (inside == 0))
    by_size = mergeable[np.argsort(gaps[mergeable], kind="stable")]
    total_k = len(by_size)
    adjacent = int((gaps == 0).sum())  # kept samples that touch on disk always share a request: free
    ks = np.unique(np.concatenate([
        [adjacent, total_k], np.linspace(adjacent, total_k, num=min(total_k - adjacent + 1, 33)).round(),
        adjacent + np.geomspace(1, max(1, total_k - adjacent), num=min(max(total_k - adjacent, 1), 17)).round() - 1,
    ]).astype(np.int64))
    best: tuple | None = None
    cum_waste = np.concatenate([[0], np.cumsum(np.maximum(gaps[by_size], 0))])
    for k in ks.tolist():
        if cum_waste[k] > budget:
            continue
        join = np.zeros(max(0, n - 1), dtype=bool)
        join[by_size[:k]] = True
        first_of = np.flatnonzero(np.concatenate([[True], ~join]))
        last_of = np.concatenate([first_of[1:] - 1, [n - 1]])
        span = ends[last_of] - starts[first_of]
        pieces = np.maximum(1, np.ceil(span / max_request)).astype(np.int64)
        # a merged group's samples beyond max_request are cut at sample boundaries: never fewer pieces
        requests = int(pieces.sum())
        nbytes = int(span.sum())
        billed = int(np.maximum(0, span - pieces * free).sum()) if free else nbytes
        key = score(requests, nbytes, billed)
        if best is None or key[:2] < best[0][:2]:
            best = (key, k)
    plans: list[tuple[tuple, str, list]] = []
    if best is not None:
        k = best[1]
        join = np.zeros(max(0, n - 1), dtype=bool)
        join[by_size[:k]] = True
        requests = cut_requests(starts.tolist(), ends.tolist(), join.tolist(), max_request)
        plans.append((score(*_summary(requests, free)), "runs", requests))
    if n > 1 and bool(np.all(gaps >= 0)):
        whole = _whole_candidate(index, order, max_request)
        if whole is not None:
            r, b, billed = _summary(whole, free)
            if b - kept <= budget:
                plans.append((score(r, b, billed), "whole", whole))
    if not plans:  # the cap ruled out every merge: one request per kept run, no waste
        join = (gaps == 0).tolist()
        requests = cut_requests(starts.tolist(), ends.tolist(), join, max_request)
        plans.append((score(*_summary(requests, free)), "runs", requests))
    key, name, requests = min(plans, key=lambda p: p[0][:2])
    count, nbytes, billed = _summary(requests, free)
    return ShardPlan(requests, kept, nbytes, model.seconds(count, nbytes, depth_of(count, nbytes)),
                     model.dollars(count, billed), name)
