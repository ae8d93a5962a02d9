"""BENCHMARKS.md from the results files: every suite's latest numbers, generated, never hand-edited.

    python -m benchmarks --report              # writes BENCHMARKS.md at the repository root
    python -m benchmarks --report --stdout     # print it instead
    python -m benchmarks --report --quick      # smoke-run results -> benchmarks/results/quick/BENCHMARKS.md
    streamprune bench --report                 # the same, from the CLI

Each section is one suite of :data:`benchmarks.registry.SUITES` (see :mod:`benchmarks.suite`):
heading and title, the command that produced the results (without the interpreter's path; the
machine line gives the Python version), machine, date, a link to the results file, the suite's
:meth:`~benchmarks.suite.Suite.markdown` (its tables and targets), the plot and a link to the
hand-written analysis in ``benchmarks/README.md``. A suite without results is *not run yet*.
"""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import subprocess
from typing import Any

from . import mdtable, resultsfile
from .registry import SUITES
from .suite import MET, Suite

__all__ = [
    "NOT_RUN",
    "display_command",
    "list_table",
    "machine_line",
    "render_report",
    "render_suite",
    "suite_date",
    "suite_status",
    "write_report",
]

HERE = os.path.dirname(os.path.abspath(__file__))
NOT_RUN = "not run yet"


def _meta(results: dict[str, Any], key: str) -> Any:
    if key in results:
        return results[key]
    meta = results.get("meta")
    return meta.get(key) if isinstance(meta, dict) else None


def suite_date(results: dict[str, Any], path: str) -> str:
    """When the results were produced: the file's own date field, else git, else the file's mtime."""
    for key in ("date", "finished", "started"):
        value = _meta(results, key)
        if isinstance(value, str) and value:
            return value
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%cI", "--", os.path.basename(path)], cwd=os.path.dirname(path) or ".",
            capture_output=True, text=True, timeout=10, check=False,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip() + " (commit date of the results file)"
    except (OSError, subprocess.SubprocessError):
        pass
    mtime = _dt.datetime.fromtimestamp(os.path.getmtime(path), _dt.timezone.utc)
    return mtime.isoformat(timespec="seconds") + " (file modification time)"


def machine_line(machine: dict[str, Any] | None) -> str:
    """One line describing the machine a results file was produced on."""
    if not machine:
        return "not recorded"
    parts = []
    cores = machine.get("affinity_cores") or machine.get("cpu_count")
    if cores:
        parts.append(f"{cores} cores" + (f" ({machine['cpu_model']})" if machine.get("cpu_model") else ""))
    if machine.get("memory_GiB"):
        parts.append(f"{machine['memory_GiB']} GiB RAM")
    if machine.get("python"):
        parts.append(f"Python {machine['python']}")
    packages = machine.get("packages") or {}
    for name in ("torch", "numpy", "webdataset"):
        if packages.get(name) and packages[name] != "not installed":
            parts.append(f"{name} {packages[name]}")
    load = machine.get("load_avg_at_start")
    if load:
        parts.append(f"1-min load average at start {float(load[0]):.1f}")
    if machine.get("platform"):
        parts.append(machine["platform"])
    return ", ".join(parts)


def display_command(command: str) -> str:
    """``command`` without the interpreter's path: ``/x/bin/python3.11 a.py`` -> ``python a.py``.

    Older results recorded ``sys.executable``; the report shows how a suite was invoked, and the
    machine line the Python version.
    """
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    if words and os.path.isabs(words[0]) and os.path.basename(words[0]).startswith("python"):
        return " ".join(["python", *(shlex.quote(w) for w in words[1:])])
    return command


def suite_status(suite: Suite, quick: bool = False) -> tuple[str, str, str]:
    """``(status, date, targets verdict)`` of a suite's latest results, for the overview and ``--list``."""
    path = suite.results_path(quick)
    try:
        results = suite.results(quick)
    except ValueError as exc:
        return "unreadable", "", str(exc)
    if results is None:
        return NOT_RUN, "", ""
    try:
        targets = suite.targets(results)
    except Exception:  # noqa: BLE001 - a results file of another shape: no verdict
        targets = []
    met = sum(t.verdict == MET for t in targets)
    return "results", suite_date(results, path).split(" ")[0], f"{met} of {len(targets)} met" if targets else ""


def list_table(suites: dict[str, Suite] | None = None) -> str:
    """The suites, the dates of their latest full and ``--quick`` results, and what they measure."""
    rows = []
    for suite in (SUITES if suites is None else suites).values():
        full, quick = suite_status(suite), suite_status(suite, quick=True)
        rows.append([suite.name, full[1] or full[0], quick[1] or quick[0], suite.title])
    return mdtable.markdown_table(["suite", "latest results", "latest --quick", "what"], rows, "llll")


def _readme_anchor(suite: Suite) -> str | None:
    readme = os.path.join(HERE, "README.md")
    try:
        with open(readme, encoding="utf-8") as fh:
            headings = [line.strip() for line in fh if line.startswith("## ")]
    except OSError:
        return None
    want = f"## {suite.name}_bench.py"
    return f"{suite.name}_benchpy" if want in headings else None


