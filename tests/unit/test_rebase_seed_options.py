"""The seed code's REBASE rules as request options: pruning low scorers, headers from step 2."""

from __future__ import annotations

import pytest

from server.rebase.params import RebaseParams
from server.rebase.steps import StepFormat
from tests.unit.test_rebase_search import FakeTree, run


def test_prune_score_gives_low_scorers_no_children() -> None:
    # depth 1: four open nodes; two score <= 0.1 and must not be expanded.
    tree = FakeTree(ends={2: ["answer"] * 4}, scores={1: [0.9, 0.1, 0.05, 0.8]})
    result = run(tree, width=4, prune_score=0.1)
    parents = {parent for parent, _ in tree.expansions[1]}
    assert len(parents) == 2  # only the 0.9 and 0.8 nodes got children
    assert sum(k for _, k in tree.expansions[1]) == 4  # the whole budget went to them
    assert len(result.leaves) == 4


def test_without_prune_score_every_open_node_may_get_children() -> None:
    tree = FakeTree(ends={2: ["answer"] * 4}, scores={1: [0.5, 0.5, 0.5, 0.5]})
    run(tree, width=4)
    assert len(tree.expansions[1]) == 4


def test_all_pruned_ends_the_search_with_the_leaves_so_far() -> None:
    tree = FakeTree(ends={1: ["answer", "step", "step"]}, scores={1: [0.9, 0.1, 0.0]})
    result = run(tree, width=3, prune_score=0.1)
    assert len(tree.expansions) == 1 and len(result.leaves) == 1


@pytest.mark.parametrize(("first", "prefix"), [(True, "Step 1:"), (False, "")])
def test_step_k_headers_from_step_1_or_2(first: bool, prefix: str) -> None:
    fmt = StepFormat(RebaseParams(step_format="step_k", first_step_header=first))
    assert fmt.root_prefix() == prefix
    assert fmt.stop_strings(1) == ["Step 2:"]  # either way, step 2 on has a header


def test_prune_score_is_bounded() -> None:
    with pytest.raises(ValueError):
        RebaseParams(prune_score=1.5)
