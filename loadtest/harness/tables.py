"""Markdown tables for benchmark reports (the docs are generated from them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

DASH = "–"


def fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return DASH
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def fmt_spread(s: Mapping[str, float | int | None], digits: int = 2) -> str:
    """ "median (min-max)" of a :func:`loadtest.harness.results.spread`."""
    if s.get("median") is None:
        return DASH
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}–{fmt(s['max'], digits)})"


def cell(text: object) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", "⏎")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
