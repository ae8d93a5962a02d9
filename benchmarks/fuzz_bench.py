"""``python -m benchmarks fuzz``: a timed run of the readers' fuzzer (``tests/fuzzer.py``) as a suite.

The fuzzer itself lives beside the tests (``tests/benchmarks/test_fuzz.py`` drives its mutators through
hypothesis; ``python -m tests.fuzzer`` runs a campaign on its own). This suite runs
:func:`tests.fuzzer.campaign` for ``--seconds`` over every target and records the inputs,
outcomes, named errors and bugs per target; its targets: no input ends in an unnamed
exception, a wrong result or a hang, and none takes more than a second.

Run:  python -m benchmarks fuzz            (default 180 s over all targets)
      python -m benchmarks fuzz --quick    (a few seconds)
      python -m benchmarks fuzz --seconds 600 --targets tar,e2e
"""

from __future__ import annotations

import argparse
import importlib
import time
from typing import Any

from . import mdtable
from .suite import Suite, Target

__all__ = ["FuzzSuite", "tables"]

#: Outcome kinds of results files that do not list theirs (``bug_outcomes``: which of them are bugs).
_OLDER = {"outcomes": ("ok", "named", "stale", "other", "wrong", "hang"), "bug_outcomes": ("other", "wrong", "hang")}


def fuzzer() -> Any:
    """The fuzzer module, ``tests.fuzzer`` (a source checkout's tests folder, imported from the repository root)."""
    return importlib.import_module("tests.fuzzer")


def tables(results: dict[str, Any]) -> str:
    """Inputs and outcomes per target, the named errors seen, and every bug found."""
    rows, named = [], []
    outcomes = list(results.get("outcomes") or _OLDER["outcomes"])
    for row in results["targets_fuzzed"]:
        counts = row.get("counts", {})
        rows.append([row["target"], mdtable.fmt_num(row.get("inputs", 0)), f"{row.get('seconds', 0):.0f}",
                     f"{row.get('inputs_per_s', 0):.0f}", *[mdtable.fmt_num(counts.get(k, 0)) for k in outcomes],
                     str(len(row.get("slow", [])))])
        named.append([row["target"], ", ".join(f"{k} {v}" for k, v in row.get("errors", {}).items()) or "-"])
    text = [f"Atheris: {results.get('atheris', '?')}.", "",
            mdtable.markdown_table(["target", "inputs", "s", "inputs/s", *outcomes, "> 1 s"], rows, "lrrr" + "r" * (len(outcomes) + 1)),
            "", mdtable.markdown_table(["target", "exceptions raised (named and other)"], named, "ll")]
    bug_rows = []
    for row in results["targets_fuzzed"]:
        for bug in row.get("bugs", []):
            bug_rows.append([row["target"], bug["outcome"], bug["exception"], f"`{bug.get('where', '')}`", str(bug.get("count", 1)),
                             f"`{bug['message'][:60]}`", f"`{bug['hex_prefix'][:32]}…`"])
    if bug_rows:
        text += ["", mdtable.markdown_table(["target", "outcome", "exception", "where", "inputs", "message", "input prefix (hex)"],
                                           bug_rows, "llllrll")]
    return "\n".join(text)



class FuzzSuite(Suite):
    """``fuzz``: mutated shards, indexes, masks and manifests read correctly or raise a named error."""

    name, title = "fuzz", "Fuzzing the tar walker and the index, mask and manifest readers"
    measures = ("streamprune/tarindex.py", "streamprune/indexfile.py", "streamprune/shardindex.py", "streamprune/masks.py",
                "streamprune/manifest.py", "streamprune/readers/webdataset.py", "streamprune/readers/byterange.py")
    tables = staticmethod(tables)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Budget, targets, watchdog (``--seed`` is the campaign's base seed)."""
        parser.add_argument("--seconds", type=float, default=180.0, help="time budget over all targets (default 180)")
        parser.add_argument("--inputs", type=int, default=None, help="stop each target after this many inputs (default: time only)")
        parser.add_argument("--targets", default=None, help="comma-separated subset of tar,index,mask,manifest,e2e,atheris")
        parser.add_argument("--hang-seconds", type=float, default=5.0, help="watchdog per input (default 5)")
        parser.add_argument("--no-atheris", action="store_true", help="skip the atheris run even when atheris is installed")
        parser.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")

    def measure(self, args: argparse.Namespace) -> dict[str, Any]:
        """One campaign (:func:`tests.fuzzer.campaign`)."""
        if args.quick:
            args.seconds = min(args.seconds, 8.0)
        t_start = time.perf_counter()
        try:
            report = fuzzer().campaign(args.seconds, args.targets.split(",") if args.targets else None, args.seed,
                                       args.hang_seconds, args.inputs, not args.no_atheris, args.work,
                                       log=lambda line: print(line, flush=True))
        except ValueError as exc:
            raise SystemExit(f"python -m benchmarks fuzz: {exc}") from None
        return {
            "benchmark": "fuzz_bench",
            "args": {k: v for k, v in vars(args).items() if k != "work"},
            "atheris": report["atheris"],
            "outcomes": {"ok": "read, invariants hold", "named": "a StreamPruneError", "stale": "damaged companion used (bug)",
                         "other": "another exception (bug)", "wrong": "read, invariant broken (bug)", "hang": "watchdog (bug)"},
            "bug_outcomes": list(fuzzer().BUGS), "slow_seconds": fuzzer().SLOW_SECONDS,
            "targets_fuzzed": report["targets_fuzzed"],
            "total_seconds": time.perf_counter() - t_start,
        }

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        """The two targets from the stored counts (bugs, slow inputs)."""
        rows = results["targets_fuzzed"]
        bugs = sum(row.get("counts", {}).get(k, 0) for row in rows for k in results.get("bug_outcomes", _OLDER["bug_outcomes"]))
        slow = sum(len(row.get("slow", [])) for row in rows)
        slow_seconds = results.get("slow_seconds", 1.0)
        return {**results, "targets": [
            Target.check("inputs ending in a damaged companion used, an unnamed exception, a wrong result or a hang", bugs, 0, "<=").to_dict(),
            Target.check(f"inputs taking more than {slow_seconds:g} s", slow, 0, "<=").to_dict(),
        ]}
