"""The one interface every benchmark suite implements, and the shared :class:`Target` type.

A suite is a :class:`Suite` subclass instance registered by name in
:data:`benchmarks.registry.SUITES`:

* :attr:`Suite.name` (``io``) and :attr:`Suite.title`; its results are
  ``benchmarks/results/<name>_bench.json`` (``--quick``: ``results/quick/``) and, when the suite
  draws one, the plot ``<name>_bench.png`` next to it;
* :meth:`Suite.run` ``(argv) -> results``: measures (``argv`` are the suite's own command-line
  options, ``--quick`` among them), writes the JSON (and plot) and returns the results dict;
* :meth:`Suite.results` loads the latest JSON (``None`` if the suite has not run);
* :meth:`Suite.targets` ``(results) -> list[Target]``: the verdicts, read from the ``targets``
  list stored in the JSON by default;
* :meth:`Suite.markdown` ``(results) -> str``: the suite's tables (:meth:`Suite.tables`) followed
  by its targets table; ``report.py`` adds the heading, command, machine, date, plot and links.

A :class:`Target` is one goal of a suite: the measured value, the threshold and the comparison,
a verdict (``met``, ``missed``, or ``inconclusive`` when the measured interval straddles the
threshold) and the command that reproduces it. Suites build them with :meth:`Target.check` and
store :meth:`Target.to_dict` in their JSON; :meth:`Target.from_dict` also reads the older
``{"target", "measured" | "value", "goal", "met"}`` entries of existing results files.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import common

__all__ = ["INCONCLUSIVE", "MET", "MISSED", "Suite", "Target", "load_json", "targets_table"]

MET = "met"
MISSED = "missed"
INCONCLUSIVE = "inconclusive"

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
#: Keys of a stored target that :class:`Target` reads into its own fields (the rest go to ``details``).
_FIELDS = ("target", "measured", "value", "goal", "threshold", "comparison", "met", "verdict", "command", "interval")
#: Details shown in brackets after a target's name in the tables.
_SHOWN_DETAILS = ("layout", "level", "access", "ratio")


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
        **details: Any,
    ) -> Target:
        """A target with its verdict computed from the measurement.

        Args:
            name: What is aimed at.
            measured: The measured value (a NaN is never met).
            threshold: The goal's value.
            comparison: ``">="``, ``"<="``, ``">"`` or ``"<"``.
            interval: ``(low, high)`` of the measurement over repeats; when the threshold lies
                strictly inside it the verdict is :data:`INCONCLUSIVE`.
            command: The command that reproduces the measurement.
            shown: Text shown instead of the measured value.
            goal: Text shown instead of ``comparison threshold``.
            valid: ``False`` when the measurement is missing (the verdict is then :data:`MISSED`).
            **details: Extra fields stored with the target.

        Returns:
            The target.

        Raises:
            ValueError: Unknown comparison.
        """
        if comparison not in _COMPARE:
            raise ValueError(f"comparison {comparison!r}: expected one of {', '.join(_COMPARE)}")
        lo_hi = None if interval is None else (float(min(interval)), float(max(interval)))
        if not valid:
            verdict = MISSED
        elif lo_hi is not None and lo_hi[0] < threshold < lo_hi[1]:
            verdict = INCONCLUSIVE
        else:
            verdict = MET if bool(_COMPARE[comparison](measured, threshold)) else MISSED
        return cls(name, measured, threshold, comparison, verdict, command, lo_hi, shown, goal, dict(details))

    @classmethod
    def from_dict(cls, data: dict[str, Any], command: str | None = None) -> Target:
        """A target as stored in a results file, new or old layout.

        Args:
            data: ``to_dict()`` output, or an older ``{"target", "measured" | "value", "goal"?, "met"}``.
            command: The command to record when the entry names none (the results' command).

        Returns:
            The target; its verdict is the stored one (``met`` True/False/None -> met/missed/inconclusive).
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
        value = common.fmt_num(self.threshold)
        return f"{self.comparison} {value}" if self.comparison else value

    @property
    def measured_text(self) -> str:
        """The measured value as shown (with its interval when known)."""
        text = self.shown if self.shown is not None else common.fmt_num(self.measured)
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
        return common.markdown_table(["target", "measured", "goal", "verdict"], rows, f"l{m}rl")
    return common.markdown_table(["target", "measured", "verdict"], rows, f"l{m}l")


def load_json(path: str) -> dict[str, Any] | None:
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
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")  # noqa: TRY004 - callers catch ValueError
    return data


class Suite:
    """A benchmark suite: run it, load its results, judge its targets, render its tables.

    Subclasses set :attr:`name` and :attr:`title` and implement :meth:`run`; they override
    :meth:`tables` (and :meth:`targets`, when the JSON stores none) to render their results. A
    suite module binds its own functions, e.g. ``run = staticmethod(run_cli)``.

    Args:
        results_dir: Where the results JSON files are (default ``benchmarks/results``).
    """

    #: The suite's name (``io``); its results file is ``<name>_bench.json``.
    name: str = ""
    #: One-line description.
    title: str = ""

    def __init__(self, results_dir: str | None = None) -> None:
        self.results_dir = results_dir or common.DEFAULT_RESULTS

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    @property
    def stem(self) -> str:
        """File name stem of the results and plot (``io_bench``)."""
        return f"{self.name}_bench"

    def results_path(self, quick: bool = False) -> str:
        """The results JSON of a full or ``--quick`` run."""
        return os.path.join(self.results_dir, *(["quick"] if quick else []), f"{self.stem}.json")

    def plot_path(self, quick: bool = False) -> str:
        """The plot next to the results JSON (it may not exist)."""
        return os.path.splitext(self.results_path(quick))[0] + ".png"

    def run(self, argv: Sequence[str]) -> dict[str, Any]:
        """Measure: parse the suite's options ``argv``, write the results JSON (+ plot), return the results.

        Args:
            argv: The suite's command-line options (``--quick`` for a smoke run to ``results/quick/``).

        Returns:
            The results dict as written.
        """
        raise NotImplementedError(f"suite {self.name!r} cannot be run")

    def results(self, quick: bool = False) -> dict[str, Any] | None:
        """The latest results (``None`` if the suite has not run).

        Raises:
            ValueError: The results file is not a JSON object.
        """
        return load_json(self.results_path(quick))

    def command(self, results: dict[str, Any]) -> str | None:
        """The command that produced ``results``, as recorded (``command`` or ``meta.command``)."""
        command = results.get("command")
        if command is None and isinstance(results.get("meta"), dict):
            command = results["meta"].get("command")
        return command

    def targets(self, results: dict[str, Any]) -> list[Target]:
        """The suite's targets judged on ``results`` (by default the ``targets`` list stored in them)."""
        command = self.command(results)
        return [Target.from_dict(t, command) for t in results.get("targets") or [] if isinstance(t, dict)]

    def tables(self, results: dict[str, Any]) -> str:
        """The suite's own tables as markdown (none by default)."""
        return ""

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
