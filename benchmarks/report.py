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
from dataclasses import dataclass
from typing import Any

from . import mdtable, resultsfile
from .registry import SUITES
from .suite import MET, Suite

__all__ = [
    "NOT_RUN",
    "Stale",
    "check",
    "check_text",
    "commit_line",
    "display_command",
    "list_table",
    "machine_line",
    "render_report",
    "render_other",
    "render_suite",
    "suite_date",
    "suite_status",
    "unclaimed_files",
    "write_report",
]

HERE = os.path.dirname(os.path.abspath(__file__))
#: The repository root (``benchmarks/`` is a folder of a source checkout).
ROOT = os.path.dirname(HERE)
NOT_RUN = "not run yet"


def _meta(results: dict[str, Any], key: str) -> Any:
    if key in results:
        return results[key]
    meta = results.get("meta")
    return meta.get(key) if isinstance(meta, dict) else None


def suite_date(results: dict[str, Any], path: str) -> str:
    """When the results were produced: the file's own date field, else git, else the file's mtime."""
    for key in ("date", "finished", "started", "at"):
        value = _meta(results, key)
        if isinstance(value, str) and value:
            return value
    before = results.get("results_file")
    if isinstance(before, dict) and before.get("date"):  # kept by a re-summary, which rewrote the file
        return before["date"] + " (commit date of the results file)"
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


