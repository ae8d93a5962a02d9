"""Markdown tables and number formatting of the suites' reports."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["fmt_num", "markdown_table", "ratios_of"]


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
