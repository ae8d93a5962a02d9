"""BENCHMARKS.md from the results files: every suite's latest numbers, generated, never hand-edited.

    python benchmarks/report.py                 # writes BENCHMARKS.md at the repository root
    python benchmarks/report.py --stdout        # print it instead
    python benchmarks/report.py --quick         # smoke-run results -> benchmarks/results/quick/BENCHMARKS.md
    streamprune bench --report                  # the same, from the CLI

**Suite interface.** A benchmark suite is found by name, ``NAME``:

* script ``benchmarks/NAME_bench.py``, runnable as ``python benchmarks/NAME_bench.py [--quick]
  [ARGS...]``; ``--quick`` is a small smoke run that writes to ``benchmarks/results/quick/``;
* results ``benchmarks/results/NAME_bench.json`` (``--quick``: ``results/quick/NAME_bench.json``),
  one JSON object. Read when present: ``command`` (or ``meta.command``); ``machine`` (or
  ``meta.machine``: ``cpu_count``, ``cpu_model``, ``memory_GiB``, ``python``, ``packages``,
  ``load_avg_at_start``); the date (``date``, ``finished``, ``started`` or ``meta.date``; else the
  results file's last git commit date, else its modification time); ``targets``, a list of
  ``{"target", "measured" | "value", "goal"?, "met"}``;
* plot ``benchmarks/results/NAME_bench.png``, linked when present;
* optional: a module-level ``report_markdown(results: dict) -> str`` in the script returns the
  suite's tables as markdown. It is detected by parsing the script, and only then is the script
  imported (by path), so a script must keep its work under ``if __name__ == "__main__":``.
  Without it, the built-in tables for ``io``, ``index``, ``score`` and ``ffcv`` are used, else
  just the targets.

A known suite whose script or results file is missing is listed as *not run yet*; a new
``NAME_bench.py`` appears in the report (and in ``streamprune bench --list``) as soon as it exists.
The hand-written analysis stays in ``benchmarks/README.md``, linked from each section.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))

__all__ = [
    "KNOWN_SUITES",
    "Suite",
    "discover",
    "load_results",
    "suite_date",
    "machine_line",
    "markdown_table",
    "targets_table",
    "render_suite",
    "render_report",
    "write_report",
    "main",
]

#: Suites in report order, with their titles; others found on disk follow, sorted by name.
KNOWN_SUITES: dict[str, str] = {
    "io": "I/O: pruned vs unpruned reads (tar shards)",
    "index": "Indexing existing tar shards",
    "ffcv": "FFCV backend: pruned .beton loading",
    "score": "Scoring costs (embedding, k-means kernels, FM memory, LM)",
    "downstream": "Downstream pruning (target subsets)",
    "transfer": "Transfer: pruned pretraining speed and downstream accuracy",
}
NOT_RUN = "not run yet"


@dataclass
class Suite:
    """One benchmark suite as found on disk.

    Attributes:
        name: Suite name (``io`` for ``io_bench.py``).
        script: Path of ``NAME_bench.py``, or ``None`` if it does not exist.
        results: Path of the full results JSON (may not exist).
        quick_results: Path of the ``--quick`` results JSON (may not exist).
        bench_dir: The ``benchmarks/`` directory.
    """

    name: str
    script: str | None
    results: str
    quick_results: str
    bench_dir: str

    @property
    def title(self) -> str:
        """Human title (known suites) or the script's first docstring line."""
        if self.name in KNOWN_SUITES:
            return KNOWN_SUITES[self.name]
        doc = _docstring(self.script) if self.script else None
        return (doc or self.name).strip().splitlines()[0].rstrip(".")

    def results_path(self, quick: bool = False) -> str:
        """The results JSON path for a full or ``--quick`` run."""
        return self.quick_results if quick else self.results


