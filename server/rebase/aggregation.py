"""REBASE's final answer: a vote over the finished leaves.

Each leaf is ``(extracted answer or None, score of its last step)``. The paper's default is a
weighted majority vote (weight = score); plain majority vote and best-of-n (highest score) are
offered for comparison (docs/architecture.md, "REBASE").

Answers are grouped by value, not by spelling: ``normalize_number`` is applied, so "18", "18.0" and
"$18" are one candidate (a non-numeric answer is grouped by its stripped text).

Leaves without an answer (None) are tallied in a separate bucket (``unanswered``). They never beat a
real answer; only when no leaf has one is the answer None, and the winner is then the best-scoring
leaf.

Deterministic tie-breaking, in order:
* weighted_vote: larger total weight, then more leaves, then higher best leaf score, then the
  answer seen first;
* majority_vote: more leaves, then larger total weight, then higher best leaf score, then the
  answer seen first;
* best_of_n: higher score, then the earlier leaf.
The winning leaf for a vote is the highest-scoring leaf with the winning answer (earliest on a tie).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from server.core.answers import normalize_number

__all__ = ["AggregateResult", "Aggregation", "VoteLeaves", "aggregate", "voting_leaves"]

Aggregation = Literal["weighted_vote", "majority_vote", "best_of_n"]
VoteLeaves = Literal["finished", "all"]
# Why a leaf ended (server.rebase.tree.StepEnd): these two mean the model finished its solution.
FINISHED_ENDS = frozenset({"answer", "eos"})


class _Leaf(Protocol):
    end: str


L = TypeVar("L", bound=_Leaf)


def voting_leaves(leaves: Sequence[L], which: VoteLeaves = "finished") -> list[L]:
    """The leaves that vote: by default only finished ones (an answer stated, or EOS), as in the
    reference, so a path cut by the depth or token cap cannot outvote finished solutions with a
    number from the middle of its reasoning. When no leaf finished, all of them vote (some
    answer beats none)."""
    if which == "all":
        return list(leaves)
    finished = [leaf for leaf in leaves if leaf.end in FINISHED_ENDS]
    return finished or list(leaves)


@dataclass(frozen=True)
class AggregateResult:
    """The chosen answer and how it was chosen.

    ``votes`` maps each answer to its total weight (weighted_vote), leaf count (majority_vote) or
    best leaf score (best_of_n); ``unanswered`` is the same quantity for the leaves without an
    answer. ``winner_index`` is None only when there were no leaves.
    """

    answer: str | None
    winner_index: int | None
    how: Aggregation
    votes: dict[str, float] = field(default_factory=dict)
    unanswered: float = 0.0


@dataclass
class _Tally:
    weight: float = 0.0
    count: int = 0
    best_score: float = -math.inf
    best_index: int = -1
    first_index: int = -1

    def add(self, index: int, score: float) -> None:
        self.weight += score
        self.count += 1
        if self.first_index < 0:
            self.first_index = index
        if score > self.best_score:
            self.best_score, self.best_index = score, index


def _key(answer: str) -> str:
    return normalize_number(answer) or answer.strip()


def aggregate(leaves: Sequence[tuple[str | None, float]], how: Aggregation) -> AggregateResult:
    """Pick the final answer from ``leaves`` by ``how``; see the module docstring for the rules."""
    if how not in ("weighted_vote", "majority_vote", "best_of_n"):
        raise ValueError(f"unknown aggregation {how!r}")
    if not all(math.isfinite(score) for _, score in leaves):
        raise ValueError("leaf scores must be finite")
    if not leaves:
        return AggregateResult(answer=None, winner_index=None, how=how)

    tallies: dict[str, _Tally] = {}
    none = _Tally()
    for index, (answer, score) in enumerate(leaves):
        tally = none if answer is None else tallies.setdefault(_key(answer), _Tally())
        tally.add(index, score)

    def shown(t: _Tally) -> float:
        return {"weighted_vote": t.weight, "majority_vote": float(t.count)}.get(how, t.best_score)

    votes = {answer: shown(t) for answer, t in tallies.items()}
    unanswered = shown(none) if none.count else 0.0
    if not tallies:
        return AggregateResult(None, none.best_index, how, votes, unanswered)

    def rank(item: tuple[str, _Tally]) -> tuple[float, ...]:
        t = item[1]
        if how == "weighted_vote":
            return (t.weight, t.count, t.best_score, -t.first_index)
        if how == "majority_vote":
            return (t.count, t.weight, t.best_score, -t.first_index)
        return (t.best_score, -t.best_index)

    answer, tally = max(tallies.items(), key=rank)
    return AggregateResult(answer, tally.best_index, how, votes, unanswered)
