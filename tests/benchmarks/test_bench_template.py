"""The suite template end to end: a toy suite measured with --quick and in full, re-summarised, rendered and checked.

The toy suite measures nothing real (its "timings" come from a seeded Random), so the test runs
in a moment: it checks what the base owns (options, paths, provenance, atomic writing, the plot
hook, re-summarising without measuring, the --resummarize/--plot-only aliases, the report and
``--report --check``), not a benchmark.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess

import pytest

from benchmarks import mdtable, registry, report, stats
from benchmarks.__main__ import main as bench_main
from benchmarks.suite import INCONCLUSIVE, MET, Suite, Target


class ToySuite(Suite):
    """Two arms per round, the slow one about three times the fast one."""

    name, title = "toy", "Toy: a paired ratio over rounds"
    measures = ("toy.py",)
    has_plot = True

    def __init__(self, results_dir: str) -> None:
        super().__init__(results_dir)
        self.measured = 0

    def add_arguments(self, parser):
        parser.add_argument("--rounds", type=int, default=6)

    def measure(self, args):
        self.measured += 1
        rng = random.Random(args.seed)
        rounds = 2 if args.quick else args.rounds
        return {"runs": [{"round": k, "fast": 1.0 + 0.1 * rng.random(), "slow": 3.0 + 0.1 * rng.random()} for k in range(rounds)],
                "data_dir": args.data_dir}

    def summarise(self, results):
        runs = results["runs"]
        ratio = stats.paired_ratio([r["slow"] for r in runs], [r["fast"] for r in runs])
        return {**results, "ratio": ratio.to_dict(),
                "targets": [Target.check("fast arm >= 2x the slow one", None, 2.0, ">=", paired=ratio).to_dict()]}

    def plot(self, results, path):
        with open(path, "w") as fh:
            fh.write(f"{len(results['runs'])} rounds")

    def tables(self, results):
        return mdtable.markdown_table(["round", "fast", "slow"], [[r["round"], r["fast"], r["slow"]] for r in results["runs"]])


@pytest.fixture
def toy(monkeypatch, tmp_path):
    suite = ToySuite(str(tmp_path / "results"))
    monkeypatch.setitem(registry.SUITES, "toy", suite)
    return suite


def test_quick_run_writes_provenance_plot_and_prints_the_tables(toy, tmp_path, capsys):
    assert bench_main(["toy", "--quick"]) == 0
    path = tmp_path / "results" / "quick" / "toy_bench.json"
    saved = json.loads(path.read_text())
    assert saved["command"] == "python -m benchmarks toy --quick" and saved["quick"] is True
    assert len(saved["commit"]) == 40 and isinstance(saved["dirty"], bool)
    assert saved["machine"]["python"] and saved["date"]
    assert (tmp_path / "results" / "quick" / "toy_bench.png").read_text() == "2 rounds"
    assert not [p for p in os.listdir(path.parent) if ".tmp" in p]  # written atomically, nothing left behind
    assert saved["targets"][0]["verdict"] == INCONCLUSIVE  # 2 rounds: never met
    out = capsys.readouterr().out
    assert "## toy: Toy: a paired ratio over rounds" in out and f"- commit: `{saved['commit'][:10]}`" in out
    assert "| round |" in out and "| fast arm >= 2x the slow one |" in out and "| inconclusive |" in out


def test_base_options_are_shared_and_the_suites_own_are_added(toy, tmp_path):
    args = toy.parse(["--quick", "--seed", "3", "--rounds", "7", "--data-dir", str(tmp_path / "d"), "--no-plot"])
    assert (args.quick, args.seed, args.rounds, args.data_dir, args.no_plot) == (True, 3, 7, str(tmp_path / "d"), True)
    assert args.out == os.path.join(toy.results_dir, "quick") and args.resummarise is None
    for alias in ("--resummarise", "--resummarize", "--plot-only"):
        assert toy.parse([alias, "x.json"]).resummarise == "x.json"
    with pytest.raises(SystemExit):
        toy.parse(["--no-such-option"])


def _add_rounds(parser):
    parser.add_argument("--rounds", type=int, default=2)


class DeclaredSuite(Suite):
    """A suite that only declares its module-level functions and what differs in its logging."""

    name, title, measures = "declared", "Declared: module functions composed by the base", ("toy.py",)
    add_arguments = staticmethod(_add_rounds)
    configure = staticmethod(lambda args: {"rounds": 10 * args.rounds, "quiet": args.quiet})
    measurement = staticmethod(lambda config: {"config": config})
    log_level, log_format, quiet_loggers = logging.DEBUG, "%(name)s %(message)s", ("declared.library",)


def test_a_suite_declares_its_functions_and_the_base_owns_quiet_and_logging(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: calls.append(kw))
    library = logging.getLogger("declared.library")
    monkeypatch.setattr(library, "level", logging.NOTSET)
    suite = DeclaredSuite(str(tmp_path))
    assert suite.run(["--rounds", "3", "--out", str(tmp_path)])["config"] == {"rounds": 30, "quiet": False}
    assert calls[-1] == {"level": logging.DEBUG, "format": "%(name)s %(message)s", "datefmt": "%H:%M:%S"}
    assert library.level == logging.WARNING
    assert suite.run(["-q", "--out", str(tmp_path)])["config"] == {"rounds": 20, "quiet": True}
    assert calls[-1]["level"] == logging.WARNING  # --quiet: warnings only, whatever the suite's level
    assert "--quiet" in suite.parser().format_help()
    with pytest.raises(NotImplementedError, match="cannot be run"):
        Suite().measure(suite.parse([]))  # no measurement declared, none overridden


def test_full_run_then_resummarise_measures_nothing_and_keeps_provenance(toy, tmp_path):
    out = tmp_path / "elsewhere"
    assert bench_main(["toy", "--out", str(out), "--no-plot"]) == 0
    path = out / "toy_bench.json"
    first = json.loads(path.read_text())
    assert first["targets"][0]["verdict"] == MET and first["ratio"]["n"] == 6  # 6 rounds, every one near 3x
    assert not (out / "toy_bench.png").exists()
    # a slow round in the stored runs: re-summarised, the interval straddles 2x
    first["runs"][0]["slow"] = 1.5
    path.write_text(json.dumps(first))
    for alias in ("--resummarise", "--resummarize", "--plot-only"):
        assert bench_main(["toy", alias, str(path)]) == 0
        again = json.loads(path.read_text())
        assert again["targets"][0]["verdict"] == INCONCLUSIVE and again["ratio"]["min"] < 2.0
        assert (again["commit"], again["command"], again["date"]) == (first["commit"], first["command"], first["date"])
    assert toy.measured == 1
    assert (out / "toy_bench.png").read_text() == "6 rounds"  # the plot is redrawn from the stored runs
    assert bench_main(["toy", "--resummarise", str(tmp_path / "missing.json")]) == 1


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def _results(suite, **fields):
    os.makedirs(suite.results_dir, exist_ok=True)
    with open(suite.results_path(), "w") as fh:
        json.dump({"command": "python -m benchmarks toy", "runs": [], **fields}, fh)


def test_check_flags_results_older_than_the_code_they_measure(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "toy.py").write_text("x = 1\n")
    (repo / "other.py").write_text("y = 1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "first")
    measured_at = _git(repo, "rev-parse", "HEAD")
    suite = ToySuite(str(repo / "benchmarks" / "results"))
    _results(suite, commit=measured_at, dirty=False)
    assert report.check_suite(suite, repo=str(repo)) is None
    (repo / "other.py").write_text("y = 2\n")  # a change to code the suite does not measure
    _git(repo, "commit", "-qam", "other")
    assert report.check_suite(suite, repo=str(repo)) is None
    (repo / "toy.py").write_text("x = 2\n")
    _git(repo, "commit", "-qam", "toy changed")
    stale = report.check_suite(suite, repo=str(repo))
    assert stale is not None and stale.suite == "toy" and stale.commit == measured_at
    assert "toy.py changed after" in stale.reason and stale.results == os.path.join("benchmarks", "results", "toy_bench.json")
    _results(suite, commit=_git(repo, "rev-parse", "HEAD"), dirty=False)  # rerun on the new code: fresh again
    assert report.check(suites={"toy": suite}, repo=str(repo)) == []
    _results(suite, commit="0" * 40)
    assert "not in this repository" in report.check_suite(suite, repo=str(repo)).reason
    _results(suite)  # an older results file that recorded no commit cannot be shown fresh
    found = report.check(suites={"toy": suite}, repo=str(repo))
    assert [s.suite for s in found] == ["toy"] and "no commit" in found[0].reason
    assert "1 suite(s)" in report.check_text(found) and "toy (benchmarks/results/toy_bench.json)" in report.check_text(found)
    os.remove(suite.results_path())
    assert report.check_suite(suite, repo=str(repo)) is None  # never run: nothing to be stale


def test_report_check_exits_non_zero_and_names_the_stale_suite(monkeypatch, tmp_path, capsys):
    suite = ToySuite(str(tmp_path / "results"))
    _results(suite)  # no commit recorded
    monkeypatch.setattr(report, "SUITES", {"toy": suite})
    assert bench_main(["--report", "--check"]) == 1
    assert "toy (" in capsys.readouterr().err
    assert not (tmp_path / "BENCHMARKS.md").exists()  # a check writes nothing
