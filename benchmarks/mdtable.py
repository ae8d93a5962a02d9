"""Markdown tables and number formatting of the suites' reports."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["fmt_num", "markdown_table", "ratios_of", "rows_table"]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], aligns: str | None = None) -> str:
    """A markdown table, columns padded; ``aligns`` has one ``l`` or ``r`` per column (default: first ``l``, rest ``r``)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    aligns = aligns or "l" + "r" * (len(headers) - 1)

    def fmt(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, aligns)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, aligns)) + "|"
    return "\n".join([fmt(cells[0]), sep] + [fmt(r) for r in cells[1:]])


def fmt_num(value: Any, digits: int = 3) -> str:
    """A number for a table: floats with ``digits`` decimals and thousands separators, ints with separators."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return "nan"
        return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return str(value)


def ratios_of(rows: Sequence[dict], key: str = "ratio") -> list[float]:
    """The distinct values of ``key`` in ``rows``, sorted (rows without it are skipped)."""
    return sorted({float(r[key]) for r in rows if r.get(key) is not None})


def _cell(value: Any) -> str:
    """One value of a results row as a table cell: spreads as ``median [min-max]``, lists by their length."""
    if isinstance(value, dict):
        med = value.get("median", value.get("median_s"))
        if isinstance(med, (int, float)):
            lo, hi = value.get("min"), value.get("max")
            runs = value.get("runs_s") or value.get("runs")
            if lo is None and isinstance(runs, list) and runs:
                lo, hi = min(runs), max(runs)
            return fmt_num(float(med)) + (f" [{fmt_num(float(lo))}-{fmt_num(float(hi))}]" if lo is not None else "")
        return ", ".join(f"{k} {fmt_num(v)}" for k, v in value.items() if not isinstance(v, (dict, list)))
    if isinstance(value, list):
        return f"{len(value)} values"
    return fmt_num(value)


def rows_table(rows: Sequence[dict[str, Any]], skip: Sequence[str] = ()) -> str:
    """A list of results rows (dicts) as a markdown table, for suites without tables of their own.

    Columns are the keys in first-seen order, except ``skip`` and keys whose values are lists in
    every row (per-round values, summarised in the neighbouring columns); a nested spread
    (``{"median", "min", "max"}`` or ``{"median_s", "runs_s"}``) shows as ``median [min-max]``.

    Args:
        rows: The rows.
        skip: Keys not to show.

    Returns:
        Markdown text (``""`` for no rows).
    """
    if not rows:
        return ""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys and k not in skip]
    keys = [k for k in keys if not all(isinstance(r.get(k), list) for r in rows if k in r)]
    cells = [[_cell(r.get(k, "")) if k in r else "" for k in keys] for r in rows]
    aligns = "".join("r" if all(isinstance(r.get(k), (int, float, dict)) for r in rows if k in r) else "l" for k in keys)
    return markdown_table(keys, cells, aligns)
