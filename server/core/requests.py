"""The request types every method shares: what one prompt of a request asks for, what a
method streams back, and the bound on the work one prompt may cause.

Why in the bottom layer: the API layer builds them, the methods consume them, and the
Quiet-STaR and REBASE packages below the methods read them too; a type defined in one of those
layers would make the others import it upward (docs/architecture.md, "Layers").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from vllm import SamplingParams
from vllm.logprobs import Logprob

from server.core.budget import Budget


@dataclass(frozen=True)
class SamplingSpec:
    """The request's OpenAI sampling fields, for one sequence."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float = 0.0
    stop: list[str] | None = None
    seed: int | None = None
    logprobs: int | None = None
    # `echo` with `logprobs`: the prompt tokens' logprobs too (as vLLM's own server asks);
    # set only for methods that can return them (Method.prompt_logprobs)
    prompt_logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    min_tokens: int = 0

    def to_vllm(self, *, seed_offset: int = 0, **overrides: Any) -> SamplingParams:
        """vLLM parameters for one sequence; choice i of a seeded request uses seed + i, as
        vLLM's own n>1 fan-out does, so results match `vllm serve`."""
        values: dict[str, Any] = {
            "n": 1,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k if self.top_k is not None else 0,
            "min_p": self.min_p,
            "stop": self.stop,
            "seed": None if self.seed is None else self.seed + seed_offset,
            "logprobs": self.logprobs,
            "prompt_logprobs": self.prompt_logprobs,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
            "ignore_eos": self.ignore_eos,
            "min_tokens": self.min_tokens,
        }
        capped = "max_tokens" in overrides
        values.update(overrides)
        # A method that splits the output into several engine calls (REBASE steps, the
        # rest of a Quiet-STaR step) caps each call's max_tokens; min_tokens, validated
        # against the request's max_tokens, must not then exceed the call's.
        if capped:
            values["min_tokens"] = min(values["min_tokens"], values["max_tokens"])
        return SamplingParams(**values)


@dataclass
class ChoiceDelta:
    """New output of one choice. `logprobs` holds vLLM's per-token top-logprob dicts."""

    index: int
    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    # The prompt's logprobs, one entry per prompt token (the first is None: nothing precedes
    # it), on a choice's first delta when the sampling asked for them (`prompt_logprobs`).
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None


@dataclass
class MethodInput:
    """One prompt of a request, ready for a method."""

    prompt_token_ids: list[int]
    prompt_text: str
    n: int
    sampling: SamplingSpec
    params: dict[str, BaseModel]  # validated parameter blocks, keyed by block name
    budget: Budget | None = None  # per choice (server/core/budget.py)


@dataclass(frozen=True)
class RequestWork:
    """Upper bound of the engine work of one prompt of a request."""

    # Request fields whose values multiply to the engine sequences the prompt may hold at
    # once, e.g. (("n", 4), ("rebase.width", 16)): 64 sequences.
    factors: tuple[tuple[str, int], ...]
    tokens_per_sequence: int  # generated positions per sequence, thoughts included
    # How tokens_per_sequence follows from the request, for the error message.
    token_note: str = ""

    @property
    def sequences(self) -> int:
        return math.prod(value for _, value in self.factors)

    @property
    def tokens(self) -> int:
        return self.sequences * self.tokens_per_sequence
