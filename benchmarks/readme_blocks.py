"""Results blocks in benchmarks/README.md: each suite's tables, generated from its results file.

The analyses in ``benchmarks/README.md`` quote a suite's tables between two markers::

    <!-- results:io:start -->
    ... generated: command, commit, machine, date, the suite's tables and target verdicts ...
    <!-- results:io:end -->

(``results:remote@remote_formats_bench``: the remote suite's tables of that results file.)

``python -m benchmarks --report`` rewrites every block from the results files (as it rewrites
BENCHMARKS.md), and ``--report --check`` fails when a block differs from what its results file
renders, so no table there is typed by hand or left behind by a rerun.
"""

from __future__ import annotations

import os
import re

from . import report
from .registry import SUITES
from .suite import Suite

__all__ = ["README_PATH", "block_names", "outdated_blocks", "render_block", "update_blocks"]

README_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
_BLOCK = re.compile(r"(<!-- results:(?P<name>[a-z0-9_@]+):start -->\n)(?P<body>.*?)(<!-- results:(?P=name):end -->)", re.S)


def render_block(suite: Suite, stem: str | None = None) -> str:
    """A block's body: the suite's section as BENCHMARKS.md renders it, without its heading.

    Args:
        suite: The suite.
        stem: Render the suite's results file ``<stem>.json`` instead of its latest (a block
            named ``suite@stem``: e.g. ``remote@remote_formats_bench``, a run of some arms).
    """
    path = None if stem is None else os.path.join(suite.results_dir, stem + ".json")
    text = report.render_suite(suite, link_prefix="", heading="####", path=path)
    body = text.split("\n", 2)[2] if text.startswith("####") else text  # the heading line and the blank after it
    lines = [line for line in body.rstrip().split("\n") if not line.startswith("Analysis: [benchmarks/README.md")]  # the README itself
    return "\n".join(lines).rstrip() + "\n"


def block_names(text: str) -> list[str]:
    """The suites that have a block in ``text``, in order."""
    return [m.group("name") for m in _BLOCK.finditer(text)]


def _rendered(text: str, suites: dict[str, Suite]) -> str:
    def body(m: re.Match) -> str:
        name, _, stem = m.group("name").partition("@")
        if name not in suites:
            raise KeyError(f"benchmarks/README.md has a results block for {name!r}, which is no suite")
        return m.group(1) + render_block(suites[name], stem or None) + m.group(4)

    return _BLOCK.sub(body, text)


def outdated_blocks(path: str = README_PATH, suites: dict[str, Suite] | None = None) -> list[str]:
    """The blocks whose text differs from what their results files render now."""
    suites = SUITES if suites is None else suites
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    fresh = _rendered(text, suites)
    now = {m.group("name"): m.group("body") for m in _BLOCK.finditer(text)}
    return [m.group("name") for m in _BLOCK.finditer(fresh) if now.get(m.group("name")) != m.group("body")]


def update_blocks(path: str = README_PATH, suites: dict[str, Suite] | None = None) -> list[str]:
    """Rewrite every block from its results file (atomically); return the blocks that changed."""
    suites = SUITES if suites is None else suites
    changed = outdated_blocks(path, suites)
    if changed:
        with open(path, encoding="utf-8") as fh:
            text = _rendered(fh.read(), suites)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    return changed
