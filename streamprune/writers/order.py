"""The order samples are written in: shuffled or not, and optionally class after class.

One home for both writers: tar shards (``layout="class-sorted"``) and ``.beton`` files
(``layout="page-aware"``) keep each class's samples together, in the (shuffled) order within
the class, so that a class-level mask (source-class pruning: LM, FM) keeps long runs and a
pruned read needs a few large reads or requests instead of one per kept sample.
"""

from __future__ import annotations

import numpy as np

from ..sources import ArraySource, FolderSource, ListSource, Source

__all__ = ["key_label", "sample_order"]


def key_label(source: Source, i: int) -> tuple[str, int]:
    """Key and label of sample ``i`` without reading or encoding its image when possible.

    Sources may define ``key_label(i)`` for this; the built-in sources are handled directly.
    """
    fast = getattr(source, "key_label", None)
    if callable(fast):
        key, label = fast(i)
    elif isinstance(source, ArraySource):
        key, label = f"{source.prefix}{i:08d}", int(source.labels[i])
    elif isinstance(source, FolderSource):
        key, _, label = source.files[i]
    elif isinstance(source, ListSource):
        key, _, label = source.samples[i]
    else:
        key, _, label = source[i]
    return key, -1 if label is None else int(label)


def sample_order(n: int, shuffle: bool, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """Source positions in write order.

    Args:
        n: Samples in the source.
        shuffle: Shuffle (seeded) first.
        seed: Shuffle seed.
        labels: When given, samples are grouped by label (ascending, unlabelled ``-1`` first),
            keeping the shuffled order within each class.

    Returns:
        A permutation of ``range(n)``.
    """
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    if labels is not None:
        order = order[np.argsort(np.asarray(labels)[order], kind="stable")]
    return order
