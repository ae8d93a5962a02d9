"""Selectors: turn a scores file plus a ratio into the ids of the items to keep.

Scores and selection are separate. A score (``streamprune.scoring``) assigns a number per item
and never knows about masks; a selector reads only the scores file (its scores, its ranking,
its ``harder`` direction), the per-sample labels, a ratio and a seed, and never knows about
models. Selectors live in a string-keyed registry::

    from streamprune.selection import SelectionContext, register_selector

    @register_selector("my-selector", levels=("sample",))
    def my_selector(scores, ratio, ctx: SelectionContext, width: float = 0.5):
        ...  # return kept item ids

and are used by :func:`select` and :func:`streamprune.scoring.scores_file.mask_from_scores`
(``streamprune score --selector NAME`` / ``streamprune mask --scores F --selector NAME``).

Registered here: ``top`` (the default: the first ``round(n * (1 - ratio))`` items of the
stored ranking, ties broken as the scoring pass recorded; every level).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from .scoring.scores_file import ScoreFile

__all__ = [
    "SelectionContext",
    "SelectorFn",
    "register_selector",
    "get_selector",
    "selector_levels",
    "available_selectors",
    "select",
    "DEFAULT_SELECTOR",
]

#: Selector used when none is named.
DEFAULT_SELECTOR = "top"


@dataclass
class SelectionContext:
    """What a selector may use besides the scores.

    Attributes:
        labels: ``int64[N]`` label of each scored sample (sample-level scores), ``-1`` for
            unlabelled data, or ``None`` when unknown.
        seed: Seed for selectors that draw at random.
        harder: Which score direction means "harder": ``"higher"``, ``"lower"``, or ``None``
            when the score is not a hardness score (taken from the scores file).
    """

    labels: np.ndarray | None = None
    seed: int = 0
    harder: str | None = None


SelectorFn = Callable[..., np.ndarray]
_REGISTRY: dict[str, tuple[SelectorFn, tuple[str, ...]]] = {}


def register_selector(name: str, levels: Sequence[str] = ("sample",)) -> Callable[[SelectorFn], SelectorFn]:
    """Decorator registering ``fn(scores, ratio, ctx, **options) -> kept item ids``.

    Args:
        name: Registry key (what ``--selector`` takes).
        levels: Score levels (``class``, ``cluster``, ``sample``) the selector accepts.

    Returns:
        The decorator; it returns the function unchanged.

    Raises:
        ValueError: ``name`` is already registered to another function.
    """

    def decorate(fn: SelectorFn) -> SelectorFn:
        existing = _REGISTRY.get(name)
        if existing is not None and existing[0] is not fn:
            raise ValueError(f"selector {name!r} is already registered ({existing[0].__module__}.{existing[0].__name__})")
        _REGISTRY[name] = (fn, tuple(levels))
        return fn

    return decorate


def get_selector(name: str) -> SelectorFn:
    """Look up a registered selector.

    Args:
        name: Registry key.

    Returns:
        The selector function.

    Raises:
        ValueError: Unknown name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name][0]
    except KeyError:
        raise ValueError(f"unknown selector {name!r}; available: {', '.join(available_selectors())}") from None


def selector_levels(name: str) -> tuple[str, ...]:
    """Score levels a registered selector accepts."""
    get_selector(name)
    return _REGISTRY[name][1]


def available_selectors() -> list[str]:
    """Names of the registered selectors, sorted."""
    return sorted(_REGISTRY)


def select(
    scores: "ScoreFile",
    ratio: float,
    selector: str = DEFAULT_SELECTOR,
    *,
    labels: np.ndarray | None = None,
    seed: int | None = None,
    **options: Any,
) -> np.ndarray:
    """Ids of the items to keep when a fraction ``ratio`` is removed.

    Args:
        scores: The scores.
        ratio: Fraction REMOVED, in ``[0, 1)``.
        selector: Registered selector name.
        labels: Per-sample labels (sample-level scores; class-wise selectors need them).
        seed: Seed for random selectors (default: the scores file's seed, else 0).
        **options: Selector options (e.g. ``gamma`` for FlexRand).

    Returns:
        Kept item ids, ascending ``int64``.

    Raises:
        ValueError: Unknown selector or option, a level the selector does not take, or a bad ratio.
    """
    from .masks import check_ratio

    ratio = check_ratio(ratio)
    fn = get_selector(selector)
    levels = selector_levels(selector)
    where = scores.path or "scores"
    if scores.level not in levels:
        raise ValueError(f"{where}: selector {selector!r} takes {'/'.join(levels)}-level scores, these are {scores.level!r}-level")
    try:
        inspect.signature(fn).bind(scores, ratio, None, **options)
    except TypeError:
        raise ValueError(f"selector {selector!r} does not take option(s) {sorted(options)}") from None
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if scores.level == "sample" and len(labels) != scores.num_items:
            raise ValueError(f"{where}: {len(labels)} labels for {scores.num_items} sample scores")
    ctx = SelectionContext(
        labels=labels,
        seed=int(seed if seed is not None else (scores.seed if scores.seed is not None else 0)),
        harder=scores.harder,
    )
    kept = np.unique(np.asarray(fn(scores, ratio, ctx, **options), dtype=np.int64))
    if len(kept) and (kept[0] < 0 or kept[-1] >= scores.num_items):
        raise AssertionError(f"selector {selector!r} returned item ids outside 0..{scores.num_items - 1}")
    return kept


@register_selector("top", levels=("class", "cluster", "sample"))
def top(scores: "ScoreFile", ratio: float, ctx: SelectionContext) -> np.ndarray:
    """Keep the first ``round(n * (1 - ratio))`` items of the stored ranking (most useful first).

    Args:
        scores: The scores (their ``ranking`` already breaks ties).
        ratio: Fraction removed.
        ctx: Unused.

    Returns:
        Kept item ids.
    """
    from .scoring.scores_file import kept_count

    return scores.ranking[: kept_count(scores.num_items, ratio)]
