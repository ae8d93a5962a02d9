"""The order samples are written in: shuffled or not, and optionally class after class.

One home for both writers: tar shards (``layout="class-sorted"``) and ``.beton`` files
(``layout="page-aware"``) keep each class's samples together, in the (shuffled) order within
the class, so that a class-level mask (source-class pruning: LM, FM) keeps long runs and a
pruned read needs a few large reads or requests instead of one per kept sample.

Up to :data:`LAZY_FROM` samples the order is one array (:func:`sample_order`: NumPy's seeded
permutation, 4 bytes a sample), so shards written by earlier versions stay the same. From
:data:`LAZY_FROM` on, the array alone would be 1 GiB on the driver (4 GiB at 10^9), so
:class:`WriteOrder` computes each shard's positions when its task runs: a seeded
:class:`FeistelPermutation` of ``range(n)`` (a bijection evaluated per position, nothing
stored), or of each class's range of positions for ``class-sorted`` sources whose labels come
in class order (a folder source). Sources whose labels are in any other order keep the array.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..sources import ArraySource, ListSource, Source

__all__ = ["LAZY_FROM", "FeistelPermutation", "WriteOrder", "key_label", "sample_order", "source_labels"]

#: Samples from which :class:`WriteOrder` computes positions per shard instead of holding them.
LAZY_FROM = 1 << 28
_ROUNDS = 6
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def key_label(source: Source, i: int) -> tuple[str, int]:
    """Key and label of sample ``i`` without reading or encoding its image when possible.

    Sources may define ``key_label(i)`` for this; the built-in sources are handled directly.
    """
    fast = getattr(source, "key_label", None)
    if callable(fast):
        key, label = fast(i)
    elif isinstance(source, ArraySource):
        key, label = f"{source.prefix}{i:08d}", int(source.labels[i])
    elif isinstance(source, ListSource):
        key, _, label = source.samples[i]
    else:
        key, _, label = source[i]
    return key, -1 if label is None else int(label)


def source_labels(source: Source) -> np.ndarray:
    """Every sample's label (``-1``: unlabelled) as ``int32``, without reading images when possible."""
    labels = getattr(source, "labels", None)
    if callable(labels):  # a folder source knows its labels from its class counts
        return np.asarray(labels(), dtype=np.int32)
    if isinstance(source, ArraySource):
        return np.asarray(source.labels, dtype=np.int32)
    return np.fromiter((key_label(source, i)[1] for i in range(len(source))), dtype=np.int32, count=len(source))