def _docstring(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return ast.get_docstring(ast.parse(fh.read()))
    except (OSError, SyntaxError):
        return None


def discover(bench_dir: str = HERE) -> list[Suite]:
    """Every known suite and every ``NAME_bench.py`` / ``results/NAME_bench.json`` in ``bench_dir``.

    Args:
        bench_dir: The ``benchmarks/`` directory.

    Returns:
        Suites, known ones first in :data:`KNOWN_SUITES` order, then the rest by name.
    """
    names: set[str] = set(KNOWN_SUITES)
    results_dir = os.path.join(bench_dir, "results")
    for folder in (bench_dir, results_dir):
        if os.path.isdir(folder):
            for entry in os.listdir(folder):
                stem, ext = os.path.splitext(entry)
                if ext in (".py", ".json") and stem.endswith("_bench") and len(stem) > len("_bench"):
                    names.add(stem[: -len("_bench")])
    order = [n for n in KNOWN_SUITES if n in names] + sorted(names - set(KNOWN_SUITES))
    suites = []
    for name in order:
        script = os.path.join(bench_dir, f"{name}_bench.py")
        suites.append(Suite(
            name=name,
            script=script if os.path.isfile(script) else None,
            results=os.path.join(results_dir, f"{name}_bench.json"),
            quick_results=os.path.join(results_dir, "quick", f"{name}_bench.json"),
            bench_dir=bench_dir,
        ))
    return suites


def load_results(path: str) -> dict[str, Any] | None:
    """The results object in ``path``, or ``None`` when the file does not exist.

    Raises:
        ValueError: The file is not a JSON object (the message names the file).
    """
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


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
            capture_output=True, text=True, timeout=10,
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


# --------------------------------------------------------------------------------------------
# tables


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], aligns: str | None = None) -> str:
    """A markdown table, columns padded; ``aligns`` has one ``l`` or ``r`` per column."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    aligns = aligns or "l" + "r" * (len(headers) - 1)

    def fmt(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, aligns)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, aligns)) + "|"
    return "\n".join([fmt(cells[0]), sep] + [fmt(r) for r in cells[1:]])


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and value != value:
            return "nan"
        return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return str(value)


def targets_table(targets: Any) -> str:
    """The ``targets`` list as a markdown table (target, measured, goal, verdict)."""
    if not isinstance(targets, list) or not targets:
        return ""
    rows = []
    targets = [t for t in targets if isinstance(t, dict)]
    goals = any("goal" in t for t in targets)
    for t in targets:
        extra = [f"{k}={t[k]}" for k in ("layout", "level", "access", "ratio") if k in t]
        name = str(t.get("target", "?")) + (f" [{', '.join(extra)}]" if extra else "")
        measured = t.get("measured", t.get("value"))
        met = t.get("met")
        verdict = "met" if met is True else "**missed**" if met is False else "n/a"
        rows.append([name, _num(measured)] + ([_num(t["goal"]) if "goal" in t else ""] if goals else []) + [verdict])
    numeric = all(isinstance(t.get("measured", t.get("value")), (int, float)) for t in targets)
    m = "r" if numeric else "l"  # long text verdicts read better left-aligned
    if goals:
        return markdown_table(["target", "measured", "goal", "verdict"], rows, f"l{m}rl")
    return markdown_table(["target", "measured", "verdict"], rows, f"l{m}l")


def _ratios(rows: Sequence[dict], key: str = "ratio") -> list[float]:
    return sorted({float(r[key]) for r in rows if r.get(key) is not None})


def _io_tables(results: dict[str, Any]) -> str:
    summary = results["summary"]
    ratios = [r for r in _ratios(summary) if r > 0]
    groups: dict[tuple, dict[float, dict]] = {}
    for row in summary:
        groups.setdefault((row["variant"], row["cache"], row["reader"]), {})[float(row["ratio"])] = row
    headers = ["variant, cache", "reader", "r=0 samples/s"] + [f"r={r:g} speed-up" for r in ratios] + [
        "read fraction at " + " / ".join(f"{r:g}" for r in ratios)
    ]
    rows = []
    for (variant, cache, reader), by_ratio in groups.items():
        base = by_ratio.get(0.0, {})
        cells = [f"{variant}, {cache}", reader, _num(base.get("median_samples_per_s"), 0)]
        for r in ratios:
            row = by_ratio.get(r)
            cells.append("-" if row is None else f"{row['speedup']:.2f} [{row['speedup_min']:.2f}-{row['speedup_max']:.2f}]")
        fracs = [by_ratio[r].get("read_fraction_of_data") for r in ratios if r in by_ratio]
        cells.append(" / ".join(f"{f:.3f}" for f in fracs if f is not None) if cache == "cold" else "-")
        rows.append(cells)
    rows.append(["ideal 1/(1-r)", "", ""] + [f"{1 / (1 - r):.2f}" for r in ratios] + [" / ".join(f"{1 - r:.1f}" for r in ratios)])
    return ("Epoch-time speed-up t(0)/t(r), paired within a round, median [min-max]; bytes read from storage / data size (cold).\n\n"
            + markdown_table(headers, rows, "ll" + "r" * (len(headers) - 2)))


def _index_tables(results: dict[str, Any]) -> str:
    rows = []
    for ds in results["datasets"]:
        for row in ds["rows"]:
            rows.append([ds["dataset"], row["mode"], _num(row["members"]), f"{row['median_seconds']:.3f}", f"{row['members_per_s'] / 1e3:.1f}k"])
    return f"Cache: {results.get('cache', 'warm')}.\n\n" + markdown_table(["dataset", "mode", "members", "t (s)", "members/s"], rows, "llrrr")


def _score_tables(results: dict[str, Any]) -> str:
    rows = []
    e = results.get("embed")
    if e:
        rows.append([f"(a) embedding throughput, {e['dataset']} {e['samples']:,}, {e['surrogate']}@{e['input_size']}, {e['workers']} worker(s)",
                     f"{e['samples_per_s']:,.0f} samples/s ({e['seconds']:.1f} s)"])
    k = results.get("kernels")
    if k:
        size = f"{k['N']:,} x {k['K']} x {k['D']}"
        rows.append([f"(b) nearest centroid {size}: Numba", f"{k['numba_nearest_s']['median']:.1f} s"])
        rows.append([f"(b) torch ({k.get('torch_best', 'best')})", f"{k['torch_nearest_s']:.1f} s"])
        rows.append(["(b) NumPy (extrapolated)", f"{k['numpy_nearest_s']['extrapolated_to_N']:.0f} s"])
        rows.append(["(b) one k-means iteration: Numba / torch / NumPy (extrapolated)",
                     f"{k['numba_kmeans_iter_s']['median']:.1f} s / {k['torch_kmeans_iter_s']['median']:.1f} s / {k['numpy_kmeans_iter_s']['extrapolated_to_N']:.0f} s"])
    f = results.get("fm_rss")
    if f:
        rows.append([f"(c) FM k-means peak RSS, {f['N']:,} x {f['D']} float16, K={f['K']}",
                     f"{f['peak_rss_bytes'] / 1e9:.2f} GB ({f['rss_after_imports_bytes'] / 1e9:.2f} GB after imports), {f['seconds']:.0f} s"])
    d = results.get("lm_vs_epoch")
    if d:
        rows.append(["(d) pretraining epoch (extrapolated) vs LM scoring",
                     f"{d['epoch_seconds_extrapolated']:.0f} s vs {d['lm_score_source_seconds']:.1f} s = {100 * d['fraction_of_epoch']:.1f}% of an epoch"])
    return markdown_table(["measure", "value"], rows, "ll")


def _score_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    k = results.get("kernels") or {}
    if k:
        out.append({"target": "Numba nearest-centroid >= 5x faster than NumPy", "measured": round(k.get("speedup_numba_vs_numpy", float("nan")), 2),
                    "met": (k.get("targets") or {}).get("numba_ge_5x_numpy")})
        out.append({"target": "Numba nearest-centroid no slower than torch (CPU)", "measured": round(k.get("speedup_numba_vs_torch", float("nan")), 2),
                    "met": (k.get("targets") or {}).get("numba_no_slower_than_torch")})
    f = results.get("fm_rss") or {}
    if f:
        out.append({"target": "FM peak RSS < 2 GB for 1M x 512", "measured": f"{f['peak_rss_bytes'] / 1e9:.2f} GB",
                    "met": (f.get("targets") or {}).get("peak_rss_lt_2GB")})
    return out


def _ffcv_tables(results: dict[str, Any]) -> str:
    rows_in = results["rows"]
    ratios = [r for r in _ratios(rows_in) if r > 0]
    groups: dict[tuple, dict[float, dict]] = {}
    for row in rows_in:
        key = (row["cache"], row["layout"], row["order"], row["access"])
        groups.setdefault(key + (row["level"],), {})[float(row["ratio"])] = row
        if row["level"] == "none":
            for level in ("sample", "class"):
                groups.setdefault(key + (level,), {})[0.0] = row
    headers = ["cache", "layout, order", "access", "level", "r=0 samples/s"] + [f"r={r:g} speed-up" for r in ratios] + [
        "read fraction at " + " / ".join(f"{r:g}" for r in ratios)
    ]
    rows = []
    for (cache, layout, order, access, level), by_ratio in groups.items():
        if level == "none" or not any(r in by_ratio for r in ratios):
            continue
        base = by_ratio.get(0.0, {})
        cells = [cache, f"{layout}, {order}", access, level, _num(base.get("samples_per_s"), 0)]
        cells += ["-" if r not in by_ratio else f"{by_ratio[r]['speedup_vs_r0']:.2f}" for r in ratios]
        cells.append(" / ".join(f"{by_ratio[r]['read_fraction']:.3f}" for r in ratios if r in by_ratio) if cache == "cold" else "-")
        rows.append(cells)
    return ("Epoch-time speed-up t(0)/t(r) (median of repeats); bytes read from storage / file size (cold).\n\n"
            + markdown_table(headers, rows, "llll" + "r" * (len(headers) - 4)))


#: Built-in renderers for suites whose scripts define no ``report_markdown``.
BUILTIN: dict[str, Callable[[dict[str, Any]], str]] = {
    "io": _io_tables,
    "index": _index_tables,
    "score": _score_tables,
    "ffcv": _ffcv_tables,
}
_BUILTIN_TARGETS: dict[str, Callable[[dict[str, Any]], list]] = {"score": _score_targets}


def _defines_report(script: str) -> bool:
    try:
        with open(script, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError):
        return False
    return any(isinstance(node, ast.FunctionDef) and node.name == "report_markdown" for node in tree.body)


def _suite_renderer(suite: Suite) -> Callable[[dict[str, Any]], str] | None:
    if suite.script and _defines_report(suite.script):
        name = f"_bench_report_{suite.name}"
        spec = importlib.util.spec_from_file_location(name, suite.script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        added = suite.bench_dir not in sys.path
        if added:  # suites import their sibling helpers (common.py) by plain name
            sys.path.insert(0, suite.bench_dir)
        try:
            spec.loader.exec_module(module)
        finally:
            sys.modules.pop(name, None)
            if added:
                sys.path.remove(suite.bench_dir)
        return module.report_markdown
    return BUILTIN.get(suite.name)


def _readme_anchor(suite: Suite) -> str | None:
    readme = os.path.join(suite.bench_dir, "README.md")
    try:
        with open(readme, encoding="utf-8") as fh:
            headings = [line.strip() for line in fh if line.startswith("## ")]
    except OSError:
        return None
    want = f"## {suite.name}_bench.py"
    return f"{suite.name}_benchpy" if want in headings else None


def render_suite(suite: Suite, quick: bool = False, link_prefix: str = "benchmarks/", heading: str = "##") -> str:
    """One suite's section: title, status, command, machine, date, tables, targets, plot, analysis link.

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
    rel = os.path.relpath(path, suite.bench_dir).replace(os.sep, "/")
    results = load_results(path)
    if results is None:
        why = f"no `benchmarks/{suite.name}_bench.py` yet" if suite.script is None else f"no `benchmarks/{rel}`"
        flag = " --quick" if quick else ""
        how = f" Run `python benchmarks/{suite.name}_bench.py{flag}` or `streamprune bench {suite.name}{flag}`." if suite.script else ""
        lines.append(f"*{NOT_RUN}* ({why}).{how}")
        return "\n".join(lines)
    command = _meta(results, "command")
    lines.append(f"- command: `{command}`" if command else "- command: not recorded")
    lines.append(f"- machine: {machine_line(_meta(results, 'machine'))}")
    lines.append(f"- date: {suite_date(results, path)}")
    lines.append(f"- results: [`benchmarks/{rel}`]({link_prefix}{rel})")
    lines.append("")
    try:
        renderer = _suite_renderer(suite)
        body = renderer(results) if renderer else ""
    except Exception as exc:  # a results file of another shape must not break the whole report
        body = f"*(tables could not be rendered from this results file: {type(exc).__name__}: {exc})*"
    if body:
        lines += [body.rstrip(), ""]
    targets = results.get("targets")
    if not targets and suite.name in _BUILTIN_TARGETS:
        try:
            targets = _BUILTIN_TARGETS[suite.name](results)
        except Exception:  # noqa: BLE001 - optional
            targets = None
    table = targets_table(targets)
    if table:
        met = sum(1 for t in targets if isinstance(t, dict) and t.get("met") is True)
        lines += [f"Targets: {met} of {len(targets)} met.", "", table, ""]
    plot = os.path.splitext(path)[0] + ".png"
    if os.path.isfile(plot):
        prel = os.path.relpath(plot, suite.bench_dir).replace(os.sep, "/")
        lines += [f"![{suite.name} plot]({link_prefix}{prel})", ""]
    anchor = _readme_anchor(suite)
    if anchor:
        lines.append(f"Analysis: [benchmarks/README.md#{anchor}]({link_prefix}README.md#{anchor}).")
    return "\n".join(lines).rstrip()


