"""benchmarks/stats.py: paired ratios, their intervals, failed rounds and the strict verdicts (no benchmark is run)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import stats
from benchmarks.stats import INCONCLUSIVE, MET, MISSED
from benchmarks.suite import Target


def test_paired_ratio_pairs_round_by_round_and_states_its_coverage():
    r = stats.paired_ratio([2.0, 6.0, 3.0], [1.0, 2.0, 3.0])
    assert r.runs == (2.0, 3.0, 1.0)  # per round, not sorted arms
    assert (r.median, r.low, r.high, r.n, r.failed) == (2.0, 1.0, 3.0, 3, 0)
    d = r.to_dict()
    assert (d["median"], d["min"], d["max"], d["n"]) == (2.0, 1.0, 3.0, 3)
    assert d["coverage"] == pytest.approx(0.75)  # 1 - 2^(1-n): the min-max covers the median ratio
    assert stats.coverage(5) == pytest.approx(0.9375)
    assert math.isnan(stats.paired_ratio([], []).median) and stats.paired_ratio([], []).interval is None
    with pytest.raises(ValueError, match="one per round"):
        stats.paired_ratio([1.0], [1.0, 2.0])


def test_a_failed_or_stalled_round_is_reported_and_never_counted():
    # round 1's peer stalled (None), round 3's failed (NaN), round 4 has no denominator at all
    r = stats.paired_by_round({0: 2.0, 1: 2.0, 2: 2.0, 3: 2.0, 4: 2.0}, {0: 1.0, 1: None, 2: 4.0, 3: float("nan")},
                              rounds=range(5))
    assert r.runs == (2.0, 0.5) and r.failed == 3 and r.n == 2
    assert "3 failed/stalled, not counted" in r.text()
    # a target on it is judged on the counted rounds only, and says how many were not counted
    t = Target.check("vs peer", None, 1.0, ">=", paired=r)
    assert t.details["not_counted"] == 3 and t.details["rounds"] == 2 and t.interval == (0.5, 2.0)
    assert t.verdict == INCONCLUSIVE
    # every round of the peer stalled: nothing was measured, so no verdict either way
    none = Target.check("vs peer", None, 1.0, ">=", paired=stats.paired_by_round({0: 1.0, 1: 1.0}, {}, rounds=[0, 1]))
    assert none.verdict == INCONCLUSIVE and none.details["not_counted"] == 2


def test_verdict_is_met_only_when_the_whole_interval_clears_the_target():
    assert stats.verdict(1.5, ">=", 1.8, (1.6, 2.0)) == MET
    assert stats.verdict(1.5, ">=", 1.6, (1.4, 1.7)) == INCONCLUSIVE  # straddles: the median alone would say met
    assert stats.verdict(1.5, ">=", 1.4, (1.3, 1.6)) == INCONCLUSIVE  # straddles: the median alone would say missed
    assert stats.verdict(1.5, ">=", 1.2, (1.0, 1.4)) == MISSED
    assert stats.verdict(0.75, "<=", 0.74, (0.31, 0.75)) == MET  # touching the threshold is inside the goal
    assert stats.verdict(0.46, "<=", 0.42, (0.34, 0.49)) == INCONCLUSIVE
    # no interval: the point value decides; NaN or nothing is never met
    assert stats.verdict(1.0, ">", 1.1) == MET and stats.verdict(1.0, ">", 1.0) == MISSED
    assert stats.verdict(1.0, ">=", float("nan")) == MISSED and stats.verdict(1.0, ">=", None) == MISSED
    with pytest.raises(ValueError, match="comparison '=='"):
        stats.verdict(1.0, "==", 1.0)


def test_fewer_than_five_rounds_are_never_met_but_can_miss():
    assert stats.MIN_ROUNDS == 5
    assert stats.verdict(1.5, ">=", 2.0, (1.8, 2.2), rounds=4) == INCONCLUSIVE
    assert stats.verdict(1.5, ">=", 2.0, (1.8, 2.2), rounds=5) == MET
    assert stats.verdict(1.5, ">=", 1.0, (0.9, 1.1), rounds=2) == MISSED
    five = stats.paired_ratio([2.0] * 5, [1.0, 1.1, 0.9, 1.0, 1.2])
    assert five.enough and Target.check("x", None, 1.5, paired=five).verdict == MET
    assert Target.check("x", None, 1.5, paired=stats.paired_ratio([2.0] * 4, [1.0] * 4)).verdict == INCONCLUSIVE


def test_stored_met_verdicts_are_judged_again_but_never_made_more_lenient():
    straddling = {"target": "t", "measured": 0.742, "threshold": 0.75, "comparison": "<=", "interval": [0.31, 0.76], "met": True}
    assert Target.from_dict(straddling).verdict == INCONCLUSIVE
    few = {"target": "t", "measured": 2.0, "threshold": 1.5, "comparison": ">=", "interval": [1.8, 2.2], "rounds": 3,
           "verdict": "met"}
    assert Target.from_dict(few).verdict == INCONCLUSIVE
    missed = {"target": "t", "measured": 2.0, "threshold": 1.5, "comparison": ">=", "interval": [1.8, 2.2], "verdict": "missed"}
    assert Target.from_dict(missed).verdict == MISSED  # a stored miss stays a miss
    no_numbers = {"target": "t", "measured": "fast", "met": True}
    assert Target.from_dict(no_numbers).verdict == MET


def test_bootstrap_interval_is_seeded_and_brackets_the_median():
    values = [1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.3, 1.0]
    lo, hi = stats.bootstrap_interval(values)
    assert lo <= float(np.median(values)) <= hi and (lo, hi) == stats.bootstrap_interval(values)
    assert stats.bootstrap_interval([2.0]) == (2.0, 2.0)
    r = stats.paired_ratio([2.0] * 8, [2.0 / v for v in values], method="bootstrap")
    assert r.method == "bootstrap" and r.low >= min(r.runs) and r.high <= max(r.runs)
    assert stats.ratio_of([1.0, None, 2.0]).failed == 1
