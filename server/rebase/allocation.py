"""REBASE budget allocation: how many children each node of a depth gets.

The reference semantics (docs/architecture.md, "REBASE"): sort nodes by score descending,
weight each by
``e_k = exp(score_k / T)`` and walk the list handing out
``n_k = ceil(budget * e_k / sum_remaining)``, then ``budget -= n_k`` and ``sum_remaining -= e_k``.
Rounding *up* favours the best nodes, and because the last node with a non-zero share always takes
everything that is left, the walk hands out exactly the budget and prunes the low-scoring tail.

Numerics (why the code is not a literal transcription):
* ``exp`` is taken of ``(score - max_score) / T``: the softmax ratios are unchanged, nothing
  overflows at small T, and the best node's weight is exactly 1, so ``sum_remaining`` is never 0
  while budget is left.
* ``sum_remaining`` is the suffix sum of the sorted weights, computed from the smallest up, instead
  of a running subtraction that can drift below the next weight (or below 0) in floating point.
* ``ceil`` is taken of the share minus ``1e-9``, so a share that is an integer up to rounding error
  (16 equal scores: 16 * 1 / 16) is not bumped to the next integer.
* Each count is clamped to ``[0, budget]``: counts are never negative and never overspend.

Ties: ``sorted`` is stable, so among equal scores the node that comes first in ``scores`` is visited
first and gets the larger share when the shares do not divide evenly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["allocate_children"]

_ROUNDING_SLACK = 1e-9


def allocate_children(scores: Sequence[float], budget: int, temperature: float) -> list[int]:
    """Children per node, in the order of ``scores``; sums to ``budget`` when both are non-empty.

    Raises ValueError for ``temperature <= 0``, ``budget < 0`` or a non-finite score. With no scores
    the result is ``[]`` (the budget cannot be spent; the caller stops the search).
    """
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget!r}")
    if not all(math.isfinite(s) for s in scores):
        raise ValueError(f"scores must be finite, got {list(scores)!r}")

    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep input order
    top = scores[order[0]] if order else 0.0
    weights = [math.exp((scores[i] - top) / temperature) for i in order]
    suffix = [0.0] * (len(weights) + 1)
    for k in range(len(weights) - 1, -1, -1):
        suffix[k] = suffix[k + 1] + weights[k]

    counts = [0] * len(scores)
    remaining = budget
    for k, i in enumerate(order):
        if remaining == 0:
            break
        if suffix[k] <= 0.0 or k == len(order) - 1:
            n = remaining  # nothing below carries weight: this node takes the rest
        else:
            n = math.ceil(remaining * weights[k] / suffix[k] - _ROUNDING_SLACK)
        n = min(max(n, 0), remaining)
        counts[i] = n
        remaining -= n
    return counts
