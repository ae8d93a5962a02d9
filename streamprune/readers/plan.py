"""Decide which kept samples each rank and worker reads in an epoch.

The kept samples of all shards are laid end to end in a per-epoch order (shards shuffled,
then samples within each shard shuffled, both seeded by ``(seed, epoch)``), and that one
sequence is cut into equal contiguous slices: first one per rank, then one per worker. Cuts
follow kept counts, not shard counts, so ranks get the same number of samples however
uneven the mask is, and contiguous slices keep each worker on few shards. Only the per-shard
kept counts are needed to plan; a worker loads masks and indexes of its own shards only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Segment", "EpochPlan", "plan_epoch", "rank_sizes"]


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
    raise ValueError(f"uneven={uneven!r}: must be 'drop' or 'pad'")


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

    Returns:
        The plan.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is outside 0..{world_size - 1}")
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker={worker} is outside 0..{num_workers - 1}")
    kept_counts = np.asarray(kept_counts, dtype=np.int64)
    order = shard_order(len(kept_counts), seed, epoch, shuffle)
    counts = kept_counts[order]
    total = int(counts.sum())
    per_rank = rank_sizes(total, world_size, uneven) if total else 0
    # "drop" skips the last `dropped` samples of the epoch order; without shuffling that would
    # be the same samples every epoch, so the sequence starts `dropped` further on each epoch
    # and over `total / dropped` epochs every kept sample is skipped about equally often.
    dropped = total - per_rank * world_size if uneven == "drop" else 0
    start = (epoch * dropped) % total if dropped else 0
    lo_rank = rank * per_rank
    lo = lo_rank + worker * per_rank // num_workers
    hi = lo_rank + (worker + 1) * per_rank // num_workers
    segments: list[Segment] = []
    if total and hi > lo:
        cum = np.concatenate([[0], np.cumsum(counts)])
        # Positions past the end wrap around: that is the padding.
        pos = lo
        while pos < hi:
            wrapped = (pos + start) % total
            j = int(np.searchsorted(cum, wrapped, side="right")) - 1
            begin = wrapped - int(cum[j])
            take = min(int(counts[j]) - begin, hi - pos)
            segments.append(Segment(int(order[j]), begin, begin + take))
            pos += take
    return EpochPlan(segments=segments, total=hi - lo, per_rank=per_rank)
