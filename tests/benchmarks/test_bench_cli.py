"""``streamprune bench`` / ``python -m benchmarks``: list suites, run one in-process with its options, write the report."""

from __future__ import annotations

import builtins
import json
import os

from click.testing import CliRunner

from benchmarks import registry
from benchmarks.__main__ import main as bench_main
from benchmarks.__main__ import split_names
from benchmarks.suite import Suite, Target
from streamprune_cli.main import cli


class EchoSuite(Suite):
    """Records the options it was run with as its results (no heavy imports)."""

    name = "echo"
    title = "Echo: records its arguments"

    def run(self, argv):
        from benchmarks import provenance, resultsfile

        quick = "--quick" in argv
        results = {"command": provenance.command_line(), "date": "2026-03-04T05:06:07+00:00", "args": list(argv),
                   "targets": [Target.check("args: " + " ".join(argv), len(argv), 1, ">=").to_dict()]}
        resultsfile.write_json(self.results_path(quick), results)
        return results


class BrokenSuite(Suite):
    name = "broken"
    title = "Exits with status 3"

    def run(self, argv):
        raise SystemExit(3)


def _register(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.SUITES, "echo", EchoSuite(str(tmp_path / "results")))
    monkeypatch.setitem(registry.SUITES, "broken", BrokenSuite(str(tmp_path / "results")))


def _run(*args):
    return CliRunner().invoke(cli, ["bench", *map(os.fspath, args)])


def test_split_names():
    assert split_names(("io", "transfer", "--seeds", "0,1", "x")) == (["io", "transfer"], ["--seeds", "0,1", "x"])
    assert split_names(("io",)) == (["io"], [])
    assert split_names(()) == ([], [])


def test_bench_list_on_the_repository():
    result = _run("--list")
    assert result.exit_code == 0, result.output
    names = [line.split("|")[1].strip() for line in result.output.splitlines()[2:] if line.startswith("|")]
    assert names == list(registry.SUITES) and {"io", "io_decode", "dlc", "fuzz", "remote", "formats", "keptcache", "remote_upload"} <= set(names)
    transfer = next(line for line in result.output.splitlines() if line.startswith("| transfer "))
    assert "2026-" in transfer and "Transfer: pruned pretraining speed" in transfer


def test_bench_runs_a_suite_with_pass_through_arguments_and_prints_its_tables(monkeypatch, tmp_path):
    _register(monkeypatch, tmp_path)
    result = _run("echo", "--quick", "--", "--tag", "hello world")
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads((tmp_path / "results" / "quick" / "echo_bench.json").read_text())
    assert data["args"] == ["--quick", "--tag", "hello world"]  # "hello world" stays one argument
    assert data["command"] == "streamprune bench echo --quick --tag 'hello world'"  # how it was invoked, no interpreter path
    assert "## echo: Echo: records its arguments" in result.output
    assert "| args: --quick --tag hello world | 3 | >= 1 | met" in " ".join(result.output.split())
    assert "2026-03-04T05:06:07+00:00" in result.output
    assert not (tmp_path / "results" / "echo_bench.json").exists()


def test_python_m_benchmarks_records_its_own_invocation(monkeypatch, tmp_path, capsys):
    _register(monkeypatch, tmp_path)
    assert bench_main(["echo", "--flag"]) == 0
    data = json.loads((tmp_path / "results" / "echo_bench.json").read_text())
    assert data["command"] == "python -m benchmarks echo --flag"
    assert "## echo:" in capsys.readouterr().out


def test_bench_unknown_and_failing_suites(monkeypatch, tmp_path):
    _register(monkeypatch, tmp_path)
    result = _run("nosuch")
    assert result.exit_code == 2
    assert "unknown benchmark suite(s) nosuch" in result.output and "echo" in result.output
    result = _run("broken", "echo")
    assert result.exit_code == 1
    assert "failed: broken (exit status 3)" in result.output
    assert "## echo:" in result.output  # the other suite still ran


def test_bench_report_writes_the_file(tmp_path):
    out = tmp_path / "B.md"
    result = _run("--report", "--output", out)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith("# Benchmarks")
    for name in registry.SUITES:
        assert f"\n## {name}:" in text


def test_bench_says_so_when_benchmarks_are_not_installed(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_benchmarks(name, *args, **kwargs):
        if name == "benchmarks" or name.startswith("benchmarks."):
            raise ModuleNotFoundError(f"No module named {name!r}", name="benchmarks")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_benchmarks)
    monkeypatch.setattr("importlib.import_module", lambda name, package=None: no_benchmarks(name))
    monkeypatch.chdir(tmp_path)  # not a source checkout
    result = _run("--list")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "source checkout" in result.output and "not installed" in result.output
