"""The one interface every benchmark suite implements: :class:`Suite`, a template, and :class:`Target`.

A suite is a :class:`Suite` subclass registered by name in :data:`benchmarks.registry.SUITES`. It
declares what is its own and the base does the rest:

* :attr:`Suite.name`, :attr:`Suite.title`, :attr:`Suite.measures` (the repository paths whose
  changes make its results stale: ``python -m benchmarks --report --check``);
* its own options and measurement: most suites name their module-level functions,
  ``add_arguments = staticmethod(add_arguments)`` (``(parser) -> None``),
  ``configure = staticmethod(configure)`` (``(args) -> config``: ``--quick`` sizes, parsed lists)
  and ``measurement = staticmethod(run)`` (``(config) -> results``), which the base's
  :meth:`Suite.measure` composes; a suite whose measurement takes more than the config overrides
  :meth:`Suite.measure` ``(args) -> results`` instead;
* :meth:`Suite.summarise` ``(results) -> results`` (medians, ratios and targets from the stored
  runs, so that a re-summary measures nothing), :meth:`Suite.plot` and :meth:`Suite.tables`;
* what differs in its logging, if anything (:attr:`Suite.log_format`, :attr:`Suite.log_level`,
  :attr:`Suite.quiet_loggers`).

The base owns the options every suite takes (``--quick``, ``--out``, ``--seed``, ``--data-dir``,
``--no-plot``, ``--quiet``, ``--resummarise JSON``; ``--resummarize`` and ``--plot-only`` are
accepted as aliases), the logging set-up before a measurement, the results paths (``benchmarks/results/<stem>.json``, ``--quick``: ``results/quick/``;
the plot ``<stem>.png`` beside it), the provenance every results file records (command, git commit
and dirty flag, machine, date: :mod:`benchmarks.provenance`), writing (atomic) and the markdown
that ``python -m benchmarks`` prints and ``--report`` collects. Statistics come from
:mod:`benchmarks.stats`.

A :class:`Target` is one goal of a suite: the measured value, the threshold and the comparison,
a verdict (``met`` only when the whole measured interval clears the threshold, ``inconclusive``
when it straddles it, ``missed`` otherwise) and the command that reproduces it. Suites build
them with :meth:`Target.check` and store :meth:`Target.to_dict` in their JSON;
:meth:`Target.from_dict` also reads the older ``{"target", "measured" | "value", "goal", "met"}``
entries of existing results files.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import mdtable, provenance, resultsfile, stats
from .stats import INCONCLUSIVE, MET, MISSED

__all__ = ["INCONCLUSIVE", "MET", "MISSED", "Suite", "Target", "arg_parser", "targets_table"]

#: Keys of a stored target that :class:`Target` reads into its own fields (the rest go to ``details``).
_FIELDS = ("target", "measured", "value", "goal", "threshold", "comparison", "met", "verdict", "command", "interval")
#: Details shown in brackets after a target's name in the tables.
_SHOWN_DETAILS = ("layout", "level", "access", "ratio", "not_counted")

def _rejudge(verdict: str, measured: Any, threshold: Any, comparison: Any, interval: Any, rounds: Any) -> str:
    """A stored verdict, made stricter when its stored numbers do not support it (never more lenient)."""
    if verdict != MET or comparison not in stats.COMPARE or not isinstance(threshold, (int, float)):
        return verdict
    if not isinstance(measured, (int, float)) or isinstance(measured, bool):
        return verdict
    lo_hi = interval if isinstance(interval, (list, tuple)) and len(interval) == 2 else None
    return stats.verdict(threshold, comparison, measured, lo_hi, rounds if isinstance(rounds, int) else None)


def arg_parser(suite: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of a suite's options, shown as ``python -m benchmarks SUITE``.

    Args:
        suite: The suite's name.
        description: The help text above the options (kept as written).

    Returns:
        The parser, to which the suite adds its options.
    """
    return argparse.ArgumentParser(prog=f"python -m benchmarks {suite}", description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


@dataclass
class Target:
    """One goal of a suite and its verdict.

    Attributes:
        name: What is aimed at, in words (``cold raw speed-up at r=0.4 >= ...``).
        measured: The measured value (a number; text for older results that stored only text).
        threshold: The value ``measured`` is compared with (``None``: no numeric goal recorded).
        comparison: ``">="``, ``"<="``, ``">"`` or ``"<"`` (``measured comparison threshold`` is met).
        verdict: :data:`MET`, :data:`MISSED` or :data:`INCONCLUSIVE`.
        command: The command that reproduces the measurement (``None``: the suite's command).
        interval: ``(low, high)`` range of the measurement over repeats, when known.
        shown: Text shown instead of ``measured`` (e.g. several values in one cell).
        goal: Text shown as the goal instead of ``comparison threshold``.
        details: Further stored keys (``layout``, ``level``, ``ratio``, ...), kept as they are.
    """

    name: str
    measured: Any
    threshold: Any = None
    comparison: str | None = None
    verdict: str = INCONCLUSIVE
    command: str | None = None
    interval: tuple[float, float] | None = None
    shown: str | None = None
    goal: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def check(
        cls,
        name: str,
        measured: float,
        threshold: float,
        comparison: str = ">=",
        *,
        interval: Sequence[float] | None = None,
        command: str | None = None,
        shown: str | None = None,
        goal: str | None = None,
        valid: bool = True,
        rounds: int | None = None,
        paired: stats.Ratio | None = None,
        **details: Any,
    ) -> Target:
        """A target with its verdict computed from the measurement.

        Args:
            name: What is aimed at.
            measured: The measured value (a NaN is never met).
            threshold: The goal's value.
            comparison: ``">="``, ``"<="``, ``">"`` or ``"<"``.
            interval: ``(low, high)`` of the measurement over repeats; the verdict is
                :data:`MET` only when all of it clears the threshold (:func:`benchmarks.stats.verdict`).
            command: The command that reproduces the measurement.
            shown: Text shown instead of the measured value.
            goal: Text shown instead of ``comparison threshold``.
            valid: ``False`` when the measurement is missing (the verdict is then :data:`MISSED`).
            rounds: Rounds behind ``interval`` (fewer than :data:`benchmarks.stats.MIN_ROUNDS`: never met).
            paired: A paired :class:`~benchmarks.stats.Ratio`: gives ``measured`` (when ``None``),
                ``interval`` and ``rounds``; rounds it could not count (a failed or stalled run)
                are stored as ``not_counted``, and a ratio with no counted round is inconclusive.
            **details: Extra fields stored with the target.

        Returns:
            The target.

        Raises:
            ValueError: Unknown comparison.
        """
        if comparison not in stats.COMPARE:
            raise ValueError(f"comparison {comparison!r}: expected one of {', '.join(stats.COMPARE)}")
        if paired is not None:
            measured = paired.median if measured is None else measured
            interval = paired.interval if interval is None else interval
            rounds = paired.n if rounds is None else rounds
            details.setdefault("rounds", paired.n)
            if paired.failed:
                details["not_counted"] = paired.failed
        if rounds is not None:
            details.setdefault("rounds", rounds)
        lo_hi = None if interval is None or not len(interval) else (float(min(interval)), float(max(interval)))
        if not valid:
            verdict = MISSED
        elif paired is not None and paired.n == 0:
            verdict = INCONCLUSIVE  # every round failed or stalled: nothing was measured
        else:
            verdict = stats.verdict(threshold, comparison, measured, lo_hi, rounds)
        return cls(name, measured, threshold, comparison, verdict, command, lo_hi, shown, goal, dict(details))

    @classmethod
    def from_dict(cls, data: dict[str, Any], command: str | None = None) -> Target:
        """A target as stored in a results file, new or old layout.

        Args:
            data: ``to_dict()`` output, or an older ``{"target", "measured" | "value", "goal"?, "met"}``.
            command: The command to record when the entry names none (the results' command).

        Returns:
            The target. Its verdict is the stored one (``met`` True/False/None -> met/missed/inconclusive),
            made stricter where the stored numbers show it: a stored ``met`` whose interval does not
            wholly clear the threshold is judged again by :func:`benchmarks.stats.verdict`.
        """
        if "measured" in data and "value" in data:  # text to show and the number behind it
            measured, shown = data["value"], str(data["measured"])
        else:
            measured, shown = data.get("measured", data.get("value")), None
        threshold = data.get("threshold", data.get("goal"))
        goal = data.get("goal") if isinstance(data.get("goal"), str) else None
        verdict = data.get("verdict")
        if verdict not in (MET, MISSED, INCONCLUSIVE):
            verdict = {True: MET, False: MISSED}.get(data.get("met"), INCONCLUSIVE)
        interval = data.get("interval")
        verdict = _rejudge(verdict, measured, threshold, data.get("comparison"), interval, data.get("rounds"))
        return cls(
            name=str(data.get("target", "?")),
            measured=measured,
            threshold=None if isinstance(threshold, str) else threshold,
            comparison=data.get("comparison"),
            verdict=verdict,
            command=data.get("command") or command,
            interval=tuple(interval) if interval else None,
            shown=shown,
            goal=goal,
            details={k: v for k, v in data.items() if k not in _FIELDS},
        )

    @property
    def met(self) -> bool | None:
        """``True`` met, ``False`` missed, ``None`` inconclusive (the ``met`` field of the JSON)."""
        return {MET: True, MISSED: False}.get(self.verdict)

    @property
    def goal_text(self) -> str:
        """The goal as shown: ``goal``, else ``comparison threshold``, else ``""``."""
        if self.goal is not None:
            return self.goal
        if self.threshold is None:
            return ""
        value = mdtable.fmt_num(self.threshold)
        return f"{self.comparison} {value}" if self.comparison else value

    @property
    def measured_text(self) -> str:
        """The measured value as shown (with its interval when known)."""
        text = self.shown if self.shown is not None else mdtable.fmt_num(self.measured)
        if self.interval is not None and self.shown is None:
            text += f" [{self.interval[0]:.3g}-{self.interval[1]:.3g}]"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; it keeps the older keys (``target``, ``measured``, ``value``, ``goal``, ``met``)."""
        out: dict[str, Any] = {"target": self.name, "measured": self.measured if self.shown is None else self.shown}
        if self.shown is not None:
            out["value"] = self.measured
        if self.threshold is not None or self.goal is not None:
            out["goal"] = self.goal if self.goal is not None else self.threshold
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.comparison:
            out["comparison"] = self.comparison
        out["met"] = self.met
        out["verdict"] = self.verdict
        if self.interval is not None:
            out["interval"] = list(self.interval)
        if self.command:
            out["command"] = self.command
        out.update(self.details)
        return out


def targets_table(targets: Sequence[Target]) -> str:
    """Targets as a markdown table: target, measured, goal (when any has one), verdict.

    Args:
        targets: The targets.

    Returns:
        Markdown text (``""`` for no targets).
    """
    if not targets:
        return ""
    goals = any(t.goal_text for t in targets)
    rows = []
    for t in targets:
        extra = [f"{k}={t.details[k]}" for k in _SHOWN_DETAILS if k in t.details]
        name = t.name + (f" [{', '.join(extra)}]" if extra else "")
        verdict = f"**{t.verdict}**" if t.verdict == MISSED else t.verdict
        rows.append([name, t.measured_text] + ([t.goal_text] if goals else []) + [verdict])
    numeric = all(t.shown is None and isinstance(t.measured, (int, float)) for t in targets)
    m = "r" if numeric else "l"  # long text measurements read better left-aligned
    if goals:
        return mdtable.markdown_table(["target", "measured", "goal", "verdict"], rows, f"l{m}rl")
    return mdtable.markdown_table(["target", "measured", "verdict"], rows, f"l{m}l")



class Suite:
    """A benchmark suite: a template whose subclasses declare their options, measurement, summary and plot.

    Subclasses set :attr:`name`, :attr:`title` and :attr:`measures`, and either
    :attr:`measurement` (with :meth:`configure`) or :meth:`measure`; they override
    :meth:`add_arguments`, :meth:`summarise`, :meth:`plot` (with :attr:`has_plot`), :meth:`tables`
    and, when the JSON stores no targets, :meth:`targets`. :meth:`run` is the same for every suite.

    Args:
        results_dir: Where the results JSON files are (default ``benchmarks/results``).
    """

    #: The suite's name (``io``), as given to ``python -m benchmarks``.
    name: str = ""
    #: One-line description.
    title: str = ""
    #: Results file stem (default ``<name>_bench``): ``<stem>.json`` and ``<stem>.png``.
    results_name: str | None = None
    #: Repository paths (files or folders) whose code the suite measures: results older than
    #: their last change are stale (``--report --check``).
    measures: tuple[str, ...] = ()
    #: Help text of the suite's options (default: the first paragraph of its module's docstring).
    description: str | None = None
    #: Folder under ``benchmarks/data`` that ``--data-dir`` defaults to (``None``: the suite keeps no data).
    data_name: str | None = None
    #: Whether the suite draws a plot (``--no-plot`` skips it).
    has_plot: bool = False
    #: ``False`` for results written by a measurement module of its own (``python -m benchmarks.X``),
    #: which the report renders and checks but ``python -m benchmarks NAME`` cannot run.
    runnable: bool = True
    #: For a suite that is not :attr:`runnable`: the command that writes its results.
    how: str = ""
    #: Further results files (names beside the suite's own) that its tables read.
    also_reads: tuple[str, ...] = ()
    #: The measurement :meth:`measure` calls on :meth:`configure`'s result, ``(config) -> results``
    #: (a module-level ``run``, set with ``staticmethod``; ``None``: the suite overrides :meth:`measure`).
    measurement: Callable[[Any], dict[str, Any]] | None = None
    #: Format of the log lines while measuring (``logging.basicConfig``'s; times as ``%H:%M:%S``).
    log_format: str = "%(message)s"
    #: Level of the log lines shown while measuring without ``--quiet`` (with it: warnings only).
    log_level: int = logging.INFO
    #: Loggers held at warnings while measuring (``("streamprune",)``: the library's progress lines hidden).
    quiet_loggers: tuple[str, ...] = ()

    def __init__(self, results_dir: str | None = None) -> None:
        self.results_dir = results_dir or resultsfile.DEFAULT_RESULTS
        #: The results file the last :meth:`run` wrote (``None`` before one).
        self.last_written: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # ---------------------------------------------------------------- what a suite declares

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the suite's own options to ``parser`` (the base's are already there)."""

    def configure(self, args: argparse.Namespace) -> Any:
        """The options as :attr:`measurement` takes them (``--quick`` sizes, parsed lists; default: as parsed)."""
        return args

    def measure(self, args: argparse.Namespace) -> dict[str, Any]:
        """Measure; return the results (runs, setup; the base adds provenance, then :meth:`summarise`).

        By default :attr:`measurement` of :meth:`configure`'s result.

        Args:
            args: The parsed options: the base's (``quick``, ``out``, ``seed``, ``data_dir``,
                ``no_plot``, ``quiet``) and the suite's own.
        """
        if self.measurement is None:
            raise NotImplementedError(f"suite {self.name!r} cannot be run: its results come from a module of its own")
        return self.measurement(self.configure(args))

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        """Recompute the summary and targets from the stored runs (measures nothing; default: as they are)."""
        return results

    def plot(self, results: dict[str, Any], path: str) -> None:
        """Draw the plot of ``results`` to ``path`` (suites with :attr:`has_plot`)."""

    def tables(self, results: dict[str, Any]) -> str:
        """The suite's own tables as markdown (none by default)."""
        return ""

    def output_name(self, args: argparse.Namespace) -> str:
        """The results file stem for these options (default :attr:`stem`; a suite with parts may pick another)."""
        return self.stem

    # ---------------------------------------------------------------- what the base owns

    @property
    def stem(self) -> str:
        """File name stem of the results and plot (``io_bench``)."""
        return self.results_name or f"{self.name}_bench"

    def results_path(self, quick: bool = False, out: str | None = None) -> str:
        """The results JSON of a full or ``--quick`` run (in ``out`` when given)."""
        folder = out or os.path.join(self.results_dir, *(["quick"] if quick else []))
        return os.path.join(folder, f"{self.stem}.json")

    def plot_path(self, quick: bool = False, out: str | None = None) -> str:
        """The plot next to the results JSON (it may not exist)."""
        return os.path.splitext(self.results_path(quick, out))[0] + ".png"

    def parser(self) -> argparse.ArgumentParser:
        """The suite's argument parser: the base's options, then :meth:`add_arguments`'s."""
        doc = self.description or (sys.modules[type(self).__module__].__doc__ or self.title).split("\n\n")[0]
        p = arg_parser(self.name, doc)
        base = p.add_argument_group("options of every suite")
        base.add_argument("--quick", action="store_true", help="a smoke run (small sizes), written to results/quick/")
        base.add_argument("--out", default=None, help="results directory (default benchmarks/results, or results/quick with --quick)")
        base.add_argument("--seed", type=int, default=0, help="base seed of data, masks and round order (default 0)")
        default_data = os.path.join(resultsfile.DEFAULT_DATA, self.data_name) if self.data_name else None
        base.add_argument("--data-dir", default=default_data,
                          help=f"where generated data is kept between runs (default {default_data or 'the suite decides'})")
        base.add_argument("--no-plot", action="store_true", help="do not draw the plot")
        base.add_argument("--quiet", "-q", action="store_true", help="warnings only, no progress bars")
        base.add_argument("--resummarise", "--resummarize", "--plot-only", dest="resummarise", metavar="JSON", default=None,
                          help="measure nothing: recompute the summary and targets of a results file from its runs, rewrite it "
                               "and its plot (--resummarize and --plot-only are the same option)")
        self.add_arguments(p)
        return p

    def parse(self, argv: Sequence[str]) -> argparse.Namespace:
        """Parse ``argv``; ``args.out`` is resolved to the results directory."""
        args = self.parser().parse_args(list(argv))
        args.out = args.out or os.path.join(self.results_dir, *(["quick"] if args.quick else []))
        return args

    def setup_logging(self, args: argparse.Namespace) -> None:
        """Log lines while measuring: :attr:`log_level` (``--quiet``: warnings) in :attr:`log_format`."""
        logging.basicConfig(level=logging.WARNING if args.quiet else self.log_level, format=self.log_format, datefmt="%H:%M:%S")
        for name in self.quiet_loggers:
            logging.getLogger(name).setLevel(logging.WARNING)

    def run(self, argv: Sequence[str]) -> dict[str, Any]:
        """Measure (or re-summarise), record provenance, write the results JSON atomically, draw the plot.

        Args:
            argv: The suite's command-line options (``--quick`` for a smoke run to ``results/quick/``).

        Returns:
            The results dict as written.

        Raises:
            FileNotFoundError: ``--resummarise`` names no file.
            RuntimeError: The suite is not :attr:`runnable`.
        """
        if not self.runnable:
            raise RuntimeError(f"suite {self.name!r} is not run by python -m benchmarks: its results come from `{self.how}`")
        args = self.parse(argv)
        if args.resummarise:
            path = args.resummarise
            results = resultsfile.load_json(path)
            if results is None:
                raise FileNotFoundError(f"--resummarise {path}: no such results file")
            if not _recorded(results, "commit") and not _recorded(results, "results_file"):
                # an older file that recorded no commit or date: keep what git knows of it before it is rewritten
                results["results_file"] = provenance.file_history(path)
            results = self.summarise(results)
            results["resummarised"] = {**provenance.git_revision(), "command": provenance.command_line(),
                                       "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        else:
            origin = provenance.provenance()  # before measuring: the code that ran, not the code at the end
            self.setup_logging(args)
            results = self.measure(args)
            results = self.summarise({**origin, **results, "quick": bool(args.quick)})
            path = os.path.join(args.out, f"{self.output_name(args)}.json")
        resultsfile.write_json(path, results)
        self.last_written = path
        if self.has_plot and not args.no_plot:
            self.plot(results, os.path.splitext(path)[0] + ".png")
        return results

    def results(self, quick: bool = False) -> dict[str, Any] | None:
        """The latest results (``None`` if the suite has not run).

        Raises:
            ValueError: The results file is not a JSON object.
        """
        return resultsfile.load_json(self.results_path(quick))

    def command(self, results: dict[str, Any]) -> str | None:
        """The command that produced ``results``, as recorded (``command`` or ``meta.command``)."""
        return _recorded(results, "command")

    def commit(self, results: dict[str, Any]) -> tuple[str | None, bool | None]:
        """The recorded git commit and dirty flag of ``results`` (``None`` where not recorded)."""
        commit, dirty = _recorded(results, "commit"), _recorded(results, "dirty")
        revision = _recorded(results, "revision")
        if commit is None and isinstance(revision, dict):  # remote_clients before provenance()
            commit, dirty = revision.get("commit"), revision.get("dirty")
        if isinstance(commit, str) and commit.endswith("+dirty"):  # keptcache's older "sha+dirty"
            commit, dirty = commit[: -len("+dirty")], True
        return commit, dirty

    def targets(self, results: dict[str, Any]) -> list[Target]:
        """The suite's targets judged on ``results`` (by default the ``targets`` list stored in them)."""
        command = self.command(results)
        return [Target.from_dict(t, command) for t in results.get("targets") or [] if isinstance(t, dict)]

    def markdown(self, results: dict[str, Any]) -> str:
        """The suite's tables, then ``Targets: N of M met.`` and the targets table.

        Args:
            results: The results dict (as written by :meth:`run`).

        Returns:
            Markdown text.
        """
        parts = []
        body = self.tables(results).strip()
        if body:
            parts.append(body)
        targets = self.targets(results)
        if targets:
            met = sum(t.verdict == MET for t in targets)
            parts.append(f"Targets: {met} of {len(targets)} met.\n\n{targets_table(targets)}")
        return "\n\n".join(parts)


def _recorded(results: dict[str, Any], key: str) -> Any:
    """``results[key]``, else ``results["meta"][key]`` (older files), else ``None``."""
    if key in results:
        return results[key]
    meta = results.get("meta")
    return meta.get(key) if isinstance(meta, dict) else None
