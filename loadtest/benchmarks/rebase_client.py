"""Send REBASE (or best-of-n baseline) requests closed-loop and keep what each one cost.

Why non-streaming: REBASE answers once, at the end of the search; the response body carries the
tree statistics (``method_details.rebase``) and the usage (tokens, cache hits, engine calls,
FLOPs) the benchmark needs per question.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import httpx

from loadtest.benchmarks.gsm8k import Question


@dataclass(frozen=True)
class TreeSettings:
    """The REBASE block and the sampling every configuration shares."""

    width: int = 8
    max_tokens: int = 256
    max_step_tokens: int = 64
    step_delimiter: str = "\n"
    balance_temperature: float = 0.2
    max_depth: int = 25
    temperature: float = 1.0
    reward_model: str = "arithmetic"
    seed: int = 0

    def rebase_body(self, model: str, q: Question) -> dict:
        return {
            "model": model,
            "prompt": q.prompt,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed_for(q),
            "method": "rebase",
            "rebase": {
                "width": self.width,
                "max_step_tokens": self.max_step_tokens,
                "step_delimiter": self.step_delimiter,
                "balance_temperature": self.balance_temperature,
                "max_depth": self.max_depth,
                "reward_model": self.reward_model,
            },
        }

    def best_of_n_body(self, model: str, q: Question, n: int) -> dict:
        """Plain sampling of ``n`` full solutions with the same token cap and temperature."""
        return {
            "model": model,
            "prompt": q.prompt,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed_for(q),
            "n": n,
            "method": "baseline",
        }

    def seed_for(self, q: Question) -> int:
        """One seed per question: the same tree in every configuration."""
        return self.seed * 100_003 + q.index


@dataclass
class Answered:
    """One question's response and its wall time."""

    question: int
    ok: bool
    latency_s: float
    usage: dict = field(default_factory=dict)
    tree: dict = field(default_factory=dict)
    text: str = ""
    error: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


async def _post(client: httpx.AsyncClient, url: str, q: Question, body: dict) -> Answered:
    start = time.perf_counter()
    try:
        response = await client.post(url, json=body)
    except httpx.HTTPError as exc:
        return Answered(q.index, False, time.perf_counter() - start, error=repr(exc))
    latency = time.perf_counter() - start
    if response.status_code != 200:
        return Answered(q.index, False, latency, error=response.text[:500])
    data = response.json()
    trees = (data.get("method_details") or {}).get("rebase") or [{}]
    return Answered(q.index, True, latency, data["usage"], trees[0], data["choices"][0]["text"])


async def run_closed_loop(
    base_url: str, bodies: Sequence[tuple[Question, dict]], concurrency: int
) -> tuple[float, list[Answered]]:
    """Send every body, at most ``concurrency`` at a time, in order; (wall seconds, answers)."""
    url = f"{base_url}/v1/completions"
    pending = list(enumerate(bodies))
    pending.reverse()
    answers: list[Answered | None] = [None] * len(bodies)
    async with httpx.AsyncClient(timeout=1800) as client:

        async def worker() -> None:
            while pending:
                i, (q, body) = pending.pop()
                answers[i] = await _post(client, url, q, body)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return wall, [a for a in answers if a is not None]


def tree_prompt_tokens(answer: Answered) -> int:
    """Prompt tokens summed over every engine call of one REBASE request.

    The usage meter (server/usage.py) charges each call ``forward = prompt - cached +
    max(generated - 1, 0)``; every step call generates at least one token, and the generated
    tokens of all calls are the tree's ``tree_tokens``, so
    ``sum(prompt) = forward + cached - tree_tokens + engine_calls``. Valid while the reward model
    makes no engine calls (the arithmetic PRM runs on the CPU; the benchmark checks this).
    """
    u = answer.usage
    return u["forward_tokens"] + u["cached_tokens"] - answer.tree["tree_tokens"] + u["engine_calls"]
