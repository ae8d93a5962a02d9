"""Selector ``top`` without a global argsort: a threshold found from per-shard histograms.

Keeping the ``k`` most useful of N samples needs only the ``k``-th score and, among the
samples tied with it, which come first. Each score becomes a 64-bit key that orders like the
score (the IEEE bits, flipped so that unsigned order is numeric order; ``-0.0`` as ``0.0``;
negated first when a lower score is kept). Per-shard engine tasks histogram the next 16 bits
of the keys under the prefix fixed so far; the driver adds the histograms up (one at a time)
and finds the bin that holds the ``k``-th key. Once that bin holds at most ``gather`` samples
(or all 64 bits are fixed), a last pass gathers them (key, global id) and the driver orders
them by key, then id, as :func:`~streamprune.scores.rank_items` does: the kept set is every
key above the bin plus the first ones of the bin. At most four histogram passes; memory on
the driver is one histogram and ``gather`` candidates, not N. A group of equal scores larger
than ``gather`` (all 64 bits fixed) is not gathered: a count pass finds the shard holding its
``k``-th member, and the cut keeps the group's members below that id (:attr:`Cut.below`).

The kept set is exactly ``rank_items(scores)[:k]`` (higher first, id ascending among ties).
Given a scores file's stored ``ranking`` (which may break ties by further keys, e.g. FM's
``inv_dist_sum``), the samples tied with the ``k``-th score are taken from it instead: the
ranking follows the scores, so with ``g`` samples scoring above the ``k``-th, ``ranking[g:k]``
are exactly the tied samples it keeps, and the kept set is ``ranking[:k]``'s without sorting.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engine import Engine, make_engine
from .errors import ArgumentError
from .manifest import Manifest
from .masks import MaskFile
from .ratios import kept_count
from .shardindex import ShardIndex
from .shardmask import write_mask_by_shard

__all__ = ["Cut", "CutKeep", "ShardScores", "ArrayScores", "find_cut", "score_keys", "top_mask_by_shard"]

#: ``scores(k) -> float64[samples of shard k]``, picklable.
ShardScores = Callable[[int], np.ndarray]
BITS = 16
DEFAULT_GATHER = 1 << 20


def score_keys(scores: np.ndarray, higher_is: str = "keep") -> np.ndarray:
    """``uint64`` keys that order like the scores (a larger key is kept first).

    Args:
        scores: Finite scores.
        higher_is: ``"keep"`` (a higher score is kept first) or ``"prune"`` (a lower one is).
    """
    values = np.asarray(scores, dtype=np.float64)
    values = (-values if higher_is == "prune" else values) + 0.0  # + 0.0 turns -0.0 into 0.0: they tie as numbers
    bits = values.view(np.uint64)
    negative = (bits >> np.uint64(63)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint64(1 << 63))


@dataclass(frozen=True)
class Cut:
    """Where the kept set ends: keys whose top ``depth`` bits exceed ``prefix``, plus ``ties``.

    Attributes:
        depth: Bits of the key fixed (0..64).
        prefix: The top ``depth`` bits of the bin that holds the ``k``-th key.
        ties: Global ids kept from that bin, ascending.
        k: Samples kept.
        everything: Every sample is kept (``k`` is the total).
        below: With all 64 bits fixed (every key in the bin equal), the bin's samples with a
            global id below this are kept too: a tie group kept by id, whatever its size,
            without listing it (``-1``: none).
    """

    depth: int
    prefix: int
    ties: np.ndarray
    k: int
    everything: bool = False
    below: int = -1

    def keep(self, keys: np.ndarray, first_id: int) -> np.ndarray:
        """The keep bits of one shard's keys (global ids from ``first_id``)."""
        if self.k == 0 or self.everything:
            return np.full(len(keys), self.everything, dtype=bool)
        if self.depth == 0:
            out = np.zeros(len(keys), dtype=bool)
        else:
            out = (keys >> np.uint64(64 - self.depth)) > np.uint64(self.prefix)
        lo, hi = np.searchsorted(self.ties, [first_id, first_id + len(keys)])
        out[self.ties[lo:hi] - first_id] = True
        if self.below > first_id:
            head = min(self.below - first_id, len(keys))
            out[:head] |= keys[:head] == np.uint64(self.prefix)
        return out


class ArrayScores:
    """Shard ``k``'s slice of one score array in manifest order (a scores file held in memory).

    Args:
        scores: Scores in manifest order.
        offsets: ``manifest.shard_offsets``.
    """

    def __init__(self, scores: np.ndarray, offsets: np.ndarray) -> None:
        self.scores = np.asarray(scores, dtype=np.float64)
        self.offsets = np.asarray(offsets, dtype=np.int64)

    def __call__(self, k: int) -> np.ndarray:
        return self.scores[self.offsets[k] : self.offsets[k + 1]]


