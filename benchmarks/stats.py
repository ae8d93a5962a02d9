"""The one statistics module of the benchmark suites: paired ratios, their intervals, and verdicts.

Every suite that compares two arms (a pruned epoch against the unpruned one, Numba against
NumPy, Ray against local processes, streamprune against a peer reader) times both in the same
round and takes the ratio *per round*, so that what slows a whole round down (another process
on the machine) cancels. :func:`paired_ratio` (sequences in round order) and
:func:`paired_by_round` (values keyed by round) return a :class:`Ratio`: the median over rounds,
an interval and the rounds that could not be counted.

The interval is the min-max over the rounds: over ``n`` rounds it covers the true median ratio
with probability ``1 - 2**(1-n)`` (each round falls below the median with probability 1/2,
whatever the distribution), 0.94 at :data:`MIN_ROUNDS` = 5. :func:`bootstrap_interval` is the
alternative for many runs (seeds), where the min-max would be needlessly wide.

A round whose run on either side failed or stalled (``None`` or NaN) is never part of the ratio:
it is counted in :attr:`Ratio.failed`, so that the tables report it.

:func:`verdict` judges a target: :data:`MET` only when the whole interval clears the threshold,
:data:`MISSED` when none of it does, :data:`INCONCLUSIVE` when it straddles; a ratio over fewer
than :data:`MIN_ROUNDS` rounds is never :data:`MET`.
"""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "COMPARE",
    "INCONCLUSIVE",
    "MET",
    "MIN_ROUNDS",
    "MISSED",
    "Ratio",
    "bootstrap_interval",
    "coverage",
    "median",
    "paired_by_round",
    "paired_ratio",
    "ratio_of",
    "verdict",
]

MET = "met"
MISSED = "missed"
INCONCLUSIVE = "inconclusive"

#: Paired rounds a ratio needs before a target on it can be met (min-max coverage 1 - 2^-4 = 0.94).
MIN_ROUNDS = 5

#: The comparisons a target may use: ``measured <op> threshold`` is what the goal asks for.
COMPARE: dict[str, Callable[[Any, Any], bool]] = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def median(values: Sequence[float]) -> float:
    """The median as a float (NaN for no values)."""
    return float(statistics.median(values)) if len(values) else float("nan")