def render_suite(suite: Suite, quick: bool = False, link_prefix: str = "benchmarks/", heading: str = "##") -> str:
    """One suite's section: title, status, command, machine, date, its markdown, plot, analysis link.

    Args:
        suite: The suite.
        quick: Render the ``--quick`` results instead of the full ones.
        link_prefix: Path of ``benchmarks/`` relative to the document's location, for link targets
            (text always names paths from the repository root).
        heading: Markdown heading marker of the section.

    Returns:
        Markdown text.
    """
    lines = [f"{heading} {suite.name}: {suite.title}", ""]
    path = suite.results_path(quick)
    rel = os.path.relpath(path, os.path.dirname(suite.results_dir)).replace(os.sep, "/")
    results = suite.results(quick)
    if results is None:
        flag = " --quick" if quick else ""
        lines.append(f"*{NOT_RUN}* (no `benchmarks/{rel}`). Run `python -m benchmarks {suite.name}{flag}` "
                     f"or `streamprune bench {suite.name}{flag}`.")
        return "\n".join(lines)
    command = suite.command(results)
    lines.append(f"- command: `{display_command(command)}`" if command else "- command: not recorded")
    lines.append(f"- machine: {machine_line(_meta(results, 'machine'))}")
    lines.append(f"- date: {suite_date(results, path)}")
    lines.append(f"- results: [`benchmarks/{rel}`]({link_prefix}{rel})")
    lines.append("")
    try:
        body = suite.markdown(results)
    except Exception as exc:  # noqa: BLE001 - a results file of another shape must not break the whole report
        body = f"*(tables could not be rendered from this results file: {type(exc).__name__}: {exc})*"
    if body:
        lines += [body.rstrip(), ""]
    plot = suite.plot_path(quick)
    if os.path.isfile(plot):
        prel = os.path.relpath(plot, os.path.dirname(suite.results_dir)).replace(os.sep, "/")
        lines += [f"![{suite.name} plot]({link_prefix}{prel})", ""]
    anchor = _readme_anchor(suite)
    if anchor:
        lines.append(f"Analysis: [benchmarks/README.md#{anchor}]({link_prefix}README.md#{anchor}).")
    return "\n".join(lines).rstrip()


def render_report(quick: bool = False, link_prefix: str = "benchmarks/", suites: dict[str, Suite] | None = None) -> str:
    """The whole BENCHMARKS.md text.

    Args:
        quick: Render the ``--quick`` smoke-run results (their numbers mean nothing).
        link_prefix: Path of ``benchmarks/`` relative to where the document is written.
        suites: The suites (default :data:`~benchmarks.registry.SUITES`).

    Returns:
        Markdown text.
    """
    suites = SUITES if suites is None else suites
    lines = [
        "# Benchmarks" + (" (quick smoke runs: the numbers mean nothing)" if quick else ""),
        "",
        (
            "Generated by `python -m benchmarks --report` (or `streamprune bench --report`) from the results files in "
            "`benchmarks/results/`; do not edit by hand. Each suite's hand-written analysis is in "
            f"[benchmarks/README.md]({link_prefix}README.md). Run a suite with `python -m benchmarks NAME` or "
            "`streamprune bench NAME` (from a source checkout); `--quick` for a smoke run."
        ),
        "",
    ]
    rows = []
    for suite in suites.values():
        status, date, verdict = suite_status(suite, quick)
        rows.append([f"[{suite.name}](#{_slug(suite)})", suite.title, status, date, verdict])
    lines += [mdtable.markdown_table(["suite", "what", "status", "date", "targets"], rows, "lllll"), ""]
    for suite in suites.values():
        lines += [render_suite(suite, quick=quick, link_prefix=link_prefix), ""]
    return "\n".join(lines).rstrip() + "\n"


def _slug(suite: Suite) -> str:
    text = f"{suite.name}: {suite.title}".lower()
    out = "".join(c for c in text if c.isalnum() or c in " -_")
    return out.replace(" ", "-")


def write_report(out: str | None = None, quick: bool = False, suites: dict[str, Suite] | None = None,
                 bench_dir: str = HERE) -> str:
    """Write the report atomically; return its path.

    Args:
        out: The file. Default: ``BENCHMARKS.md`` at the repository root (next to ``benchmarks/``),
            or ``benchmarks/results/quick/BENCHMARKS.md`` for ``quick``, so smoke runs never overwrite it.
        quick: Render the ``--quick`` results.
        suites: The suites (default :data:`~benchmarks.registry.SUITES`).
        bench_dir: The ``benchmarks/`` folder the links point into (relative to ``out``).

    Returns:
        The path written.
    """
    if out is None:
        folder = os.path.join(resultsfile.DEFAULT_RESULTS, "quick") if quick else os.path.dirname(HERE)
        os.makedirs(folder, exist_ok=True)
        out = os.path.join(folder, "BENCHMARKS.md")
    prefix = os.path.relpath(bench_dir, os.path.dirname(os.path.abspath(out))).replace(os.sep, "/").rstrip("/") + "/"
    text = render_report(quick=quick, link_prefix="" if prefix == "./" else prefix, suites=suites)
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, out)
    return out
