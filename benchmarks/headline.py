"""The README's table of headline results, computed from the results files.

``python -m benchmarks.headline`` prints the table; ``tests/test_readme.py`` checks that the
README holds exactly this text between its ``headline`` markers, so the figures there cannot
drift from ``benchmarks/results/``. Each row links to the full table in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os

__all__ = ["headline_table", "RESULTS_DIR"]

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
_IO = "BENCHMARKS.md#io-io-pruned-vs-unpruned-reads-tar-shards"
_TRANSFER = "BENCHMARKS.md#transfer-transfer-pruned-pretraining-speed-and-downstream-accuracy"


def _load(name: str, results_dir: str) -> dict:
    with open(os.path.join(results_dir, name)) as f:
        return json.load(f)


def _io_row(summary: list[dict], variant: str, what: str, ratio: float = 0.8) -> str:
    """An io_bench row: streamprune's cold-cache epoch speed-up at ``ratio`` and the bytes it read."""
    row = next(r for r in summary if r["reader"] == "streamprune" and r["cache"] == "cold"
               and r["variant"] == variant and r["ratio"] == ratio and r.get("dataset", "full") == "full")
    return (f"| [{what}, r={ratio:g}, cold page cache]({_IO}) | {row['speedup']:.2f}x "
            f"[{row['speedup_min']:.2f}-{row['speedup_max']:.2f}], {row['read_fraction_of_data']:.3f} of the bytes read "
            f"| {row['ideal_speedup']:.2f}x, {1 - ratio:.3f} |")


def headline_table(results_dir: str = RESULTS_DIR) -> str:
    """The Markdown table of headline results (ours, then the ideal) from the results files.

    Args:
        results_dir: Where ``io_bench.json`` and ``transfer_bench.json`` are.

    Returns:
        The table, one row per line, without a trailing newline.
    """
    io = _load("io_bench.json", results_dir)["summary"]
    transfer = _load("transfer_bench.json", results_dir)["summary"]
    lm_time = next(r for r in transfer["time"] if r["method"] == "lm" and r["ratio"] == 0.6)
    probe = {(r["method"], r["ratio"]): r for r in transfer["accuracy"] if r["target"] == "a" and r["protocol"] == "probe"}
    lm, full = probe[("lm", 0.6)], probe[("unpruned", 0.0)]
    rows = [
        "| measured | streamprune | ideal |",
        "|---|---|---|",
        _io_row(io, "decode", "Epoch speed-up over unpruned, JPEG decode"),
        _io_row(io, "raw", "Epoch speed-up over unpruned, bytes only"),
        f"| [Pretraining time on an LM-pruned source, r=0.6]({_TRANSFER}) | {lm_time['time_ratio_median']:.2f} "
        f"[{lm_time['time_ratio_min']:.2f}-{lm_time['time_ratio_max']:.2f}] of unpruned | {1 - 0.6:.2f} |",
        f"| [Downstream accuracy after it (footwear, linear probe)]({_TRANSFER}) | {lm['mean']:.1f}% ± {lm['std']:.1f} "
        f"| {full['mean']:.1f}% ± {full['std']:.1f} (unpruned source) |",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    print(headline_table())
