"""Pure helpers of the DLC cost / FlexRand gain suite, and the faiss build choice of the score suite."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from benchmarks import dlc_bench, score_bench


def test_paired_gain_interval_is_the_student_t_interval_of_the_differences():
    a, b = [80.0, 82.0, 81.0, 83.0, 84.0], [79.0, 80.0, 80.5, 80.0, 82.0]
    g = dlc_bench.paired_gain(a, b)
    d = [x - y for x, y in zip(a, b)]
    half = 2.776 * statistics.stdev(d) / math.sqrt(5)  # t(0.975, df=4)
    assert g["mean"] == pytest.approx(statistics.fmean(d))
    assert g["ci95"] == pytest.approx([statistics.fmean(d) - half, statistics.fmean(d) + half])
    assert (g["min"], g["max"]) == (min(d), max(d)) and g["verdict"] == "gain"


@pytest.mark.parametrize(("a", "b", "verdict"), [
    ([80.0, 81.0, 79.0, 80.5, 80.2], [80.1, 80.8, 79.4, 80.0, 80.6], "not detected"),
    ([70.0, 71.0, 70.5, 70.2, 70.8], [75.0, 75.5, 75.1, 74.9, 75.3], "loss"),
])
def test_paired_gain_verdict_needs_the_whole_interval_on_one_side(a, b, verdict):
    assert dlc_bench.paired_gain(a, b)["verdict"] == verdict


def test_flip_labels_changes_exactly_the_fraction_and_never_to_the_true_class():
    y = np.repeat(np.arange(10), 50)
    noisy, flipped = dlc_bench.flip_labels(y, 0.3, 10, seed=0)
    assert flipped.sum() == 150
    assert (noisy[flipped] != y[flipped]).all() and (noisy[~flipped] == y[~flipped]).all()
    assert noisy.min() >= 0 and noisy.max() <= 9
    again, _ = dlc_bench.flip_labels(y, 0.3, 10, seed=0)
    assert (again == noisy).all()


def test_extrapolation_multiplies_the_measured_epoch_by_the_papers_epochs():
    out = dlc_bench.extrapolate(epoch_s=2.0, snapshot_s=0.5, dlc_s=10.0)
    assert out["el2n"]["seconds"] == pytest.approx(20 * 10 * 2.0 + 10 * 0.5)  # 20 epochs x 10 runs, 10 snapshots
    assert out["forgetting"]["seconds"] == pytest.approx(200 * 2.0)
    assert out["aum"]["ratio_to_dlc"] == pytest.approx(40.0)


def test_statement_says_not_reproduced_when_no_interval_clears_zero():
    cell = {"gain_vs_random": {"mean": 0.1, "ci95": [-0.5, 0.7], "verdict": "not detected", "n": 5}, "paper_gain": 2.6}
    text = dlc_bench.statement({"noisy-0.3": {"0.1": cell}}, "noisy-0.3")
    assert text.startswith("The paper's gain over random does not reproduce here") and "paper +2.6" in text


@pytest.mark.parametrize(("flags", "level"), [
    ({"avx2", "fma", "f16c", "popcnt", "sse4_2"}, "avx2"),
    ({"avx2", "fma", "f16c", "popcnt", "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}, "avx512"),
    ({"sse4_2", "avx"}, "generic"),
])
def test_faiss_level_is_the_best_the_cpu_supports(flags, level):
    assert score_bench.cpu_faiss_level(flags) == level


def test_merge_arms_replaces_the_rerun_arms_and_marks_who_measured_each():
    earlier = {"N": 10, "K": 2, "D": 3, "timing": "t", "faiss": {"version": "old"},
               "arms": {"numba": {"iteration_s": 1}, "faiss": {"iteration_s": 9}, "numpy_mm": {"iteration_s": 4}}}
    new = {"N": 10, "K": 2, "D": 3, "timing": "t", "faiss": {"version": "new", "build": {"active_level": "avx2"}},
           "arms": {"numba": {"iteration_s": 2}, "faiss": {"iteration_s": 3}}}
    out = score_bench.merge_arms(earlier, new, "old cmd", "new cmd")
    assert out["arms"]["faiss"] == {"iteration_s": 3, "measured_by": "new cmd"}
    assert out["arms"]["numba"]["measured_by"] == "new cmd"
    assert out["arms"]["numpy_mm"] == {"iteration_s": 4, "measured_by": "old cmd"}
    assert out["faiss"]["build"]["active_level"] == "avx2"
    with pytest.raises(ValueError, match="N=10 K=2 D=3, this run N=20"):
        score_bench.merge_arms(earlier, {**new, "N": 20}, "old cmd", "new cmd")
