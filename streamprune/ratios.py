"""Pruning ratios: the fraction of items *removed*, and the count of items it keeps.

Every place that turns a ratio into a count (random masks, score rankings, selectors, class
quotas) calls :func:`kept_count`, so the same ratio keeps the same number of items whichever
path made the mask.
"""

from __future__ import annotations

import math

from .errors import ArgumentError

__all__ = ["check_ratio", "kept_count", "round_half_up"]


def check_ratio(ratio: float, name: str = "ratio") -> float:
    """Validate a pruning ratio (fraction removed).

    Args:
        ratio: Fraction of samples or classes to remove.
        name: Argument name for the error message.

    Returns:
        ``ratio`` as a float.

    Raises:
        ValueError: ``ratio`` is outside ``[0, 1)``.
    """
    ratio = float(ratio)
    if not 0.0 <= ratio < 1.0:
        raise ArgumentError(f"{name}={ratio}: must be in [0, 1) (it is the fraction removed; 1 would remove everything)")
    return ratio


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up.

    Python's ``round()`` goes to even at .5, which would make ``n = 7, ratio = 0.5`` keep 3
    items but ``n = 5`` keep 3 too; halves up is what users expect from "keep half". The small
    epsilon absorbs float error such as ``10 * 0.7 = 6.999...``.
    """
    return int(math.floor(x + 0.5 + 1e-9))


def kept_count(n: int, ratio: float, allow_empty: bool = False) -> int:
    """Items kept when a fraction ``ratio`` is removed: ``round(n * (1 - ratio))``, halves up.

    Args:
        n: Number of items (classes, clusters or samples).
        ratio: Fraction removed, in ``[0, 1)``.
        allow_empty: Return 0 instead of raising when nothing would be kept.

    Returns:
        The number kept.

    Raises:
        ValueError: ``ratio`` is out of range, or it would keep nothing (unless ``allow_empty``).
    """
    ratio = check_ratio(ratio)
    keep = round_half_up(n * (1.0 - ratio))
    if keep < 1 and n > 0 and not allow_empty:
        raise ArgumentError(f"ratio={ratio}: keeping round({n} * {1 - ratio:g}) = 0 of {n} items leaves nothing")
    return keep
