"""Pydantic models of the OpenAI completions API, plus thinkscale's `method` extension.

Why our own models instead of vLLM's: the request carries a `method` and per-method parameter
blocks (`"rebase": {...}`, `"quiet_star": {...}`) that vLLM's schema would reject, and `usage`
carries FLOPs. Field names and shapes follow the OpenAI API so the official client works.
Per-method blocks are validated by the method itself (see `server.methods`), so adding a
method never touches this file.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from server.core.budget import Budget


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """Body of POST /v1/completions. Unknown top-level keys are checked against the registered
    method-parameter blocks by the route, so a typo is a 400, not silently ignored."""

    # No NaN/Infinity (Python's json accepts them): they pass range checks and reach vLLM.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    method: str = "baseline"
    # Per-choice compute budget (server/core/budget.py); a cut choice ends with "length".
    budget: Budget | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) == 0:
            raise ValueError("prompt must not be an empty list")
        if isinstance(value, list) and any(isinstance(p, list) and not p for p in value):
            raise ValueError("prompt must not contain an empty token list")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_bounded(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 16:
            raise ValueError("at most 16 stop sequences are supported")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed when stream is true")
        return value

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of prompts (string or token ids each)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    @property
    def method_blocks(self) -> dict[str, Any]:
        """Top-level keys that are not OpenAI fields: candidate per-method parameter blocks."""
        return dict(self.model_extra or {})

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def find_lone_surrogate(value: Any, path: str = "") -> str | None:
    """The path (`stop[1]`, `rebase.step_delimiter`) of the first string, or key, in `value`
    that is not encodable as UTF-8; None if there is none."""
    if isinstance(value, str):
        return None if _encodable(value) else (path or "body")
    if isinstance(value, dict):
        for key, item in value.items():
            key_text = str(key)
            if not _encodable(key_text):
                return path or "body"
            found = find_lone_surrogate(item, f"{path}.{key_text}" if path else key_text)
            if found is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = find_lone_surrogate(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Logprobs(BaseModel):
    """OpenAI completions logprobs: parallel lists, one entry per generated token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Logprobs | None = None
    finish_reason: Literal["stop", "length", "abort"] | None = None
    stop_reason: int | str | None = None


class FlopsUsage(BaseModel):
    """FLOPs of a request. `executed`: what ran (prefix-cache hits excluded). `nominal`: as if
    nothing were cached, comparable to papers that charge every token."""

    executed: float
    nominal: float
    policy_executed: float = 0.0
    policy_nominal: float = 0.0
    reward_executed: float = 0.0
    reward_nominal: float = 0.0


class CompletionTokensDetails(BaseModel):
    """OpenAI's breakdown of the completion. `reasoning_tokens`: Quiet-STaR's thought tokens
    (and delimiters), which, unlike OpenAI's, are not part of `completion_tokens` (the visible
    text, as `vllm serve` counts it)."""

    reasoning_tokens: int = 0


class ComponentUsage(BaseModel):
    """One component's engine calls (policy, or the reward model) and the terms that relate
    its `forward_tokens` to the engine's own counter (docs/architecture.md, "Accounting
    identity"): `engine_tokens = forward_tokens + emitting_calls - unreported_tokens` is what
    vLLM's `vllm:iteration_tokens_total` counts for these calls."""

    engine_calls: int = 0
    forward_tokens: int = 0
    emitting_calls: int = 0  # calls that produced a token (the last one is never run)
    unreported_calls: int = 0  # calls cut before the engine's first output
    unreported_tokens: int = 0  # their forward_tokens (the whole prompt; the engine never saw them)
    engine_tokens: int = 0
    flops_executed: float = 0.0
    flops_nominal: float = 0.0


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int  # prompt + completion (visible text); thoughts are not in it
    completion_tokens_details: CompletionTokensDetails | None = None
    thought_tokens: int = 0
    cached_tokens: int = 0
    forward_tokens: int = 0  # positions computed, all components
    forward_tokens_policy: int = 0
    # the reward model's: on the policy engine for the policy judge, its own engine for a PRM
    forward_tokens_reward: int = 0
    reward_tokens: int = 0
    engine_calls: int = 0
    flops: FlopsUsage
    components: dict[str, ComponentUsage] | None = None  # "policy", "reward": present ones


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    method: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
    # Method-specific details (e.g. REBASE tree statistics), keyed by method name.
    method_details: dict[str, Any] | None = None


class CompletionStreamChoice(BaseModel):
    """One choice's new text in a stream chunk; every field is always sent (null when unset),
    as vLLM and OpenAI do."""

    index: int
    text: str
    logprobs: Logprobs | None = None
    finish_reason: Literal["stop", "length", "abort"] | None = None
    stop_reason: int | str | None = None


class CompletionStreamResponse(BaseModel):
    """One SSE event of a streamed completion: deltas of choices, or the final usage chunk
    (empty `choices`). Serialised with `exclude_unset`, so `usage` appears only on the last."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    method: str
    choices: list[CompletionStreamChoice]
    usage: CompletionUsage | None = None
    method_details: dict[str, Any] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "thinkscale"
    root: str | None = None
    max_model_len: int | None = None
    methods: list[str] = Field(default_factory=list)
    # A Quiet-STaR checkpoint's resolved values (thought length, delimiter ids, the "---" id of
    # its thought embeddings, mixing-weight source); absent for other models.
    quiet_star: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
