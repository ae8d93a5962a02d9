"""Decide which kept samples each rank and worker reads in an epoch.

The kept samples of all shards are laid end to end in a per-epoch order (shards shuffled,
then samples within each shard shuffled, both seeded by ``(seed, epoch)``), and that one
sequence is cut into equal contiguous slices: first one per rank, then one per worker. Cuts
follow kept counts, not shard counts, so ranks get the same number of samples however
uneven the mask is, and contiguous slices keep each worker on few shards. Only the per-shard
kept counts are needed to plan; a worker loads masks and indexes of its own shards only.

Resuming. Positions ``0 .. kept-1`` of that per-epoch sequence (before any rotation or
padding) name the epoch's samples. A *remainder* is an ordered list of ``(begin, end)``
intervals of such positions: what an interrupted epoch had not yet yielded
(:func:`remainder_after`). ``plan_epoch(..., remainder=...)`` cuts the remainder, in its order,
into ``world_size x num_workers`` slices by count, padding or dropping as without one, so a run
resumed with another world size or worker count still reads every not-yet-seen sample once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ArgumentError

__all__ = [
    "Segment",
    "EpochPlan",
    "plan_epoch",
    "rank_sizes",
    "epoch_sequence",
    "slice_bounds",
    "remainder_after",
    "skip_segments",
    "take_positions",
]

Intervals = list[tuple[int, int]]


@dataclass(frozen=True)
class Segment:
    """A stretch of one shard's kept samples, by position in that shard's epoch order.

    Attributes:
        shard: Shard number in manifest order.
        begin: First position (inclusive) in the shard's ordered kept list.
        end: Last position (exclusive).
    """

    shard: int
    begin: int
    end: int


@dataclass(frozen=True)
class EpochPlan:
    """What one (rank, worker) reads in one epoch.

    Attributes:
        segments: Stretches of kept samples in reading order.
        total: Samples this worker yields.
        per_rank: Samples every rank yields this epoch.
    """

    segments: list[Segment]
    total: int
    per_rank: int


def rank_sizes(kept_total: int, world_size: int, uneven: str) -> int:
    """Samples per rank for a kept total.

    Args:
        kept_total: Kept samples over the whole dataset.
        world_size: Number of ranks.
        uneven: ``"drop"`` (floor; the remainder is skipped this epoch) or ``"pad"`` (ceil;
            the shortfall is filled by repeating samples from the start of the epoch order).

    Returns:
        Samples per rank.
    """
    if uneven == "drop":
        return kept_total // world_size
    if uneven == "pad":
        return -(-kept_total // world_size)
    raise ArgumentError(f"uneven={uneven!r}: must be 'drop' or 'pad'")


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Order in which shards are laid out this epoch."""
    if not shuffle:
        return np.arange(num_shards)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_shards)


def within_shard_order(kept_positions: np.ndarray, seed: int, epoch: int, shard: int, shuffle: bool) -> np.ndarray:
    """Order in which a shard's kept samples are read this epoch.

    Args:
        kept_positions: Positions (in the shard) of its kept samples, ascending.
        seed: Base seed.
        epoch: Epoch number.
        shard: Shard number.
        shuffle: Shuffle, or keep archive order.

    Returns:
        The kept positions in reading order.
    """
    if not shuffle:
        return kept_positions
    rng = np.random.default_rng([seed, epoch, shard, 0x0DE5])
    return kept_positions[rng.permutation(len(kept_positions))]


