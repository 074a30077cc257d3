"""Request parameters of REBASE (`"rebase": {...}` in the request body), with bounds.

Bounds keep one request from monopolising the engine: the tree holds at most `width` live
nodes per depth, `max_depth` levels, and each path at most the request's `max_tokens`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from server.rebase.aggregation import Aggregation, VoteLeaves


class AdaptiveStop(BaseModel):
    """Stop once the leader wins with this probability under the Beta-Binomial model of the
    remaining votes (server/rebase/stopping.py); not exact by design.

    `window`: how many of the tree's expansions run at once. A level's children run side by
    side and finish together, so by the time the vote settles most of a level has been
    prefilled and decoded; a stop then saves only its tail. Sampling in windows, as the
    adaptive self-consistency rules do (one sample at a time in Adaptive-Consistency, fixed
    windows in Early-Stopping Self-Consistency), lets the rule stop before the rest of the
    level starts: children wait their turn in slot order and a stop withdraws them unrun.
    The trees are the same (seeds are drawn per slot); what it costs is latency when the
    engine has room for more (docs/architecture.md, "Early stopping")."""

    model_config = ConfigDict(extra="forbid")

    confidence: float = Field(..., gt=0.5, lt=1.0)
    window: int | None = Field(
        4,
        ge=1,
        le=64,
        description="Expansions of one tree running at once (later children start as earlier "
        "ones end, so a stop never starts them); null: a level's children all start together.",
    )

    @property
    def label(self) -> str:
        return f"confidence={self.confidence:g}"


EarlyStop = Literal["off", "exact"] | AdaptiveStop


def early_stop_label(rule: EarlyStop) -> str:
    """ "off", "exact" or "confidence=0.95": the setting as results and metrics name it."""
    return rule.label if isinstance(rule, AdaptiveStop) else rule


class RebaseParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(16, ge=1, le=64, description="Budget of leaves (B0 = width first steps).")
    balance_temperature: float = Field(
        0.2, gt=0.0, le=10.0, description="Softmax temperature T_b of the child allocation."
    )
    max_depth: int = Field(25, ge=1, le=64, description="Most steps per path.")
    max_step_tokens: int = Field(256, ge=1, le=4096, description="Token cap of one step.")
    step_format: Literal["delimiter", "step_k"] = Field(
        "delimiter",
        description="'delimiter': a step ends at `step_delimiter`; 'step_k': numbered "
        "'Step k:' headers (Math-Shepherd style, the paper's protocol).",
    )
    step_delimiter: str = Field("\n", min_length=1, max_length=32)
    first_step_header: bool = Field(
        True,
        description="'step_k' only: force 'Step 1:' before the first step. The paper's seed "
        "code writes headers from step 2 on (false).",
    )
    prune_score: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Drop open nodes scoring <= this before allocating children (the seed "
        "code drops <= 0.1); finished nodes still count as leaves. None: keep all.",
    )
    aggregation: Aggregation = "weighted_vote"
    vote_leaves: VoteLeaves = Field(
        "finished",
        description="'finished': only leaves that stated an answer or ended (EOS) vote, as in "
        "the reference (all leaves when none did); 'all': leaves cut by a cap vote too.",
    )
    early_stop: EarlyStop = Field(
        "exact",
        description="'exact': stop as soon as no completion of the remaining leaves can change "
        "the voted answer (the returned text is the best leaf of that answer so far); "
        "{'confidence': c}: stop when the leader wins with probability c under a model of the "
        "remaining votes; 'off': always grow `width` leaves.",
    )
    shadow_stop: bool = Field(
        False,
        description="Run the full search (as 'off') and record in method_details where the "
        "exact and adaptive rules would have stopped, and their answer then (benchmarks).",
    )
    reward_model: Literal["arithmetic", "policy_judge", "vllm_prm"] | None = Field(
        None, description="Process reward model; default: the server's."
    )
