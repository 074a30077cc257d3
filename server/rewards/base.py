"""The process-reward-model interface every scorer implements.

Contract (docs/architecture.md, "Reward models"): given the question and a batch of candidate paths
(each a sequence of step texts), return one float in [0, 1] per step, in the same nested shape as
the input. A batch call lets an engine-backed PRM score all paths of a tree level in one request; a
CPU scorer simply loops. REBASE uses the score of a node's last step as the node's reward.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from server.core.usage import UsageMeter

__all__ = ["RewardModel", "check_scores"]


class RewardModel(ABC):
    """Scores reasoning steps; higher means more likely to lead to a correct answer."""

    name: ClassVar[str]
    # The highest score this model can give a step: REBASE's exact early stop bounds what a
    # future leaf can add to a vote by it (server/rebase/stopping.py).
    max_score: ClassVar[float] = 1.0

    @abstractmethod
    async def score(
        self,
        question: str,
        steps_batch: Sequence[Sequence[str]],
        *,
        meter: UsageMeter | None = None,
    ) -> list[list[float]]:
        """One list of step scores in [0, 1] per path of ``steps_batch``, same lengths.

        Engine-backed scorers charge what they compute to ``meter`` (component "reward"),
        so a request's usage includes the PRM's FLOPs."""


def check_scores(steps_batch: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]) -> None:
    """Raise ValueError unless ``scores`` honours the contract for ``steps_batch``.

    For implementers' tests and for a caller that wants to fail loudly on a misbehaving backend.
    """
    if len(scores) != len(steps_batch):
        raise ValueError(f"expected {len(steps_batch)} paths of scores, got {len(scores)}")
    for i, (steps, path_scores) in enumerate(zip(steps_batch, scores, strict=True)):
        if len(path_scores) != len(steps):
            raise ValueError(f"path {i}: expected {len(steps)} scores, got {len(path_scores)}")
        for s in path_scores:
            if not (math.isfinite(s) and 0.0 <= s <= 1.0):
                raise ValueError(f"path {i}: score {s!r} is not in [0, 1]")
