"""Summaries of records: the Markdown table, the JSON summary, and the paper comparison.

Definitions (also in docs/loadtest.md):
* accuracy = correct / problems; a failed request counts as wrong (it is in the denominator);
* runtime = first request sent -> last response received, over the config's records;
* latency statistics and "seconds per question" use the problems that did not fail;
* FLOPs per question = the sum of `usage.flops` over all of a problem's requests (votes and
  the answer pass), averaged over problems; TFLOPs = 1e12 FLOPs;
* efficiency = (accuracy % / nominal TFLOPs per question) x (accuracy % / seconds per question)
  x 100, the paper's score. Nominal FLOPs (as if nothing were cached) because the paper charged
  every token; `efficiency_executed` in the JSON uses executed FLOPs instead.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.protocols import PAPER_ROWS
from loadtest.records import Record, by_config
from loadtest.stats import efficiency, mean, percentile, wilson_interval

TERA = 1e12


@dataclass
class ConfigSummary:
    """One row of the report."""

    config: str
    method: str
    problems: int
    correct: int
    errors: int
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    runtime_s: float
    throughput_per_min: float | None
    latency_mean_s: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    ttft_p50_s: float | None
    tflops_executed_per_problem: float
    tflops_nominal_per_problem: float
    total_tflops_executed: float
    total_tflops_nominal: float
    reward_tflops_nominal_per_problem: float
    tokens_per_problem: float
    thought_tokens_per_problem: float
    efficiency: float | None
    efficiency_executed: float | None


def _efficiency(acc: float | None, tflops: float, seconds: float | None) -> float | None:
    if acc is None or seconds is None or tflops <= 0 or seconds <= 0:
        return None
    return efficiency(acc, tflops, seconds)


def summarize(records: Sequence[Record]) -> list[ConfigSummary]:
    """One summary per config, in the order the configs first appear in `records`."""
    out = []
    for name, rs in by_config(records).items():
        n = len(rs)
        correct = sum(r.correct for r in rs)
        ok = [r for r in rs if r.error is None]
        latencies = [r.latency for r in ok if r.latency is not None]
        ttfts = [r.ttft for r in ok if r.ttft is not None]
        runtime = max(r.end_time for r in rs) - min(r.start_time for r in rs)
        ci = wilson_interval(correct, n)
        acc = correct / n if n else None
        exe = sum(r.flops_executed for r in rs) / TERA
        nom = sum(r.flops_nominal for r in rs) / TERA
        seconds = mean(latencies)
        out.append(
            ConfigSummary(
                config=name,
                method=rs[0].method,
                problems=n,
                correct=correct,
                errors=n - len(ok),
                accuracy=acc,
                ci_low=ci[0] if ci else None,
                ci_high=ci[1] if ci else None,
                runtime_s=runtime,
                throughput_per_min=60.0 * n / runtime if runtime > 0 else None,
                latency_mean_s=seconds,
                latency_p50_s=percentile(latencies, 50),
                latency_p95_s=percentile(latencies, 95),
                ttft_p50_s=percentile(ttfts, 50),
                tflops_executed_per_problem=exe / n,
                tflops_nominal_per_problem=nom / n,
                total_tflops_executed=exe,
                total_tflops_nominal=nom,
                reward_tflops_nominal_per_problem=sum(r.reward_flops_nominal for r in rs)
                / TERA
                / n,
                tokens_per_problem=sum(r.total_tokens for r in rs) / n,
                thought_tokens_per_problem=sum(r.thought_tokens for r in rs) / n,
                efficiency=_efficiency(acc, nom / n, seconds),
                efficiency_executed=_efficiency(acc, exe / n, seconds),
            )
        )
    return out


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
    "| config | problems | accuracy | 95 % CI (%) | errors | runtime (s) | throughput (q/min) "
    "| latency mean (s) | p50 (s) | p95 (s) | TTFT p50 (s) | TFLOPs/q executed "
    "| TFLOPs/q nominal | total TFLOPs executed | efficiency |"
)


def markdown_table(summaries: Sequence[ConfigSummary]) -> str:
    """The run's table: one row per config."""
    lines = [TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ") + "---|"]
    for s in summaries:
        cells = [
            s.config,
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
            _num(s.total_tflops_executed),
            _num(s.efficiency),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_table(summaries: Sequence[ConfigSummary]) -> str:
    """Our row next to the paper's for every config of the paper (ours "–" if not run)."""
    ours = {s.config: s for s in summaries}
    lines = [
        "| config | accuracy | paper | TFLOPs/q | paper | s/q | paper | efficiency | paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, p in PAPER_ROWS.items():
        s = ours.get(key)
        cells = [
            key,
            _pct(s.accuracy) if s else DASH,
            _pct(p.accuracy),
            _num(s.tflops_nominal_per_problem) if s else DASH,
            f"{p.tflops:.2f}",
            _f(s.latency_mean_s, ".2f") if s else DASH,
            f"{p.seconds:.2f}",
            _num(s.efficiency) if s else DASH,
            f"{p.efficiency:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _run_facts(records: Sequence[Record]) -> tuple[str | None, str | None]:
    models = sorted({r.model for r in records if r.model})
    protocols = sorted({r.protocol for r in records if r.protocol})
    return (", ".join(models) or None, ", ".join(protocols) or None)


def markdown_report(records: Sequence[Record]) -> str:
    """The whole Markdown report: title, the table, and for the seed protocol the paper's."""
    summaries = summarize(records)
    model, protocol = _run_facts(records)
    parts = [f"# GSM8K replay: {model or 'unknown model'}", ""]
    if protocol:
        parts += [f"Protocol: `{protocol}`.", ""]
    parts += [markdown_table(summaries), ""]
    if protocol == "seed":
        parts += [
            "## Next to the paper (Mistral-7B, one A100; per question)",
            "",
            "Ours: nominal TFLOPs (every token charged, as the paper did) and mean latency.",
            "",
            paper_table(summaries),
            "",
        ]
    return "\n".join(parts)


def json_summary(records: Sequence[Record], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Machine-readable summary: run facts, one object per config, the paper's rows if seeded."""
    model, protocol = _run_facts(records)
    out: dict[str, Any] = {
        "model": model,
        "protocol": protocol,
        "configs": [dataclasses.asdict(s) for s in summarize(records)],
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
) -> str:
    """Write report.md, summary.json and (optionally) the PNG plots; return the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown_report(records)
    (out_dir / "report.md").write_text(text)
    summary = json_summary(records, extra)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if plots:
        from loadtest.plots import write_plots

        write_plots(summarize(records), out_dir, paper=summary.get("protocol") == "seed")
    return text
