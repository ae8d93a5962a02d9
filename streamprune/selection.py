"""Selectors: turn a scores file plus a ratio into the ids of the items to keep.

Scores and selection are separate. A score (``streamprune.scoring``) assigns a number per item
and never knows about masks; a selector reads only the scores file (its scores, its ranking,
its ``harder`` direction), the per-sample labels, a ratio and a seed, and never knows about
models. Selectors live in a string-keyed registry::

    from streamprune.selection import SelectionContext, register_selector

    @register_selector("my-selector", levels=("sample",))
    def my_selector(scores, ratio, ctx: SelectionContext, width: float = 0.5):
        ...  # return kept item ids

and are used by :func:`select` and :func:`mask_from_scores`
(``streamprune score --selector NAME`` / ``streamprune mask scores MANIFEST F --selector NAME``).

Registered here (``docs/methods.md`` section 5; the kept fraction ``b = 1 - ratio``,
where the ratio is the fraction REMOVED; the papers call ``b`` the budget):

* ``top`` (the default, every level): the first ``round(n * b)`` items of the stored ranking.
* ``random``: ``round(N * b)`` samples uniformly over the whole set (seeded; any score).
* ``class-balanced-random``: the class quotas below, uniformly inside each class (any score).
* ``easy`` / ``hard``: per class, the quota's easiest / hardest samples (top-k easy / hard).
* ``flexrand`` (option ``gamma``, default 0.5): per class, sort by difficulty ascending, the
  first ``round(n * gamma)`` are the easy group E, the rest the hard group H; with
  ``e = min(gamma, b/2), h = b - e`` if ``gamma <= 0.5``, else ``h = min(1 - gamma, b/2),
  e = b - h``, keep ``round(n * e)`` samples drawn uniformly from E and the rest of the
  class's quota (``round(n * h)`` up to rounding) uniformly from H.
* ``se`` / ``sh``: per class, the whole easiest / hardest ``round(n * b / 2)`` plus the rest of
  the quota drawn uniformly from the remaining samples of the class.
* ``ccs`` (coverage-centric selection, Zheng et al. 2023; options ``beta`` (default:
  streamprune's rule :func:`ccs_beta`, NOT the paper's procedure, which searches beta per
  dataset and ratio: :func:`ccs_beta_search`), ``strata`` = 50): over the WHOLE set, as in the paper (classes are not looked at): drop the
  hardest ``round(N * beta)`` samples, split the rest into ``strata`` equal-width score
  strata, and visit the strata from the smallest to the largest, each giving
  ``min(size, floor(samples still to keep / remaining strata))`` samples drawn uniformly inside it
  (empty strata do not count; equal-sized strata are visited in a seeded random order).
  The paper picks ``beta`` per dataset and ratio by a search (its reference code's CIFAR-10
  example: 0.3 at 90% pruning); the default only interpolates between that anchor and no
  cutoff at low rates (``docs/methods.md``, section 5); ``beta=0`` is pure stratified
  coverage.

Rules shared by the class-wise selectors (``class-balanced-random``, ``easy``, ``hard``,
``flexrand``, ``se``, ``sh``):

* Classes come from ``ctx.labels`` (the manifest's labels); without labels, or for samples
  labelled ``-1``, the unlabelled samples form one class of their own.
* Class quotas: exactly ``round(N * b)`` samples are kept in total (the count ``top`` and
  ``random`` keep), split over the classes in proportion to their sizes by the
  largest-remainder method (ties go to the lower class id), so class ``c`` of size ``n_c``
  keeps ``floor(n_c * b)`` or ``ceil(n_c * b)`` samples.
* Difficulty is the score turned so that higher is harder, from the scores file's
  ``harder`` (``"higher"``: the score itself; ``"lower"``: its negation). Selectors that use
  difficulty (all but the two random ones) refuse a score with ``harder = null``. Equal
  difficulties are ordered by sample id (lower first) on both ends.
* Random draws use one ``numpy.random.default_rng(seed)``, classes visited in ascending id,
  so a seed always gives the same mask and different seeds give different ones.
* FlexRand rounding: ``|E| = round(n * gamma)``; the E share is
  ``min(round(n * e), |E|, quota)``; H gives the rest of the quota, and if H is too small
  (rounding only) the shortfall is taken from E instead. Rounding is half up throughout.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .engine import Engine, make_engine
from .errors import ArgumentError, MaskMismatchError
from .manifest import Manifest, ManifestLike, open_manifest
from .masks import KeepMask, Mask, MaskFile, mask_from_bool, mask_from_classes, provenance_record
from .ratios import check_ratio, kept_count, round_half_up
from .registry import MethodOption, Registry, declare_options
from .scores import ScoreFile
from .shardindex import ShardIndex
from .shardmask import write_mask_by_shard
from .topk import ArrayScores, CutKeep, find_cut, score_keys

__all__ = [
    "SelectionContext",
    "SelectorFn",
    "register_selector",
    "selector_options",
    "get_selector",
    "selector_levels",
    "available_selectors",
    "select",
    "DEFAULT_SELECTOR",
    "difficulty",
    "class_quotas",
    "flexrand_shares",
    "ccs_strata",
    "ccs_beta",
    "ccs_beta_search",
    "select_items",
    "select_classes_from_scores",
    "mask_from_scores",
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
SELECTORS: Registry[SelectorFn] = Registry("selector")


def register_selector(
    name: str, levels: Sequence[str] = ("sample",), options: Sequence[MethodOption] = ()
) -> Callable[[SelectorFn], SelectorFn]:
    """Decorator registering ``fn(scores, ratio, ctx, **options) -> kept item ids``.

    Args:
        name: Registry key (what ``--selector`` takes).
        levels: Score levels (``class``, ``cluster``, ``sample``) the selector accepts.
        options: The options users may set (each a keyword argument of ``fn``; its default is
            read from the signature); ``mask scores`` and ``score`` build their flags from them.

    Returns:
        The decorator; it returns the function unchanged.

    Raises:
        ValueError: ``name`` is already registered to another function.
        TypeError: An option is not a parameter of ``fn``.
    """

    def decorate(fn: SelectorFn) -> SelectorFn:
        return SELECTORS.register(name, levels=tuple(levels), options=declare_options(fn, options))(fn)

    return decorate


def get_selector(name: str) -> SelectorFn:
    """Look up a registered selector (``ValueError`` naming the known ones if unknown)."""
    return SELECTORS.get(name)


def selector_levels(name: str) -> tuple[str, ...]:
    """Score levels a registered selector accepts."""
    return SELECTORS.meta(name)["levels"]


def selector_options(name: str) -> tuple[MethodOption, ...]:
    """The user-settable options a registered selector declares."""
    return SELECTORS.meta(name)["options"]


def available_selectors() -> list[str]:
    """Names of the registered selectors, sorted."""
    return SELECTORS.names()


def select(
    scores: ScoreFile,
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
    ratio = check_ratio(ratio)
    fn = _checked_selector(scores, ratio, selector, options)
    where = scores.path or "scores"
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if scores.level == "sample" and len(labels) != scores.num_items:
            raise ArgumentError(f"{where}: {len(labels)} labels for {scores.num_items} sample scores")
    ctx = SelectionContext(
        labels=labels,
        seed=int(seed if seed is not None else (scores.seed if scores.seed is not None else 0)),
        harder=scores.harder,
    )
    kept = np.unique(np.asarray(fn(scores, ratio, ctx, **options), dtype=np.int64))
    if len(kept) and (kept[0] < 0 or kept[-1] >= scores.num_items):
        raise AssertionError(f"selector {selector!r} returned item ids outside 0..{scores.num_items - 1}")
    return kept


def _checked_selector(scores: ScoreFile, ratio: float, selector: str, options: dict[str, Any]) -> SelectorFn:
    """The registered selector, once it takes these scores' level and ``options`` (else ``ArgumentError``)."""
    fn = get_selector(selector)
    levels = selector_levels(selector)
    if scores.level not in levels:
        raise ArgumentError(
            f"{scores.path or 'scores'}: selector {selector!r} takes {'/'.join(levels)}-level scores, these are {scores.level!r}-level"
        )
    try:
        inspect.signature(fn).bind(scores, ratio, None, **options)
    except TypeError:
        raise ArgumentError(f"selector {selector!r} does not take option(s) {sorted(options)}") from None
    return fn


