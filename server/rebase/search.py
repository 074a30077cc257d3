"""REBASE (Wu et al. 2024, "Inference Scaling Laws"): reward-balanced tree search.

The algorithm only, over two callbacks and a monitor, so it reads in one screen and runs
against fakes in unit tests; the engine, the reward model, the cross-request scheduler and
the stopping policy are plumbing (`server/methods/rebase.py`, `server/rebase/scheduler.py`,
`server/rebase/stopping.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Literal, Protocol

from server.rebase.allocation import allocate_children
from server.rebase.params import RebaseParams
from server.rebase.tree import Node

# expand([(node, k), ...]) yields (slot, child) for the k sampled continuations of each node,
# slots numbered in request order, as each child is done (scored already when the driver
# scores eagerly); it may end early when the driver's monitor asked the search to stop.
Expand = Callable[[Sequence[tuple[Node, int]]], AsyncIterator[tuple[int, Node]]]
# score(nodes) sets node.score = the reward of each node's last step (nodes not yet scored).
Score = Callable[[Sequence[Node]], Awaitable[None]]
# Why a search ended: all `width` leaves done (or nothing open), the vote settled (exact or
# adaptive rule), the request's budget ran out, or the depth cap cut the open paths.
SearchEnd = Literal["complete", "decided", "confident", "budget", "depth"]


@dataclass
class SearchState:
    """What the monitor sees after every scored child: the leaves in the order the full search
    will list them (`pending_before[i]`: a still-running child of this level could be listed
    before leaf i) and `remaining`, the leaves the budget could still add."""

    leaves: list[Node]
    pending_before: list[bool]
    remaining: int
    nodes_expanded: int
    depth: int


class Monitor(Protocol):
    def check(self, state: SearchState) -> SearchEnd | None:
        """None: go on; a reason: stop now (in-flight expansions are cancelled)."""


class NeverStop:
    """The monitor of a search that always runs to the end (`early_stop="off"`)."""

    def check(self, state: SearchState) -> SearchEnd | None:
        return None


def batch_expand(expand: Callable[[Sequence[tuple[Node, int]]], Awaitable[list[Node]]]) -> Expand:
    """Adapt an `expand` that returns a whole level at once (the HF reference, unit fakes)."""

    async def stream(requests: Sequence[tuple[Node, int]]) -> AsyncIterator[tuple[int, Node]]:
        for slot, child in enumerate(await expand(requests)):
            yield slot, child

    return stream


@dataclass
class SearchResult:
    leaves: list[Node]
    nodes_expanded: int = 0
    depth: int = 0
    level_sizes: list[int] = field(default_factory=list)
    ended: SearchEnd = "complete"
    remaining: int = 0  # leaves of the budget not spent


async def rebase_search(
    root: Node,
    params: RebaseParams,
    expand: Expand,
    score: Score,
    monitor: Monitor | None = None,
) -> SearchResult:
    """Grow a tree level by level until `width` leaves are complete or the monitor stops it.

    Each depth: score the new nodes; complete ones become leaves and use up one unit of the
    budget each; the remaining budget is handed to *all* open nodes of the depth at once,
    sorted by reward, by `allocate_children` (softmax(score / T_b), ceil-walk).
    """
    monitor = monitor or NeverStop()
    result = SearchResult(leaves=[], remaining=params.width)
    requests: list[tuple[Node, int]] = [(root, params.width)]
    while True:
        result.depth += 1
        level: list[Node | None] = [None] * sum(k for _, k in requests)
        result.level_sizes.append(len(level))
        result.nodes_expanded += len(level)
        ended = await _grow_level(requests, level, result, expand, monitor)
        if ended is not None:  # stopped mid-level: this level's scored leaves still count
            leaves = [n for n in level if n is not None and n.terminal and n.scored]
            result.leaves += leaves
            result.remaining -= len(leaves)
            result.ended = ended
            return result
        await score([n for n in level if not n.scored])
        for node in level:
            node.scored = True
        if result.depth >= params.max_depth:  # depth cap: what is left ends here
            for node in level:
                if not node.terminal:
                    node.end = "depth"
        complete = [n for n in level if n.terminal]
        open_nodes = [n for n in level if not n.terminal]
        if params.prune_score is not None:  # the seed code's rule: low scorers get no children
            open_nodes = [n for n in open_nodes if n.score > params.prune_score]
        result.leaves += complete
        result.remaining -= len(complete)
        if result.remaining <= 0 or not open_nodes:
            cut = any(n.end == "depth" for n in complete)
            result.ended = "depth" if cut else "complete"
            return result
        ended = monitor.check(_state([], result))
        if ended is not None:
            result.ended = ended
            return result
        counts = allocate_children(
            [n.score for n in open_nodes], result.remaining, params.balance_temperature
        )
        requests = [(n, k) for n, k in zip(open_nodes, counts, strict=True) if k > 0]


async def _grow_level(
    requests: Sequence[tuple[Node, int]],
    level: list[Node | None],
    result: SearchResult,
    expand: Expand,
    monitor: Monitor,
) -> SearchEnd | None:
    """Fill `level` with the children as they come, checking the monitor after every scored
    leaf; a reason when it stopped the level (closing `expand` cancels what still runs)."""
    async with aclosing(expand(requests)) as children:
        async for slot, child in children:
            level[slot] = child
            if child.scored and child.terminal:
                state = _state(level, result)
                # None left to wait for: the level ends, the search decides how (above).
                ended = monitor.check(state) if state.remaining > 0 else None
                if ended is not None:
                    return ended
    if any(node is None for node in level):  # the driver ended the stream: its reason
        return monitor.check(_state(level, result)) or "budget"
    return None


def _state(level: Sequence[Node | None], result: SearchResult) -> SearchState:
    """Leaves so far in final order: earlier levels, then this level's scored leaves by slot."""
    leaves, pending_before = list(result.leaves), [False] * len(result.leaves)
    pending = False
    for node in level:
        if node is None or not node.scored:
            pending = True
        elif node.terminal:
            leaves.append(node)
            pending_before.append(pending)
    return SearchState(
        leaves=leaves,
        pending_before=pending_before,
        remaining=result.remaining - (len(leaves) - len(result.leaves)),
        nodes_expanded=result.nodes_expanded,
        depth=result.depth,
    )
