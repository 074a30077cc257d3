"""An easy-arithmetic prompt set on which a small model's REBASE leaves agree.

Why: SmolLM2-135M rarely agrees with itself on GSM8K, so an early stop that waits for a settled
vote has little to save there; on a strong model the vote settles early. Single-digit sums with
a two-example prompt make even the 135M model converge, so the benchmarks can show what early
stopping saves where the answers converge (docs/benchmarks.md says which workload each table
ran). Deterministic: the same seed gives the same problems.
"""

from __future__ import annotations

import random

from loadtest.harness.data import Problem

NAME = "easy_arithmetic"
# Two worked examples, one line per step: the equation, then the marked answer the vote reads.
PROMPT = (
    "Q: What is 3 + 4?\nA: 3 + 4 = 7\nThe answer is 7.\n\n"
    "Q: What is 6 + 2?\nA: 6 + 2 = 8\nThe answer is 8.\n\n"
    "Q: {question}\nA:"
)


def easy_problems(count: int, seed: int = 0) -> list[tuple[Problem, str]]:
    """`count` single-digit sums (operands 1..9), each with its prompt."""
    rng = random.Random(seed)
    out = []
    for index in range(count):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        question = f"What is {a} + {b}?"
        problem = Problem(
            id=f"{NAME}-{index}",
            index=index,
            question=question,
            answer=f"{a} + {b} = {a + b}\n#### {a + b}",
            reference=str(a + b),
        )
        out.append((problem, PROMPT.format(question=question)))
    return out
