"""The REBASE tree a REBASE comparison grows on every side: the request block and its seeds.

Why in the harness: ``rebase_bench`` (the gateway's side) and ``hf_rebase`` (the transformers
side it runs as a subprocess) must grow the same trees from the same settings, and benchmarks do
not import each other, so the settings live below both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loadtest.harness.data import Problem


@dataclass(frozen=True)
class TreeSettings:
    """The REBASE block and the sampling every configuration (and the HF side) shares."""

    width: int = 8
    max_tokens: int = 256
    max_step_tokens: int = 64
    step_delimiter: str = "\n"
    balance_temperature: float = 0.2
    max_depth: int = 25
    temperature: float = 1.0
    reward_model: str = "arithmetic"
    seed: int = 0

    def seed_for(self, index: int) -> int:
        """One seed per question: the same tree in every configuration."""
        return self.seed * 100_003 + index

    def body(self, model: str, problem: Problem, prompt: str, n: int | None = None) -> dict:
        """The REBASE request, or with ``n`` plain best-of-n sampling under the same cap."""
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompt,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed_for(problem.index),
        }
        if n is not None:
            return {**body, "n": n, "method": "baseline"}
        block = {
            k: getattr(self, k)
            for k in ("width", "max_step_tokens", "step_delimiter", "balance_temperature")
        }
        block |= {"max_depth": self.max_depth, "reward_model": self.reward_model}
        return {**body, "method": "rebase", "rebase": block}
