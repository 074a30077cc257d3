"""REBASE allocation: the reference checks (docs/architecture.md) and the walk's invariants."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.rebase.allocation import allocate_children


@pytest.mark.parametrize(
    ("scores", "budget", "temperature", "expected"),
    [
        ([0.9, 0.8, 0.3], 16, 0.2, [10, 6, 0]),
        ([0.9, 0.8, 0.3], 16, 0.1, [12, 4, 0]),
        ([0.5] * 16, 16, 0.2, [1] * 16),
        ([0.3, 0.9, 0.8], 16, 0.2, [0, 10, 6]),  # counts come back in the input order
        ([0.7], 5, 0.2, [5]),
        ([], 16, 0.2, []),
        ([0.9, 0.8, 0.3], 0, 0.2, [0, 0, 0]),
        ([0.5, 0.5, 0.5], 5, 0.2, [2, 2, 1]),  # ties: earlier index first
    ],
)
def test_design_checks(
    scores: list[float], budget: int, temperature: float, expected: list[int]
) -> None:
    assert allocate_children(scores, budget, temperature) == expected


def test_matches_literal_reference_walk() -> None:
    """On ordinary inputs the stable implementation equals a literal transcription of the paper."""

    def reference(scores: list[float], budget: int, t: float) -> list[int]:
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        exps = {i: math.exp(scores[i] / t) for i in order}
        total, out = sum(exps.values()), [0] * len(scores)
        for i in order:
            n = min(math.ceil(budget * exps[i] / total), budget)
            out[i], budget, total = n, budget - n, total - exps[i]
        return out

    scores = [0.91, 0.12, 0.55, 0.77, 0.33, 0.68, 0.05, 0.49]
    for budget in (1, 3, 8, 16, 33):
        for t in (0.1, 0.2, 0.5, 1.0):
            assert allocate_children(scores, budget, t) == reference(scores, budget, t)


@pytest.mark.parametrize(
    ("scores", "budget", "temperature"),
    [
        ([0.5], 1, 0.0),
        ([0.5], 1, -0.2),
        ([0.5], -1, 0.2),
        ([math.nan], 1, 0.2),
        ([0.5], 1, math.inf),
    ],
)
def test_invalid_inputs(scores: list[float], budget: int, temperature: float) -> None:
    with pytest.raises(ValueError):
        allocate_children(scores, budget, temperature)


def test_tiny_temperature_and_extreme_scores_are_stable() -> None:
    assert allocate_children([0.9, 0.8], 16, 1e-6) == [16, 0]
    assert allocate_children([1e6, -1e6, 0.0], 7, 0.01) == [7, 0, 0]
    assert allocate_children([-1e300, 1e300], 3, 1e-300) == [0, 3]


scores_st = st.lists(
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=1, max_size=64
)
budget_st = st.integers(min_value=0, max_value=512)
temp_st = st.floats(min_value=1e-3, max_value=10.0, allow_nan=False)


@given(scores_st, budget_st, temp_st)
def test_spends_exactly_the_budget_without_negatives(
    scores: list[float], budget: int, temperature: float
) -> None:
    counts = allocate_children(scores, budget, temperature)
    assert len(counts) == len(scores)
    assert all(c >= 0 for c in counts)
    assert sum(counts) == budget


@given(scores_st, budget_st, temp_st)
def test_higher_score_never_gets_fewer_children(
    scores: list[float], budget: int, temperature: float
) -> None:
    counts = allocate_children(scores, budget, temperature)
    for i, si in enumerate(scores):
        for j, sj in enumerate(scores):
            if si > sj:
                assert counts[i] >= counts[j], (scores, counts)


@given(
    st.floats(min_value=-5.0, max_value=5.0, allow_nan=False),
    st.integers(min_value=1, max_value=64),
    budget_st,
    temp_st,
)
def test_equal_scores_spread_evenly(score: float, n: int, budget: int, temperature: float) -> None:
    counts = allocate_children([score] * n, budget, temperature)
    assert sum(counts) == budget
    assert max(counts) - min(counts) <= 1
    assert counts == sorted(counts, reverse=True)  # ties: earlier nodes get the extra child


@given(scores_st, temp_st)
def test_zero_budget_gives_nothing(scores: list[float], temperature: float) -> None:
    assert allocate_children(scores, 0, temperature) == [0] * len(scores)
