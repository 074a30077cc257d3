"""The search monitor of one REBASE tree: the request's early-stop rule, shadow recording and
the stop a budget asks for (docs/architecture.md, "Early stopping").

Shadow mode runs the full search and notes, for each rule, the first point at which it would
have stopped: the answer then and what the tree had spent by then. Comparing that answer with
the full search's inside one run is the only clean check on CPU, where two runs differ
numerically with batch composition.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from server.core.answers import extract_answer
from server.rebase.aggregation import aggregate, voting_leaves
from server.rebase.params import AdaptiveStop, RebaseParams, early_stop_label
from server.rebase.search import SearchEnd, SearchState
from server.rebase.stopping import Ballot, settled
from server.rebase.tree import Node

# The rules shadow mode records: the exact one and the two adaptive settings we benchmark.
SHADOW_RULES: tuple[AdaptiveStop | None, ...] = (
    None,
    AdaptiveStop(confidence=0.9),
    AdaptiveStop(confidence=0.95),
)


class EarlyStopMonitor:
    """Decides after every scored leaf whether the search goes on (server/rebase/search.py)."""

    def __init__(
        self,
        params: RebaseParams,
        *,
        max_score: float,
        spent: Callable[[], dict[str, float]],
    ) -> None:
        self.params, self.max_score, self.spent = params, max_score, spent
        self.started = time.monotonic()
        self.halted: SearchEnd | None = None  # set by `halt` (a budget ran out)
        self._answers: dict[int, str | None] = {}
        rule = params.early_stop
        self.rule: AdaptiveStop | None = rule if isinstance(rule, AdaptiveStop) else None
        self.active = rule != "off" and not params.shadow_stop
        self.shadow: dict[str, dict[str, Any] | None] | None = None
        if params.shadow_stop:
            rules = list(SHADOW_RULES)
            if self.rule is not None and _label(self.rule) not in map(_label, rules):
                rules.append(self.rule)  # shadow records the confidence; windows are real runs
            self.shadow = {_label(r): None for r in rules}
            self._shadow_rules = rules

    def halt(self, reason: SearchEnd) -> None:
        """Ask the search to stop at its next check (the driver also ends the level)."""
        self.halted = self.halted or reason

    def check(self, state: SearchState) -> SearchEnd | None:
        if self.halted is not None:
            return self.halted
        if self.shadow is not None:
            self._record_shadow(state)
            return None
        if not self.active:
            return None
        if self._settled(state, self.rule):
            return "decided" if self.rule is None else "confident"
        return None

    def _settled(self, state: SearchState, rule: AdaptiveStop | None) -> bool:
        return settled(
            self._ballots(state),
            state.remaining,
            how=self.params.aggregation,
            which=self.params.vote_leaves,
            max_score=self.max_score,
            confidence=None if rule is None else rule.confidence,
        )

    def _ballots(self, state: SearchState) -> list[Ballot]:
        return [
            Ballot(self._answer(leaf), leaf.score, leaf.end, fixed_position=not pending)
            for leaf, pending in zip(state.leaves, state.pending_before, strict=True)
        ]

    def _answer(self, leaf: Node) -> str | None:
        if id(leaf) not in self._answers:
            self._answers[id(leaf)] = extract_answer(leaf.path_text())
        return self._answers[id(leaf)]

    def _record_shadow(self, state: SearchState) -> None:
        assert self.shadow is not None
        for rule in self._shadow_rules:
            label = _label(rule)
            if self.shadow[label] is None and self._settled(state, rule):
                voters = voting_leaves(state.leaves, self.params.vote_leaves)
                votes = aggregate(
                    [(self._answer(leaf), leaf.score) for leaf in voters], self.params.aggregation
                )
                self.shadow[label] = {
                    "answer": votes.answer,
                    **self.spent(),
                    "nodes_expanded": state.nodes_expanded,
                    "leaves": len(state.leaves),
                    "remaining_leaves": state.remaining,
                    "seconds": round(time.monotonic() - self.started, 4),
                }


def _label(rule: AdaptiveStop | None) -> str:
    return "exact" if rule is None else early_stop_label(rule)
