"""REBASE early stopping: the stopping rules, and the exact rule's promise on random trees (the
early-stopped answer equals the full search's in every case)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence

import pytest

from server.core.answers import extract_answer
from server.rebase.aggregation import aggregate, voting_leaves
from server.rebase.early_stop import EarlyStopMonitor
from server.rebase.params import AdaptiveStop, RebaseParams
from server.rebase.search import SearchResult, rebase_search
from server.rebase.stopping import Ballot, exact_decided, leader_confidence
from server.rebase.tree import Node, root_node

M = 0.95  # the arithmetic reward's highest score


def _ballots(*items: tuple[str | None, float]) -> list[Ballot]:
    return [Ballot(answer, score, "answer") for answer, score in items]


def test_weighted_vote_stops_only_when_the_runner_up_cannot_catch_up() -> None:
    ballots = _ballots(("7", 0.9), ("7", 0.9), ("7", 0.9), ("8", 0.5))
    # W_A = 2.7, W_B = 0.5: two more leaves add at most 1.9 to "8" -> 2.4 < 2.7.
    assert exact_decided(ballots, 2, how="weighted_vote", which="finished", max_score=M)
    # Three more could add 2.85 -> 3.35 > 2.7.
    assert not exact_decided(ballots, 3, how="weighted_vote", which="finished", max_score=M)


def test_a_fresh_answer_is_a_rival_too() -> None:
    ballots = _ballots(("7", 0.9))
    assert not exact_decided(ballots, 1, how="weighted_vote", which="finished", max_score=M)
    assert exact_decided(ballots, 1, how="weighted_vote", which="finished", max_score=0.8)


def test_majority_vote_tie_on_count_is_settled_by_weight() -> None:
    ballots = _ballots(("7", 0.9), ("7", 0.9), ("8", 0.1))
    # c_A = 2 = c_B + R with R = 1: B can tie on count, then weight decides: 1.8 > 0.1 + 0.95.
    assert exact_decided(ballots, 1, how="majority_vote", which="finished", max_score=M)
    low = _ballots(("7", 0.5), ("7", 0.5), ("8", 0.1))  # 1.0 < 0.1 + 0.95: B could win
    assert not exact_decided(low, 1, how="majority_vote", which="finished", max_score=M)


def test_best_of_n_needs_the_top_score_in_a_position_no_future_leaf_can_precede() -> None:
    top = [Ballot("7", M, "answer")]
    assert exact_decided(top, 5, how="best_of_n", which="finished", max_score=M)
    early_sibling_running = [Ballot("7", M, "answer", fixed_position=False)]
    assert not exact_decided(
        early_sibling_running, 5, how="best_of_n", which="finished", max_score=M
    )
    assert not exact_decided(
        [Ballot("7", 0.9, "answer")], 5, how="best_of_n", which="finished", max_score=M
    )


def test_no_stop_without_a_finished_leaf_or_without_an_answer() -> None:
    cut = [Ballot("7", 0.9, "length")] * 10  # cut paths: one finished leaf replaces them all
    assert not exact_decided(cut, 1, how="weighted_vote", which="finished", max_score=M)
    assert exact_decided(cut, 1, how="weighted_vote", which="all", max_score=M)
    unanswered = [Ballot(None, 0.9, "eos")] * 10
    assert not exact_decided(unanswered, 1, how="weighted_vote", which="finished", max_score=M)


def test_adaptive_confidence_grows_with_the_margin_and_is_certain_with_nothing_left() -> None:
    def p(a: int, b: int, remaining: int) -> float:
        ballots = _ballots(*([("7", 0.9)] * a + [("8", 0.9)] * b))
        return leader_confidence(
            ballots, remaining, how="majority_vote", which="finished", max_score=M
        )

    assert p(3, 1, 8) < p(5, 1, 8) < p(8, 1, 8) < 1.0
    assert p(2, 1, 0) == 1.0
    assert p(9, 0, 8) == pytest.approx(1.0)  # 9 > 0 + 8: even exact
    assert 0.0 < p(3, 3, 4) < 0.5  # a tie is no win


def test_adaptive_weighted_vote_counts_a_leaf_as_one_vote_whatever_its_score() -> None:
    """The model's future leaves add the mean observed score, so the scale of the scores does
    not matter: four neutral (0.5) leaves are as strong evidence as four at the ceiling."""

    def p(score: float, remaining: int) -> float:
        ballots = _ballots(*([("7", score)] * 4 + [("8", score)]))
        return leader_confidence(
            ballots, remaining, how="weighted_vote", which="finished", max_score=M
        )

    assert p(0.5, 11) == pytest.approx(p(M, 11))
    majority = leader_confidence(
        _ballots(*([("7", 0.5)] * 4 + [("8", 0.5)])),
        11,
        how="majority_vote",
        which="finished",
        max_score=M,
    )
    assert p(0.5, 11) == pytest.approx(majority)
    assert p(0.5, 11) > 0.9  # at 0.5 / M per leaf (the old model) it was 0.84


# --- the exact rule on random trees ------------------------------------------------------


class RandomTree:
    """A random tree that is a function of each node's path (as the real one is of its seeds):
    its end, answer and score. Children come back in a random order; with `eager` each is
    scored as it arrives (the driver's eager mode), else the level is scored at its end."""

    def __init__(self, seed: int, *, eager: bool, max_score: float) -> None:
        self.seed, self.eager, self.max_score = seed, eager, max_score
        self.order = random.Random(seed * 7919 + 1)  # finish order: differs between runs
        self.keys: dict[int, tuple[int, ...]] = {}
        self.cancelled = 0

    def _outcome(self, key: tuple[int, ...]) -> tuple[str, str | None, float]:
        rng = random.Random(hash((self.seed, key)))
        end = rng.choices(["step", "answer", "eos", "length"], [5, 4, 1, 1])[0]
        answer = rng.choice(["1", "2", "2", "3", None])
        score = round(rng.uniform(0.0, self.max_score), 3)
        if rng.random() < 0.15:
            score = self.max_score
        return end, answer, score

    async def expand(self, requests: Sequence[tuple[Node, int]]) -> AsyncIterator[tuple[int, Node]]:
        children: list[Node] = []
        for node, k in requests:
            parent_key = self.keys.get(id(node), ())
            for _ in range(k):
                key = (*parent_key, len(node.children))
                end, answer, score = self._outcome(key)
                text = f"The answer is {answer}\n" if answer and end != "step" else "step\n"
                child = Node([1], text, text, end, node, node.depth + 1)  # type: ignore[arg-type]
                child.score = score  # read only once scored
                node.children.append(child)
                self.keys[id(child)] = key
                children.append(child)
        slots = list(range(len(children)))
        self.order.shuffle(slots)
        done = 0
        try:
            for slot in slots:
                await asyncio.sleep(0)
                children[slot].scored = self.eager
                done += 1
                yield slot, children[slot]
        finally:
            self.cancelled += len(children) - done

    async def score(self, nodes: Sequence[Node]) -> None:
        return None  # scores were fixed at creation; the search marks them scored


def _answer(result: SearchResult, params: RebaseParams) -> str | None:
    leaves = voting_leaves(result.leaves, params.vote_leaves)
    votes = aggregate(
        [(extract_answer(n.path_text()), n.score) for n in leaves], params.aggregation
    )
    return votes.answer


def _search(seed: int, params: RebaseParams, *, eager: bool) -> tuple[SearchResult, RandomTree]:
    tree = RandomTree(seed, eager=eager, max_score=M)
    monitor = EarlyStopMonitor(params, max_score=M, spent=lambda: {"flops": 0.0, "tokens": 0})
    result = asyncio.run(rebase_search(root_node([], ""), params, tree.expand, tree.score, monitor))
    return result, tree


@pytest.mark.parametrize("aggregation", ["weighted_vote", "majority_vote", "best_of_n"])
@pytest.mark.parametrize("vote_leaves", ["finished", "all"])
def test_exact_early_stop_never_changes_the_answer(aggregation: str, vote_leaves: str) -> None:
    stopped_early = 0
    for seed in range(150):
        width = 1 + seed % 12
        base = dict(width=width, max_depth=1 + seed % 5, aggregation=aggregation,
                    vote_leaves=vote_leaves)  # fmt: skip
        eager = seed % 3 != 0
        full, _ = _search(seed, RebaseParams(**base, early_stop="off"), eager=eager)
        early, _ = _search(seed, RebaseParams(**base, early_stop="exact"), eager=eager)
        assert _answer(early, RebaseParams(**base)) == _answer(full, RebaseParams(**base)), seed
        assert early.nodes_expanded <= full.nodes_expanded
        assert full.ended in ("complete", "depth")
        if early.ended == "decided":
            stopped_early += 1
            assert early.remaining > 0
    assert stopped_early > 10  # the property is not vacuous


def test_shadow_mode_runs_the_full_search_and_records_where_rules_would_stop() -> None:
    base = dict(width=12, max_depth=4)
    for seed in range(60):
        full, _ = _search(seed, RebaseParams(**base, early_stop="off"), eager=True)
        params = RebaseParams(**base, shadow_stop=True)
        tree = RandomTree(seed, eager=True, max_score=M)
        monitor = EarlyStopMonitor(params, max_score=M, spent=lambda: {"flops": 1.0, "tokens": 2})
        shadowed = asyncio.run(
            rebase_search(root_node([], ""), params, tree.expand, tree.score, monitor)
        )
        assert shadowed.nodes_expanded == full.nodes_expanded  # nothing was cut
        assert set(monitor.shadow) == {"exact", "confidence=0.9", "confidence=0.95"}
        exact = monitor.shadow["exact"]
        if exact is not None:
            assert exact["answer"] == _answer(full, params)
            assert exact["remaining_leaves"] > 0 and exact["flops"] == 1.0


def test_an_early_stop_cancels_the_children_still_running() -> None:
    cancelled = 0
    for seed in range(100):
        params = RebaseParams(width=12, max_depth=3, early_stop="exact")
        result, tree = _search(seed, params, eager=True)
        if result.ended == "decided":
            cancelled += tree.cancelled
    assert cancelled > 0


def test_adaptive_stop_ends_as_confident() -> None:
    ends = set()
    for seed in range(60):
        params = RebaseParams(width=12, early_stop=AdaptiveStop(confidence=0.9))
        result, _ = _search(seed, params, eager=True)
        ends.add(result.ended)
    assert "confident" in ends