@register_selector("top", levels=("class", "cluster", "sample"))
def top(scores: ScoreFile, ratio: float, ctx: SelectionContext) -> np.ndarray:
    """Keep the first ``round(n * (1 - ratio))`` items of the stored ranking (most useful first).

    Args:
        scores: The scores (their ``ranking`` already breaks ties).
        ratio: Fraction removed.
        ctx: Unused.

    Returns:
        Kept item ids.
    """
    return scores.ranking[: kept_count(scores.num_items, ratio)]


# --- helpers shared by the sample-level selectors ------------------------------------------


def difficulty(scores: ScoreFile, ctx: SelectionContext, selector: str) -> np.ndarray:
    """The scores turned so that higher means harder, from the file's ``harder`` direction.

    Args:
        scores: Sample-level scores.
        ctx: Selection context (its ``harder`` is the scores file's).
        selector: Selector name, for the error message.

    Returns:
        ``float64[N]`` difficulty.

    Raises:
        ValueError: The score does not say which direction is harder (``harder = null``).
    """
    if ctx.harder == "higher":
        return np.asarray(scores.scores, dtype=np.float64)
    if ctx.harder == "lower":
        return -np.asarray(scores.scores, dtype=np.float64)
    raise ArgumentError(
        f"{scores.path or 'scores'}: selector {selector!r} splits easy from hard samples, but method "
        f"{scores.method!r} is not a hardness score (harder=null); use a hardness score such as dlc or grand, "
        "or a selector that needs none (top, random, class-balanced-random)"
    )