def _state(scores: ShardScores, higher_is: str) -> tuple[ShardScores, str]:
    return scores, higher_is


def _in_prefix(keys: np.ndarray, depth: int, prefix: int) -> np.ndarray:
    if depth == 0:
        return np.ones(len(keys), dtype=bool)
    return (keys >> np.uint64(64 - depth)) == np.uint64(prefix)


def _histogram_task(state: tuple[ShardScores, str], job: tuple[int, int, int]) -> np.ndarray:
    """Counts of shard ``k``'s keys under ``prefix`` by their next 16 bits."""
    scores, higher_is = state
    k, depth, prefix = job
    keys = score_keys(scores(k), higher_is)
    keys = keys[_in_prefix(keys, depth, prefix)]
    bins = ((keys >> np.uint64(64 - depth - BITS)) & np.uint64((1 << BITS) - 1)).astype(np.int64)
    return np.bincount(bins, minlength=1 << BITS)


def _count_task(state: tuple[ShardScores, str], job: tuple[int, int]) -> tuple[int, int]:
    """How many of shard ``k``'s keys equal ``key`` (a full 64-bit key)."""
    scores, higher_is = state
    k, key = job
    return k, int((score_keys(scores(k), higher_is) == np.uint64(key)).sum())


def _gather_task(state: tuple[ShardScores, str], job: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Shard ``k``'s keys under ``prefix`` with their global ids."""
    scores, higher_is = state
    k, depth, prefix, first_id = job
    keys = score_keys(scores(k), higher_is)
    where = np.flatnonzero(_in_prefix(keys, depth, prefix))
    return keys[where], where.astype(np.int64) + first_id


def find_cut(
    counts: np.ndarray,
    scores: ShardScores,
    k: int,
    higher_is: str = "keep",
    engine: str | Engine | None = None,
    workers: int = 1,
    gather: int = DEFAULT_GATHER,
    ranking: np.ndarray | None = None,
) -> Cut:
    """Find the kept set's boundary with histogram passes over the shards (no global sort).

    Args:
        counts: Samples per shard.
        scores: Picklable ``scores(k)``: shard ``k``'s scores.
        k: Samples to keep.
        higher_is: ``"keep"`` or ``"prune"``, as the scores file says.
        engine: Where the per-shard passes run (``"local"`` / ``None``, ``"ray"``, an engine).
        workers: Local processes when ``engine`` is a name.
        gather: Candidates gathered on the driver for the exact last step.
        ranking: A stored ranking of all samples (most useful first, following the scores):
            ties with the ``k``-th score are kept in its order, not by id (see the module).

    Returns:
        The cut.
    """
    counts = np.asarray(counts, dtype=np.int64)
    firsts = np.concatenate([[0], np.cumsum(counts)])[:-1]
    total = int(counts.sum())
    if not 0 <= k <= total:
        raise ArgumentError(f"k={k}: must be within 0..{total}")
    if k == 0 or k == total:
        return Cut(0, 0, np.zeros(0, dtype=np.int64), k, everything=k == total)
    runner = make_engine(engine, workers=workers)
    setup = functools.partial(_state, scores, higher_is)
    shards = [s for s in range(len(counts)) if counts[s]]
    depth, prefix, need, in_bin = 0, 0, k, total
    hist = np.zeros(1 << BITS, dtype=np.int64)

    def add(_: int, h: np.ndarray) -> None:
        hist[:] += h

    while in_bin > gather and depth < 64:
        hist[:] = 0
        runner.map(_histogram_task, [(s, depth, prefix) for s in shards], setup=setup, on_result=add,
                   desc="select-histogram", keep_results=False)
        above = np.concatenate([np.cumsum(hist[::-1])[::-1][1:], [0]])  # keys in higher bins
        b = int(np.flatnonzero(above < need).min())  # the highest bin whose keys, with those above, reach k
        need -= int(above[b])
        in_bin = int(hist[b])
        depth, prefix = depth + BITS, (prefix << BITS) | b
    if in_bin > gather:  # all 64 bits fixed: one tie group larger than gather, kept in id (or ranking) order
        return _cut_in_tie_group(counts, firsts, shards, runner, setup, prefix, need, in_bin, k, ranking)
    found: list[tuple[np.ndarray, np.ndarray]] = []
    runner.map(_gather_task, [(s, depth, prefix, int(firsts[s])) for s in shards], setup=setup,
               on_result=lambda _, r: found.append(r) if len(r[0]) else None, desc="select-gather", keep_results=False)
    keys = np.concatenate([f[0] for f in found]) if found else np.zeros(0, dtype=np.uint64)
    ids = np.concatenate([f[1] for f in found]) if found else np.zeros(0, dtype=np.int64)
    order = np.lexsort((ids, ~keys))  # larger key first, then id ascending
    if ranking is None:
        return Cut(depth, prefix, np.sort(ids[order[:need]]), k)
    kth = keys[order[need - 1]]
    above = keys > kth  # in the bin, above the k-th score: kept whatever the tie order
    first_tied = k - need + int(above.sum())  # samples scoring above the k-th, in the whole set
    return Cut(depth, prefix, np.sort(np.concatenate([ids[above], np.asarray(ranking[first_tied:k], dtype=np.int64)])), k)


def _cut_in_tie_group(counts: np.ndarray, firsts: np.ndarray, shards: list[int], runner: Engine, setup: Any, key: int,
                      need: int, size: int, k: int, ranking: np.ndarray | None) -> Cut:
    """The cut inside one group of ``size`` equal keys: its first ``need`` samples by id, as a bound (``Cut.below``).

    With a stored ranking whose order in the group is not by id, its ``need`` first ids are listed instead.
    """
    if ranking is not None:
        group = ranking[k - need : k - need + size]  # the ranking follows the scores: the group is one run of it
        if np.any(np.diff(group) < 0):  # the file breaks these ties by another key
            return Cut(64, key, np.sort(np.asarray(group[:need], dtype=np.int64)), k)
        return Cut(64, key, np.zeros(0, dtype=np.int64), k, below=int(group[need - 1]) + 1)
    per_shard = np.zeros(len(counts), dtype=np.int64)

    def add(_: int, r: tuple[int, int]) -> None:
        per_shard[r[0]] = r[1]

    runner.map(_count_task, [(s, key) for s in shards], setup=setup, on_result=add, desc="select-ties", keep_results=False)
    s = int(np.searchsorted(np.cumsum(per_shard), need))  # the shard that holds the need-th tied sample
    left = need - int(per_shard[:s].sum())
    _, ids = _gather_task(setup(), (s, 64, key, int(firsts[s])))
    return Cut(64, key, np.zeros(0, dtype=np.int64), k, below=int(ids[left - 1]) + 1)


class CutKeep:
    """Keep bits of shard ``k`` under a cut (picklable, for :func:`~streamprune.shardmask.write_mask_by_shard`).

    Args:
        cut: The cut (:func:`find_cut`).
        scores: Picklable ``scores(k)`` per shard.
        higher_is: ``"keep"`` or ``"prune"``.
        firsts: Global id of each shard's first sample.
    """

    def __init__(self, cut: Cut, scores: ShardScores, higher_is: str, firsts: np.ndarray) -> None:
        self.cut, self.scores, self.higher_is, self.firsts = cut, scores, higher_is, firsts

    def __call__(self, k: int, index: ShardIndex) -> np.ndarray:
        return self.cut.keep(score_keys(self.scores(k), self.higher_is), int(self.firsts[k]))


def top_mask_by_shard(
    manifest: Manifest,
    scores: ShardScores,
    ratio: float,
    path: str,
    higher_is: str = "keep",
    provenance: dict[str, Any] | None = None,
    engine: str | Engine | None = None,
    workers: int = 1,
    gather: int = DEFAULT_GATHER,
    ranking: np.ndarray | None = None,
) -> MaskFile:
    """The ``top`` mask at ``ratio``: find the cut by histograms, then each task writes its shard's bits.

    Args:
        manifest: The dataset.
        scores: Picklable ``scores(k)`` per shard (:class:`ArrayScores` for a scores file in memory).
        ratio: Fraction removed.
        path: The mask file to write.
        higher_is: ``"keep"`` or ``"prune"``.
        provenance: Recorded in the mask (``selector: top`` and the ratio are added).
        engine: Where the passes run.
        workers: Local processes when ``engine`` is a name.
        gather: See :func:`find_cut`.
        ranking: See :func:`find_cut` (a scores file's stored ranking: its tie order).

    Returns:
        The written mask.
    """
    counts = np.fromiter((s.samples for s in manifest.shards), dtype=np.int64, count=len(manifest.shards))
    k = kept_count(int(counts.sum()), ratio)
    runner = make_engine(engine, workers=workers)
    cut = find_cut(counts, scores, k, higher_is, engine=runner, gather=gather, ranking=ranking)
    firsts = np.concatenate([[0], np.cumsum(counts)])[:-1]
    record = {**(provenance or {}), "selector": "top", "requested_ratio": ratio, "ratio": ratio}
    return write_mask_by_shard(manifest, CutKeep(cut, scores, higher_is, firsts), path, record, engine=runner)
