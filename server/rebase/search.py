"""REBASE (Wu et al. 2024, "Inference Scaling Laws"): reward-balanced tree search.

The algorithm only, over two callbacks, so it reads in one screen and runs against fakes in
unit tests; the engine, the reward model and the cross-request scheduler are plumbing
(`server/methods/rebase.py`, `server/rebase/scheduler.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from server.rebase.allocation import allocate_children
from server.rebase.params import RebaseParams
from server.rebase.tree import Node

# expand([(node, k), ...]) -> the new children, k sampled continuations of each node.
Expand = Callable[[Sequence[tuple[Node, int]]], Awaitable[list[Node]]]
# score(nodes) sets node.score = the reward of each node's last step.
Score = Callable[[Sequence[Node]], Awaitable[None]]


@dataclass
class SearchResult:
    leaves: list[Node]
    nodes_expanded: int = 0
    depth: int = 0
    level_sizes: list[int] = field(default_factory=list)


async def rebase_search(
    root: Node, params: RebaseParams, expand: Expand, score: Score
) -> SearchResult:
    """Grow a tree level by level until `width` leaves are complete.

    Each depth: score the new nodes; complete ones become leaves and use up one unit of the
    budget each; the remaining budget is handed to *all* open nodes of the depth at once,
    sorted by reward, by `allocate_children` (softmax(score / T_b), ceil-walk).
    """
    budget = params.width
    frontier = await expand([(root, budget)])
    result = SearchResult(leaves=[], nodes_expanded=len(frontier), depth=1)
    result.level_sizes.append(len(frontier))
    while frontier:
        await score(frontier)
        if result.depth >= params.max_depth:  # depth cap: what is left ends here
            for node in frontier:
                if not node.terminal:
                    node.end = "depth"
        complete = [n for n in frontier if n.terminal]
        open_nodes = [n for n in frontier if not n.terminal]
        if params.prune_score is not None:  # the seed code's rule: low scorers get no children
            open_nodes = [n for n in open_nodes if n.score > params.prune_score]
        result.leaves.extend(complete)
        budget -= len(complete)
        if budget <= 0 or not open_nodes:
            break
        counts = allocate_children(
            [n.score for n in open_nodes], budget, params.balance_temperature
        )
        frontier = await expand([(n, k) for n, k in zip(open_nodes, counts, strict=True) if k > 0])
        result.nodes_expanded += len(frontier)
        result.depth += 1
        result.level_sizes.append(len(frontier))
    return result
