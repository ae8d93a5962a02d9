"""The benchmark suite interface: the registry and the shared Target helper (no benchmark is run)."""

from __future__ import annotations

import ast
import os

import pytest
from builders import ROOT

from benchmarks import registry
from benchmarks.suite import INCONCLUSIVE, MET, MISSED, Suite, Target, targets_table

BENCH = os.path.join(ROOT, "benchmarks")


def test_verdicts_met_missed_and_inconclusive_when_the_interval_straddles_the_threshold():
    assert Target.check("speed-up", 2.0, 1.5).verdict == MET
    assert Target.check("speed-up", 1.2, 1.5).verdict == MISSED
    assert Target.check("bytes", 0.5, 0.45, "<=").verdict == MISSED
    assert Target.check("bytes", 0.4, 0.45, "<=").verdict == MET
    # the median meets the goal but the range over repeats reaches below it: not a verdict either way
    noisy = Target.check("speed-up", 1.6, 1.5, interval=(1.7, 1.4))
    assert noisy.verdict == INCONCLUSIVE and noisy.met is None and noisy.interval == (1.4, 1.7)
    # an interval wholly on one side keeps the plain verdict, also when it touches the threshold
    assert Target.check("speed-up", 1.6, 1.5, interval=(1.5, 1.8)).verdict == MET
    assert Target.check("speed-up", 1.2, 1.5, interval=(1.0, 1.4)).verdict == MISSED
    assert Target.check("x", float("nan"), 1.0).verdict == MISSED
    assert Target.check("x", 5.0, 1.0, valid=False).verdict == MISSED
    with pytest.raises(ValueError, match="comparison '=='"):
        Target.check("x", 1.0, 1.0, "==")


def test_target_json_round_trip_and_older_entries():
    t = Target.check("time", 0.41, 20.0, shown="EL2N 0.41x (min 0.41x)", goal=">= 20x", command="python -m benchmarks downstream",
                     interval=(0.3, 0.5), ratio=0.4)
    d = t.to_dict()
    assert d["target"] == "time" and d["measured"] == "EL2N 0.41x (min 0.41x)" and d["value"] == 0.41
    assert d["goal"] == ">= 20x" and d["threshold"] == 20.0 and d["comparison"] == ">="
    assert d["met"] is False and d["verdict"] == MISSED and d["ratio"] == 0.4
    assert Target.from_dict(d) == t
    # older layouts: measured only / value + numeric goal / met None
    old = Target.from_dict({"target": "a", "measured": 3, "met": True}, command="python x.py")
    assert (old.measured, old.threshold, old.verdict, old.command) == (3, None, MET, "python x.py")
    ffcv = Target.from_dict({"target": "b", "value": 1.5, "goal": 2.0, "met": False, "layout": "default"})
    assert (ffcv.measured, ffcv.threshold, ffcv.goal_text, ffcv.verdict, ffcv.details) == (1.5, 2.0, "2.000", MISSED, {"layout": "default"})
    assert Target.from_dict({"target": "c", "measured": "n/a", "met": None}).verdict == INCONCLUSIVE


def test_targets_table_columns_and_verdicts():
    table = targets_table([Target.check("fast", 2.0, 1.5), Target.check("small", 0.6, 0.5, "<=", level="class"),
                           Target.check("noisy", 1.6, 1.5, interval=(1.4, 1.7))])
    lines = [" ".join(line.split()) for line in table.splitlines()]
    assert lines[0] == "| target | measured | goal | verdict |"
    assert lines[2] == "| fast | 2.000 | >= 1.500 | met |"
    assert lines[3] == "| small [level=class] | 0.600 | <= 0.500 | **missed** |"
    assert lines[4] == "| noisy | 1.600 [1.4-1.7] | >= 1.500 | inconclusive |"
    assert targets_table([]) == ""


def test_registry_is_a_dict_of_suites_by_name():
    assert list(registry.SUITES) == ["io", "io_decode", "index", "ffcv", "score", "downstream", "dlc", "transfer", "fuzz", "dynamic", "dedup",
                                     "scale", "scale_sim", "remote", "formats", "io_cold", "scale_sim_keys", "keptcache", "reader_core", "remote_clients", "remote_index",
                                     "remote_upload"]
    root = os.path.dirname(BENCH)
    for name, suite in registry.SUITES.items():
        assert isinstance(suite, Suite) and suite.name == name and suite.title
        assert suite.results_path().startswith(os.path.join(BENCH, "results") + os.sep)
        assert suite.results_path(quick=True).startswith(os.path.join(BENCH, "results", "quick") + os.sep)
        assert suite.measures and all(os.path.exists(os.path.join(root, p)) for p in suite.measures), name  # for --check
        if suite.runnable:
            assert type(suite).measure is not Suite.measure or suite.measurement is not None, name  # every runnable suite measures
        else:
            assert suite.how.startswith("python -m benchmarks"), name
    assert registry.get_suite("io") is registry.SUITES["io"]
    with pytest.raises(KeyError, match="unknown benchmark suite 'nosuch'; available: io, io_decode"):
        registry.get_suite("nosuch")


def test_no_suite_imports_another_and_nothing_edits_sys_path():
    suites = {f"{name}_bench" for name in registry.SUITES}
    for entry in sorted(os.listdir(BENCH)):
        if not entry.endswith(".py"):
            continue
        with open(os.path.join(BENCH, entry), encoding="utf-8") as fh:
            source = fh.read()
        assert "sys.path" not in source, entry
        if entry[:-3] not in suites:
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom):
                names = {node.module or ""} | {f"{node.module or ''}.{a.name}".lstrip(".") for a in node.names}
            elif isinstance(node, ast.Import):
                names = {a.name for a in node.names}
            else:
                continue
            assert not any(n.split(".")[-1] in suites for n in names), (entry, names)
