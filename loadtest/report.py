"""The report of a run: the Markdown table, the JSON summary, the paper comparison, the plots.

The numbers come from ``loadtest.summary`` (definitions there and in docs/loadtest.md); this
module only lays them out.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.conventions import PAPER_GFLOPS_PER_TOKEN
from loadtest.protocols import PAPER_ROWS
from loadtest.records import Record
from loadtest.summary import ConfigSummary, summarize

# ---- formatting ---------------------------------------------------------------------------------
DASH = "–"


def _f(value: float | None, fmt: str) -> str:
    return DASH if value is None else format(value, fmt)


def _num(value: float | None) -> str:
    """4 significant digits; thousands separators instead of an exponent from 1e4 to 1e9."""
    if value is None:
        return DASH
    if 1e4 <= abs(value) < 1e9:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.2f} %"


def _ci(s: ConfigSummary) -> str:
    if s.ci_low is None or s.ci_high is None:
        return DASH
    return f"[{100 * s.ci_low:.1f}, {100 * s.ci_high:.1f}]"


TABLE_HEADER = (
    "| config | early stop | problems | accuracy | 95 % CI (%) | errors | runtime (s) "
    "| throughput (q/min) "
    "| latency mean (s) | p50 (s) | p95 (s) | TTFT p50 (s) | TFLOPs/q executed "
    "| TFLOPs/q nominal | TFLOPs/q paper's convention | total TFLOPs executed | efficiency |"
)


def markdown_table(summaries: Sequence[ConfigSummary]) -> str:
    """The run's table: one row per config."""
    lines = [TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ") + "---|"]
    for s in summaries:
        cells = [
            s.config,
            s.early_stop or "–",
            str(s.problems),
            _pct(s.accuracy),
            _ci(s),
            str(s.errors),
            _f(s.runtime_s, ".2f"),
            _f(s.throughput_per_min, ".2f"),
            _f(s.latency_mean_s, ".3f"),
            _f(s.latency_p50_s, ".3f"),
            _f(s.latency_p95_s, ".3f"),
            _f(s.ttft_p50_s, ".3f"),
            _num(s.tflops_executed_per_problem),
            _num(s.tflops_nominal_per_problem),
            _num(s.paper_tflops_per_problem),
            _num(s.total_tflops_executed),
            _num(s.efficiency),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_table(summaries: Sequence[ConfigSummary]) -> str:
    """Our row next to the paper's for every config of the paper (ours "–" if not run).

    FLOPs twice for us: our policy-only nominal count (the paper counted only the policy), and
    the paper's own convention, which is the one its column is in; efficiency uses the latter."""
    ours = {s.config: s for s in summaries}
    lines = [
        "| config | accuracy | paper | TFLOPs/q ours (policy, nominal) "
        "| TFLOPs/q ours (paper's convention) | paper | s/q | paper "
        "| efficiency (paper's convention) | paper |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, p in PAPER_ROWS.items():
        s = ours.get(key)
        cells = [
            key,
            _pct(s.accuracy) if s else DASH,
            _pct(p.accuracy),
            _num(s.policy_tflops_nominal_per_problem) if s else DASH,
            _num(s.paper_tflops_per_problem) if s else DASH,
            f"{p.tflops:.2f}",
            _f(s.latency_mean_s, ".2f") if s else DASH,
            f"{p.seconds:.2f}",
            _num(s.efficiency_paper) if s else DASH,
            f"{p.efficiency:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_note(paper_gflops_per_token: float) -> str:
    return (
        "Which FLOPs are which: *policy, nominal* is our count (per computed token, prompts "
        "and attention included, as if nothing were cached; the PRM left out, as the paper "
        "counted only the policy). *Paper's convention* is the seed code's: "
        f"{paper_gflops_per_token:g} GFLOPs per generated token, nothing for prompts, "
        "attention or thoughts, and for REBASE `max_step_tokens` per step of every node's path "
        "(loadtest/conventions.py). The paper's column is in that convention, so compare "
        "like with like; efficiency uses it too."
    )


def _run_facts(records: Sequence[Record]) -> tuple[str | None, str | None]:
    models = sorted({r.model for r in records if r.model})
    protocols = sorted({r.protocol for r in records if r.protocol})
    return (", ".join(models) or None, ", ".join(protocols) or None)


def markdown_report(
    records: Sequence[Record], paper_gflops_per_token: float = PAPER_GFLOPS_PER_TOKEN
) -> str:
    """The whole Markdown report: title, the table, and for the seed protocol the paper's."""
    summaries = summarize(records, paper_gflops_per_token)
    model, protocol = _run_facts(records)
    parts = [f"# GSM8K replay: {model or 'unknown model'}", ""]
    if protocol:
        parts += [f"Protocol: `{protocol}`.", ""]
    parts += [markdown_table(summaries), ""]
    if protocol == "seed":
        parts += [
            "## Next to the paper (Mistral-7B, one A100; per question)",
            "",
            paper_note(paper_gflops_per_token),
            "",
            paper_table(summaries),
            "",
        ]
    return "\n".join(parts)


def json_summary(
    records: Sequence[Record],
    extra: dict[str, Any] | None = None,
    paper_gflops_per_token: float = PAPER_GFLOPS_PER_TOKEN,
) -> dict[str, Any]:
    """Machine-readable summary: run facts, one object per config, the paper's rows if seeded."""
    model, protocol = _run_facts(records)
    out: dict[str, Any] = {
        "model": model,
        "protocol": protocol,
        "paper_gflops_per_token": paper_gflops_per_token,
        "configs": [dataclasses.asdict(s) for s in summarize(records, paper_gflops_per_token)],
    }
    if protocol == "seed":
        out["paper"] = {k: dataclasses.asdict(v) for k, v in PAPER_ROWS.items()}
    if extra:
        out["run"] = extra
    return out


def write_report(
    records: Sequence[Record],
    out_dir: Path,
    *,
    plots: bool = True,
    extra: dict[str, Any] | None = None,
    paper_gflops_per_token: float = PAPER_GFLOPS_PER_TOKEN,
) -> str:
    """Write report.md, summary.json and (optionally) the PNG plots; return the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown_report(records, paper_gflops_per_token)
    (out_dir / "report.md").write_text(text)
    summary = json_summary(records, extra, paper_gflops_per_token)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if plots:
        from loadtest.plots import write_plots

        write_plots(summarize(records, paper_gflops_per_token), out_dir)
    return text
