"""The benchmark report (benchmarks/report.py) and transfer_bench's pure functions, on synthetic runs.

Nothing here runs a benchmark: the runs and results files are made up, and the expected numbers
are computed independently with NumPy from the same made-up values.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _load(name: str, folder: str = BENCH):
    mod_name = f"_test_{name}_{abs(hash(folder))}"
    spec = importlib.util.spec_from_file_location(mod_name, os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


tb = _load("transfer_bench")
report = _load("report")

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
    assert by_ratio["0.4"]["met"] and by_ratio["0.6"]["met"]
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
    assert all(t["met"] in (True, False) for t in targets.values())


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


def test_digits_images_resized_to_28():
    images, labels = tb.digits_images()
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))
    assert images.max() > 200  # ink scaled from 0-16 to 0-255


# --------------------------------------------------------------------------------------------
# the report


def _bench_copy(tmp_path):
    folder = tmp_path / "benchmarks"
    (folder / "results").mkdir(parents=True)
    for name in ("common.py", "report.py", "transfer_bench.py", "transfer_nets.py"):
        shutil.copy(os.path.join(BENCH, name), folder / name)
    (folder / "io_bench.py").write_text('"""I/O."""\n')
    return folder


def _transfer_results():
    runs = make_runs()
    summary = tb.summarize(runs, RATIOS)
    return {
        "benchmark": "transfer_bench",
        "command": "python benchmarks/transfer_bench.py --seeds 0,1,2",
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


def test_report_renders_transfer_tables_and_not_run_yet(tmp_path):
    folder = _bench_copy(tmp_path)
    results = _transfer_results()
    (folder / "results" / "transfer_bench.json").write_text(json.dumps(results))
    text = report.render_report(str(folder))
    section = text.split("## transfer:")[1]
    assert "python benchmarks/transfer_bench.py --seeds 0,1,2" in section
    assert "2026-01-02T03:04:05+00:00" in section
    assert "2 cores (Test CPU), 8.0 GiB RAM, Python 3.11.0, torch 9.9" in section
    # lm at 0.4: time 1.0, 1.01, 1.02 x ideal over seeds
    assert "| lm " in section and "0.606 [0.60-0.61] (0.60)" in section
    row = tb._acc(results["summary"], "a", "probe", "lm", 0.4)
    cell = f"{row['mean']:.2f} ± {row['std']:.2f} ({row['delta_vs_unpruned_mean']:+.2f}; {row['delta_vs_random-classes']:+.2f} / {row['delta_vs_random-samples']:+.2f})"
    assert cell in section
    assert "**A: footwear, finetune**" in section and "**B: digits, probe**" in section
    missed = sum(1 for t in results["targets"] if not t["met"])
    assert f"Targets: {len(results['targets']) - missed} of {len(results['targets'])} met." in section
    assert section.count("**missed**") == missed
    # suites without results: known and script-less, script without results
    assert "## downstream:" in text
    assert "*not run yet* (no `benchmarks/downstream_bench.py` yet)" in text.split("## downstream:")[1].split("##")[0]
    assert "*not run yet* (no `benchmarks/results/io_bench.json`)" in text
    overview = text.split("## ")[0]
    assert "| not run yet |" in overview.split("[downstream]")[1].splitlines()[0]
    assert "| results " in overview.split("[transfer]")[1].splitlines()[0]


def test_write_report_links_relative_and_quick_goes_elsewhere(tmp_path):
    folder = _bench_copy(tmp_path)
    (folder / "results" / "transfer_bench.json").write_text(json.dumps(_transfer_results()))
    (folder / "results" / "transfer_bench.png").write_bytes(b"\x89PNG")
    path = report.write_report(str(folder))
    assert path == str(tmp_path / "BENCHMARKS.md")
    text = open(path).read()
    assert "![transfer plot](benchmarks/results/transfer_bench.png)" in text
    quick = report.write_report(str(folder), quick=True)
    assert quick == str(folder / "results" / "quick" / "BENCHMARKS.md")
    assert "*not run yet* (no `benchmarks/results/quick/transfer_bench.json`)" in open(quick).read()
    assert open(path).read() == text  # the real report is untouched by a quick one


def test_report_new_suite_with_its_own_renderer_and_results_only_suite(tmp_path):
    folder = _bench_copy(tmp_path)
    (folder / "zeta_bench.py").write_text(
        '"""Zeta: a suite that renders itself."""\n'
        "import sys\n"
        "def report_markdown(results):\n"
        "    return f\"| x |\\n|---|\\n| {results['x']} |\"\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(1)\n"
    )
    (folder / "results" / "zeta_bench.json").write_text(json.dumps({"x": 42, "finished": "2026-02-03T00:00:00+00:00"}))
    (folder / "results" / "alpha_bench.json").write_text(json.dumps({
        "meta": {"command": "python alpha", "machine": {"cpu_count": 4}},
        "targets": [{"target": "speed", "value": 2.5, "goal": 2.0, "met": True}, {"target": "size", "measured": 7, "met": False}],
    }))
    text = report.render_report(str(folder))
    names = [s.name for s in report.discover(str(folder))]
    assert names[: len(report.KNOWN_SUITES)] == list(report.KNOWN_SUITES)
    assert names[len(report.KNOWN_SUITES):] == ["alpha", "zeta"]
    zeta = text.split("## zeta:")[1]
    assert zeta.startswith(" Zeta: a suite that renders itself")
    assert "| 42 |" in zeta and "2026-02-03T00:00:00+00:00" in zeta
    alpha = text.split("## alpha:")[1].split("## zeta:")[0]
    assert "`python alpha`" in alpha and "4 cores" in alpha
    assert "Targets: 1 of 2 met." in alpha and "| speed " in alpha and "2.500 | 2.000 | met" in alpha


def test_report_survives_a_results_file_of_another_shape(tmp_path):
    folder = _bench_copy(tmp_path)
    (folder / "results" / "io_bench.json").write_text(json.dumps({"command": "python benchmarks/io_bench.py", "summary": [{"oops": 1}]}))
    section = report.render_report(str(folder)).split("## io:")[1].split("## index:")[0]
    assert "tables could not be rendered from this results file: KeyError" in section
    assert "`python benchmarks/io_bench.py`" in section


def test_report_renders_the_committed_results_of_existing_suites():
    """The built-in tables work on the repository's own results files (whatever they are now)."""
    suites = {s.name: s for s in report.discover(BENCH)}
    for name in ("io", "index", "score", "ffcv"):
        if report.load_results(suites[name].results) is None:
            continue
        section = report.render_suite(suites[name])
        assert "could not be rendered" not in section, section
        assert "| " in section
