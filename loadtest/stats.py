"""The few statistics a report needs: Wilson interval, percentiles, the paper's efficiency score.

Why Wilson: with 128 questions and accuracies near 0 or 10 %, the normal-approximation interval
goes below 0 and is far too narrow; Wilson's score interval stays in [0, 1] and is accurate for
small n. Percentiles come from numpy (linear interpolation, numpy's default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion; None when n == 0."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError("successes must be in [0, n]")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends, no rounding residue
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of `values`; None for no values."""
    return float(np.percentile(values, q)) if len(values) else None


def mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if len(values) else None


def efficiency(accuracy: float, tflops_per_question: float, seconds_per_question: float) -> float:
    """The paper's score: (accuracy % / TFLOPs per question) x (accuracy % / s per question) x 100.

    `accuracy` is a fraction (0.1016 -> 10.16 %). Higher is better: it rewards accuracy twice
    and charges compute and time once each.
    """
    if tflops_per_question <= 0 or seconds_per_question <= 0:
        raise ValueError("FLOPs and seconds per question must be positive")
    pct = 100.0 * accuracy
    return (pct / tflops_per_question) * (pct / seconds_per_question) * 100.0
