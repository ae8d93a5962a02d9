"""streamprune's benchmark suites, as a package of a source checkout (not installed with streamprune).

Run from the repository root::

    python -m benchmarks --list                 # the suites and the dates of their latest results
    python -m benchmarks io --quick             # a smoke run of one suite (its own options follow its name)
    python -m benchmarks transfer --seeds 0,1   # a suite with its options
    python -m benchmarks --report               # regenerate BENCHMARKS.md from benchmarks/results/*.json
    python -m benchmarks --report --check       # exit 1 when results predate the code they measure

``streamprune bench`` runs the same code. Every suite follows the template
:class:`benchmarks.suite.Suite` and is registered by name in :data:`benchmarks.registry.SUITES`;
goals are :class:`benchmarks.suite.Target` objects judged by :mod:`benchmarks.stats`.
"""

from __future__ import annotations

from .registry import SUITES, get_suite, run_suite
from .suite import Suite, Target

__all__ = ["SUITES", "Suite", "Target", "get_suite", "run_suite"]
