"""REBASE search semantics against fake expand/score callbacks (no engine)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from server.rebase.allocation import allocate_children
from server.rebase.params import RebaseParams
from server.rebase.search import batch_expand, rebase_search
from server.rebase.steps import StepFormat, has_final_answer
from server.rebase.tree import Node, root_node


class FakeTree:
    """Children are scripted by depth: `ends[depth]` says how each new child at that depth ends;
    scores are given per depth in child order."""

    def __init__(self, ends: dict[int, list[str]], scores: dict[int, list[float]]) -> None:
        self.ends, self.scores = ends, scores
        self.expansions: list[list[tuple[int, int]]] = []  # per call: (parent id, k)

    async def expand(self, requests: Sequence[tuple[Node, int]]) -> list[Node]:
        self.expansions.append([(id(node), k) for node, k in requests])
        children = []
        for node, k in requests:
            depth = node.depth + 1
            for _ in range(k):
                i = sum(1 for _ in children)
                end = self.ends.get(depth, [])
                child = Node(
                    token_ids=[1],
                    text=f"d{depth} ",
                    step_text=f"d{depth}",
                    end=end[i] if i < len(end) else "step",  # type: ignore[arg-type]
                    parent=node,
                    depth=depth,
                    path_tokens=node.path_tokens + 1,
                )
                children.append(child)
        return children

    async def score(self, nodes: Sequence[Node]) -> None:
        for i, node in enumerate(nodes):
            node.score = self.scores.get(node.depth, [0.5] * 64)[i]


def run(tree: FakeTree, **params) -> object:
    return asyncio.run(
        rebase_search(
            root_node([], ""), RebaseParams(**params), batch_expand(tree.expand), tree.score
        )
    )


def test_first_level_samples_width_children_of_the_root() -> None:
    tree = FakeTree(ends={1: ["answer"] * 4}, scores={})
    result = run(tree, width=4)
    assert tree.expansions == [[(tree.expansions[0][0][0], 4)]]
    assert len(result.leaves) == 4 and result.depth == 1


def test_allocation_spans_all_open_nodes_of_the_level() -> None:
    # Depth 1: 16 open nodes scored [0.9, 0.8, 0.3, 0, ...]; the budget of 16 is handed out
    # over the whole level (not per parent) by the paper's ceil-walk.
    scores = [0.9, 0.8, 0.3] + [0.0] * 13
    tree = FakeTree(ends={1: ["step"] * 16, 2: ["answer"] * 16}, scores={1: scores})
    result = run(tree, width=16, balance_temperature=0.2)
    ks = [k for _, k in tree.expansions[1]]
    expected = [k for k in allocate_children(scores, 16, 0.2) if k > 0]
    assert ks == expected
    assert sum(ks) == 16 and ks[0] > ks[1] > 0
    assert result.level_sizes == [16, 16]


def test_equal_scores_give_every_open_node_one_child() -> None:
    tree = FakeTree(ends={1: ["step"] * 8, 2: ["answer"] * 8}, scores={1: [0.5] * 8})
    run(tree, width=8)
    assert [k for _, k in tree.expansions[1]] == [1] * 8


def test_completed_leaves_use_up_the_budget() -> None:
    # Depth 1: 2 of 4 finish -> budget 2 left for the 2 open nodes.
    tree = FakeTree(ends={1: ["answer", "step", "eos", "step"], 2: ["answer"] * 4}, scores={})
    result = run(tree, width=4)
    assert sum(k for _, k in tree.expansions[1]) == 2
    assert len(result.leaves) == 4
    assert result.nodes_expanded == 6


def test_depth_cap_turns_open_nodes_into_leaves() -> None:
    tree = FakeTree(ends={}, scores={})
    result = run(tree, width=3, max_depth=2)
    assert result.depth == 2
    assert len(result.leaves) == 3
    assert {leaf.end for leaf in result.leaves} == {"depth"}


def test_step_k_format_stops_at_next_header() -> None:
    fmt = StepFormat(RebaseParams(step_format="step_k"))
    assert fmt.root_prefix() == "Step 1:"
    assert fmt.stop_strings(1) == ["Step 2:"]
    assert fmt.step_text(" 3 + 4 = 7.\nStep 2:", 1) == "3 + 4 = 7."


@pytest.mark.parametrize(
    ("kwargs", "end"),
    [
        ({"text": "3+4=7\n", "finish_reason": "stop", "stop_reason": "\n"}, "step"),
        ({"text": "so 7", "finish_reason": "stop", "stop_reason": None}, "eos"),
        ({"text": "The answer is 7.\n", "finish_reason": "stop", "stop_reason": "\n"}, "answer"),
        ({"text": "#### 7", "finish_reason": "length", "stop_reason": None}, "answer"),
        ({"text": "long step", "finish_reason": "length", "stop_reason": None}, "step"),
    ],
)
def test_classify_step_ends(kwargs, end) -> None:
    fmt = StepFormat(RebaseParams())
    assert fmt.classify(path_tokens=10, max_path_tokens=100, **kwargs) == end


def test_path_token_cap_is_cumulative() -> None:
    fmt = StepFormat(RebaseParams())
    end = fmt.classify(
        text="x\n", finish_reason="stop", stop_reason="\n", path_tokens=100, max_path_tokens=100
    )
    assert end == "length"


def test_final_answer_detection() -> None:
    assert has_final_answer("so the answer is $18")
    assert has_final_answer("#### 72")
    assert not has_final_answer("48 / 2 = 24")
