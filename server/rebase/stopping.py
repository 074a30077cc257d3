"""When a REBASE search may stop before `width` leaves are complete (docs/architecture.md,
"Early stopping").

Two rules over the same state: the leaves scored so far, in the order the full search would
list them, and R, the leaves the budget could still add (width minus the finished leaves;
unscored and in-flight children count in R).

* `exact`: stop only when no completion of the remaining budget can change the voted
  answer, whatever REBASE's reallocation does with it. Every future leaf adds at most one
  vote, with a score in [0, M] (M = the reward model's highest score), to some answer.
* `adaptive` (``{"confidence": c}``): stop when the probability that the leader stays the
  winner reaches c, under a stated model of the remaining votes: each of the R future votes
  goes to the leader A or the runner-up B (the others are ignored), with
  ``p(A) ~ Beta(1 + v_A, 1 + v_B)`` (the uniform-prior Beta of Adaptive-Consistency,
  Aggarwal et al. 2023), v = leaf counts (majority) or weight / s̄ (weighted vote; s̄ = the
  mean score of the answered voting leaves so far, and each future leaf is assumed to add s̄:
  a plug-in estimate, so a leaf counts as one vote whether it is observed or to come). The
  leader stays the winner when ``v_A + X > v_B + (R - X)``, X ~ Beta-Binomial(R, 1 + v_A,
  1 + v_B). Not exact by design: the worst case (every future leaf scoring M) is the exact
  rule's business.

Both need (i) under ``vote_leaves="finished"`` a finished voting leaf (else a future finished
leaf would replace the whole electorate) and (ii) a voting leaf with an answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from server.core.answers import normalize_number
from server.rebase.aggregation import FINISHED_ENDS, Aggregation, VoteLeaves

__all__ = ["Ballot", "exact_decided", "leader_confidence", "settled"]

# Float tallies: the full search sums the same scores in another order. A margin this size
# covers the rounding of any sum of <= 64 scores in [0, 1] many times over.
_MARGIN = 1e-9


@dataclass(frozen=True)
class Ballot:
    """One leaf as the vote sees it: its answer (None: no answer), last-step score, why it
    ended, and whether a future leaf could still be listed before it (a sibling of the same
    level still running in an earlier slot): only best-of-n's tie-break reads that."""

    answer: str | None
    score: float
    end: str
    fixed_position: bool = True


@dataclass
class _Tally:
    weight: float = 0.0
    count: int = 0
    best: float = -math.inf
    best_fixed: bool = False  # the best leaf cannot be preceded by a future leaf


def _tallies(ballots: Sequence[Ballot], which: VoteLeaves) -> dict[str, _Tally] | None:
    """Tallies of the voting leaves by answer, or None when conditions (i)/(ii) fail."""
    voters = list(ballots)
    if which == "finished":
        voters = [b for b in ballots if b.end in FINISHED_ENDS]
        if not voters:  # (i): a future finished leaf would replace the whole electorate
            return None
    tallies: dict[str, _Tally] = {}
    for ballot in voters:
        if ballot.answer is None:
            continue
        key = normalize_number(ballot.answer) or ballot.answer.strip()
        tally = tallies.setdefault(key, _Tally())
        tally.weight += ballot.score
        tally.count += 1
        if ballot.score > tally.best:  # the earliest leaf of the best score is the winner's
            tally.best, tally.best_fixed = ballot.score, ballot.fixed_position
    return tallies or None  # (ii): some voting leaf has an answer


def _leader(tallies: dict[str, _Tally], how: Aggregation) -> tuple[str, _Tally]:
    def rank(item: tuple[str, _Tally]) -> tuple[float, ...]:
        t = item[1]
        if how == "weighted_vote":
            return (t.weight, t.count, t.best)
        if how == "majority_vote":
            return (t.count, t.weight, t.best)
        return (t.best,)

    return max(tallies.items(), key=rank)


def exact_decided(
    ballots: Sequence[Ballot],
    remaining: int,
    *,
    how: Aggregation,
    which: VoteLeaves,
    max_score: float,
) -> bool:
    """True when no `remaining` future leaves (each scoring at most `max_score`) can change
    the voted answer."""
    if remaining <= 0:
        return True
    tallies = _tallies(ballots, which)
    if tallies is None:
        return False
    answer, lead = _leader(tallies, how)
    rivals = [t for key, t in tallies.items() if key != answer] + [_Tally()]  # + a fresh answer
    most = remaining * max_score
    if how == "weighted_vote":
        return all(lead.weight > t.weight + most + _MARGIN for t in rivals)
    if how == "majority_vote":
        return all(
            lead.count > t.count + remaining
            or (lead.count == t.count + remaining and lead.weight > t.weight + most + _MARGIN)
            for t in rivals
        )
    # best_of_n: a future leaf can at best tie the leader, and a tie goes to the earlier leaf.
    return lead.best >= max_score and lead.best_fixed


def leader_confidence(
    ballots: Sequence[Ballot],
    remaining: int,
    *,
    how: Aggregation,
    which: VoteLeaves,
    max_score: float,
) -> float:
    """P(the current leader still wins after `remaining` more votes), under the module's
    Beta-Binomial model; 0.0 when conditions (i)/(ii) fail. best_of_n has no vote to model:
    1.0 exactly when the exact rule holds."""
    if remaining <= 0:
        return 1.0
    tallies = _tallies(ballots, which)
    if tallies is None:
        return 0.0
    if how == "best_of_n":
        return float(exact_decided(ballots, remaining, how=how, which=which, max_score=max_score))
    answer, lead = _leader(tallies, how)
    others = [t for key, t in tallies.items() if key != answer]
    runner_up = max(others, key=lambda t: (t.count, t.weight) if how == "majority_vote"
                    else (t.weight, t.count), default=_Tally())  # fmt: skip

    scale = _mean_score(tallies)

    def votes(t: _Tally) -> float:
        return float(t.count) if how == "majority_vote" or scale <= 0 else t.weight / scale

    v_a, v_b = votes(lead), votes(runner_up)
    # A keeps the lead when X (future votes for A) > (v_b + R - v_a) / 2.
    need = (v_b + remaining - v_a) / 2
    return sum(
        _beta_binomial_pmf(x, remaining, 1 + v_a, 1 + v_b)
        for x in range(remaining + 1)
        if x > need + _MARGIN
    )


def _mean_score(tallies: dict[str, _Tally]) -> float:
    """The average score of an answered voting leaf: what the model assumes a future leaf
    adds to the answer it votes for."""
    count = sum(t.count for t in tallies.values())
    return sum(t.weight for t in tallies.values()) / count if count else 0.0


def settled(
    ballots: Sequence[Ballot],
    remaining: int,
    *,
    how: Aggregation,
    which: VoteLeaves,
    max_score: float,
    confidence: float | None,
) -> bool:
    """The rule a search runs: exact when `confidence` is None, else adaptive."""
    if confidence is None:
        return exact_decided(ballots, remaining, how=how, which=which, max_score=max_score)
    p = leader_confidence(ballots, remaining, how=how, which=which, max_score=max_score)
    return p >= confidence


def _beta_binomial_pmf(k: int, n: int, a: float, b: float) -> float:
    log_choose = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    log_beta = _log_beta(k + a, n - k + b) - _log_beta(a, b)
    return math.exp(log_choose + log_beta)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