def _classes(ctx: SelectionContext, n: int) -> list[np.ndarray]:
    """Sample ids of each class, classes in ascending label order (unlabelled: one class)."""
    labels = np.full(n, -1, dtype=np.int64) if ctx.labels is None else np.asarray(ctx.labels, dtype=np.int64)
    if len(labels) != n:
        raise ArgumentError(f"{len(labels)} labels for {n} sample scores")
    order = np.argsort(labels, kind="stable")
    values, starts = np.unique(labels[order], return_index=True)
    return [np.sort(g) for g in np.split(order, starts[1:])] if len(values) else []


def class_quotas(sizes: Sequence[int], ratio: float) -> np.ndarray:
    """Samples kept per class: ``round(N * b)`` in all, split by largest remainder.

    Args:
        sizes: Class sizes ``n_c``.
        ratio: Fraction REMOVED (kept fraction ``b = 1 - ratio``).

    Returns:
        ``int64`` quota per class; each is ``floor(n_c * b)`` or ``ceil(n_c * b)``, and they sum
        to :func:`~streamprune.ratios.kept_count` of the total.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    kept_fraction = 1.0 - ratio
    total = kept_count(int(sizes.sum()), ratio)
    exact = sizes * kept_fraction
    floors = np.minimum(np.floor(exact + 1e-9).astype(np.int64), sizes)
    remainder = np.maximum(exact - floors, 0.0)
    extra = total - int(floors.sum())
    # largest remainder first, ties to the lower class id; only classes with room take one
    order = [c for c in np.lexsort((np.arange(len(sizes)), -remainder)) if floors[c] < sizes[c]]
    floors[np.asarray(order[:max(extra, 0)], dtype=np.int64)] += 1
    return floors


def _easy_first(d: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``ids`` sorted by difficulty ascending, ties by id ascending."""
    return ids[np.lexsort((ids, d[ids]))]