def _status(suite: Suite, quick: bool) -> tuple[str, str, str]:
    path = suite.results_path(quick)
    try:
        results = load_results(path)
    except ValueError as exc:
        return "unreadable", "", str(exc)
    if results is None:
        return NOT_RUN, "", ""
    targets = [t for t in results.get("targets") or [] if isinstance(t, dict)]
    if not targets and suite.name in _BUILTIN_TARGETS:
        try:
            targets = _BUILTIN_TARGETS[suite.name](results)
        except Exception:  # noqa: BLE001
            targets = []
    met = sum(1 for t in targets if t.get("met") is True)
    return "results", suite_date(results, path).split(" ")[0], f"{met} of {len(targets)} met" if targets else ""


def render_report(bench_dir: str = HERE, quick: bool = False, link_prefix: str = "benchmarks/") -> str:
    """The whole BENCHMARKS.md text.

    Args:
        bench_dir: The ``benchmarks/`` directory.
        quick: Render the ``--quick`` smoke-run results (their numbers mean nothing).
        link_prefix: Path of ``benchmarks/`` relative to where the document is written.

    Returns:
        Markdown text.
    """
    suites = discover(bench_dir)
    lines = [
        "# Benchmarks" + (" (quick smoke runs: the numbers mean nothing)" if quick else ""),
        "",
        "Generated by `python benchmarks/report.py` (or `streamprune bench --report`) from the results files in "
        "`benchmarks/results/`; do not edit by hand. Each suite's hand-written analysis is in "
        f"[benchmarks/README.md]({link_prefix}README.md). Run a suite with `streamprune bench NAME` "
        "(from a source checkout) or `python benchmarks/NAME_bench.py`; `--quick` for a smoke run.",
        "",
    ]
    rows = []
    for suite in suites:
        status, date, verdict = _status(suite, quick)
        rows.append([f"[{suite.name}](#{_slug(suite)})", suite.title, status, date, verdict])
    lines += [markdown_table(["suite", "what", "status", "date", "targets"], rows, "lllll"), ""]
    for suite in suites:
        lines += [render_suite(suite, quick=quick, link_prefix=link_prefix), ""]
    return "\n".join(lines).rstrip() + "\n"


