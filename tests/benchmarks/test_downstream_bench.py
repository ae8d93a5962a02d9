"""Pure helpers of the downstream suite (benchmarks/downstream_bench.py) on synthetic results (no benchmark is run)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from benchmarks import downstream_bench, finetune
from benchmarks.registry import SUITES


@pytest.fixture(scope="module")
def db():
    return downstream_bench


def _runs(db, accuracies: dict) -> list[dict]:
    """``{(dataset, method, budget): [acc per seed]}`` -> run records."""
    return [
        {"dataset": ds, "method": m, "budget": b, "seed": s, "accuracy": a}
        for (ds, m, b), accs in accuracies.items()
        for s, a in enumerate(accs)
    ]


def _round(dlc: float, wall: float, epochs: list[float], el2n: float = 0.1, forgetting: float = 0.2, aum: float = 0.3) -> dict:
    return {
        "dlc": dlc, "random-samples": 0.01, "moderate": 1.5, "el2n": el2n, "forgetting": forgetting, "aum": aum,
        "dynamics": {"wall": wall, "seconds_per_epoch": epochs}, "dlc-k10": dlc / 5,
    }


def test_summarize_matches_numpy_mean_and_sample_std(db):
    rng = np.random.default_rng(3)
    acc = {("a", m, b): list(rng.uniform(50, 90, 3)) for m in ("random", "dlc-flexrand") for b in (0.1, 0.5)}
    acc[("a", "full", 1.0)] = [80.0]
    # seeds given out of order must not change anything
    runs = _runs(db, acc)[::-1]
    s = db.summarize(runs)
    for (ds, m, b), values in acc.items():
        entry = s[ds][m][db.budget_key(b)]
        assert entry["mean"] == pytest.approx(np.mean(values))
        assert entry["std"] == pytest.approx(np.std(values, ddof=1) if len(values) > 1 else 0.0)
        assert entry["n"] == len(values)
        assert entry["seeds"] == list(range(len(values)))
    assert set(s["a"]["random"]) == {"0.1", "0.5"}
    assert s["a"]["full"]["1"]["std"] == 0.0


def test_differences_per_budget_and_average_over_shared_budgets(db):
    acc = {
        ("a", "dlc-flexrand", 0.1): [70, 72], ("a", "random", 0.1): [66, 68],
        ("a", "dlc-flexrand", 0.5): [80, 80], ("a", "random", 0.5): [81, 81],
        ("a", "dlc-flexrand", 0.9): [85, 85],  # no random run at 0.9: not compared
    }
    d = db.differences(db.summarize(_runs(db, acc)))["a"]
    assert d["per_budget"] == {"0.1": pytest.approx(4.0), "0.5": pytest.approx(-1.0)}
    assert d["mean"] == pytest.approx(1.5)
    assert list(d["per_budget"]) == ["0.1", "0.5"]


def test_pruning_times_charge_each_method_the_training_it_needs(db):
    rounds = [_round(10.0, wall=9.0, epochs=[2.0, 2.0, 2.0, 2.0]), _round(20.0, wall=13.0, epochs=[3.0, 3.0, 3.0, 3.0])]
    t = db.pruning_times(rounds, el2n_epochs=2)
    assert t["dlc-flexrand"] == [10.0, 20.0]
    # EL2N: the recording's set-up (wall - all epochs) plus its first 2 epochs, plus its score pass
    assert t["el2n"] == pytest.approx([9.0 - 4.0 + 0.1, 13.0 - 6.0 + 0.1])
    assert t["forgetting"] == pytest.approx([9.2, 13.2])
    assert t["ccs"] == pytest.approx([9.3, 13.3])
    assert t["moderate"] == [1.5, 1.5]
    assert t["random"] == t["cb-random"] == [0.01, 0.01]
    assert t["dlc-k10"] == [2.0, 4.0]
    assert "dlc-w0" not in t
    s = db.timing_summary(rounds, el2n_epochs=2)
    # ratios are paired within a round before the median
    assert s["ratio_to_dlc"]["forgetting"]["runs"] == pytest.approx([0.92, 0.66])
    assert s["ratio_to_dlc"]["forgetting"]["median"] == pytest.approx((0.92 + 0.66) / 2)
    assert s["seconds"]["dlc-flexrand"]["median"] == pytest.approx(15.0)
    cm = db.cost_model(s, rounds, levels=50, epochs=4, n=100)
    assert cm["dlc_eval_forwards"] == 5100 and cm["recording_forward_backward_passes"] == 400
    assert cm["break_even_epochs"] == pytest.approx(15.0 / 2.5)
    assert cm["epochs_for_20x"] == pytest.approx(20 * 15.0 / 2.5)


def _timing(db, ratio: float) -> dict:
    # DLC takes 1 s, every training-based method `ratio` s
    r = {"dlc": 1.0, "random-samples": 0.0, "moderate": 0.5, "el2n": 0.0, "forgetting": 0.0, "aum": 0.0,
         "dynamics": {"wall": ratio, "seconds_per_epoch": [0.0]}}
    return db.timing_summary([r] * 5, el2n_epochs=1)  # five paired rounds: a time target can be met


def test_targets_time_ratio_and_accuracy_gain(db):
    acc = {
        ("good", "dlc-flexrand", 0.1): [71, 71], ("good", "random", 0.1): [70, 70],
        ("bad", "dlc-flexrand", 0.1): [69, 69], ("bad", "random", 0.1): [70, 70],
    }
    summary = db.summarize(_runs(db, acc))
    targets = db.evaluate_targets(summary, {"good": _timing(db, 25.0), "bad": _timing(db, 19.0)}, {"good": "Good", "bad": "Bad"})
    assert [t["target"].split(":")[0] for t in targets] == ["Good", "Bad", "Good", "Bad"]
    by = {(t["target"].split(":")[0], "time" if "time" in t["target"] else "acc"): t for t in targets}
    assert by[("Good", "time")]["met"] is True and by[("Good", "time")]["value"] == pytest.approx(25.0)
    assert by[("Bad", "time")]["met"] is False and "min 19.00x" in by[("Bad", "time")]["measured"]
    assert by[("Good", "acc")]["met"] is True and by[("Good", "acc")]["measured"].startswith("+1.00 points")
    assert by[("Bad", "acc")]["met"] is False and "10%: -1.00" in by[("Bad", "acc")]["measured"]
    for t in targets:
        assert set(t) >= {"target", "measured", "goal", "met", "verdict", "threshold", "comparison"}
        assert t["verdict"] == ("met" if t["met"] else "missed")
    # the stored entries read back as the same Targets
    judged = SUITES["downstream"].targets({"targets": targets})
    assert [(t.name, t.measured, t.threshold, t.comparison, t.goal_text) for t in judged][:2] == [
        (targets[0]["target"], pytest.approx(25.0), 20.0, ">=", ">= 20x"), (targets[1]["target"], pytest.approx(19.0), 20.0, ">=", ">= 20x")]


def test_ccs_beta_rule(db):
    assert db.ccs_beta(0.9) == db.ccs_beta(0.5) == 0.0
    assert db.ccs_beta(0.1) == pytest.approx(0.3)
    assert db.ccs_beta(0.3) == pytest.approx(0.15)
    betas = [db.ccs_beta(b / 10) for b in range(1, 10)]
    assert betas == sorted(betas, reverse=True)
    assert db.selector_options("ccs", 0.2) == {"beta": pytest.approx(0.225), "strata": 50}
    assert db.ratio_of(0.9) == 0.1 and db.ratio_of(0.3) == 0.7


@pytest.mark.parametrize("n_kept", [7, 50, 123])
def test_batch_stream_gives_full_batches_of_kept_samples_evenly(db, n_kept):
    kept = np.sort(np.random.default_rng(0).choice(1000, n_kept, replace=False))
    batches = finetune.batch_stream(kept, batch_size=20, steps=30, seed=5)
    assert len(batches) == 30 and all(len(b) == 20 for b in batches)
    flat = np.concatenate(batches)
    assert np.isin(flat, kept).all()
    counts = np.array([(flat == k).sum() for k in kept])
    # whole passes over the subset: every sample is used the same number of times, +-1
    assert counts.max() - counts.min() <= 1
    again = finetune.batch_stream(kept, batch_size=20, steps=30, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = finetune.batch_stream(kept, batch_size=20, steps=30, seed=6)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))
    with pytest.raises(ValueError):
        finetune.batch_stream(np.zeros(0, dtype=np.int64), 20, 3, 0)


def _results(db) -> dict:
    acc = {}
    for ds in ("fashion-test", "digits"):
        for m in db.METHODS:
            for b in (0.1, 0.5):
                a = 60.0 + 10 * b + (0.5 if m == "dlc-flexrand" else 0.0)
                acc[(ds, m, b)] = [a, a + 2.0]
        acc[(ds, "full", 1.0)] = [90.0, 91.0]
    rounds = [_round(10.0, 4.0, [1.0, 1.0]), _round(12.0, 4.4, [1.1, 1.1])]
    results = {
        "runs": _runs(db, acc),
        "config": {"levels": 50},
        "datasets": {
            "fashion-test": {"label": "FMNIST", "train": 100, "test": 50, "steps": 8, "batch_size": 50, "epochs": 2, "el2n_epochs": 1},
            "digits": {"label": "Digits", "train": 60, "test": 30, "steps": 4, "batch_size": 50, "epochs": 2, "el2n_epochs": 1},
        },
        "timing_rounds": {"fashion-test": rounds, "digits": rounds},
    }
    return db.finalize(results)


def test_suite_markdown_renders_accuracy_time_and_target_tables(db):
    results = _results(db)
    md = SUITES["downstream"].markdown(results)
    # dataset order is the run's, not alphabetical
    assert md.index("**FMNIST**") < md.index("**Digits**")
    assert "| 10%" in md and "| 50%" in md
    assert "| 62.50 ± 1.41 |" in md  # DLC at 10%: mean of 61.5 and 63.5, sample std
    assert "| 62.00 ± 1.41 |" in md  # every other method at 10%
    assert "| 66.50 ± 1.41 |" in md  # DLC at 50%
    assert re.search(r"\| +\+0\.50 \|", md)  # DLC - random per budget and on average
    assert "Full train part (100% kept, same steps): 90.50 ± 0.71." in md
    assert "**Pruning time**" in md and "DLC K=10 (not default)" in md
    assert "break-even epochs" in md
    assert "Targets: 2 of 4 met." in md and "| **missed**" in md and "| met" in md and ">= 20x |" in md
    assert "**Targets**" not in db.report_markdown(results)  # the targets table is the shared one, once
    # the targets read the same numbers
    acc_targets = [t for t in results["targets"] if "random" in t["target"]]
    assert len(acc_targets) == 2 and all(t["met"] and t["value"] == pytest.approx(0.5) for t in acc_targets)
    time_targets = [t for t in results["targets"] if "time" in t["target"]]
    # training-based methods take ~0.4x DLC's time in these rounds: the 20x target is not met
    assert len(time_targets) == 2 and all(not t["met"] for t in time_targets)


@pytest.mark.integration
def test_plot_writes_a_png(db, tmp_path):
    path = db.plot(_results(db), str(tmp_path / "downstream.png"))
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_el2n_time_is_its_own_multi_run_recording_when_there_is_one(db):
    r = _round(2.0, 9.0, [2.0, 2.0, 2.0, 2.0])
    r["el2n_dynamics"] = {"wall": 7.5, "runs": 5, "epochs": 2, "el2n_epochs": [2]}
    t = db.pruning_times([r], el2n_epochs=2)
    assert t["el2n"] == pytest.approx([7.5 + 0.1])  # the EL2N recording + its score, not the main recording's epochs
    assert t["forgetting"] == pytest.approx([9.0 + 0.2])
