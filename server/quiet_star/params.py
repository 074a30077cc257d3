"""Request parameters of Quiet-STaR (`"quiet_star": {...}` in the request body), with bounds."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from kernels.quiet_star.spec import sequence_positions, step_positions


class QuietStarParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    thought_tokens: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Thought length t (sampled tokens between start and end); each output "
        "token costs s + t + e + 1 positions (s, e: the delimiters' token counts; t + 3 with "
        "one-token delimiters). Default: the checkpoint's "
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

    # The delimiters' token ids, resolved against the served tokenizer by the request checks
    # (server/quiet_star/validation.py); the work cap needs their lengths.
    _start_ids: tuple[int, ...] | None = PrivateAttr(None)
    _end_ids: tuple[int, ...] | None = PrivateAttr(None)

    def resolved(
        self, thought_tokens: int, start_ids: tuple[int, ...], end_ids: tuple[int, ...]
    ) -> QuietStarParams:
        """A copy with the values the decoder will use: the thought length and the delimiters'
        token ids (what a request left to the served model, made explicit)."""
        copy = self.model_copy(update={"thought_tokens": thought_tokens})
        copy._start_ids, copy._end_ids = tuple(start_ids), tuple(end_ids)
        return copy

    @property
    def steps(self) -> int:
        """Engine positions of one thinking step (kernels/quiet_star/spec.py). Only known once
        `resolved`: the delimiters' lengths depend on the tokenizer."""
        if self._start_ids is None or self._end_ids is None or self.thought_tokens is None:
            raise RuntimeError("QuietStarParams.steps needs the resolved delimiters")
        return step_positions(len(self._start_ids), self.thought_tokens, len(self._end_ids))

    def positions(self, max_tokens: int, max_steps: int | None = None) -> int:
        """Engine positions one sequence of up to `max_tokens` output tokens may decode: one per
        output token, plus start + thought + end (`steps - 1`) per thought. A thought comes
        before every token, or with `think="step_start"` before each step's first token (at
        most `max_steps` steps, and never more than one per token)."""
        thoughts = None
        if self.think == "step_start" and max_steps is not None:
            thoughts = max_steps
        return sequence_positions(max_tokens, self.steps, thoughts)

    def positions_note(self) -> str:
        """How `positions` grows, for error messages."""
        assert self._start_ids is not None and self._end_ids is not None
        return (
            f"thoughts included: {self.steps - 1} positions each (start delimiter "
            f"{len(self._start_ids)} + quiet_star.thought_tokens={self.thought_tokens} + end "
            f"delimiter {len(self._end_ids)})"
        )