def coverage(n: int) -> float:
    """Probability that the min-max of ``n`` independent rounds covers the true median (0 for ``n`` < 2)."""
    return 1.0 - 2.0 ** (1 - n) if n >= 2 else 0.0


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class Ratio:
    """A paired ratio over rounds.

    Attributes:
        median: Median of the per-round ratios (NaN when no round counted).
        low: Lower end of the interval.
        high: Upper end of the interval.
        runs: The per-round ratios that counted, in round order.
        failed: Rounds not counted because a run on either side failed or stalled.
        method: ``"min-max"`` or ``"bootstrap"`` (how ``low``/``high`` were made).
    """

    median: float
    low: float
    high: float
    runs: tuple[float, ...]
    failed: int = 0
    method: str = "min-max"

    @property
    def n(self) -> int:
        """Rounds that counted."""
        return len(self.runs)

    @property
    def interval(self) -> tuple[float, float] | None:
        """``(low, high)``, or ``None`` when fewer than two rounds counted (no interval to speak of)."""
        return (self.low, self.high) if self.n >= 2 else None

    @property
    def enough(self) -> bool:
        """Whether enough rounds counted for a target on this ratio to be met."""
        return self.n >= MIN_ROUNDS

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``median``, ``min``, ``max``, ``runs``, ``n``, ``coverage``, ``failed``, ``method``)."""
        return {"median": self.median, "min": self.low, "max": self.high, "runs": [round(r, 4) for r in self.runs],
                "n": self.n, "coverage": coverage(self.n) if self.method == "min-max" else None, "failed": self.failed,
                "method": self.method}

    def text(self, digits: int = 2) -> str:
        """``median [low-high]`` (no interval for one round), and the rounds not counted."""
        if not self.n:
            out = "–"
        else:
            out = f"{self.median:.{digits}f}"
            if self.interval is not None:
                out += f" [{self.low:.{digits}f}-{self.high:.{digits}f}]"
        return out + (f" ({self.failed} failed/stalled, not counted)" if self.failed else "")


def paired_ratio(numerator: Sequence[float | None], denominator: Sequence[float | None], *,
                 method: str = "min-max") -> Ratio:
    """The per-round ratio ``numerator[i] / denominator[i]`` of two arms timed in the same rounds.

    Args:
        numerator: One arm's values, one per round; ``None`` or NaN where its run failed or stalled.
        denominator: The other arm's values in the same rounds (same convention).
        method: ``"min-max"`` (the interval is the range of the rounds) or ``"bootstrap"``
            (a 95% percentile bootstrap interval of the median).

    Returns:
        The :class:`Ratio`; rounds with a failed side, or a zero denominator, are counted in ``failed``.

    Raises:
        ValueError: Sequences of different lengths, or an unknown ``method``.
    """
    if len(numerator) != len(denominator):
        raise ValueError(f"paired values need one per round on each side: {len(numerator)} vs {len(denominator)}")
    if method not in ("min-max", "bootstrap"):
        raise ValueError(f"method {method!r}: expected 'min-max' or 'bootstrap'")
    runs: list[float] = []
    failed = 0
    for a, b in zip(numerator, denominator):
        if _missing(a) or _missing(b) or b == 0:
            failed += 1
            continue
        runs.append(float(a) / float(b))
    if not runs:
        return Ratio(float("nan"), float("nan"), float("nan"), (), failed, method)
    low, high = bootstrap_interval(runs) if method == "bootstrap" else (min(runs), max(runs))
    return Ratio(median(runs), low, high, tuple(runs), failed, method)


def ratio_of(runs: Sequence[float], failed: int = 0) -> Ratio:
    """A :class:`Ratio` from per-round ratios already taken (as older results files store them).

    Args:
        runs: The per-round ratios, in round order (``None``/NaN entries count as failed).
        failed: Further rounds known to have failed.

    Returns:
        The ratio, min-max interval.
    """
    kept = [float(r) for r in runs if not _missing(r)]
    out = paired_ratio(kept, [1.0] * len(kept))
    return Ratio(out.median, out.low, out.high, out.runs, failed + len(runs) - len(kept), out.method)


def paired_by_round(numerator: Mapping[Hashable, float | None], denominator: Mapping[Hashable, float | None],
                    rounds: Iterable[Hashable] | None = None, *, method: str = "min-max") -> Ratio:
    """:func:`paired_ratio` of values keyed by round; a round missing on either side failed.

    Args:
        numerator: Round -> value of one arm (a failed or stalled run: absent, ``None`` or NaN).
        denominator: Round -> value of the other arm.
        rounds: The rounds that were run (default: every round either side names).
        method: As for :func:`paired_ratio`.

    Returns:
        The :class:`Ratio`.
    """
    keys = sorted(set(numerator) | set(denominator), key=repr) if rounds is None else list(rounds)
    return paired_ratio([numerator.get(k) for k in keys], [denominator.get(k) for k in keys], method=method)


def bootstrap_interval(values: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0,
                       stat: Callable[[np.ndarray], float] = np.median) -> tuple[float, float]:
    """A percentile bootstrap interval of ``stat`` (median by default) of ``values``.

    Args:
        values: The observations (one per round or seed).
        level: Coverage of the interval.
        resamples: Bootstrap resamples.
        seed: Seed of the resampling, so that a re-summary gives the same interval.
        stat: The statistic, applied along axis 1 of the resampled matrix.

    Returns:
        ``(low, high)``; a single value gives ``(v, v)``.
    """
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (float(x[0]), float(x[0])) if len(x) else (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    samples = stat(x[rng.integers(0, len(x), size=(resamples, len(x)))], axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))


def verdict(threshold: float, comparison: str, measured: float | None = None,
            interval: Sequence[float] | None = None, rounds: int | None = None) -> str:
    """Judge ``measured comparison threshold``, strictly on the interval when there is one.

    Args:
        threshold: The goal's value.
        comparison: ``">="``, ``"<="``, ``">"`` or ``"<"``.
        measured: The point value (used when there is no interval; NaN or ``None`` is never met).
        interval: ``(low, high)`` of the measurement over rounds.
        rounds: Rounds behind the interval, when known: fewer than :data:`MIN_ROUNDS` is never met.

    Returns:
        :data:`MET` when the whole interval (else the value) satisfies the comparison,
        :data:`MISSED` when none of it does, :data:`INCONCLUSIVE` when it straddles the
        threshold or too few rounds stand behind a pass.

    Raises:
        ValueError: Unknown comparison.
    """
    if comparison not in COMPARE:
        raise ValueError(f"comparison {comparison!r}: expected one of {', '.join(COMPARE)}")
    ok = COMPARE[comparison]
    if interval is not None and len(interval) and not any(_missing(v) for v in interval):
        ends = [ok(float(v), threshold) for v in (min(interval), max(interval))]
        result = MET if all(ends) else MISSED if not any(ends) else INCONCLUSIVE
    elif _missing(measured):
        return MISSED
    else:
        result = MET if ok(measured, threshold) else MISSED
    if result == MET and rounds is not None and rounds < MIN_ROUNDS:
        return INCONCLUSIVE
    return result
