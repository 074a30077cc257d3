"""REBASE final-answer aggregation over leaves (answer, last-step score)."""

import math

import pytest

from server.rebase.aggregation import AggregateResult, aggregate


def test_weighted_vote_lets_confident_minority_win() -> None:
    leaves = [("18", 0.2), ("18", 0.2), ("20", 0.9)]
    result = aggregate(leaves, "weighted_vote")
    assert result.answer == "20"
    assert result.winner_index == 2
    assert result.votes == pytest.approx({"18": 0.4, "20": 0.9})


def test_majority_vote_counts_leaves() -> None:
    leaves = [("18", 0.2), ("18", 0.3), ("20", 0.9)]
    result = aggregate(leaves, "majority_vote")
    assert result.answer == "18"
    assert result.winner_index == 1  # highest-scoring leaf with the winning answer
    assert result.votes == {"18": 2.0, "20": 1.0}


def test_best_of_n_takes_the_top_score() -> None:
    leaves = [("18", 0.5), ("18", 0.5), ("20", 0.6), (None, 0.99)]
    result = aggregate(leaves, "best_of_n")
    assert (result.answer, result.winner_index) == ("20", 2)
    assert result.votes == {"18": 0.5, "20": 0.6}
    assert result.unanswered == 0.99


def test_answers_grouped_by_value() -> None:
    leaves = [("18", 0.3), ("18.0", 0.3), ("$18", 0.3), ("20", 0.8)]
    result = aggregate(leaves, "weighted_vote")
    assert result.answer == "18"
    assert result.votes == pytest.approx({"18": 0.9, "20": 0.8})
    assert result.winner_index == 0


@pytest.mark.parametrize("how", ["weighted_vote", "majority_vote", "best_of_n"])
def test_unanswered_never_beats_an_answer(how: str) -> None:
    leaves = [(None, 0.9), (None, 0.9), (None, 0.9), ("7", 0.1)]
    result = aggregate(leaves, how)  # type: ignore[arg-type]
    assert (result.answer, result.winner_index) == ("7", 3)
    assert result.unanswered > 0


@pytest.mark.parametrize("how", ["weighted_vote", "majority_vote", "best_of_n"])
def test_all_unanswered_picks_best_leaf(how: str) -> None:
    result = aggregate([(None, 0.2), (None, 0.7), (None, 0.7)], how)  # type: ignore[arg-type]
    assert result.answer is None
    assert result.winner_index == 1  # earliest of the tied best
    assert result.votes == {}


@pytest.mark.parametrize("how", ["weighted_vote", "majority_vote", "best_of_n"])
def test_no_leaves(how: str) -> None:
    assert aggregate([], how) == AggregateResult(None, None, how)  # type: ignore[arg-type]


def test_weighted_tie_breaks_by_count_then_best_then_first() -> None:
    # equal weight 0.8; "5" has more leaves
    assert aggregate([("4", 0.8), ("5", 0.4), ("5", 0.4)], "weighted_vote").answer == "5"
    # equal weight and count; "5" has the better single leaf
    assert (
        aggregate([("4", 0.4), ("4", 0.4), ("5", 0.3), ("5", 0.5)], "weighted_vote").answer == "5"
    )
    # fully tied: the answer seen first
    assert aggregate([("4", 0.5), ("5", 0.5)], "weighted_vote").answer == "4"
    assert aggregate([("5", 0.5), ("4", 0.5)], "weighted_vote").answer == "5"


def test_majority_tie_breaks_by_weight_then_first() -> None:
    assert aggregate([("4", 0.2), ("5", 0.6)], "majority_vote").answer == "5"
    assert aggregate([("4", 0.5), ("5", 0.5)], "majority_vote").answer == "4"


def test_best_of_n_tie_takes_earliest() -> None:
    result = aggregate([("4", 0.5), ("5", 0.9), ("6", 0.9)], "best_of_n")
    assert (result.answer, result.winner_index) == ("5", 1)


def test_winner_is_best_leaf_of_winning_answer() -> None:
    leaves = [("3", 0.6), ("3", 0.8), ("9", 0.9), ("3", 0.8)]
    result = aggregate(leaves, "weighted_vote")
    assert (result.answer, result.winner_index) == ("3", 1)


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError):
        aggregate([("3", math.nan)], "weighted_vote")
    with pytest.raises(ValueError):
        aggregate([("3", 0.5)], "plurality")  # type: ignore[arg-type]
