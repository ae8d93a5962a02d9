"""The README's table of headline results, computed from the results files.

``python -m benchmarks.headline`` prints the table; ``tests/test_readme.py`` checks that the
README holds exactly this text between its ``headline`` markers, so the figures there cannot
drift from ``benchmarks/results/``. One row per case the README's opening names (local cold
bytes, decode-bound, remote scattered and class-sorted, FFCV, end-to-end pretraining), each
linked to its full table in BENCHMARKS.md and naming the commit its results file records.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .registry import SUITES
from .report import section_anchor

__all__ = ["headline_table", "RESULTS_DIR"]

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")



def _load(name: str, results_dir: str) -> dict[str, Any]:
    with open(os.path.join(results_dir, name)) as f:
        return json.load(f)


def _commit(results: dict[str, Any]) -> str:
    """The commit a results file records, or what it lacks (files written before provenance)."""
    commit = results.get("commit") or (results.get("meta") or {}).get("commit")
    if not commit:
        return "no commit recorded"
    return commit[:7] + (" (dirty)" if results.get("dirty") else "")


def _link(text: str, suite: str) -> str:
    return f"[{text}](BENCHMARKS.md#{section_anchor(SUITES[suite])})"


def _interval(value: float, low: float, high: float, unit: str = "x") -> str:
    return f"{value:.2f}{unit} [{low:.2f}-{high:.2f}]"


def _io_row(results: dict[str, Any], suite: str, variant: str, what: str, ratio: float = 0.8) -> str:
    """An io suite row: streamprune's cold-cache epoch speed-up at ``ratio`` and the bytes it read."""
    row = next(r for r in results["summary"] if r["reader"] == "streamprune" and r["cache"] == "cold"
               and r["variant"] == variant and r["ratio"] == ratio and r.get("dataset", "full") == "full")
    return (f"| {_link(f'{what}, r={ratio:g}', suite)} | {_interval(row['speedup'], row['speedup_min'], row['speedup_max'])}, "
            f"{row['read_fraction_of_data']:.3f} of the bytes read | {row['ideal_speedup']:.2f}x, {1 - ratio:.3f} | {_commit(results)} |")


def _remote_row(results: dict[str, Any], level: str, what: str, ratio: float = 0.8) -> str:
    """A remote suite row: speed-up over the same reader's r=0 (1 worker, 30 ms) and bytes sent."""
    def target(prefix: str) -> dict[str, Any]:
        return next(t for t in results["targets"] if t["target"].startswith(prefix)
                    and f"({level}, 1 w, 30 ms" in t["target"] and t.get("ratio") == ratio)

    speed = target("pruned epoch no slower than the unpruned")
    sent = target("bytes transferred")
    return (f"| {_link(f'{what}, r={ratio:g}', 'remote')} | {_interval(speed['measured'], *speed['interval'])}, "
            f"{sent['measured']:.3f} of the bytes sent | {1 / (1 - ratio):.2f}x, {1 - ratio:.3f} | {_commit(results)} |")


def _ffcv_row(results: dict[str, Any], what: str, ratio: float = 0.8) -> str:
    """The FFCV row: warm decode-bound speed-up of the page-aware layout, class-level masks."""
    t = next(t for t in results["targets"] if t["target"].startswith("warm, decode") and t.get("ratio") == ratio
             and t["layout"] == "page-aware" and t["access"] == "pages" and t["level"] == "class")
    return (f"| {_link(f'{what}, r={ratio:g}', 'ffcv')} | {_interval(t['measured'], *t['interval'])} "
            f"| {1 / (1 - ratio):.2f}x | {_commit({**results.get('meta', {}), **results})} |")


def headline_table(results_dir: str = RESULTS_DIR) -> str:
    """The Markdown table of headline results (ours, the ideal, the commit) from the results files.

    Args:
        results_dir: Where the suites' results files are (``io_bench.json``, ``io_cold/``,
            ``remote_bench.json``, ``ffcv_bench.json``, ``transfer_bench.json``).

    Returns:
        The table, one row per line, without a trailing newline.
    """
    io = _load("io_bench.json", results_dir)
    io_cold = _load(os.path.join("io_cold", "io_bench.json"), results_dir)
    remote = _load("remote_bench.json", results_dir)
    ffcv = _load("ffcv_bench.json", results_dir)
    transfer = _load("transfer_bench.json", results_dir)
    summary = transfer["summary"]
    lm_time = next(r for r in summary["time"] if r["method"] == "lm" and r["ratio"] == 0.6)
    probe = {(r["method"], r["ratio"]): r for r in summary["accuracy"] if r["target"] == "a" and r["protocol"] == "probe"}
    lm, full = probe[("lm", 0.6)], probe[("unpruned", 0.0)]
    time_link = _link("Pretraining time on an LM-pruned source, r=0.6", "transfer")
    accuracy_link = _link("Downstream accuracy after it (footwear, linear probe)", "transfer")
    rows = [
        "| case | streamprune, median [min-max] | ideal | results from |",
        "|---|---|---|---|",
        _io_row(io_cold, "io_cold", "raw", "Local disk, cold cache, bytes only: epoch speed-up"),
        _io_row(io, "io", "decode", "Local disk, cold cache, JPEG decode: epoch speed-up"),
        _remote_row(remote, "sample", "Object store (30 ms), scattered sample mask: epoch speed-up"),
        _remote_row(remote, "class-sorted", "Object store (30 ms), classes written together: epoch speed-up"),
        _ffcv_row(ffcv, "FFCV .beton (page-aware), warm, decode: epoch speed-up"),
        f"| {time_link} | {lm_time['time_ratio_median']:.2f} [{lm_time['time_ratio_min']:.2f}-{lm_time['time_ratio_max']:.2f}] "
        f"of unpruned | {1 - 0.6:.2f} | {_commit(transfer)} |",
        f"| {accuracy_link} | {lm['mean']:.1f}% ± {lm['std']:.1f} | {full['mean']:.1f}% ± {full['std']:.1f} "
        f"(unpruned source) | {_commit(transfer)} |",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    print(headline_table())
