"""REBASE fidelity: what the reference does and the landed code did not pin down.

Each test fails on a plausible mutant: per-parent allocation, a node reward other than its last
step's score, capped leaves voting, a final-answer check that disagrees with the vote's
extractor, and a REBASE request without `max_tokens` cut to 16 tokens per path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.core.answers import extract_answer, marked_answer
from server.core.config import Settings
from server.core.flops import FlopsModel
from server.core.usage import UsageMeter
from server.methods.rebase import Rebase, _SearchDriver
from server.methods.resources import Resources
from server.rebase.aggregation import aggregate, voting_leaves
from server.rebase.allocation import allocate_children
from server.rebase.params import RebaseParams
from server.rebase.search import SearchResult, batch_expand, rebase_search
from server.rebase.steps import has_final_answer
from server.rebase.tree import Node, root_node
from tests.unit.test_rebase_search import FakeTree

FLOPS = FlopsModel(2, 64, 64, 64, 128, 512, True)


def test_allocation_is_global_across_parents_of_a_depth() -> None:
    # Depth 1: 16 open nodes with equal scores -> one child each, so the 16 nodes of depth 2
    # have 16 *different* parents. Depth 2 is scored [0.9, 0.8, 0.3, 0, ...]: the budget of
    # 16 must be walked over the whole depth ([9, 6, 1, 0, ...]); allocating per parent (each
    # parent's children among themselves) would give every open node a share of its own.
    depth2 = [0.9, 0.8, 0.3] + [0.0] * 13
    tree = FakeTree(
        ends={1: ["step"] * 16, 2: ["step"] * 16, 3: ["answer"] * 16},
        scores={1: [0.5] * 16, 2: depth2},
    )
    result = asyncio.run(
        rebase_search(
            root_node([], ""),
            RebaseParams(width=16, balance_temperature=0.2),
            batch_expand(tree.expand),
            tree.score,
        )
    )  # fmt: skip
    assert [k for _, k in tree.expansions[1]] == [1] * 16
    assert allocate_children(depth2, 16, 0.2)[:4] == [9, 6, 1, 0]
    assert [k for _, k in tree.expansions[2]] == [9, 6, 1]
    assert result.level_sizes == [16, 16, 16]


class _StepScores:
    """A PRM that scores every step of a path: step i of any path gets scores[i]."""

    name = "scripted"
    max_score = 1.0

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    async def score(self, question: str, paths: Sequence[list[str]], meter=None):
        return [self.scores[: len(steps)] for steps in paths]


def _tree(prm: _StepScores, **params) -> _SearchDriver:
    settings = SimpleNamespace(rebase_scheduler="direct", reward_model="scripted")
    resources = Resources.build(Settings(rebase_scheduler="direct"), None)
    resources.reward_models["scripted"] = prm  # type: ignore[assignment]
    ctx = SimpleNamespace(
        resources=resources, settings=settings, details={},
        http_request_id="req", prompt_id="req-p0", meter=UsageMeter(FLOPS), engine=None,
        choice_budget=lambda inp, meter: None,
    )  # fmt: skip
    inp = SimpleNamespace(
        prompt_text="Q", prompt_token_ids=[1], sampling=SimpleNamespace(seed=0), budget=None
    )
    return _SearchDriver(Rebase(), ctx, inp, RebaseParams(**params), choice_id="req-0", index=0)


def _chain(ends: list[str]) -> list[Node]:
    nodes, parent = [], None
    for depth, end in enumerate(ends, start=1):
        node = Node([depth], f"s{depth}\n", f"s{depth}", end, parent, depth)  # type: ignore[arg-type]
        nodes.append(node)
        parent = node
    return nodes


@pytest.mark.parametrize("step_scores", [[0.1, 0.9], [0.9, 0.2], [0.3, 0.3, 0.7]])
def test_node_reward_is_its_last_steps_score(step_scores: list[float]) -> None:
    tree = _tree(_StepScores(step_scores))
    leaf = _chain(["step"] * len(step_scores))[-1]
    asyncio.run(tree.score([leaf]))
    assert leaf.score == step_scores[-1]  # not the mean, min or product of the path


def _leaf(text: str, end: str, score: float) -> Node:
    node = Node([1], text, text, end, root_node([], ""), 1)  # type: ignore[arg-type]
    node.score = score
    return node


def test_capped_leaves_do_not_vote_by_default() -> None:
    finished = [_leaf("The answer is 18", "answer", 0.3), _leaf("so 18", "eos", 0.3)]
    capped = [_leaf("48 / 2 = 24", "depth", 0.9), _leaf("24 + 1", "length", 0.9)]
    leaves = finished + capped
    voters = voting_leaves(leaves)
    assert voters == finished
    votes = aggregate([(extract_answer(n.text), n.score) for n in voters], "weighted_vote")
    assert votes.answer == "18"
    everyone = aggregate([(extract_answer(n.text), n.score) for n in leaves], "weighted_vote")
    assert everyone.answer == "24"  # what 'all' (and the landed code) would answer
    assert voting_leaves(leaves, "all") == leaves


def test_all_leaves_vote_when_none_finished() -> None:
    capped = [_leaf("x = 3", "depth", 0.2), _leaf("y = 5", "length", 0.8)]
    assert voting_leaves(capped) == capped


def test_answer_of_a_search_uses_finished_leaves() -> None:
    tree = _tree(_StepScores([0.5]))
    leaves = [_leaf("The answer is 18\n", "answer", 0.2), _leaf("24 24 24\n", "depth", 0.9)]
    delta = tree.answer(SearchResult(leaves=leaves, nodes_expanded=2, depth=1, level_sizes=[2]))
    assert delta.text == "The answer is 18\n"
    stats = tree.ctx.details["rebase"][0]
    assert stats["answer"] == "18" and stats["voting_leaves"] == 1


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("The answer is: 18", "18"),  # Math-Shepherd's format
        ("Step 3: The answer is: 18 ки", "18"),
        ("So the answer is 4.5.", "4.5"),
        ("The answer is $1,234.50", "1234.5"),
        ("\\boxed{\\frac{1}{2}}", "1/2"),
        ("#### -3", "-3"),
        ("answer: .75", "0.75"),
    ],
)
def test_final_answer_formats(text: str, answer: str) -> None:
    assert has_final_answer(text)
    assert marked_answer(text) == answer == extract_answer(text)


@pytest.mark.parametrize("text", ["48 / 2 = 24", "The answer is", "\\boxed{x+1}", "answers vary"])
def test_no_final_answer(text: str) -> None:
    assert not has_final_answer(text)


_PIECES = st.sampled_from(
    ["The answer is", "answer:", " is: ", "####", "\\boxed{", "}", " 18", " 4.5", "$", ",",
     "x", " ", "\n", "-", "1/2", "Step 2:", "=", "0"]
)  # fmt: skip


@given(st.lists(_PIECES, max_size=12).map("".join))
def test_final_answer_check_agrees_with_the_extractor(text: str) -> None:
    """A path ends as 'answer' exactly when the vote can read a stated answer from it, and the
    vote then uses that answer."""
    assert has_final_answer(text) == (marked_answer(text) is not None)
    if has_final_answer(text):
        assert extract_answer(text) == marked_answer(text)


def test_rebase_without_max_tokens_gets_the_trees_budget() -> None:
    params = {"rebase": RebaseParams(max_depth=5, max_step_tokens=64)}
    assert Rebase().default_max_tokens(params, room=1000) == 320
    assert Rebase().default_max_tokens(params, room=100) == 100