def sample_order(n: int, shuffle: bool, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """Source positions in write order.

    The positions are ``uint32`` while ``n`` fits (4 bytes a sample on the driver that plans
    the run, half of ``int64``); the shuffle is the same permutation either way.

    Args:
        n: Samples in the source.
        shuffle: Shuffle (seeded) first.
        seed: Shuffle seed.
        labels: When given, samples are grouped by label (ascending, unlabelled ``-1`` first),
            keeping the shuffled order within each class.

    Returns:
        A permutation of ``range(n)``.
    """
    order = np.arange(n, dtype=np.uint32 if n <= np.iinfo(np.uint32).max else np.int64)
    if shuffle:
        np.random.default_rng(seed).shuffle(order)  # Generator.permutation(n) is exactly this shuffle of arange(n)
    if labels is not None:
        order = order[np.argsort(np.asarray(labels)[order], kind="stable")]
    return order


class FeistelPermutation:
    """A seeded bijection of ``range(n)`` evaluated position by position (no table).

    A balanced Feistel network of :data:`_ROUNDS` rounds over the smallest even number of
    bits that covers ``n`` (a bijection of ``[0, 4^h)``, whatever the round function), with
    cycle walking: a value ``>= n`` is encrypted again until it falls in ``range(n)``, which
    keeps it a bijection of ``range(n)`` (``4^h / n`` encryptions a position on average, at most 4).

    Args:
        n: Size of the range.
        seed: Seeds the round keys.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = int(n)
        half = max(1, (max(self.n - 1, 1).bit_length() + 1) // 2)
        self.half, self.mask = np.uint64(half), np.uint64((1 << half) - 1)
        self.keys = np.random.default_rng([int(seed), 0x0FE1]).integers(0, 2**63, size=_ROUNDS, dtype=np.uint64)

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        with np.errstate(over="ignore"):  # the round function's arithmetic wraps modulo 2^64 on purpose
            for key in self.keys:
                z = right ^ key
                z = (z ^ (z >> np.uint64(30))) * _MIX1
                z = (z ^ (z >> np.uint64(27))) * _MIX2
                left, right = right, left ^ ((z ^ (z >> np.uint64(31))) & self.mask)
        return (left << self.half) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The permuted value of each of ``positions`` (``int64`` in ``range(n)``)."""
        x = np.asarray(positions, dtype=np.uint64)
        if self.n <= 1:
            return x.astype(np.int64)
        x = self._encrypt(x)
        out = x >= np.uint64(self.n)
        while out.any():
            x[out] = self._encrypt(x[out])
            out[out] = x[out] >= np.uint64(self.n)
        return x.astype(np.int64)


class WriteOrder:
    """Source positions in write order, given a range of write slots at a time (see the module docstring).

    Args:
        n: Samples in the source.
        shuffle: Shuffle (seeded) first.
        seed: Shuffle seed.
        labels: ``labels()`` of the source when grouping by class (``class-sorted``); called
            once here, unless ``class_starts`` answers first.
        class_starts: ``class_starts()`` of a source whose classes are ranges of positions in
            label order (a folder source): each class's first position, then ``n``. With it the
            lazy order needs no label array.
        lazy_from: Sizes from which positions are computed per range (default :data:`LAZY_FROM`).
    """

    def __init__(self, n: int, shuffle: bool, seed: int, labels: Callable[[], np.ndarray] | None = None,
                 class_starts: Callable[[], np.ndarray] | None = None, lazy_from: int | None = None) -> None:
        self.n, self.shuffle, self.seed = int(n), bool(shuffle), int(seed)
        self.array: np.ndarray | None = None
        self.starts: np.ndarray | None = None  # lazy, by class: each class's first source position, ascending labels
        lazy = self.n >= (LAZY_FROM if lazy_from is None else int(lazy_from))
        if lazy and labels is not None and class_starts is not None:
            self.starts = np.asarray(class_starts(), dtype=np.int64)
            return
        got = labels() if labels is not None else None
        if got is not None and lazy:
            got = np.asarray(got)
            edges = np.flatnonzero(got[1:] != got[:-1]) + 1
            runs = got[np.concatenate([[0], edges])] if len(got) else got
            if len(runs) and np.all(runs[1:] > runs[:-1]):  # labels in class order: each class one range
                self.starts = np.concatenate([[0], edges, [len(got)]]).astype(np.int64)
            else:
                lazy = False
        if not lazy:
            self.array = sample_order(self.n, self.shuffle, self.seed, got)

    @property
    def lazy(self) -> bool:
        """Whether positions are computed per range (no array over every sample)."""
        return self.array is None

    def __len__(self) -> int:
        return self.n

    def positions(self, a: int, b: int) -> np.ndarray:
        """The source positions written in slots ``a .. b-1``."""
        if self.array is not None:
            return self.array[a:b]
        slots = np.arange(a, b, dtype=np.int64)
        if self.starts is None:
            return FeistelPermutation(self.n, self.seed)(slots) if self.shuffle else slots
        out = np.empty(len(slots), dtype=np.int64)
        cls = np.searchsorted(self.starts, slots, side="right") - 1
        for c in np.unique(cls).tolist():  # the slots of class c are its range's positions, shuffled within
            at = np.flatnonzero(cls == c)
            lo, size = int(self.starts[c]), int(self.starts[c + 1] - self.starts[c])
            within = slots[at] - lo
            out[at] = lo + (FeistelPermutation(size, self.seed * 1_000_003 + lo)(within) if self.shuffle else within)
        return out
