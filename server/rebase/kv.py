"""What the `priority` REBASE scheduler knows about the engine's KV cache.

Why here and this way: admission by KV blocks needs the engine's block count and block size
(`PolicyEngine.kv_layout()`) and, to correct our own estimate, the engine's measured usage. The
cheapest reliable reading of the usage in-process is the `vllm:kv_cache_usage_perc` gauge vLLM's
Prometheus logger keeps in the default registry (updated on every engine step it logs); we
collect that one collector, not the whole registry, and at most every `max_age_s`.
"""

from __future__ import annotations

import math
import time

from prometheus_client import REGISTRY

from server.rebase.scheduler import KvCost

USAGE_GAUGE = "vllm:kv_cache_usage_perc"


def expansion_cost(group: object, prefix_tokens: int, step_tokens: int, block_size: int) -> KvCost:
    """Blocks one expansion of a node will hold at its peak: the node's prefix (prompt + path,
    shared by its siblings) and its own step, plus one block where the two meet (the prefix's
    last, partly filled block is copied on write by the first token of each sibling)."""
    return KvCost(
        group=group,
        shared_blocks=prefix_tokens // block_size,
        own_blocks=math.ceil(step_tokens / block_size) + 1,
    )


class KvUsageReader:
    """The engine's KV usage fraction from its Prometheus gauge, cached for `max_age_s`."""

    def __init__(self, max_age_s: float = 0.05, registry=REGISTRY) -> None:
        self.max_age_s = max_age_s
        self._registry = registry
        self._at = -math.inf
        self._value: float | None = None

    def __call__(self) -> float | None:
        now = time.monotonic()
        if now - self._at >= self.max_age_s:
            self._at = now
            self._value = self._read()
        return self._value

    def _read(self) -> float | None:
        # prometheus-client has no public lookup by name; `_names_to_collectors` is what its
        # own `get_sample_value` walks. Looked up on every read (a dict lookup): the gauge
        # appears once the engine's logger starts, and a later engine re-registers it.
        collector = getattr(self._registry, "_names_to_collectors", {}).get(USAGE_GAUGE)
        if collector is None:
            return None
        values = [s.value for m in collector.collect() for s in m.samples if s.name == USAGE_GAUGE]
        return max(values) if values else None
