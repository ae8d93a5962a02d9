"""``streamprune bench``: run benchmark suites by name and print their tables.

The suites live in the repository's ``benchmarks/`` folder, which is not installed with the
package: ``bench`` works from a source checkout. It finds the folder next to the imported
``streamprune`` package (an editable install or ``PYTHONPATH`` of a checkout), or in the current
directory, or where ``--bench-dir`` / ``$STREAMPRUNE_BENCHMARKS`` points. A suite ``NAME`` is the
script ``benchmarks/NAME_bench.py`` writing ``benchmarks/results/NAME_bench.json``; the interface
is documented in ``benchmarks/report.py``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from types import ModuleType

import click

__all__ = ["bench", "find_bench_dir", "split_names"]


def find_bench_dir(explicit: str | None = None) -> str:
    """The ``benchmarks/`` folder of the source checkout.

    Args:
        explicit: A folder given by ``--bench-dir`` or ``$STREAMPRUNE_BENCHMARKS``.

    Returns:
        Its absolute path (it holds ``report.py``).

    Raises:
        click.ClickException: No such folder (the message says ``bench`` needs a source checkout).
    """
    import streamprune

    if explicit:
        candidates = [explicit]
    else:
        candidates = [
            os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(streamprune.__file__))), "benchmarks"),
            os.path.join(os.getcwd(), "benchmarks"),
        ]
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, "report.py")):
            return os.path.abspath(folder)
    raise click.ClickException(
        f"no benchmarks folder with report.py at {' or '.join(candidates)}: `streamprune bench` works from a source "
        "checkout of streamprune (the benchmarks are not installed with the package); run it there, or pass "
        "--bench-dir / set STREAMPRUNE_BENCHMARKS"
    )


def _report_module(bench_dir: str) -> ModuleType:
    name = "_streamprune_bench_report"
    spec = importlib.util.spec_from_file_location(name, os.path.join(bench_dir, "report.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def split_names(args: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Split ``bench``'s arguments into suite names and the arguments passed through to each script.

    Names come first; everything from the first argument that starts with ``-`` on (or after
    ``--``) goes to the scripts.
    """
    for i, arg in enumerate(args):
        if arg.startswith("-"):
            return list(args[:i]), list(args[i:])
    return list(args), []


def _child_env() -> dict[str, str]:
    """The environment of a suite: this process's streamprune and CLI packages come first on the path."""
    import streamprune
    import streamprune_cli

    roots = []
    for pkg in (streamprune, streamprune_cli):
        root = os.path.dirname(os.path.dirname(os.path.abspath(pkg.__file__)))
        if root not in roots:
            roots.append(root)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(roots + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


@click.command("bench", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--quick", is_flag=True, help="Smoke runs: pass --quick to each suite and show results/quick/.")
@click.option("--list", "list_only", is_flag=True, help="List the suites and the dates of their latest results; run nothing.")
@click.option("--report", is_flag=True, help="Regenerate BENCHMARKS.md from the results (after running NAMES, if given).")
@click.option("--output", type=click.Path(dir_okay=False), help="File --report writes [default: BENCHMARKS.md at the repository root; with --quick, benchmarks/results/quick/BENCHMARKS.md].")
@click.option("--bench-dir", type=click.Path(file_okay=False), envvar="STREAMPRUNE_BENCHMARKS",
              help="The benchmarks/ folder [default: the source checkout's].")
def bench(args, quick, list_only, report, output, bench_dir):
    """Run benchmark suites NAMES (io, index, score, ffcv, transfer, ...) and print their tables.

    Arguments after the names (from the first option the command does not know, or after
    `--`) are passed to every suite script, e.g.
    `streamprune bench transfer --quick -- --seeds 0,1`. Without NAMES, prints the latest
    tables of every suite. Works from a source checkout (benchmarks/ is not installed).
    """
    folder = find_bench_dir(bench_dir)
    rep = _report_module(folder)
    suites = {s.name: s for s in rep.discover(folder)}
    names, passthrough = split_names(args)
    if list_only:
        rows = []
        for s in suites.values():
            def when(path: str) -> str:
                data = rep.load_results(path)
                return rep.NOT_RUN if data is None else rep.suite_date(data, path).split(" ")[0]

            rows.append([s.name, f"{s.name}_bench.py" if s.script else "(no script yet)", when(s.results), when(s.quick_results), s.title])
        click.echo(rep.markdown_table(["suite", "script", "latest results", "latest --quick", "what"], rows, "lllll"))
        return
    unknown = [n for n in names if n not in suites or suites[n].script is None]
    if unknown:
        runnable = ", ".join(n for n, s in suites.items() if s.script)
        raise click.UsageError(f"unknown benchmark suite(s) {', '.join(unknown)}; available: {runnable}")
    failed = []
    for name in names:
        cmd = [sys.executable, suites[name].script] + (["--quick"] if quick else []) + passthrough
        click.echo(f"$ {' '.join(cmd)}", err=True)
        code = subprocess.run(cmd, cwd=os.path.dirname(folder), env=_child_env()).returncode
        if code != 0:
            failed.append(f"{name} (exit status {code})")
            click.echo(f"{name}: the suite failed with exit status {code}", err=True)
            continue
        click.echo(rep.render_suite(suites[name], quick=quick, link_prefix=""))
        click.echo()
    if not names and not report:
        click.echo(rep.render_report(folder, quick=quick, link_prefix=""))
    if report:
        click.echo(f"report -> {rep.write_report(folder, output, quick=quick)}")
    if failed:
        raise click.ClickException(f"failed: {', '.join(failed)}")