def _slug(suite: Suite) -> str:
    text = f"{suite.name}: {suite.title}".lower()
    out = "".join(c for c in text if c.isalnum() or c in " -_")
    return out.replace(" ", "-")


def write_report(bench_dir: str = HERE, out: str | None = None, quick: bool = False) -> str:
    """Write the report atomically; return its path.

    The default file is ``BENCHMARKS.md`` at the repository root (next to ``benchmarks/``), or
    ``benchmarks/results/quick/BENCHMARKS.md`` for ``quick``, so smoke runs never overwrite it.
    """
    if out is None:
        folder = os.path.join(bench_dir, "results", "quick") if quick else os.path.dirname(os.path.abspath(bench_dir))
        os.makedirs(folder, exist_ok=True)
        out = os.path.join(folder, "BENCHMARKS.md")
    prefix = os.path.relpath(bench_dir, os.path.dirname(os.path.abspath(out))).replace(os.sep, "/").rstrip("/") + "/"
    text = render_report(bench_dir, quick=quick, link_prefix="" if prefix == "./" else prefix)
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write (or print) the report."""
    p = argparse.ArgumentParser(description="Generate BENCHMARKS.md from benchmarks/results/*.json.")
    p.add_argument("--bench-dir", default=HERE, help="the benchmarks/ directory (default: this script's)")
    p.add_argument("--out", help="file to write (default BENCHMARKS.md at the repository root; results/quick/ with --quick)")
    p.add_argument("--quick", action="store_true", help="render results/quick/ (smoke runs) instead")
    p.add_argument("--stdout", action="store_true", help="print instead of writing a file")
    args = p.parse_args(argv)
    if args.stdout:
        sys.stdout.write(render_report(args.bench_dir, quick=args.quick))
        return 0
    print(write_report(args.bench_dir, args.out, quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
