"""The order samples are written in: shuffled or not, and optionally class after class.

One home for both writers: tar shards (``layout="class-sorted"``) and ``.beton`` files
(``layout="page-aware"``) keep each class's samples together, in the (shuffled) order within
the class, so that a class-level mask (source-class pruning: LM, FM) keeps long runs and a
pruned read needs a few large reads or requests instead of one per kept sample.
"""

from __future__ import annotations

import numpy as np

from ..sources import ArraySource, ListSource, Source

__all__ = ["key_label", "sample_order", "source_labels"]


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