def plan_epoch(
    kept_counts: np.ndarray,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = False,
    rank: int = 0,
    world_size: int = 1,
    worker: int = 0,
    num_workers: int = 1,
    uneven: str = "pad",
    remainder: Intervals | None = None,
) -> EpochPlan:
    """Plan one (rank, worker)'s share of an epoch.

    Args:
        kept_counts: Kept samples per shard, manifest order.
        seed: Base seed for shard and sample shuffling.
        epoch: Epoch number (changes the shuffle).
        shuffle: Shuffle shard order and sample order within shards.
        rank: This process's rank.
        world_size: Number of ranks.
        worker: This DataLoader worker's id.
        num_workers: DataLoader workers per rank (1 when not using workers).
        uneven: ``"pad"`` or ``"drop"``, see :func:`rank_sizes`; with ``"drop"`` the skipped
            samples rotate with the epoch.
        remainder: Plan over only these ``(begin, end)`` intervals of the epoch's sequence, in
            their order (a resumed epoch, see :func:`remainder_after`); padding repeats the
            remainder's first samples, dropping skips its last ones (no rotation). ``None``:
            the whole epoch, exactly as without the argument.

    Returns:
        The plan.
    """
    if not 0 <= rank < world_size:
        raise ArgumentError(f"rank={rank} is outside 0..{world_size - 1}")
    if not 0 <= worker < num_workers:
        raise ArgumentError(f"worker={worker} is outside 0..{num_workers - 1}")
    kept_counts = np.asarray(kept_counts, dtype=np.int64)
    order = shard_order(len(kept_counts), seed, epoch, shuffle)
    counts = kept_counts[order]
    total = int(counts.sum())
    if remainder is not None:
        return _plan_remainder(order, counts, remainder, rank, world_size, worker, num_workers, uneven)
    per_rank = rank_sizes(total, world_size, uneven) if total else 0
    # "drop" skips the last `dropped` samples of the epoch order; without shuffling that would
    # be the same samples every epoch, so the sequence starts `dropped` further on each epoch
    # and over `total / dropped` epochs every kept sample is skipped about equally often.
    dropped = total - per_rank * world_size if uneven == "drop" else 0
    start = (epoch * dropped) % total if dropped else 0
    lo, hi = slice_bounds(per_rank, rank, worker, num_workers)
    segments: list[Segment] = []
    if total and hi > lo:
        _cut_segments(segments, order, counts, np.concatenate([[0], np.cumsum(counts)]), lo, hi, start)
    return EpochPlan(segments=segments, total=hi - lo, per_rank=per_rank)


def _cut_segments(
    segments: list[Segment], order: np.ndarray, counts: np.ndarray, cum: np.ndarray, lo: int, hi: int, start: int = 0,
) -> None:
    """Append the shard segments of sequence positions ``[lo, hi)`` (a range may span several shards).

    Position ``p`` is sample ``(p + start) mod total`` of the epoch's order (``counts`` kept
    samples per shard, in shard order ``order``; ``cum`` their running sum from 0): positions
    past the end wrap around, which is the padding.
    """
    total = int(cum[-1])
    pos = lo
    while pos < hi:
        wrapped = (pos + start) % total
        j = int(np.searchsorted(cum, wrapped, side="right")) - 1
        begin = wrapped - int(cum[j])
        take = min(int(counts[j]) - begin, hi - pos)
        segments.append(Segment(int(order[j]), begin, begin + take))
        pos += take


def slice_bounds(per_rank: int, rank: int, worker: int, num_workers: int) -> tuple[int, int]:
    """``[lo, hi)`` of one (rank, worker) slice in the padded or truncated sequence (as :func:`plan_epoch` cuts)."""
    lo_rank = rank * per_rank
    return lo_rank + worker * per_rank // num_workers, lo_rank + (worker + 1) * per_rank // num_workers


def epoch_sequence(total: int, world_size: int, uneven: str, epoch: int) -> Intervals:
    """The whole epoch as a remainder: ``total`` positions starting where :func:`plan_epoch` starts.

    With ``"drop"`` the sequence starts ``epoch x dropped`` further on (the rotation in
    :func:`plan_epoch`), so slice ``[lo, hi)`` of this sequence is exactly what the fresh plan reads.
    """
    if total <= 0:
        return []
    per_rank = rank_sizes(total, world_size, uneven)
    dropped = total - per_rank * world_size if uneven == "drop" else 0
    start = (epoch * dropped) % total if dropped else 0
    return [(start, total), (0, start)] if start else [(0, total)]


def _length(intervals: Intervals) -> int:
    return sum(e - b for b, e in intervals)


def take_positions(intervals: Intervals, lo: int, hi: int) -> Intervals:
    """Positions ``lo .. hi-1`` of the sequence ``intervals`` (wrapping past its end: padding), as intervals."""
    n = _length(intervals)
    out: Intervals = []
    if n == 0 or hi <= lo:
        return out
    cum = np.concatenate([[0], np.cumsum([e - b for b, e in intervals])])
    pos = lo
    while pos < hi:
        wrapped = pos % n
        j = int(np.searchsorted(cum, wrapped, side="right")) - 1
        offset = wrapped - int(cum[j])
        b, e = intervals[j]
        take = min(e - b - offset, hi - pos)
        out.append((b + offset, b + offset + take))
        pos += take
    return out


