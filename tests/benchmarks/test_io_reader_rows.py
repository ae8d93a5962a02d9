"""The io benchmark's reader rows (``python -m benchmarks io --only readers``): summary, targets, and the suite's rendering."""

from __future__ import annotations

import json

import pytest

from benchmarks import io_readers, resultsfile
from benchmarks.io_bench import IoSuite


def _runs():
    runs = []
    for rnd, wids_s in enumerate((0.3, 0.2, 0.25, 0.3, 0.22)):  # five rounds: a ratio target can be met
        for cache in ("warm", "cold"):
            for ratio, kept in ((0.0, 10), (0.8, 2)):
                for reader, seconds in (("streamprune", 0.1), ("streamprune_map", 0.25), ("wids", wids_s)):
                    runs.append({"reader": reader, "cache": cache, "ratio": ratio, "round": rnd, "seconds": seconds, "cpu_seconds": seconds,
                                 "samples": kept, "samples_per_s": kept / seconds,
                                 "read_bytes": (100 if reader == "wids" or ratio == 0 else 21) if cache == "cold" else 0})
    return runs


def test_summary_pairs_each_reader_with_wids_per_round_and_judges_the_targets():
    rows = io_readers.summarize(_runs(), data_bytes=100, kept_bytes={0.0: 100, 0.8: 20})
    row = next(r for r in rows if (r["reader"], r["cache"], r["ratio"]) == ("streamprune", "warm", 0.8))
    assert (row["vs_wids"], row["vs_wids_min"], row["vs_wids_max"]) == pytest.approx((2.5, 2.0, 3.0))
    assert "vs_wids" not in next(r for r in rows if r["reader"] == "wids")
    targets = {t["target"]: t for t in io_readers.evaluate_targets(rows, "cmd")}
    assert targets["streamprune warm raw kept samples at r=0.8: samples/s >= 1.5 x wids"]["verdict"] == "met"
    # map: 0.3/0.25 = 1.2 ... 0.2/0.25 = 0.8, every round under 1.5
    assert targets["streamprune_map warm raw kept samples at r=0.8: samples/s >= 1.5 x wids"]["verdict"] == "missed"
    cold = targets["streamprune_map cold bytes read at r=0.8 <= (1-r) + 5% = 0.25 of the shards"]
    assert cold["verdict"] == "met" and cold["measured"] == 0.21 and cold["command"] == "cmd"


def test_io_suite_renders_the_reader_rows_after_its_own(tmp_path):
    rows = io_readers.summarize(_runs(), data_bytes=100, kept_bytes={0.0: 100, 0.8: 20})
    saved = {"command": "python -m benchmarks io --only readers", "summary": rows, "rounds": 2,
             "targets": io_readers.evaluate_targets(rows, "python -m benchmarks io --only readers"),
             "data": {"samples": 10, "data_bytes": 100 << 20, "shards": 1},
             "wids": {"open": {"cold": {"seconds": 0.5, "read_bytes": 100 << 20}}}}
    resultsfile.write_json(str(tmp_path / io_readers.RESULTS_NAME), saved)
    suite = IoSuite(str(tmp_path))
    io_results = {"command": "python -m benchmarks io", "summary": [], "targets": []}
    text = suite.markdown(io_results)
    assert "streamprune_map" in text and "vs wids" in text and "100.0 MiB read" in text
    assert [t.command for t in suite.targets(io_results)] == ["python -m benchmarks io --only readers"] * len(saved["targets"])
    assert json.loads((tmp_path / io_readers.RESULTS_NAME).read_text())["rounds"] == 2


def test_verify_rows_report_their_cost_against_the_plain_reader_paired_per_round():
    runs = _runs()
    for rnd, factor in ((0, 1.2), (1, 1.4)):
        for r in [r for r in runs if r["reader"] == "streamprune" and r["round"] == rnd]:
            runs.append({**r, "reader": "streamprune_verify", "seconds": r["seconds"] * factor, "cpu_seconds": r["seconds"] * factor})
    rows = io_readers.summarize(runs, data_bytes=100, kept_bytes={0.0: 100, 0.8: 20})
    row = next(r for r in rows if (r["reader"], r["cache"], r["ratio"]) == ("streamprune_verify", "warm", 0.8))
    assert (row["verify_cost"], row["verify_cost_min"], row["verify_cost_max"]) == pytest.approx((1.3, 1.2, 1.4))
    assert "verify_cost" not in next(r for r in rows if r["reader"] == "streamprune")
