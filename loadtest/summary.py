"""One summary per config of a run's records: the numbers every table and plot is built from.

Definitions (also in docs/loadtest.md):
* accuracy = correct / problems; a failed request counts as wrong (it is in the denominator);
* runtime = first request sent -> last response received, over the config's records;
* latency statistics and "seconds per question" use the problems that did not fail;
* FLOPs per question = the sum of `usage.flops` over all of a problem's requests (votes and
  the answer pass), averaged over problems; TFLOPs = 1e12 FLOPs;
* paper-convention TFLOPs = the seed's constant per generated token x the tokens it charged
  (loadtest/conventions.py); None when the records do not carry those tokens;
* efficiency = (accuracy % / TFLOPs per question) x (accuracy % / seconds per question) x 100,
  the paper's score: `efficiency` with our nominal FLOPs, `efficiency_executed` with executed
  FLOPs, `efficiency_paper` with the paper's convention (the only one comparable with its table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loadtest.conventions import PAPER_GFLOPS_PER_TOKEN
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
    policy_tflops_nominal_per_problem: float
    paper_tflops_per_problem: float | None
    tokens_per_problem: float
    thought_tokens_per_problem: float
    efficiency: float | None
    efficiency_executed: float | None
    efficiency_paper: float | None
    # REBASE's early-stop setting; "off" for REBASE records from before early stopping.
    early_stop: str | None = None


def _efficiency(acc: float | None, tflops: float, seconds: float | None) -> float | None:
    if acc is None or seconds is None or tflops <= 0 or seconds <= 0:
        return None
    return efficiency(acc, tflops, seconds)


def summarize(
    records: Sequence[Record], paper_gflops_per_token: float = PAPER_GFLOPS_PER_TOKEN
) -> list[ConfigSummary]:
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
        paper = None
        if all(r.seed_tokens is not None for r in rs):
            paper = sum(r.seed_tokens or 0 for r in rs) * paper_gflops_per_token * 1e9 / TERA / n
        out.append(
            ConfigSummary(
                config=name,
                method=rs[0].method,
                early_stop=rs[0].early_stop or ("off" if "rebase" in rs[0].method else None),
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
                policy_tflops_nominal_per_problem=sum(r.policy_flops_nominal for r in rs)
                / TERA
                / n,
                paper_tflops_per_problem=paper,
                thought_tokens_per_problem=sum(r.thought_tokens for r in rs) / n,
                efficiency=_efficiency(acc, nom / n, seconds),
                efficiency_executed=_efficiency(acc, exe / n, seconds),
                efficiency_paper=_efficiency(acc, paper or 0.0, seconds),
            )
        )
    return out
