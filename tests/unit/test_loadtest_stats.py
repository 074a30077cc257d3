"""Wilson interval against published values, and the paper's efficiency score."""

from __future__ import annotations

import pytest

from loadtest.protocols import PAPER_ROWS
from loadtest.stats import efficiency, percentile, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Newcombe (1998), Stat. Med. 17:857, Table I (method 3), and textbook values
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),
        (1, 29, 0.0061, 0.1718),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
    ],
)
def test_wilson_known_values(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=5e-5)
    assert hi == pytest.approx(high, abs=5e-5)


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) is None
    assert wilson_interval(0, 7)[0] == 0.0  # exactly, no rounding residue below 0
    assert wilson_interval(7, 7)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_efficiency_reproduces_the_paper() -> None:
    # From the paper's rounded table the score comes out within 1 % for the REBASE rows...
    for key in ("rebase w=3", "rebase w=6", "rebase w=16"):
        row = PAPER_ROWS[key]
        assert efficiency(row.accuracy, row.tflops, row.seconds) == pytest.approx(
            row.efficiency, rel=0.012
        )
    # ... and by definition: (acc % / TFLOPs) x (acc % / s) x 100.
    assert efficiency(0.5, 2.0, 5.0) == pytest.approx((50 / 2) * (50 / 5) * 100)
    with pytest.raises(ValueError):
        efficiency(0.5, 0.0, 1.0)


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(range(101)), 95) == 95.0
