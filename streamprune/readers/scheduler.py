"""Concurrent ranged fetches of kept runs: planned requests, prefetch, and a cap on bytes in flight.

One request per kept sample would pay a round trip each; one request per shard would fetch
the pruned bytes too. :func:`plan_fetches` groups the kept samples (in the order they will be
yielded) into requests with the planner of :mod:`.planner`: which pruned gaps are fetched along
is chosen per shard to minimise the predicted time (or price) under a model of the store
(latency, bandwidth, client CPU per request and per byte), calibrated from this read's own
requests, and reading the shard as the unpruned reader would is always one of the choices.
:func:`read_shards_scheduled` then runs those requests for a whole sequence of shards,
``depth`` at a time (adaptive: Little's law on the calibrated latency) and never more than
``max_inflight_bytes`` fetched but not yet consumed, opening the next shards (size, ETag,
index) ahead of their turn so the pipeline does not drain at shard boundaries, and hands the
samples back in order: memory stays bounded, nothing is yielded twice, nothing is skipped (a
request that fails for good raises when its turn comes).

The same code drives local files (positioned reads on threads: several reads in flight keep
a cold disk's queue full) and remote objects (ranged requests through
:meth:`~streamprune.storage.StorageObject.submit`, retried in :mod:`streamprune.storage`).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import functools
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from ..shardindex import ShardIndex
from .byterange import ShardFile, samples_from_buffer
from .keptcache import KeptCache, ShardCache
from .planner import Calibrator, Objective, StoreModel, cut_requests, plan_shard, whole_shard_cost

__all__ = [
    "CacheBinding", "FetchPolicy", "ShardRead", "ReadStats", "plan_fetches", "read_shards_scheduled",
    "DEFAULT_REMOTE_POLICY",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchPolicy:
    """How kept runs are fetched.

    Attributes:
        store: The model of the store and client the planner optimises against
            (:class:`~streamprune.readers.planner.StoreModel`; presets in ``STORE_PRESETS``).
            Its latency and per-connection bandwidth are re-estimated from the first requests'
            timings when ``calibrate`` is on.
        objective: ``"time"`` (default): the fastest predicted plan per shard, never slower
            than reading the shard whole; ``"cost"``: the cheapest under the model's prices.
        depth: Requests in flight per reader (per DataLoader worker); ``None`` (default):
            adaptive, by Little's law from the calibrated model (enough to keep the client
            busy: latency over client CPU per request), at most ``max_depth`` and at most
            ``total_depth`` shared by the DataLoader workers.
        max_depth: Cap on adaptive ``depth`` in one process.
        total_depth: Cap on requests in flight over all DataLoader workers together.
        workers: DataLoader workers sharing ``total_depth`` (the readers set it in a worker).
        calibrate: Re-estimate latency and bandwidth from this read's requests.
        max_gap: Legacy fixed rule: merge only pruned gaps up to this many bytes (smallest
            first, within ``max_waste``) instead of planning by the model; ``0`` merges only
            adjacent samples (what local reads use).
        max_waste: Pruned bytes fetched along, at most this fraction of the kept bytes;
            ``None``: no cap (the objective decides).
        max_request: Largest single request, in bytes. A request's samples are yielded once
            all its bytes are in, so this also bounds the wait for an epoch's first sample
            (2 MiB is 20 ms at 100 MB/s).
        max_inflight_bytes: Cap on bytes requested but not yet consumed (memory bound).
    """

    store: StoreModel = StoreModel()
    objective: Objective = "time"
    depth: int | None = None
    max_depth: int = 128
    total_depth: int = 256
    workers: int = 1
    calibrate: bool = True
    max_gap: int | None = None
    max_waste: float | None = None
    max_request: int = 2 << 20
    max_inflight_bytes: int = 64 << 20

    def depth_for(self, model: StoreModel, request_bytes: float) -> int:
        """Requests in flight for this reader under ``model`` (``depth`` when set)."""
        if self.depth is not None:
            return max(1, int(self.depth))
        cap = max(1, min(self.max_depth, self.total_depth // max(1, self.workers)))
        return model.depth_for(request_bytes, cap, min_depth=min(4, cap))


DEFAULT_REMOTE_POLICY = FetchPolicy()


def plan_fetches(index: ShardIndex, order: np.ndarray, policy: FetchPolicy, model: StoreModel | None = None,
                 depth: int | None = None) -> list[tuple[int, int, int, int]]:
    """Group ``order`` (positions in yield order) into requests.

    By the model (:func:`~streamprune.readers.planner.plan_shard`), or by the legacy fixed
    gap rule when ``policy.max_gap`` is set.

    Args:
        index: The shard's index.
        order: Sample positions, in the order they will be yielded.
        policy: Coalescing limits and objective.
        model: The store model to plan with (default ``policy.store``).
        depth: Requests in flight to plan for (default: ``policy``'s for the model).

    Returns:
        Per request ``(first, last_exclusive, lo, hi)``: positions ``order[first:last]`` are
        served by bytes ``[lo, hi)`` of the shard.
    """
    if policy.max_gap is None:
        model = model or policy.store
        depth_of = depth if depth is not None else functools.partial(policy.depth_for, model)
        return plan_shard(index, order, model, depth_of, policy.max_request, policy.objective, policy.max_waste).requests
    n = len(order)
    if n == 0:
        return []
    starts = index.start[order].astype(np.int64)
    ends = index.end[order].astype(np.int64)
    gaps = starts[1:] - ends[:-1]  # between consecutive samples in yield order
    join = gaps == 0
    candidates = np.flatnonzero((gaps > 0) & (gaps <= policy.max_gap))
    if len(candidates):
        budget = math.inf if policy.max_waste is None else policy.max_waste * float((ends - starts).sum())
        by_size = candidates[np.argsort(gaps[candidates], kind="stable")]
        taken = by_size[np.cumsum(gaps[by_size]) <= budget]
        join[taken] = True
    return cut_requests(starts.tolist(), ends.tolist(), join.tolist(), policy.max_request)


@dataclass
class ShardRead:
    """One shard's part of a scheduled read.

    Attributes:
        url: The ``__url__`` of its samples.
        order: Sample positions to yield, in order.
        open: Opens the shard (:meth:`ShardFile.from_storage`: the object's size and ETag, the
            index); called on a helper thread ahead of the shard's turn, so a remote shard's
            metadata round trips overlap the previous shard's data.
        owned: Close the shard when its samples are out (``False``: the caller keeps it open,
            as a map-style dataset does across batches).
    """

    url: str
    order: np.ndarray
    open: Callable[[], ShardFile]
    owned: bool = True


@dataclass(frozen=True)
class CacheBinding:
    """A kept-bytes cache as one read uses it: the cache and the dataset it is keyed by.

    Attributes:
        cache: The :class:`~streamprune.readers.keptcache.KeptCache` (one per process).
        dataset_id: The manifest's fingerprint: a cache filled for another dataset never hits.
    """

    cache: KeptCache
    dataset_id: str

    def open(self, url: str, shard: ShardFile) -> ShardCache:
        """The cache of shard ``url`` in the version opened (its size and ETag)."""
        etag = shard.storage.etag if shard.storage is not None else ""
        return self.cache.shard(self.dataset_id, url, shard.index.shard_bytes, etag, shard.index)


@dataclass
class ReadStats:
    """What a scheduled read did, and what the planner predicted for it.

    Attributes:
        shards: Shards read.
        requests: Requests sent (by the plan; the storage layer's retries not counted).
        fetched_bytes: Bytes requested.
        kept_bytes: Bytes of the samples yielded.
        seconds: Wall time from the first request to the last sample.
        predicted_seconds: Sum of the planner's per-shard predictions (requests alone).
        whole_requests: Requests the unpruned reader would send for the same shards.
        whole_bytes: Bytes it would fetch.
        cached_samples: Samples served from the kept-bytes cache.
        cached_bytes: Their bytes.
        latency: The calibrated latency at the end, seconds.
        conn_bandwidth: The calibrated per-connection bandwidth at the end, bytes/s.
        depth: Requests in flight at the end.
    """

    shards: int = 0
    requests: int = 0
    fetched_bytes: int = 0
    kept_bytes: int = 0
    seconds: float = 0.0
    predicted_seconds: float = 0.0
    whole_requests: int = 0
    whole_bytes: int = 0
    cached_samples: int = 0
    cached_bytes: int = 0
    latency: float = 0.0
    conn_bandwidth: float = 0.0
    depth: int = 0

    def as_dict(self) -> dict:
        """The fields as a plain dict (for logs and results files)."""
        return dict(self.__dict__)


@dataclass
class _Opened:
    """A shard opened ahead of its turn, with its requests planned."""

    shard: ShardFile
    url: str
    positions: list[int]
    plan: list[tuple[int, int, int, int]]
    owned: bool = True
    submitted: int = 0
    consumed: int = 0
    kept_bytes: int = 0
    predicted_seconds: float = 0.0
    whole: tuple[int, int] = (0, 0)
    cache: ShardCache | None = None


def _open(read: ShardRead, policy: FetchPolicy, calibrator: Calibrator | None, cache: CacheBinding | None) -> _Opened:
    shard = read.open()
    shard_cache = None
    try:
        order = np.asarray(read.order, dtype=np.int64)
        index = shard.index
        kept = int((index.end[order] - index.start[order]).sum()) if len(order) else 0
        shard_cache = cache.open(read.url, shard) if cache is not None and len(order) else None
        hit = shard_cache.cached(order) if shard_cache is not None else np.zeros(len(order), dtype=bool)
        missing = np.flatnonzero(~hit)
        fetch_order = order[missing]
        predicted = 0.0
        if policy.max_gap is not None:
            requests = plan_fetches(index, fetch_order, policy)
        else:
            model = calibrator.model() if calibrator is not None else policy.store
            plan = plan_shard(index, fetch_order, model, functools.partial(policy.depth_for, model), policy.max_request,
                              policy.objective, policy.max_waste)
            requests, predicted = plan.requests, plan.seconds
        if len(missing) < len(order):
            requests = _around_cached(index, order, missing, requests)
        return _Opened(shard, read.url, order.tolist(), requests, read.owned, kept_bytes=kept, predicted_seconds=predicted,
                       whole=whole_shard_cost(index, policy.max_request), cache=shard_cache)
    except BaseException:
        if shard_cache is not None:
            shard_cache.close()
        if read.owned:
            shard.close()
        raise


def _around_cached(index: ShardIndex, order: np.ndarray, missing: np.ndarray,
                   requests: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Requests planned over ``order[missing]`` as entries over ``order``, with the cached runs between them.

    A request's samples that a cached sample separates in yield order are cut into one request
    per stretch (each from its first sample's start to its last sample's end, so no cached or
    pruned byte is fetched for them); each stretch of cached samples is an entry with ``lo = -1``.
    """
    out: list[tuple[int, int, int, int]] = []
    for a, b, _, _ in requests:
        idx = missing[a:b]
        cuts = (np.flatnonzero(np.diff(idx) != 1) + 1).tolist()
        for first, last in zip([0] + cuts, cuts + [len(idx)]):
            i, j = int(idx[first]), int(idx[last - 1]) + 1
            out.append((i, j, int(index.start[order[i]]), int(index.end[order[j - 1]])))
    fetched = np.zeros(len(order), dtype=bool)
    fetched[missing] = True
    edges = np.flatnonzero(np.diff(np.concatenate([[1], fetched.view(np.int8), [1]])))
    # edges alternate: where a cached stretch begins, where it ends
    out += [(int(a), int(b), -1, -1) for a, b in zip(edges[0::2], edges[1::2])]
    out.sort()
    return out


class _Failed:
    """A shard that failed to open: raised when its turn comes, after every earlier sample."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def read_shards_scheduled(reads: Iterable[ShardRead], policy: FetchPolicy = DEFAULT_REMOTE_POLICY,
                          max_lookahead: int = 16, stats: ReadStats | None = None,
                          cache: CacheBinding | None = None) -> Iterator[dict]:
    """Yield webdataset sample dicts for a sequence of shards, with requests in flight across shard boundaries.

    The next shards are opened ahead on helper threads (their size/ETag and index requests
    overlap the current shard's data), as many as it takes to keep ``depth`` requests in
    flight (a shard read whole is one or two large requests; a pruned one, dozens of small
    ones), at most ``max_lookahead``; their requests start as soon as they are open, while
    earlier shards' are still in flight, so the pipeline never drains at a shard boundary.
    Requests are planned per shard (:func:`plan_fetches`) with the store model as calibrated
    so far; ``depth`` follows the calibrated latency unless the policy fixes it. Bytes fetched
    but not consumed stay under ``policy.max_inflight_bytes``. Samples come out in order; an
    error (a request that failed for good, a shard that failed to open) is raised when its
    turn comes, after every sample before it, and nothing is yielded twice.

    Each request's first member header is checked against the index (the shard was not
    rewritten), and with ``shard.verify`` every sample against its checksum.

    Args:
        reads: The shards, in yield order (consumed lazily, as far ahead as opened).
        policy: Planning, concurrency and memory limits.
        max_lookahead: Most shards opened ahead of the one being read.
        stats: Filled in as the read goes (requests, bytes, time, the planner's prediction).
        cache: A kept-bytes cache: samples it holds are read from it, only the others are
            planned and fetched, and the fetched ones are added to it (on a writer thread,
            committed as each shard ends).

    Yields:
        ``{"__key__": key, "__url__": url, ext: bytes, ...}``.
    """
    reads = iter(reads)
    stats = stats if stats is not None else ReadStats()
    calibrator = Calibrator(policy.store) if policy.calibrate and policy.max_gap is None else None
    max_depth = policy.depth if policy.depth is not None else max(1, min(policy.max_depth, policy.total_depth // max(1, policy.workers)))
    max_lookahead = max(1, max_lookahead)
    # threads serve only objects whose reads block (local files, the fsspec fallback); a native
    # asynchronous client runs its requests on its own event loop and ignores this pool
    fetch_pool = cf.ThreadPoolExecutor(max_workers=max(1, max_depth), thread_name_prefix="streamprune-fetch")
    open_pool = cf.ThreadPoolExecutor(max_workers=max_lookahead, thread_name_prefix="streamprune-open")
    opening: collections.deque[cf.Future] = collections.deque()
    # in yield order: (future of the bytes, its shard, its plan entry), or a _Failed marker
    pending: collections.deque = collections.deque()
    current: _Opened | None = None
    live: list[_Opened] = []  # opened and not yet closed: closed on the way out, however that happens
    inflight = 0
    exhausted = False
    opened_shards = planned_requests = 0
    depth = policy.depth_for(policy.store, policy.max_request)
    started = 0.0
    writer = _CacheWriter() if cache is not None else None

    def observe(future: cf.Future, t0: float, nbytes: int) -> None:
        if calibrator is not None and not future.cancelled() and future.exception() is None:
            calibrator.observe(nbytes, time.perf_counter() - t0)

    def room() -> bool:
        return len(pending) < depth and not (pending and isinstance(pending[-1], _Failed))

    try:
        while True:
            # open ahead: enough shards for `depth` requests, judged by the requests per shard so far
            # before any shard is open, guess 8 requests a shard: 4 opens at first, not 16
            # (opens at the start compete with the first shard's data)
            per_shard = planned_requests / opened_shards if opened_shards else 8.0
            lookahead = min(max_lookahead, max(1, math.ceil(depth / max(1.0, per_shard))))
            while not exhausted and len(opening) < lookahead:
                nxt = next(reads, None)
                if nxt is None:
                    exhausted = True
                    break
                opening.append(open_pool.submit(_open, nxt, policy, calibrator, cache))
            # start requests: the current shard's, then the next shards' as they open
            while room():
                if current is None or current.submitted == len(current.plan):
                    if not opening or (pending and not opening[0].done()):
                        break  # never wait for an open while data is in flight
                    future = opening.popleft()
                    try:
                        current = future.result()
                    except Exception as exc:  # noqa: BLE001 - re-raised in order, after the samples before it
                        pending.append(_Failed(exc))
                        current = None
                        break
                    opened_shards += 1
                    planned_requests += len(current.plan)
                    stats.kept_bytes += current.kept_bytes
                    stats.predicted_seconds += current.predicted_seconds
                    stats.whole_requests += current.whole[0]
                    stats.whole_bytes += current.whole[1]
                    if calibrator is not None and current.plan:
                        mean = sum(hi - lo for _, _, lo, hi in current.plan) / len(current.plan)
                        depth = min(max_depth, policy.depth_for(calibrator.model(), mean))
                    if current.plan:
                        live.append(current)
                    elif current.owned:
                        current.shard.close()
                    continue
                a, b, lo, hi = current.plan[current.submitted]
                if lo < 0:  # cached samples: nothing to fetch
                    pending.append((_DONE, current, current.plan[current.submitted]))
                    current.submitted += 1
                    continue
                if pending and inflight + (hi - lo) > policy.max_inflight_bytes:
                    break
                obj = current.shard.storage
                assert obj is not None, "read_shards_scheduled needs shards opened with ShardFile.from_storage"
                t0 = time.perf_counter()
                if not started:
                    started = t0
                request = obj.submit(lo, hi, fetch_pool)
                request.add_done_callback(functools.partial(observe, t0=t0, nbytes=hi - lo))
                pending.append((request, current, current.plan[current.submitted]))
                current.submitted += 1
                inflight += hi - lo
                stats.requests += 1
                stats.fetched_bytes += hi - lo
            if not pending:
                if exhausted and not opening and (current is None or current.submitted == len(current.plan)):
                    return
                continue
            head = pending[0]
            if isinstance(head, _Failed):
                raise head.exc
            future, opened, (a, b, lo, hi) = head
            if (not future.done() and opening and not opening[0].done() and room()
                    and inflight < policy.max_inflight_bytes):
                # the next shard may open before the head request lands: start its requests then
                cf.wait([future, opening[0]], return_when=cf.FIRST_COMPLETED)
                continue
            pending.popleft()
            data = future.result()
            if lo < 0:
                yield from _cached_samples(opened, a, b, stats)
            else:
                inflight -= hi - lo
                yield from _samples(opened, a, b, lo, data)
                if writer is not None and opened.cache is not None:
                    writer.add(opened, a, b, lo, data)
            opened.consumed += 1
            if opened.consumed == len(opened.plan):
                if opened.owned:
                    opened.shard.close()
                if writer is not None and opened.cache is not None:
                    writer.close(opened.cache)
                    opened.cache = None
                live.remove(opened)
    finally:
        for item in pending:
            if not isinstance(item, _Failed):
                item[0].cancel()
        for future in opening:
            future.cancel()
        fetch_pool.shutdown(wait=True, cancel_futures=True)
        open_pool.shutdown(wait=True, cancel_futures=True)
        # shards opened ahead of their turn, or left part-read (a consumer that stopped early, an error)
        live += [f.result() for f in opening if f.done() and not f.cancelled() and f.exception() is None]
        for opened in live:
            if opened.owned:
                opened.shard.close()
            if opened.cache is not None:
                if writer is not None:
                    writer.close(opened.cache)
                else:
                    opened.cache.close()
        if writer is not None:
            writer.finish()
        stats.shards += opened_shards
        stats.seconds += time.perf_counter() - started if started else 0.0
        stats.depth = depth
        model = calibrator.model() if calibrator is not None else policy.store
        stats.latency, stats.conn_bandwidth = model.latency, model.conn_bandwidth


#: The "bytes" of an entry served from the cache: nothing to wait for.
_DONE: cf.Future = cf.Future()
_DONE.set_result(None)


class _CacheWriter:
    """Adds fetched samples to their shards' caches on one background thread.

    Writing (a chunk file, fsynced) must not stall the epoch; the thread holds at most
    ``max_bytes`` of fetched data not yet added, and the reader waits beyond that. A failure
    to cache is logged, never raised: the epoch's samples are already out.
    """

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamprune-cache")
        self.room = threading.BoundedSemaphore(max(1, max_bytes >> 20))
        self.failed = False

    def add(self, opened: _Opened, a: int, b: int, lo: int, data: bytes) -> None:
        index, shard_cache = opened.shard.index, opened.cache
        positions = opened.positions[a:b]
        mib = max(1, len(data) >> 20)
        for _ in range(mib):
            self.room.acquire()
        self.pool.submit(self._add, shard_cache, index, positions, lo, data, mib)

    def _add(self, shard_cache: ShardCache, index: ShardIndex, positions: list[int], lo: int, data: bytes, mib: int) -> None:
        try:
            view = memoryview(data)
            starts, ends = index.start[positions].tolist(), index.end[positions].tolist()
            for pos, start, end in zip(positions, starts, ends):
                shard_cache.add(pos, view[start - lo : end - lo])
        except Exception as exc:  # noqa: BLE001 - a sample that cannot be cached is fetched again next time
            self._warn(exc)
        finally:
            for _ in range(mib):
                self.room.release()

    def close(self, shard_cache: ShardCache) -> None:
        self.pool.submit(self._close, shard_cache)

    def _close(self, shard_cache: ShardCache) -> None:
        try:
            shard_cache.close()
        except Exception as exc:  # noqa: BLE001 - as in _add
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        if not self.failed:
            self.failed = True
            log.warning("kept-bytes cache: could not store fetched samples (%s: %s); they will be fetched again",
                        type(exc).__name__, exc)

    def finish(self) -> None:
        """Wait until everything handed over is written (the cache is complete when the epoch ends)."""
        self.pool.shutdown(wait=True)


def _cached_samples(opened: _Opened, a: int, b: int, stats: ReadStats) -> Iterator[dict]:
    """The samples ``positions[a:b]`` from the cache (one the cache finds damaged is fetched instead)."""
    shard, index, shard_cache = opened.shard, opened.shard.index, opened.cache
    assert shard_cache is not None
    for j in range(a, b):
        pos = opened.positions[j]
        start, end = int(index.start[pos]), int(index.end[pos])
        data = shard_cache.get(pos)
        if data is None:  # damaged on disk (its chunk is deleted): fetch it, as if never cached
            assert shard.storage is not None
            data = shard.storage.read(start, end)
            stats.requests += 1
            stats.fetched_bytes += end - start
            yield from _samples(opened, j, j + 1, start, data)
            continue
        stats.cached_samples += 1
        stats.cached_bytes += end - start
        # checked against its digest by the cache (it was verified when fetched): not hashed again
        yield from _samples(opened, j, j + 1, start, data, verify=False)


def _samples(opened: _Opened, a: int, b: int, lo: int, data: bytes | memoryview, verify: bool = True) -> Iterable[dict]:
    """The samples ``positions[a:b]`` of one fetched request (its bytes start at shard offset ``lo``)."""
    return samples_from_buffer(opened.shard, opened.positions, a, b, lo, data, opened.url,
                               verify=None if verify else False)