def _hard_first(d: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``ids`` sorted by difficulty descending, ties by id ascending."""
    return ids[np.lexsort((ids, -d[ids]))]


def _draw(rng: np.random.Generator, ids: np.ndarray, k: int) -> np.ndarray:
    """``k`` of ``ids`` uniformly without replacement."""
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    return ids[rng.permutation(len(ids))[:k]]


def _per_class(scores: ScoreFile, ratio: float, ctx: SelectionContext, pick: Callable[..., np.ndarray]) -> np.ndarray:
    """Run ``pick(ids, quota, rng)`` for every class and join the results."""
    groups = _classes(ctx, scores.num_items)
    quotas = class_quotas([len(g) for g in groups], ratio)
    rng = np.random.default_rng(ctx.seed)
    kept = [pick(g, int(q), rng) for g, q in zip(groups, quotas)]
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


# --- the selectors -------------------------------------------------------------------------


@register_selector("random")
def uniform(scores: ScoreFile, ratio: float, ctx: SelectionContext) -> np.ndarray:
    """``round(N * (1 - ratio))`` samples uniformly over the whole set (seeded; scores unused).

    Args:
        scores: Sample-level scores (only their count is used).
        ratio: Fraction removed.
        ctx: Seed.

    Returns:
        Kept sample ids.
    """
    n = scores.num_items
    return _draw(np.random.default_rng(ctx.seed), np.arange(n, dtype=np.int64), kept_count(n, ratio))


@register_selector("class-balanced-random")
def class_balanced_random(scores: ScoreFile, ratio: float, ctx: SelectionContext) -> np.ndarray:
    """Each class's quota drawn uniformly inside the class (seeded; scores unused).

    Args:
        scores: Sample-level scores (only their count is used).
        ratio: Fraction removed.
        ctx: Labels and seed.

    Returns:
        Kept sample ids.
    """
    return _per_class(scores, ratio, ctx, lambda ids, q, rng: _draw(rng, ids, q))


def _quota_extreme(scores: ScoreFile, ratio: float, ctx: SelectionContext, name: str, hardest: bool) -> np.ndarray:
    """Each class's quota of its easiest (or hardest) samples, ties by id ascending."""
    d = difficulty(scores, ctx, name)
    first = _hard_first if hardest else _easy_first
    return _per_class(scores, ratio, ctx, lambda ids, q, rng: first(d, ids)[:q])


def _sided_selector(name: str, hardest: bool, pick: Callable[..., np.ndarray], summary: str) -> SelectorFn:
    """Register one side of a per-class selector pair whose easy and hard forms differ only in the end they keep."""

    def selector(scores: ScoreFile, ratio: float, ctx: SelectionContext) -> np.ndarray:
        return pick(scores, ratio, ctx, name, hardest)

    selector.__name__ = selector.__qualname__ = name
    selector.__doc__ = f"""{summary}

    Args:
        scores: Sample-level hardness scores.
        ratio: Fraction removed.
        ctx: Labels, seed and the hardness direction.

    Returns:
        Kept sample ids.
    """
    return register_selector(name)(selector)


easy = _sided_selector("easy", False, _quota_extreme, "Top-k easy: each class's quota of its easiest samples (ties: lower id first).")
hard = _sided_selector("hard", True, _quota_extreme, "Top-k hard: each class's quota of its hardest samples (ties: lower id first).")


def flexrand_shares(gamma: float, kept_fraction: float) -> tuple[float, float]:
    """FlexRand's easy and hard shares ``(e, h)`` of a class for the kept fraction ``b = 1 - ratio``.

    Args:
        gamma: Fraction of each class in the easy group, in ``[0, 1]``.
        kept_fraction: Fraction kept, in ``(0, 1]``.

    Returns:
        ``(e, h)`` with ``e + h = kept_fraction``.
    """
    if gamma <= 0.5:
        e = min(gamma, kept_fraction / 2)
        return e, kept_fraction - e
    h = min(1.0 - gamma, kept_fraction / 2)
    return kept_fraction - h, h


@register_selector("flexrand", options=(MethodOption("gamma", float, "easy fraction of each class"),))
def flexrand(scores: ScoreFile, ratio: float, ctx: SelectionContext, gamma: float = 0.5) -> np.ndarray:
    """FlexRand (Jiang et al. 2025): per class, random draws from an easy and a hard group.

    Args:
        scores: Sample-level hardness scores (DLC).
        ratio: Fraction removed.
        ctx: Labels, seed and the hardness direction.
        gamma: Fraction of each class in the easy group E, in ``[0, 1]`` (the paper tunes it in
            {0.45, 0.5, 0.55}; small values help at very small kept fractions).

    Returns:
        Kept sample ids.

    Raises:
        ValueError: ``gamma`` is out of range, or the score has no hardness direction.
    """
    gamma = float(gamma)
    if not 0.0 <= gamma <= 1.0:
        raise ArgumentError(f"selector 'flexrand': gamma={gamma} must be in [0, 1] (the easy fraction of each class)")
    d = difficulty(scores, ctx, "flexrand")
    e_share, _ = flexrand_shares(gamma, 1.0 - ratio)

    def pick(ids: np.ndarray, quota: int, rng: np.random.Generator) -> np.ndarray:
        n = len(ids)
        ordered = _easy_first(d, ids)
        n_easy = min(round_half_up(n * gamma), n)
        group_e, group_h = ordered[:n_easy], ordered[n_easy:]
        k_e = min(round_half_up(n * e_share), n_easy, quota)
        k_h = quota - k_e
        if k_h > len(group_h):  # rounding only: take the shortfall from E
            k_e, k_h = k_e + k_h - len(group_h), len(group_h)
        return np.concatenate([_draw(rng, group_e, k_e), _draw(rng, group_h, k_h)])

    return _per_class(scores, ratio, ctx, pick)


def _whole_half_plus_random(scores: ScoreFile, ratio: float, ctx: SelectionContext, name: str, hardest: bool) -> np.ndarray:
    d = difficulty(scores, ctx, name)
    kept_fraction = 1.0 - ratio

    def pick(ids: np.ndarray, quota: int, rng: np.random.Generator) -> np.ndarray:
        ordered = _hard_first(d, ids) if hardest else _easy_first(d, ids)
        k_top = min(round_half_up(len(ids) * kept_fraction / 2), quota)
        return np.concatenate([ordered[:k_top], _draw(rng, ordered[k_top:], quota - k_top)])

    return _per_class(scores, ratio, ctx, pick)


se = _sided_selector("se", False, _whole_half_plus_random,
                    'FlexRand ablation "se": per class the whole easiest ``b/2``, plus ``b/2`` random from the rest.')
sh = _sided_selector("sh", True, _whole_half_plus_random,
                    'FlexRand ablation "sh": per class the whole hardest ``b/2``, plus ``b/2`` random from the rest.')


def ccs_strata(values: np.ndarray, strata: int) -> np.ndarray:
    """Stratum (``0 .. strata - 1``) of each value: equal-width bins over ``[min, max]``.

    Args:
        values: Scores of the candidates.
        strata: Number of bins.

    Returns:
        ``int64`` bin per value (the maximum falls in the last bin; all in bin 0 if constant).
    """
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(len(values), dtype=np.int64)
    bins = np.floor((values - lo) / (hi - lo) * strata).astype(np.int64)
    return np.clip(bins, 0, strata - 1)


def ccs_beta(kept_fraction: float) -> float:
    """streamprune's default hard-cutoff fraction beta of ``ccs`` for a kept fraction (``1 - ratio``).

    NOT the paper's procedure: Zheng et al. choose beta per dataset and pruning rate by a
    search (:func:`ccs_beta_search`). This rule only interpolates between two published
    CIFAR-10 anchors, no cutoff at low pruning rates and ``beta = 0.3`` at 90% pruning (the
    reference code's example), so that ``ccs`` works without a search: 0 for kept fractions of
    50% and more, growing linearly to 0.3 at 10% kept, and never so large that fewer than the
    kept fraction remain (``beta <= 1 - kept_fraction``).

    Args:
        kept_fraction: Fraction of samples kept, ``1 - ratio``.

    Returns:
        beta, rounded to 6 decimals.
    """
    b = float(kept_fraction)
    beta = 0.0 if b >= 0.5 else 0.3 * (0.5 - b) / 0.4
    return round(min(beta, max(0.0, 1.0 - b)), 6)


@register_selector("ccs", options=(
    MethodOption("beta", float, "fraction of ALL samples dropped first, the hardest",
                 default_help="0 when keeping >= 50%, rising to 0.3 at 10% kept"),
    MethodOption("strata", int, "number of equal-width score strata"),
))
def ccs(scores: ScoreFile, ratio: float, ctx: SelectionContext, beta: float | None = None, strata: int = 50) -> np.ndarray:
    """Coverage-centric selection (Zheng et al., ICLR 2023) over the whole set.

    Args:
        scores: Sample-level hardness scores (AUM in the paper: ``harder = "lower"``).
        ratio: Fraction removed.
        ctx: Seed and the hardness direction (labels are not used, as in the paper).
        beta: Fraction of ALL samples dropped first, the hardest ones, in ``[0, 1)``;
            ``None``: streamprune's interpolation :func:`ccs_beta` of the kept fraction (not
            the paper's search: :func:`ccs_beta_search`).
        strata: Number of equal-width score strata (at least 1).

    Returns:
        Kept sample ids.

    Raises:
        ValueError: Bad ``beta``/``strata``, ``beta`` leaves fewer samples than are to be kept, or
            the score has no hardness direction.
    """
    beta = ccs_beta(1.0 - ratio) if beta is None else float(beta)
    if not 0.0 <= beta < 1.0:
        raise ArgumentError(f"selector 'ccs': beta={beta} must be in [0, 1) (the hardest fraction dropped)")
    if int(strata) != strata or int(strata) < 1:
        raise ArgumentError(f"selector 'ccs': strata={strata} must be a whole number >= 1")
    strata = int(strata)
    d = difficulty(scores, ctx, "ccs")
    n = scores.num_items
    to_keep = kept_count(n, ratio)
    ordered = _easy_first(d, np.arange(n, dtype=np.int64))
    candidates = ordered[: n - round_half_up(n * beta)]
    if len(candidates) < to_keep:
        raise ArgumentError(
            f"selector 'ccs': beta={beta:g} drops the hardest {n - len(candidates)} of {n} samples, leaving "
            f"{len(candidates)}, fewer than the {to_keep} to keep at ratio {ratio:g}; lower beta"
        )
    bins = ccs_strata(d[candidates], strata)
    members = [candidates[bins == s] for s in range(strata)]
    members = [m for m in members if len(m)]
    rng = np.random.default_rng(ctx.seed)
    kept = []
    left = to_keep
    # smallest stratum first; equal sizes in a seeded random order, so that a number to keep smaller
    # than the number of strata (floor() gives the first strata visited nothing) does not
    # always favour the same end of the score range
    tiebreak = rng.permutation(len(members))
    for i, s in enumerate(sorted(range(len(members)), key=lambda s: (len(members[s]), tiebreak[s]))):
        take = min(len(members[s]), left // (len(members) - i))
        kept.append(_draw(rng, members[s], take))
        left -= take
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


#: Candidate betas of :func:`ccs_beta_search` (the paper's appendix searches a grid like this).
CCS_BETA_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def ccs_beta_search(
    scores: ScoreFile,
    ratio: float,
    evaluate: Callable[[np.ndarray], float],
    betas: Sequence[float] = CCS_BETA_GRID,
    *,
    labels: np.ndarray | None = None,
    seed: int | None = None,
    strata: int = 50,
) -> dict[str, Any]:
    """CCS's beta as the paper chooses it: the candidate whose subset scores best on held-out data.

    For each candidate ``beta`` (those that leave at least the budget), build the ``ccs``
    subset at ``ratio`` and call ``evaluate(kept ids)``, the caller's held-out measure (e.g.
    train on the subset, return accuracy on a held-out split); the best wins, ties to the
    smaller beta. Pass the result as ``beta=`` to ``ccs`` (``--beta``) at that ratio.

    Args:
        scores: Sample-level hardness scores (AUM in the paper).
        ratio: Fraction removed.
        evaluate: Kept sample ids -> held-out score, higher is better.
        betas: Candidates, each in ``[0, 1)``.
        labels: Per-sample labels (unused by ``ccs``; passed through to :func:`select`).
        seed: Seed of the strata draws (default: the scores file's).
        strata: Number of strata.

    Returns:
        ``{"beta": best, "results": {beta: score}, "skipped": [betas leaving fewer than the budget]}``.

    Raises:
        ValueError: No candidate leaves enough samples.
    """
    results: dict[float, float] = {}
    skipped: list[float] = []
    n = scores.num_items
    need = kept_count(n, check_ratio(ratio))
    for beta in betas:
        if n - round_half_up(n * float(beta)) < need:
            skipped.append(float(beta))
            continue
        kept = select(scores, ratio, "ccs", labels=labels, seed=seed, beta=float(beta), strata=strata)
        results[float(beta)] = float(evaluate(kept))
    if not results:
        raise ValueError(f"ccs_beta_search: every candidate beta {list(betas)} leaves fewer than the {need} samples to keep at ratio {ratio:g}")
    best = max(sorted(results), key=lambda b: results[b])  # max keeps the first of equals: the smaller beta
    return {"beta": best, "results": results, "skipped": skipped}


# --- from scores to masks ---------------------------------------------------------------


def select_items(scores: ScoreFile, ratio: float) -> np.ndarray:
    """Ids of the items kept when a fraction ``ratio`` of them is removed (selector ``top``).

    Takes the first ``kept_count(num_items, ratio)`` entries of the stored ranking, so the
    tie-break is the one the scoring pass used.

    Args:
        scores: The scores.
        ratio: Fraction of items removed.

    Returns:
        Kept item ids, ascending.
    """
    return select(scores, ratio, "top")


def select_classes_from_scores(scores: ScoreFile, ratio: float) -> list[int]:
    """Kept class ids for a class-level scores file (ties broken as the file records).

    Args:
        scores: Class-level scores.
        ratio: Fraction of classes removed.

    Returns:
        Kept class ids, ascending.

    Raises:
        ValueError: The scores are not class-level.
    """
    if scores.level != "class":
        raise ArgumentError(f"{scores.path or 'scores'}: level is {scores.level!r}, not 'class'")
    return select_items(scores, ratio).tolist()


def mask_from_scores(
    manifest: ManifestLike,
    scores: ScoreFile,
    ratio: float,
    selector: str = "top",
    seed: int | None = None,
    *,
    out: str | os.PathLike | None = None,
    engine: str | Engine | None = None,
    workers: int = 1,
    **options: Any,
) -> Mask:
    """The keep mask a scores file gives at ``ratio`` with a selector.

    Class level keeps every sample of the kept classes; cluster level every member of the
    kept clusters; sample level the kept samples themselves. Class-wise sample selectors
    (FlexRand, CCS, ...) get the manifest's labels.

    ``top`` on sample scores sorts nothing: the kept set's boundary is found from per-shard
    histograms of the scores (:func:`~streamprune.topk.find_cut`), the samples tied with the
    last kept score taken in the stored ranking's order, so the kept set is the ranking's
    first ``round(N * (1 - ratio))``. With ``out``, every level's ``top`` mask is written shard
    by shard, each engine task writing its shard's bits (:mod:`streamprune.shardmask`); other
    selectors select in memory and save the mask there.

    Args:
        manifest: The source dataset (must match the scores' fingerprint): a :class:`Manifest`, or
            its ``manifest.json`` (path or URL) or directory.
        scores: The scores.
        ratio: Fraction removed (of classes, clusters or samples, as the level says).
        selector: Registered selector (:mod:`streamprune.selection`); ``top`` keeps the top
            of the stored ranking.
        seed: Seed for random selectors (default: the scores' seed).
        out: Mask file to write (``*.spmask``); ``None``: return the mask in memory.
        engine: Where the per-shard passes run (``"local"`` / ``None``, ``"ray"``, an engine).
        workers: Local processes when ``engine`` is a name.
        **options: Selector options.

    Returns:
        The mask, with provenance naming the method, selector, ratio and the scores file: a
        :class:`KeepMask`, or the written :class:`MaskFile` when ``out`` is given.

    Raises:
        MaskMismatchError: The scores belong to another dataset.
        ValueError: Unknown selector or option, or a level the selector does not take.
    """
    manifest = open_manifest(manifest)
    scores.check(manifest)
    ratio = check_ratio(ratio)
    if scores.level == "sample" and scores.num_items != manifest.num_samples:
        raise MaskMismatchError(f"{scores.path or 'scores'}: {scores.num_items} sample scores, {manifest.num_samples} samples")
    if scores.level == "cluster" and len(scores.assignments) != manifest.num_samples:
        raise MaskMismatchError(
            f"{scores.path or 'scores'}: {len(scores.assignments)} cluster assignments, {manifest.num_samples} samples"
        )
    provenance = {
        "scores": os.path.abspath(scores.path) if scores.path else None,
        "variant": scores.variant,
        "seed": scores.seed if seed is None else seed,
        "requested_ratio": ratio,
        "selector": selector,
        "selector_options": dict(options),
    }
    if selector == "top":
        _checked_selector(scores, ratio, selector, options)
        return _top_mask(manifest, scores, ratio, provenance, out, make_engine(engine, workers=workers))
    labels = np.asarray(manifest.labels(), dtype=np.int64) if scores.level == "sample" else None
    kept = select(scores, ratio, selector, labels=labels, seed=seed, **options)
    if scores.level == "class":
        mask = mask_from_classes(manifest, kept.tolist(), method=scores.method, **provenance)
    elif scores.level == "cluster":
        mask = mask_from_bool(manifest, np.isin(scores.assignments, kept), method=scores.method, **provenance)
        mask.provenance.update(level="cluster", ratio=ratio, kept_clusters=kept.tolist())
    else:
        keep = np.zeros(manifest.num_samples, dtype=bool)
        keep[kept] = True
        mask = mask_from_bool(manifest, keep, method=scores.method, **provenance)
    return mask if out is None else MaskFile(mask.save(out))


class _ItemKeep:
    """Shard ``k``'s keep bits: its samples whose class (or cluster) is kept (picklable, for an engine task).

    Args:
        kept: Kept class or cluster ids, ascending.
        assignments: Each sample's cluster id in manifest order (cluster level), or ``None``:
            the shard index's labels are the items (class level).
        offsets: ``manifest.shard_offsets`` (cluster level).
    """

    def __init__(self, kept: np.ndarray, assignments: np.ndarray | None = None, offsets: np.ndarray | None = None) -> None:
        self.kept, self.assignments, self.offsets = kept, assignments, offsets

    def __call__(self, k: int, index: ShardIndex) -> np.ndarray:
        if self.assignments is None:
            return np.isin(np.asarray(index.labels, dtype=np.int64), self.kept)
        return np.isin(self.assignments[self.offsets[k] : self.offsets[k + 1]], self.kept)


def _top_mask(manifest: Manifest, scores: ScoreFile, ratio: float, provenance: dict[str, Any], out: str | os.PathLike | None,
              engine: Engine) -> Mask:
    """Selector ``top``'s mask: kept items from the ranking (class, cluster) or a histogram cut (sample)."""
    n = scores.num_items
    kept = kept_count(n, ratio)
    if scores.level == "sample":
        counts = np.fromiter((s.samples for s in manifest.shards), dtype=np.int64, count=len(manifest.shards))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        source = ArrayScores(scores.scores, offsets)
        cut = find_cut(counts, source, kept, scores.higher_is, engine=engine, ranking=scores.ranking)
        record = provenance_record(scores.method, round(1.0 - kept / n, 6) if n else 0.0, level="sample", **provenance)
        if out is None:
            return KeepMask(cut.keep(score_keys(scores.scores, scores.higher_is), 0), manifest, record)
        return write_mask_by_shard(manifest, CutKeep(cut, source, scores.higher_is, offsets[:-1]), out, record, engine=engine)
    items = np.sort(scores.ranking[:kept])  # a ranking of classes or clusters: small
    if scores.level == "class":
        n_classes = manifest.num_classes
        record = provenance_record(scores.method, round(1.0 - len(items) / n_classes, 6) if n_classes else 0.0, level="class",
                                   kept_classes=items.tolist(), **provenance)
        keep = _ItemKeep(items)
    else:
        record = provenance_record(scores.method, ratio, level="cluster", kept_clusters=items.tolist(), **provenance)
        keep = _ItemKeep(items, scores.assignments, manifest.shard_offsets)
    if out is None:
        if scores.level == "class":
            return KeepMask(np.isin(manifest.labels(), items), manifest, record)
        return KeepMask(np.isin(scores.assignments, items), manifest, record)
    return write_mask_by_shard(manifest, keep, out, record, engine=engine)
