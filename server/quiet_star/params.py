"""Request parameters of Quiet-STaR (`"quiet_star": {...}` in the request body), with bounds."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class QuietStarParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    thought_tokens: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Thought length t (sampled tokens between start and end); each output "
        "token costs t + 3 forward positions with one-token delimiters. Default: the checkpoint's "
        "n_ahead - 3 (5 for quietstar-8-ahead), else 8.",
    )
    mixing_weight: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="w in (1 - w) * base + w * post-thought. Default: the checkpoint's learned "
        "mixing head when the served model has one, else 0.1 (measured: keeps SmolLM2 "
        "coherent, 0.3 already degenerates, docs/benchmarks.md). A value here overrides the "
        "head.",
    )
    thought_temperature: float = Field(1.0, gt=0.0, le=5.0)
    think: Literal["every_token", "step_start"] = Field(
        "every_token",
        description="'every_token' is faithful to Quiet-STaR; 'step_start' thinks only for the "
        "first token of each step (after `step_delimiter`) and decodes the rest plainly.",
    )
    step_delimiter: str = Field("\n", min_length=1, max_length=32)
    start_token: str | None = Field(
        None, max_length=64, description="Thought-start token or string; default: the model's."
    )
    end_token: str | None = Field(None, max_length=64)
    return_thoughts: bool = Field(False, description="Return each token's thought text.")

    def positions(self, max_tokens: int, max_steps: int | None = None) -> int:
        """Engine positions one sequence of up to `max_tokens` output tokens may decode: one per
        output token, plus start + thought + end (`thought_tokens + 2`) per thought. A thought
        comes before every token, or with `think="step_start"` before each step's first token
        (at most `max_steps` steps, and never more than one per token)."""
        thoughts = max_tokens
        if self.think == "step_start" and max_steps is not None:
            thoughts = min(max_steps, max_tokens)
        return max_tokens + thoughts * (self.thought_tokens + 2)

    def positions_note(self) -> str:
        """How `positions` grows, for error messages."""
        return f"thoughts included: quiet_star.thought_tokens={self.thought_tokens} + 2 each"