def _git(*args: str, cwd: str = ROOT) -> str | None:
    """``git args`` in the repository; its stripped output, or ``None`` when git fails."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def file_commit(path: str) -> str | None:
    """The last commit that changed ``path`` (a results file), or ``None`` (not committed, no git)."""
    return _git("log", "-1", "--format=%H", "--", os.path.abspath(path)) or None


def commit_line(suite: Suite, results: dict[str, Any], path: str) -> str:
    """The commit a results file was measured at, as shown in the report.

    ``abc1234`` (``, dirty`` when the tree had uncommitted changes); for older files that
    recorded none, the commit that last changed the results file, which the run predates.
    """
    commit, dirty = suite.commit(results)
    if commit:
        return f"`{commit[:10]}`" + (" (uncommitted changes in the tree)" if dirty else "")
    before = results.get("results_file") if isinstance(results.get("results_file"), dict) else {}
    committed = before.get("commit") or file_commit(path)  # before a re-summary rewrote the file, when it did
    return "not recorded" + (f" (the results file was last committed in `{committed[:10]}`)" if committed else "")


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


def render_suite(suite: Suite, quick: bool = False, link_prefix: str = "benchmarks/", heading: str = "##",
                 path: str | None = None) -> str:
    """One suite's section: title, status, command, commit, machine, date, its markdown, plot, analysis link.

    Args:
        suite: The suite.
        quick: Render the ``--quick`` results instead of the full ones.
        link_prefix: Path of ``benchmarks/`` relative to the document's location, for link targets
            (text always names paths from the repository root).
        heading: Markdown heading marker of the section.
        path: Render this results file instead of the suite's latest (``--resummarise``, ``--out``).

    Returns:
        Markdown text.
    """
    lines = [f"{heading} {suite.name}: {suite.title}", ""]
    path = path or suite.results_path(quick)
    rel = os.path.relpath(path, os.path.dirname(suite.results_dir)).replace(os.sep, "/")
    results = resultsfile.load_json(path)
    if results is None:
        flag = " --quick" if quick else ""
        how = (f"Run `python -m benchmarks {suite.name}{flag}` or `streamprune bench {suite.name}{flag}`." if suite.runnable
               else f"Its results come from `{suite.how}`.")
        lines.append(f"*{NOT_RUN}* (no `benchmarks/{rel}`). {how}")
        return "\n".join(lines)
    command = suite.command(results)
    lines.append(f"- command: `{display_command(command)}`" if command else "- command: not recorded")
    lines.append(f"- commit: {commit_line(suite, results, path)}")
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
    plot = os.path.splitext(path)[0] + ".png"
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
        rows.append([f"[{suite.name}](#{section_anchor(suite)})", suite.title, status, date, verdict])
    lines += [mdtable.markdown_table(["suite", "what", "status", "date", "targets"], rows, "lllll"), ""]
    for suite in suites.values():
        lines += [render_suite(suite, quick=quick, link_prefix=link_prefix), ""]
    others = unclaimed_files(suites, quick)
    if others:
        lines += ["## Other results files", "",
                  "Results files no suite above reads (runs kept beside a suite's latest, or notes), with their provenance.", ""]
        lines += [render_other(path, suites, link_prefix) + "\n" for path in others]
    return "\n".join(lines).rstrip() + "\n"


def unclaimed_files(suites: dict[str, Suite] | None = None, quick: bool = False) -> list[str]:
    """The results JSON files (``results/``, its subfolders but ``quick/``) that no suite renders."""
    suites = SUITES if suites is None else suites
    if not suites:
        return []
    root = next(iter(suites.values())).results_dir
    root = os.path.join(root, "quick") if quick else root
    claimed = set()
    for s in suites.values():
        claimed.add(os.path.abspath(s.results_path(quick)))
        claimed.update(os.path.abspath(os.path.join(os.path.dirname(s.results_path(quick)), n)) for n in s.also_reads)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if quick or d != "quick")
        found += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".json")]
    return [p for p in found if os.path.abspath(p) not in claimed]


def render_other(path: str, suites: dict[str, Suite], link_prefix: str = "benchmarks/") -> str:
    """A results file no suite claims: its provenance, and the tables of the suite that wrote it, when it names one."""
    some = next(iter(suites.values()))
    rel = os.path.relpath(path, os.path.dirname(some.results_dir)).replace(os.sep, "/")
    try:
        results = resultsfile.load_json(path) or {}
    except ValueError as exc:
        return f"### `benchmarks/{rel}`\n\n*unreadable: {exc}*"
    writer = suites.get(str(results.get("suite"))) if results.get("suite") else None
    command = _meta(results, "command")
    lines = [f"### `benchmarks/{rel}`", "",
             f"- command: `{display_command(command)}`" if command else "- command: not recorded",
             f"- commit: {commit_line(writer or some, results, path)}",
             f"- machine: {machine_line(_meta(results, 'machine'))}",
             f"- date: {suite_date(results, path)}",
             f"- results: [`benchmarks/{rel}`]({link_prefix}{rel})"]
    if isinstance(results.get("note"), str):
        lines += ["", results["note"]]
    if writer is not None:
        try:
            body = writer.markdown(results)
        except Exception as exc:  # noqa: BLE001 - a results file of another shape must not break the whole report
            body = f"*(tables could not be rendered from this results file: {type(exc).__name__}: {exc})*"
        lines += ["", f"Written by the {writer.name} suite:", "", body]
    else:
        lines += ["", "Keys: " + ", ".join(f"`{k}`" for k in results)]
    return "\n".join(lines).rstrip()


def section_anchor(suite: Suite) -> str:
    """The anchor of ``suite``'s section in BENCHMARKS.md (GitHub's slug of its heading)."""
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


# --------------------------------------------------------------------------------------------
# --report --check: results older than the code they measure


@dataclass(frozen=True)
class Stale:
    """A suite whose results may not describe the current code.

    Attributes:
        suite: The suite's name.
        results: The results file, from the repository root.
        commit: The commit the results record (``None``: not recorded).
        reason: Why, in words (which measured paths changed since, and in which commit).
    """

    suite: str
    results: str
    commit: str | None
    reason: str


def _is_ancestor(older: str, newer: str, repo: str = ROOT) -> bool:
    return _git("merge-base", "--is-ancestor", older, newer, cwd=repo) is not None


def check_suite(suite: Suite, quick: bool = False, repo: str = ROOT) -> Stale | None:
    """Whether ``suite``'s latest results predate a change to a path it measures.

    The results are fresh when the last commit that changed any of :attr:`Suite.measures`
    (``git log -1 -- PATHS``) is an ancestor of (or is) the commit the results record. Results
    that record no commit, or a commit this repository does not have, cannot be shown fresh
    and are stale; a suite without results is not.

    Args:
        suite: The suite.
        quick: Check the ``--quick`` results.
        repo: The repository root.

    Returns:
        ``None`` when fresh (or not run), else a :class:`Stale`.
    """
    path = suite.results_path(quick)
    try:
        results = resultsfile.load_json(path)
    except ValueError as exc:
        return Stale(suite.name, os.path.relpath(path, repo), None, str(exc))
    if results is None:
        return None
    rel = os.path.relpath(path, repo)
    if not suite.measures:
        return Stale(suite.name, rel, None, "the suite declares no measured paths (Suite.measures)")
    commit, _dirty = suite.commit(results)
    if not commit:
        return Stale(suite.name, rel, None, "the results record no commit: rerun the suite")
    if _git("cat-file", "-e", f"{commit}^{{commit}}", cwd=repo) is None:
        return Stale(suite.name, rel, commit, f"commit {commit[:10]} is not in this repository")
    last = _git("log", "-1", "--format=%H", "--", *suite.measures, cwd=repo)
    if not last or _is_ancestor(last, commit, repo):
        return None
    changed = _git("diff", "--name-only", commit, last, "--", *suite.measures, cwd=repo) or ""
    names = ", ".join(changed.split()) or "the measured paths"
    return Stale(suite.name, rel, commit, f"{names} changed after {commit[:10]} (last in {last[:10]})")


def check(suites: dict[str, Suite] | None = None, quick: bool = False, repo: str = ROOT) -> list[Stale]:
    """Every suite whose results predate a change to what it measures (:func:`check_suite`)."""
    found = (check_suite(s, quick, repo) for s in (SUITES if suites is None else suites).values())
    return [s for s in found if s is not None]


def check_text(stale: list[Stale]) -> str:
    """The :func:`check` result in words, one suite a line."""
    if not stale:
        return "every suite's results are at least as new as the code it measures"
    lines = [f"{len(stale)} suite(s) with results older than the code they measure:"]
    lines += [f"  {s.suite} ({s.results}): {s.reason}" for s in stale]
    return "\n".join(lines)
