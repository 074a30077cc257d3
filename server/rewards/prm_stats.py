"""The PRM engine's own token counter, for the accounting identity of its calls.

Why a stat logger of its own: the PRM engine runs with vLLM's default loggers off (a second
engine's Prometheus logger would unregister the policy engine's `vllm:*` series), so nothing
counts what it computed. This logger, handed to its `AsyncLLM(stat_loggers=...)`, counts what
vLLM's `vllm:iteration_tokens_total` would (each request's uncached prompt at its first output,
plus generated tokens, none for a pooling model) into `thinkscale_prm_iteration_tokens_total`,
which the gateway's charge of the PRM calls must equal (docs/architecture.md, "Accounting
identity").
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter
from vllm.v1.metrics.loggers import PrometheusStatLogger

PRM_ITERATION_TOKENS = Counter(
    "thinkscale_prm_iteration_tokens",
    "Tokens the PRM engine computed, counted as vLLM's vllm:iteration_tokens_total counts them "
    "for the policy engine (uncached prompt tokens at each request's first output + generated).",
)


class PrmTokenLogger(PrometheusStatLogger):
    """Adds each engine iteration's computed prompt and generated tokens to the counter.

    A `PrometheusStatLogger` only in name: vLLM adds its own Prometheus logger to every engine
    unless one is given, and that one would unregister the policy engine's `vllm:*` series;
    this one registers and unregisters nothing (it never runs the parent's `__init__`)."""

    def __init__(self, vllm_config: Any, engine_indexes: list[int] | None = None) -> None:
        self.engine_indexes = engine_indexes or [0]

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
        if iteration_stats is None:
            return
        PRM_ITERATION_TOKENS.inc(
            iteration_stats.prompt_token_stats.computed + iteration_stats.num_generation_tokens
        )

    def record_sleep_state(self, is_awake: int = 0, level: int = 0) -> None:
        return None

    def record_admission_rejection(self, reason: str) -> None:
        return None

    def log_engine_initialized(self) -> None:
        return None

    def log(self) -> None:
        return None
