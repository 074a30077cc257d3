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


def two_side_table(
    title: str,
    metrics: Sequence[tuple[str, str, int]],
    summary: Mapping[str, Mapping],
    sides: tuple[tuple[str, str], tuple[str, str]],
) -> str:
    """Rows of `metrics` (key, label, digits) from a :func:`compare_sides` summary: each side's
    median (min–max) and the ratio. `sides`: ((key, column title), (key, column title))."""
    (a, a_title), (b, b_title) = sides
    rows = [
        [label, fmt_spread(summary[key][a], digits), fmt_spread(summary[key][b], digits),
         fmt(summary[key]["ratio"], 3)]
        for key, label, digits in metrics
    ]  # fmt: skip
    header = [title, f"{a_title}: median (min–max)", f"{b_title}: median (min–max)", "ratio"]
    return markdown_table(header, rows)
