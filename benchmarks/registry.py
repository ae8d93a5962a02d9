"""The suites by name (a plain dict, in report order) and the one function that runs a suite."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import provenance
from .decode_bench import DecodeSuite
from .dedup_bench import DedupSuite
from .dlc_bench import DlcSuite
from .downstream_bench import DownstreamSuite
from .dynamic_bench import DynamicSuite
from .ffcv_bench import FfcvSuite
from .formats_bench import FormatsSuite
from .fuzz_bench import FuzzSuite
from .index_bench import IndexSuite
from .io_bench import IoSuite
from .records import RECORDS
from .remote_bench import RemoteSuite
from .scale_bench import ScaleSuite
from .scale_sim import ScaleSimSuite
from .score_bench import ScoreSuite
from .suite import Suite
from .transfer_bench import TransferSuite

__all__ = ["SUITES", "get_suite", "run_suite"]

#: Every suite by name, in the order of BENCHMARKS.md: the measured suites, then the results of
#: measurement modules of their own (:mod:`benchmarks.records`, not runnable from here).
SUITES: dict[str, Suite] = {
    s.name: s
    for s in (IoSuite(), DecodeSuite(), IndexSuite(), FfcvSuite(), ScoreSuite(), DownstreamSuite(), DlcSuite(), TransferSuite(), FuzzSuite(), DynamicSuite(),
              DedupSuite(), ScaleSuite(), ScaleSimSuite(), RemoteSuite(), FormatsSuite(), *RECORDS)
}


def get_suite(name: str, suites: dict[str, Suite] | None = None) -> Suite:
    """The suite called ``name``.

    Raises:
        KeyError: No such suite (the message lists the suites).
    """
    suites = SUITES if suites is None else suites
    if name not in suites:
        raise KeyError(f"unknown benchmark suite {name!r}; available: {', '.join(suites)}")
    return suites[name]


def run_suite(suite: Suite, argv: Sequence[str], invoked_as: str = "python -m benchmarks") -> dict[str, Any]:
    """Run ``suite`` with its options ``argv``, recording the command as ``<invoked_as> <name> <argv>``.

    Args:
        suite: The suite.
        argv: Its options (``--quick`` among them for a smoke run).
        invoked_as: How the suites were invoked (``python -m benchmarks`` or ``streamprune bench``).

    Returns:
        The results the suite wrote.
    """
    provenance.set_command(f"{invoked_as} {suite.name}", argv)
    try:
        return suite.run(list(argv))
    finally:
        provenance.clear_command()
