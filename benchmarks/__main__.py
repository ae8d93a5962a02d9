"""``python -m benchmarks [NAMES] [--quick] [--list] [--report [--output F | --stdout]] [SUITE OPTIONS] [-- ARGS]``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import readme_blocks, report
from .registry import SUITES, get_suite, run_suite

USAGE = """usage: python -m benchmarks [NAME ...] [--quick] [SUITE OPTIONS ...] [-- ARGS ...]
       python -m benchmarks --list
       python -m benchmarks [NAME ...] --report [--quick] [--output FILE | --stdout]
       python -m benchmarks --report --check [--quick]

Runs the suites NAME (in order), passing them every other option (--quick included; everything
after `--` verbatim), and prints their tables; without NAME prints the latest tables of every
suite. --list shows the suites and the dates of their latest results; --report rewrites
BENCHMARKS.md (--quick: benchmarks/results/quick/BENCHMARKS.md) and the results blocks of
benchmarks/README.md from the results files; --report --check writes nothing and exits 1 listing
the suites whose results predate a change to the code they measure (each suite declares its
paths; the results record their commit) and the README blocks that differ from their files.
`python -m benchmarks NAME --help` shows a suite's own options. Suites: """


def split_names(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split arguments into suite names and the arguments passed through to each suite.

    Names come first; everything from the first argument that starts with ``-`` on goes to the suites.
    """
    for i, arg in enumerate(args):
        if arg.startswith("-"):
            return list(args[:i]), list(args[i:])
    return list(args), []


def _take_options(rest: list[str]) -> tuple[dict[str, object], list[str]]:
    """Pull this runner's own options out of ``rest`` (before any ``--``); the remainder goes to the suites."""
    own: dict[str, object] = {"list": False, "report": False, "check": False, "stdout": False, "output": None, "quick": False,
                              "help": False}
    passthrough: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            passthrough += rest[i + 1:]
            break
        if arg in ("--list", "--report", "--check", "--stdout"):
            own[arg[2:]] = True
        elif arg == "--output" and i + 1 < len(rest):
            own["output"] = rest[i + 1]
            i += 1
        elif arg.startswith("--output="):
            own["output"] = arg.split("=", 1)[1]
        else:
            own["quick"] = bool(own["quick"]) or arg == "--quick"
            own["help"] = bool(own["help"]) or arg in ("-h", "--help")
            passthrough.append(arg)
        i += 1
    return own, passthrough


def main(argv: Sequence[str] | None = None, invoked_as: str = "python -m benchmarks") -> int:
    """Run, list or report suites; see :data:`USAGE`.

    Args:
        argv: The arguments (default ``sys.argv[1:]``).
        invoked_as: How the command was invoked, recorded in the results.

    Returns:
        The exit status: 0, 1 when a suite failed, 2 for a usage error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    names, rest = split_names(argv)
    own, passthrough = _take_options(rest)
    if own["help"] and not names:
        print(USAGE + ", ".join(SUITES))
        return 0
    if own["list"]:
        print(report.list_table())
        return 0
    if own["check"]:
        stale = report.check(quick=bool(own["quick"]))
        print(report.check_text(stale), file=sys.stderr if stale else sys.stdout)
        outdated = [] if own["quick"] else readme_blocks.outdated_blocks()
        if outdated:
            print(f"benchmarks/README.md: results blocks differ from their results files: {', '.join(outdated)} "
                  "(python -m benchmarks --report rewrites them)", file=sys.stderr)
        return 1 if stale or outdated else 0
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        print(f"unknown benchmark suite(s) {', '.join(unknown)}; available: {', '.join(SUITES)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        suite = get_suite(name)
        print(f"$ {invoked_as} {name} {' '.join(passthrough)}".rstrip(), file=sys.stderr)
        try:
            run_suite(suite, passthrough, invoked_as)
        except SystemExit as exc:  # argparse's --help and errors, a suite's own exit
            if exc.code in (0, None):
                continue
            failed.append(f"{name} (exit status {exc.code})")
            continue
        except Exception as exc:  # noqa: BLE001 - one failing suite must not stop the others
            failed.append(f"{name} ({type(exc).__name__}: {exc})")
            continue
        print(report.render_suite(suite, quick=bool(own["quick"]), link_prefix="", path=suite.last_written))
        print()
    if not names and not own["report"]:
        print(report.render_report(quick=bool(own["quick"]), link_prefix=""))
    if own["report"]:
        if own["stdout"]:
            print(report.render_report(quick=bool(own["quick"])), end="")
        else:
            print(f"report -> {report.write_report(own['output'], quick=bool(own['quick']))}")
            if not own["quick"] and not own["output"]:
                changed = readme_blocks.update_blocks()
                print(f"benchmarks/README.md results blocks rewritten: {', '.join(changed) or 'none changed'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
