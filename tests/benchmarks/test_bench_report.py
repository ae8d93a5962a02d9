"""The benchmark report (benchmarks/report.py) and transfer_bench's pure functions, on synthetic runs.

Nothing here runs a benchmark: the runs and results files are made up, and the expected numbers
are computed independently with NumPy from the same made-up values.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from benchmarks import report
from benchmarks import transfer_bench as tb
from benchmarks.index_bench import IndexSuite
from benchmarks.io_bench import IoSuite
from benchmarks.registry import SUITES
from benchmarks.suite import Suite, Target
from benchmarks.transfer_bench import TransferSuite

SEEDS = (0, 1, 2)
RATIOS = (0.4, 0.6, 0.8)
# time factor over the ideal (1 - r) per method; moderate is slow at 0.8 only
TIME_FACTOR = {"lm": 1.0, "fm": 1.1, "random-classes": 1.05, "random-samples": 1.0, "moderate": 1.0}
# accuracy offset (points) against unpruned per (method, ratio), on target a
OFFSET = {
    "lm": {0.4: -0.5, 0.6: -0.9, 0.8: -3.0},
    "fm": {0.4: 0.2, 0.6: -1.5, 0.8: -2.0},
    "random-classes": {0.4: -1.0, 0.6: -2.0, 0.8: -4.0},
    "random-samples": {0.4: -0.8, 0.6: -1.2, 0.8: -2.5},
    "moderate": {0.4: -0.7, 0.6: -1.4, 0.8: -3.5},
}


def _noise(seed: int, method: str, ratio: float, target: str, protocol: str) -> float:
    rng = np.random.default_rng([seed, len(method), int(ratio * 10), ord(target), len(protocol)])
    return float(rng.normal(0, 0.3))


def _acc(seed, method, ratio, target, protocol):
    base = {"a": 90.0, "b": 80.0}[target] + {"probe": 0.0, "finetune": 2.0}[protocol] + seed
    off = 0.0 if method == "unpruned" else OFFSET[method][ratio] * (1.0 if target == "a" else 0.5)
    return base + off + _noise(seed, method, ratio, target, protocol)


def make_runs(seeds=SEEDS):
    runs = []
    for s in seeds:
        t0 = 30.0 + 2 * s
        runs.append({"seed": s, "method": "scratch", "ratio": None,
                     "downstream": {t: {p: 50.0 + s + (p == "finetune") for p in tb.PROTOCOLS} for t in "ab"}})
        runs.append({"seed": s, "method": "unpruned", "ratio": 0.0, "kept_fraction": 1.0, "pretrain": {"seconds": t0},
                     "downstream": {t: {p: _acc(s, "unpruned", 0.0, t, p) for p in tb.PROTOCOLS} for t in "ab"}})
        for m in tb.METHODS:
            for r in RATIOS:
                factor = TIME_FACTOR[m] * (1.25 if (m == "moderate" and r == 0.8) else 1.0) * (1 + 0.01 * s)
                runs.append({"seed": s, "method": m, "ratio": r, "kept_fraction": 1 - r, "pretrain": {"seconds": t0 * (1 - r) * factor},
                             "downstream": {t: {p: _acc(s, m, r, t, p) for p in tb.PROTOCOLS} for t in "ab"}})
    return runs


def _row(summary, target, protocol, method, ratio):
    return tb._acc(summary, target, protocol, method, ratio)


# --------------------------------------------------------------------------------------------
# transfer_bench pure functions


def test_summarize_time_ratios_are_paired_medians():
    runs = make_runs()
    summary = tb.summarize(runs, RATIOS)
    for m in tb.METHODS:
        for r in RATIOS:
            row = next(x for x in summary["time"] if x["method"] == m and x["ratio"] == r)
            base = {x["seed"]: x["pretrain"]["seconds"] for x in runs if x["method"] == "unpruned"}
            pairs = np.array([x["pretrain"]["seconds"] / base[x["seed"]] for x in runs if x["method"] == m and x["ratio"] == r])
            assert row["time_ratio_median"] == pytest.approx(np.median(pairs))
            assert row["time_ratio_min"] == pytest.approx(pairs.min())
            assert row["time_ratio_max"] == pytest.approx(pairs.max())
            assert row["kept_fraction"] == pytest.approx(1 - r)
            assert row["limit"] == pytest.approx(1.15 * (1 - r))
    assert summary["unpruned_seconds_median"] == pytest.approx(np.median([30.0, 32.0, 34.0]))


def test_summarize_accuracy_mean_std_and_paired_differences():
    runs = make_runs()
    summary = tb.summarize(runs, RATIOS)
    for target in "ab":
        for protocol in tb.PROTOCOLS:
            base = np.array([_acc(s, "unpruned", 0.0, target, protocol) for s in SEEDS])
            row = _row(summary, target, protocol, "unpruned", 0.0)
            assert row["mean"] == pytest.approx(base.mean()) and row["std"] == pytest.approx(base.std(ddof=1))
            for m in tb.METHODS:
                for r in RATIOS:
                    vals = np.array([_acc(s, m, r, target, protocol) for s in SEEDS])
                    row = _row(summary, target, protocol, m, r)
                    assert row["seeds"] == 3
                    assert row["mean"] == pytest.approx(vals.mean())
                    assert row["std"] == pytest.approx(vals.std(ddof=1))
                    assert row["delta_vs_unpruned_mean"] == pytest.approx((vals - base).mean())
                    assert row["delta_vs_unpruned_std"] == pytest.approx((vals - base).std(ddof=1))
                    for other in tb.RANDOM:
                        ref = np.array([_acc(s, other, r, target, protocol) for s in SEEDS])
                        if other == m:
                            assert f"delta_vs_{other}" not in row
                        else:
                            assert row[f"delta_vs_{other}"] == pytest.approx((vals - ref).mean())
    scratch = _row(summary, "a", "probe", "scratch", None)
    assert scratch["mean"] == pytest.approx(51.0) and scratch["std"] == pytest.approx(1.0)


def test_summarize_pairs_only_seeds_present_on_both_sides():
    runs = [r for r in make_runs() if not (r["method"] == "lm" and r["seed"] == 2)]
    summary = tb.summarize(runs, RATIOS)
    row = _row(summary, "a", "probe", "lm", 0.4)
    vals = np.array([_acc(s, "lm", 0.4, "a", "probe") for s in (0, 1)])
    base = np.array([_acc(s, "unpruned", 0.0, "a", "probe") for s in (0, 1)])
    assert row["seeds"] == 2
    assert row["delta_vs_unpruned_mean"] == pytest.approx((vals - base).mean())


def test_evaluate_targets_verdicts():
    summary = tb.summarize(make_runs(), RATIOS)
    targets = {t["target"]: t for t in tb.evaluate_targets(summary, RATIOS)}
    time = [t for name, t in targets.items() if name.startswith("pretraining time")]
    assert len(time) == 3
    # fm at 1.1-1.12 x ideal stays under 1.15 at 0.4/0.6; moderate's 1.25 x ideal at 0.8 misses and is named
    by_ratio = {t["target"].split("r=")[1].split(" ")[0]: t for t in time}
    # under the limit over every seed, but 3 seeds are fewer than stats.MIN_ROUNDS: inconclusive, never met
    for r in ("0.4", "0.6"):
        t = by_ratio[r]
        assert t["verdict"] == "inconclusive" and t["rounds"] == 3 and t["interval"][1] <= t["threshold"]
    assert not by_ratio["0.8"]["met"] and by_ratio["0.8"]["measured"].startswith("worst 0.25")
    assert "(moderate)" in by_ratio["0.8"]["measured"]

    def find(prefix):
        hits = [t for name, t in targets.items() if name.startswith(prefix)]
        assert len(hits) == 1, (prefix, list(targets))
        return hits[0]

    # lm: -0.5 / -0.9 (+ noise of sd 0.3 on each side) against a 1-point tolerance
    unpruned = np.array([_acc(s, "unpruned", 0.0, "a", "probe") for s in SEEDS]).mean()
    lm = [np.array([_acc(s, "lm", r, "a", "probe") for s in SEEDS]).mean() - unpruned for r in (0.4, 0.6)]
    t = find("lm probe on target A within 1 point")
    assert t["met"] == all(d >= -1.0 for d in lm)
    assert t["measured"] == " / ".join(f"{d:+.2f}" for d in lm)
    assert not find("fm probe on target A within 1 point")["met"]  # -1.5 at 0.6
    # lm beats random-classes at every ratio by >= 1 point; fm is below random-samples at 0.6
    assert find("lm probe on target A >= random-classes")["met"]
    assert not find("fm finetune on target A >= random-samples")["met"]
    # accuracy targets (no interval) are met or missed; only the time targets over 3 seeds are inconclusive
    assert all(t["met"] in (True, False) for name, t in targets.items() if not name.startswith("pretraining time"))


def test_split_per_class_counts_and_disjointness():
    labels = np.repeat(np.arange(4), [10, 12, 7, 30])
    train, test = tb.split_per_class(labels, shots=5, seed=3)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.union1d(train, test), np.arange(len(labels)))
    assert np.bincount(labels[train]).tolist() == [5, 5, 5, 5]
    again, _ = tb.split_per_class(labels, shots=5, seed=3)
    assert np.array_equal(train, again)
    with pytest.raises(ValueError, match="class 2 has 7 images"):
        tb.split_per_class(labels, shots=7)


@pytest.mark.integration  # imports scikit-learn
def test_digits_images_resized_to_28():
    images, labels = tb.digits_images()
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))
    assert images.max() > 200  # ink scaled from 0-16 to 0-255


# --------------------------------------------------------------------------------------------
# the report


def _suites(tmp_path, *extra: Suite) -> dict[str, Suite]:
    """Real suites reading results from ``tmp_path/benchmarks/results`` (plus ``extra``)."""
    results = str(tmp_path / "benchmarks" / "results")
    os.makedirs(os.path.join(results, "quick"), exist_ok=True)
    suites = [IoSuite(results), IndexSuite(results), TransferSuite(results), *extra]
    return {s.name: s for s in suites}


def _transfer_results():
    runs = make_runs()
    summary = tb.summarize(runs, RATIOS)
    return {
        "benchmark": "transfer_bench",
        "command": "/opt/py/bin/python3.11 benchmarks/transfer_bench.py --seeds 0,1,2",
        "date": "2026-01-02T03:04:05+00:00",
        "machine": {"cpu_count": 2, "cpu_model": "Test CPU", "memory_GiB": 8.0, "python": "3.11.0", "packages": {"torch": "9.9"},
                    "load_avg_at_start": [1.5, 1.0, 1.0]},
        "config": {"seeds": list(SEEDS), "ratios": list(RATIOS), "methods": list(tb.METHODS), "epochs": 1, "batch_size": 64,
                   "workers": 1, "threads": 1, "clusters": 100, "shots": 50},
        "setup": {"source_samples": 60000, "source_shards": 12, "surrogate": {"arch": "x:y", "steps": 150, "train_accuracy": 0.7},
                  "targets": {"a": {"description": "A: footwear", "train_samples": 150, "test_samples": 2850},
                              "b": {"description": "B: digits", "train_samples": 500, "test_samples": 1297}}},
        "runs": runs,
        "summary": summary,
        "targets": tb.evaluate_targets(summary, RATIOS),
    }


def _write(suites, name, results, quick=False):
    path = suites[name].results_path(quick)
    with open(path, "w") as fh:
        json.dump(results, fh)
    return path


def test_report_renders_transfer_tables_and_not_run_yet(tmp_path):
    suites = _suites(tmp_path)
    results = _transfer_results()
    _write(suites, "transfer", results)
    text = report.render_report(suites=suites)
    section = text.split("## transfer:")[1]
    # the interpreter's path is not shown; the machine line has the Python version
    assert "- command: `python benchmarks/transfer_bench.py --seeds 0,1,2`" in section and "/opt/py" not in text
    assert "2026-01-02T03:04:05+00:00" in section
    assert "2 cores (Test CPU), 8.0 GiB RAM, Python 3.11.0, torch 9.9" in section
    # lm at 0.4: time 1.0, 1.01, 1.02 x ideal over seeds
    assert "| lm " in section and "0.606 [0.60-0.61] (0.60)" in section
    row = tb._acc(results["summary"], "a", "probe", "lm", 0.4)
    cell = f"{row['mean']:.2f} ± {row['std']:.2f} ({row['delta_vs_unpruned_mean']:+.2f}; {row['delta_vs_random-classes']:+.2f} / {row['delta_vs_random-samples']:+.2f})"
    assert cell in section
    assert "**A: footwear, finetune**" in section and "**B: digits, probe**" in section
    met = sum(1 for t in results["targets"] if t["verdict"] == "met")
    assert f"Targets: {met} of {len(results['targets'])} met." in section
    assert section.count("**missed**") == sum(1 for t in results["targets"] if t["verdict"] == "missed")
    # a suite without results
    assert "*not run yet* (no `benchmarks/results/io_bench.json`). Run `python -m benchmarks io`" in text
    overview = text.split("## ")[0]
    assert "| not run yet |" in overview.split("[io]")[1].splitlines()[0]
    assert "| results " in overview.split("[transfer]")[1].splitlines()[0]


def test_write_report_links_relative_and_quick_goes_elsewhere(tmp_path):
    suites = _suites(tmp_path)
    path = _write(suites, "transfer", _transfer_results())
    with open(os.path.splitext(path)[0] + ".png", "wb") as fh:
        fh.write(b"\x89PNG")
    bench = str(tmp_path / "benchmarks")
    out = report.write_report(str(tmp_path / "BENCHMARKS.md"), suites=suites, bench_dir=bench)
    text = open(out).read()
    assert "![transfer plot](benchmarks/results/transfer_bench.png)" in text  # BENCHMARKS.md sits next to benchmarks/
    quick = report.write_report(str(tmp_path / "benchmarks" / "results" / "quick" / "BENCHMARKS.md"), quick=True, suites=suites, bench_dir=bench)
    quick_text = open(quick).read()
    assert "*not run yet* (no `benchmarks/results/quick/transfer_bench.json`). Run `python -m benchmarks transfer --quick`" in quick_text
    assert "](../../README.md)" in quick_text  # links relative to results/quick/
    assert open(out).read() == text  # the real report is untouched by a quick one


class ZetaSuite(Suite):
    """A new suite: its tables come from its own ``tables()``, its targets from ``targets()``."""

    name = "zeta"
    title = "Zeta: a suite that renders itself"

    def tables(self, results):
        return f"| x |\n|---|\n| {results['x']} |"

    def targets(self, results):
        return [Target.check("x at least 40", results["x"], 40, ">="),
                Target.check("x below 41, noisy", results["x"], 41, "<", interval=(39.0, 45.0))]


def test_report_renders_a_new_suite_through_its_markdown(tmp_path):
    zeta = ZetaSuite(str(tmp_path / "benchmarks" / "results"))
    suites = _suites(tmp_path, zeta)
    _write(suites, "zeta", {"x": 42, "finished": "2026-02-03T00:00:00+00:00", "meta": {"command": "python -m benchmarks zeta",
                                                                                       "machine": {"cpu_count": 4}}})
    text = report.render_report(suites=suites)
    assert [line.split("]")[0][3:] for line in text.splitlines() if line.startswith("| [")] == ["io", "index", "transfer", "zeta"]
    section = text.split("## zeta:")[1]
    assert section.startswith(" Zeta: a suite that renders itself")
    assert "| 42 |" in section and "2026-02-03T00:00:00+00:00" in section
    assert "`python -m benchmarks zeta`" in section and "4 cores" in section
    assert "Targets: 1 of 2 met." in section
    assert "| x at least 40 " in section and "| >= 40 | met" in section
    assert "x below 41, noisy | 42 [39-45] |  < 41 | inconclusive" in section
    assert "| 1 of 2 met |" in text.split("## ")[0].split("[zeta]")[1].splitlines()[0]


def test_report_survives_a_results_file_of_another_shape(tmp_path):
    suites = _suites(tmp_path)
    _write(suites, "io", {"command": "python benchmarks/io_bench.py", "summary": [{"oops": 1}]})
    section = report.render_report(suites=suites).split("## io:")[1].split("## index:")[0]
    assert "tables could not be rendered from this results file: KeyError" in section
    assert "`python benchmarks/io_bench.py`" in section


def test_report_renders_the_committed_results_of_every_suite():
    """Every registered suite renders the repository's own results file (whatever it is now), with its targets."""
    for suite in SUITES.values():
        results = suite.results()
        if results is None:
            continue
        section = report.render_suite(suite)
        assert "could not be rendered" not in section, section
        assert "| " in section
        stored = results.get("targets")
        if stored:  # the stored verdicts survive the round trip through Target (a suite may add those of its other results files after them)
            assert [t.met for t in suite.targets(results)][: len(stored)] == [t.get("met") for t in stored]
