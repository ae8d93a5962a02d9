"""Results files written by measurement modules of their own, as suites the report renders and checks.

These measurements are scripts behind single numbers in the documents (``python -m
benchmarks.keptcache_measure`` and the like): they set no targets and are not run by
``python -m benchmarks NAME``, but their results files are published like a suite's, so
each is a :class:`~benchmarks.suite.Suite` here with ``runnable = False``: its title, the
results file, the command that makes it (:attr:`~benchmarks.suite.Suite.how`) and the code it
measures, for ``--report`` (with the commit) and ``--report --check``.

``io_cold`` is the io suite run on the cold-cache readers alone into ``results/io_cold/``; it is
rendered with the io suite's tables.
"""

from __future__ import annotations

import os
from typing import Any

from . import mdtable
from .io_bench import IoSuite
from .scale_sim import ScaleSimSuite
from .suite import Suite

__all__ = ["RECORDS", "IoColdRecord", "MeasuredRecord", "ScaleSimKeysRecord"]


class MeasuredRecord(Suite):
    """The results file of a measurement module: its title, command and measured code; its tables are its rows.

    Args:
        name: The suite's name, also the results file's stem (``<name>.json``).
        title: One-line description.
        how: The command that writes the results.
        measures: Repository paths whose changes make the results stale.
        results_dir: Where the results JSON files are (default ``benchmarks/results``).
    """

    runnable = False
    #: Row keys not shown (per-round lists are dropped by :func:`~benchmarks.mdtable.rows_table` anyway).
    skip: tuple[str, ...] = ()

    def __init__(self, name: str, title: str, how: str, measures: tuple[str, ...], results_dir: str | None = None) -> None:
        super().__init__(results_dir)
        self.name = self.results_name = name
        self.title, self.how, self.measures = title, how, measures

    def tables(self, results: dict[str, Any]) -> str:
        """The ``rows`` of the results file as a table (and ``micro`` rows where there are any)."""
        parts = [mdtable.rows_table(results.get("rows") or [], self.skip)]
        micro = results.get("micro")
        micro = micro.get("rows") if isinstance(micro, dict) else micro
        if micro:
            parts.append("Micro rows (one process, CPU time):\n\n" + mdtable.rows_table(micro, self.skip))
        return "\n\n".join(p for p in parts if p)


class IoColdRecord(IoSuite):
    """``io_cold``: the io suite on cold-cache readers, in ``results/io_cold/``."""

    name, title = "io_cold", "I/O, cold cache: streamprune against the kept-range replays (io suite, own run)"
    runnable = False
    how = "python -m benchmarks io --out benchmarks/results/io_cold (options as recorded)"

    def results_path(self, quick: bool = False, out: str | None = None) -> str:
        """``results/io_cold/io_bench.json`` (``quick/io_cold/`` for smoke runs)."""
        folder = out or os.path.join(self.results_dir, *(["quick"] if quick else []), "io_cold")
        return os.path.join(folder, "io_bench.json")

    def _reader_rows(self, results: dict[str, Any]) -> dict[str, Any] | None:
        return None  # the reader rows belong to the io suite's own run


class ScaleSimKeysRecord(ScaleSimSuite):
    """``scale_sim_keys``: the scale_sim suite's ``manifest``, ``order`` and ``keys`` steps alone, in ``results/scale_sim_keys/``.

    ``order`` and ``keys`` were added after the full simulation's last run (56 minutes at 10^8
    on 2 cores), and ``manifest`` is rerun with them on a quieter machine (its time slope was
    measured under uneven load there); on the same virtual datasets, rendered with the suite's tables.
    """

    name, title = "scale_sim_keys", "Scale by simulation, the manifest, writer's order and key-list mask steps (scale_sim --steps manifest,order,keys, own run)"
    runnable = False
    how = "python -m benchmarks scale_sim --virtual --sizes 1e6,1e7,1e8 --steps manifest,order,keys --out benchmarks/results/scale_sim_keys"
    measures = ("streamprune/keys.py", "streamprune/keytable.py", "streamprune/shardmask.py", "streamprune/writers/order.py",
                "streamprune/shardsummary.py", "streamprune/manifest.py")

    def results_path(self, quick: bool = False, out: str | None = None) -> str:
        """``results/scale_sim_keys/scale_sim.json`` (``quick/scale_sim_keys/`` for smoke runs)."""
        folder = out or os.path.join(self.results_dir, *(["quick"] if quick else []), "scale_sim_keys")
        return os.path.join(folder, "scale_sim.json")


#: The record suites, in report order.
RECORDS: tuple[Suite, ...] = (
    IoColdRecord(),
    ScaleSimKeysRecord(),
    MeasuredRecord("keptcache", "Kept-bytes cache: cached kept samples vs pread from a local shard (no targets)",
                   "python -m benchmarks.keptcache_measure",
                   ("streamprune/readers/keptcache.py", "streamprune/readers/cachechunk.py")),
    MeasuredRecord("reader_core", "Reader core: warm local reads, two source trees side by side (no targets)",
                   "python -m benchmarks.reader_core_measure --tree before=PATH --tree after=.",
                   ("streamprune/readers/byterange.py", "streamprune/readers/scheduler.py", "streamprune/readers/webdataset.py",
                    "streamprune/readers/mapstyle.py")),
    MeasuredRecord("remote_clients", "HTTP clients for ranged reads against nginx (no targets)", "python -m benchmarks.remote_clients",
                   ("streamprune/rangeclient.py", "streamprune/storage.py")),
    MeasuredRecord("remote_index", "Remote indexing: streaming pass vs ranged header walk (no targets)",
                   "python -m benchmarks.remote_index_measure",
                   ("streamprune/remoteindex.py", "streamprune/tarindex.py", "streamprune/engine.py", "streamprune/rangeclient.py")),
    MeasuredRecord("remote_upload", "Upload while sharding vs write-then-upload (no targets)", "python -m benchmarks.remote_upload_measure",
                   ("streamprune/writers/remote.py", "streamprune/writers/shards.py", "streamprune/writers/tar.py")),
)
