"""``streamprune bench``: list suites, run one as a subprocess with pass-through arguments, write the report."""

from __future__ import annotations

import json
import os
import shutil

from click.testing import CliRunner

from streamprune_cli.bench import split_names
from streamprune_cli.main import cli

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")

# A suite script that records the arguments it was started with as its results (no heavy imports).
ECHO = '''"""Echo: records its arguments."""
import json, os, sys
quick = "--quick" in sys.argv
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", *(["quick"] if quick else []), "echo_bench.json")
os.makedirs(os.path.dirname(out), exist_ok=True)
with open(out, "w") as fh:
    json.dump({"command": " ".join(sys.argv), "date": "2026-03-04T05:06:07+00:00",
               "targets": [{"target": "args: " + " ".join(sys.argv[1:]), "measured": len(sys.argv) - 1, "met": True}]}, fh)
'''


def _folder(tmp_path):
    folder = tmp_path / "benchmarks"
    (folder / "results").mkdir(parents=True)
    shutil.copy(os.path.join(BENCH, "report.py"), folder / "report.py")
    (folder / "echo_bench.py").write_text(ECHO)
    (folder / "broken_bench.py").write_text("import sys\nsys.exit(3)\n")
    (folder / "results" / "transfer_bench.json").write_text(json.dumps({"date": "2026-01-01T00:00:00+00:00", "targets": []}))
    return folder


def _run(*args):
    return CliRunner().invoke(cli, ["bench", *map(os.fspath, args)])


def test_split_names():
    assert split_names(("io", "transfer", "--seeds", "0,1", "x")) == (["io", "transfer"], ["--seeds", "0,1", "x"])
    assert split_names(("io",)) == (["io"], [])
    assert split_names(()) == ([], [])


def test_bench_list_shows_every_suite_and_what_has_run(tmp_path):
    folder = _folder(tmp_path)
    result = _run("--list", "--bench-dir", folder)
    assert result.exit_code == 0, result.output
    lines = {line.split("|")[1].strip(): line for line in result.output.splitlines()[2:]}
    assert list(lines)[:6] == ["io", "index", "ffcv", "score", "downstream", "transfer"]
    assert "(no script yet)" in lines["downstream"] and "not run yet" in lines["downstream"]
    assert "2026-01-01T00:00:00+00:00" in lines["transfer"]
    assert "echo_bench.py" in lines["echo"] and "not run yet" in lines["echo"]


def test_bench_list_on_the_repository():
    result = _run("--list")
    assert result.exit_code == 0, result.output
    assert "transfer_bench.py" in result.output and "io_bench.py" in result.output


def test_bench_runs_a_suite_with_pass_through_arguments_and_prints_its_tables(tmp_path):
    folder = _folder(tmp_path)
    result = _run("echo", "--quick", "--bench-dir", folder, "--", "--tag", "hello world")
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads((folder / "results" / "quick" / "echo_bench.json").read_text())  # "hello world" stays one argument
    assert data["command"].endswith("echo_bench.py --quick --tag hello world")
    assert "## echo: Echo: records its arguments" in result.output
    assert "| args: --quick --tag hello world | 3 | met" in " ".join(result.output.split())
    assert "2026-03-04T05:06:07+00:00" in result.output
    assert not (folder / "results" / "echo_bench.json").exists()


def test_bench_unknown_and_failing_suites(tmp_path):
    folder = _folder(tmp_path)
    result = _run("nosuch", "--bench-dir", folder)
    assert result.exit_code == 2
    assert "unknown benchmark suite(s) nosuch" in result.output and "echo" in result.output
    result = _run("downstream", "--bench-dir", folder)  # known, but no script yet
    assert result.exit_code == 2 and "unknown benchmark suite(s) downstream" in result.output
    result = _run("broken", "--bench-dir", folder)
    assert result.exit_code == 1
    assert "failed: broken (exit status 3)" in result.output


def test_bench_report_writes_the_file(tmp_path):
    folder = _folder(tmp_path)
    out = tmp_path / "B.md"
    result = _run("--report", "--output", out, "--bench-dir", folder)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith("# Benchmarks")
    assert "## downstream:" in text and "*not run yet*" in text


def test_bench_needs_a_source_checkout(tmp_path):
    result = _run("--list", "--bench-dir", tmp_path / "nothing")
    assert result.exit_code == 1
    assert "source checkout" in result.output