def _subtract(intervals: Intervals, removed: Intervals) -> Intervals:
    """``intervals`` in their order, without any position in ``removed``."""
    cuts = sorted((b, e) for b, e in removed if e > b)
    out: Intervals = []
    for b, e in intervals:
        pos = b
        for cb, ce in cuts:
            if ce <= pos or cb >= e:
                continue
            if cb > pos:
                out.append((pos, cb))
            pos = max(pos, ce)
            if pos >= e:
                break
        if pos < e:
            out.append((pos, e))
    merged: Intervals = []
    for b, e in out:  # join neighbours so the list stays short
        if merged and merged[-1][1] == b:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((b, e))
    return merged


def remainder_after(
    sequence: Intervals, world_size: int, num_workers: int, uneven: str, consumed: list[list[int]]
) -> Intervals:
    """What an interrupted epoch has not yet yielded, in the epoch's order.

    Args:
        sequence: What the interrupted run planned over: :func:`epoch_sequence` for a fresh
            epoch, or the remainder it was itself resumed from.
        world_size: Its world size.
        num_workers: Its DataLoader workers per rank (1 without workers).
        uneven: Its ``"pad"`` / ``"drop"`` rule.
        consumed: ``consumed[rank][worker]``: samples that (rank, worker) slice had yielded and
            the training loop had consumed.

    Returns:
        The remainder: ``sequence`` minus every consumed position, in ``sequence``'s order. With
        ``"drop"`` the positions the interrupted run dropped stay dropped; with ``"pad"`` a
        consumed repeat counts its sample as seen.

    Raises:
        ValueError: ``consumed`` has the wrong shape or a count beyond its slice.
    """
    if len(consumed) != world_size or any(len(row) != num_workers for row in consumed):
        raise ArgumentError(f"consumed must be {world_size} ranks x {num_workers} workers")
    n = _length(sequence)
    per_rank = rank_sizes(n, world_size, uneven) if n else 0
    kept_len = min(n, per_rank * world_size)
    seen: Intervals = []
    for rank, row in enumerate(consumed):
        for worker, count in enumerate(row):
            lo, hi = slice_bounds(per_rank, rank, worker, num_workers)
            if not 0 <= count <= hi - lo:
                raise ArgumentError(f"rank {rank} worker {worker}: consumed {count} of a {hi - lo}-sample slice")
            seen += take_positions(sequence, lo, lo + count)
    return _subtract(take_positions(sequence, 0, kept_len), seen)


def _plan_remainder(
    order: np.ndarray, counts: np.ndarray, remainder: Intervals, rank: int, world_size: int, worker: int, num_workers: int,
    uneven: str,
) -> EpochPlan:
    total = int(counts.sum())
    remainder = [(int(b), int(e)) for b, e in remainder if e > b]
    if any(b < 0 or e > total for b, e in remainder):
        raise ArgumentError(f"remainder {remainder[:4]}... is outside the epoch's {total} positions")
    n = _length(remainder)
    per_rank = rank_sizes(n, world_size, uneven) if n else 0
    lo, hi = slice_bounds(per_rank, rank, worker, num_workers)
    cum = np.concatenate([[0], np.cumsum(counts)])
    segments: list[Segment] = []
    for b, e in take_positions(remainder, lo, hi):
        _cut_segments(segments, order, counts, cum, b, e)  # remainder positions are inside the epoch: no wrap
    return EpochPlan(segments=segments, total=hi - lo, per_rank=per_rank)


def skip_segments(segments: list[Segment], skip: int) -> list[Segment]:
    """``segments`` without their first ``skip`` samples: a resumed worker starts past them without reading them."""
    out: list[Segment] = []
    for seg in segments:
        size = seg.end - seg.begin
        if skip >= size:
            skip -= size
            continue
        out.append(Segment(seg.shard, seg.begin + skip, seg.end) if skip else seg)
        skip = 0
    return out
