"""Concurrent ranged fetches of kept runs: coalescing, prefetch, and a cap on bytes in flight.

One request per kept sample would pay a round trip each; one request per shard would fetch
the pruned bytes too. :func:`plan_fetches` groups the kept samples (in the order they will be
yielded) into requests: samples adjacent on disk always share one, and a *gap* of pruned
bytes between two kept samples is fetched along when it costs less to transfer than a
separate request (``gap <= max_gap``, with ``max_gap`` from latency x bandwidth) and the
pruned bytes fetched stay within ``max_waste`` of the kept bytes (smallest gaps first);
requests are capped at ``max_request`` bytes. :func:`fetch_ordered` then runs those requests
on a thread pool, ``depth`` at a time and never more than ``max_inflight_bytes`` fetched but
not yet consumed, and hands them back in order: memory stays bounded, nothing is yielded
twice, nothing is skipped (a request that fails for good raises when its turn comes).

The same code drives local files (positioned reads on threads: several reads in flight keep
a cold disk's queue full) and remote objects (fsspec ranged requests, retried in
:mod:`streamprune.storage`).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ..shardindex import ShardIndex
from ..storage import StorageObject
from .byterange import ShardFile

__all__ = ["FetchPolicy", "plan_fetches", "fetch_ordered", "read_runs_scheduled", "DEFAULT_REMOTE_POLICY"]


@dataclass(frozen=True)
class FetchPolicy:
    """How kept runs are fetched.

    Attributes:
        latency: Seconds to first byte of one request (object stores: 10-100 ms).
        bandwidth: Bytes per second of one connection.
        depth: Requests in flight per reader (per DataLoader worker).
        max_gap: Largest run of pruned bytes fetched along to save a request; ``None``:
            ``latency * bandwidth / depth``, what one request's latency is worth in bytes
            when ``depth`` requests overlap.
        max_waste: Pruned bytes fetched, at most this fraction of the kept bytes (gaps
            are taken smallest first), so coalescing never costs more than a few percent.
        max_request: Largest single request, in bytes.
        max_inflight_bytes: Cap on bytes requested but not yet consumed (memory bound).
    """

    latency: float = 0.03
    bandwidth: float = 100e6
    depth: int = 8
    max_gap: int | None = None
    max_waste: float = 0.05
    max_request: int = 8 << 20
    max_inflight_bytes: int = 64 << 20

    @property
    def gap(self) -> int:
        """The effective ``max_gap`` in bytes."""
        if self.max_gap is not None:
            return int(self.max_gap)
        return int(self.latency * self.bandwidth / max(1, self.depth))


DEFAULT_REMOTE_POLICY = FetchPolicy()


def plan_fetches(index: ShardIndex, order: np.ndarray, policy: FetchPolicy) -> list[tuple[int, int, int, int]]:
    """Group ``order`` (positions in yield order) into requests.

    Args:
        index: The shard's index.
        order: Sample positions, in the order they will be yielded.
        policy: Coalescing limits.

    Returns:
        Per request ``(first, last_exclusive, lo, hi)``: positions ``order[first:last]`` are
        served by bytes ``[lo, hi)`` of the shard.
    """
    n = len(order)
    if n == 0:
        return []
    starts = index.start[order].astype(np.int64)
    ends = index.end[order].astype(np.int64)
    gaps = starts[1:] - ends[:-1]  # between consecutive samples in yield order
    join = gaps == 0
    candidates = np.flatnonzero((gaps > 0) & (gaps <= policy.gap))
    if len(candidates):
        budget = policy.max_waste * float((ends - starts).sum())
        by_size = candidates[np.argsort(gaps[candidates], kind="stable")]
        taken = by_size[np.cumsum(gaps[by_size]) <= budget]
        join[taken] = True
    out: list[tuple[int, int, int, int]] = []
    s, e, j = starts.tolist(), ends.tolist(), join.tolist()
    first, lo, hi = 0, s[0], e[0]
    for k in range(1, n):
        if j[k - 1] and e[k] - lo <= policy.max_request:
            hi = e[k]
            continue
        out.append((first, k, lo, hi))
        first, lo, hi = k, s[k], e[k]
    out.append((first, n, lo, hi))
    return out


def fetch_ordered(
    obj: StorageObject, ranges: Sequence[tuple[int, int]], depth: int = 8, max_inflight_bytes: int = 64 << 20
) -> Iterator[bytes]:
    """Fetch ``ranges`` concurrently and yield their bytes in the given order.

    At most ``depth`` requests run at once, and requests are started only while the bytes
    fetched but not yet consumed stay under ``max_inflight_bytes`` (one request always runs,
    however large). Closing the generator cancels what has not started.

    Raises:
        Whatever a request raised for good (after its retries), when its turn comes.
    """
    if not ranges:
        return
    if depth <= 1 or len(ranges) == 1:
        for lo, hi in ranges:
            yield obj.read(lo, hi)
        return
    pool = cf.ThreadPoolExecutor(max_workers=depth, thread_name_prefix="streamprune-fetch")
    pending: collections.deque[tuple[cf.Future, int]] = collections.deque()
    inflight = 0
    nxt = 0
    try:
        while nxt < len(ranges) or pending:
            while nxt < len(ranges) and len(pending) < depth:
                lo, hi = ranges[nxt]
                if pending and inflight + (hi - lo) > max_inflight_bytes:
                    break
                pending.append((pool.submit(obj.read, lo, hi), hi - lo))
                inflight += hi - lo
                nxt += 1
            future, size = pending.popleft()
            data = future.result()
            inflight -= size
            yield data
    finally:
        for future, _ in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def read_runs_scheduled(shard: ShardFile, order: np.ndarray, url: str, policy: FetchPolicy = DEFAULT_REMOTE_POLICY) -> Iterator[dict]:
    """Yield webdataset sample dicts for ``order`` (positions in the shard), in that order.

    What :func:`~streamprune.readers.byterange.read_runs` does, with requests planned by
    :func:`plan_fetches` and run by :func:`fetch_ordered` through the shard's storage object.
    Each request's first member header is checked against the index (the shard was not
    rewritten), and with ``shard.verify`` every sample against its checksum.

    Args:
        shard: A shard opened with :meth:`ShardFile.from_storage`.
        order: Sample positions to read, in yield order.
        url: Value for each sample's ``__url__``.
        policy: Coalescing, concurrency and memory limits.

    Yields:
        ``{"__key__": key, "__url__": url, ext: bytes, ...}``.
    """
    index = shard.index
    order = np.asarray(order)
    plan = plan_fetches(index, order, policy)
    if not plan:
        return
    obj = shard.storage
    assert obj is not None, "read_runs_scheduled needs a shard opened with ShardFile.from_storage"
    positions = order.tolist()
    keys, members, verify = index.keys, index.members, shard.verify
    fetched = fetch_ordered(obj, [(lo, hi) for _, _, lo, hi in plan], policy.depth, policy.max_inflight_bytes)
    try:
        for (a, b, lo, _), data in zip(plan, fetched):
            view = memoryview(data)
            shard.check_sample(positions[a], view)
            for pos in positions[a:b]:
                sample = {"__key__": keys[pos], "__url__": url}
                group = members[pos]
                for ext, offset, size in group:
                    sample[ext] = bytes(view[offset - lo : offset - lo + size])
                if verify:
                    shard.check_checksum(pos, [sample[ext] for ext, _, _ in group])
                yield sample
    finally:
        fetched.close()
