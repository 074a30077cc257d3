"""The method interface: one reasoning method = one subclass, one file.

A method receives one prompt (already tokenized and validated) and streams
:class:`ChoiceDelta` events for its `n` choices; it drives the engine through
:class:`MethodContext`, which charges every engine call to the request's usage meter.
The route does everything else (validation, fan-out over prompts, usage, metrics, SSE),
so a new method is one file plus one line in the registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel
from vllm import SamplingParams
from vllm.logprobs import Logprob

from server.config import Settings
from server.engines.base import PolicyEngine
from server.limits import RequestWork
from server.resources import Resources
from server.usage import UsageMeter


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


@dataclass
class MethodContext:
    """What a method may use: the engine, the request's meter, settings, a details dict."""

    engine: PolicyEngine  # in-process or remote replicas: methods do not know which
    meter: UsageMeter
    settings: Settings
    request_id: str  # this prompt's: "<http request id>-p<prompt index>"
    details: dict[str, Any] = field(default_factory=dict)
    # Process-wide services methods share across requests (schedulers, reward models).
    resources: Resources = field(default_factory=Resources)
    # The whole HTTP request's id, shared by all its prompts: the key under which shared
    # schedulers are fair across requests (one request with many prompts is still one).
    http_request_id: str = ""

    @property
    def fairness_key(self) -> str:
        return self.http_request_id or self.request_id


class Method(ABC):
    """A way of turning a prompt into `n` completions."""

    name: ClassVar[str]
    # Parameter blocks this method reads from the request body, e.g. {"rebase": RebaseParams}.
    parameter_blocks: ClassVar[dict[str, type[BaseModel]]] = {}
    # Whether the method returns the prompt's logprobs when `SamplingSpec.prompt_logprobs` asks
    # (`echo` with `logprobs`). Only a method whose choice is one engine call over the prompt
    # has them; the route answers 400 for the others instead of echoing without them.
    prompt_logprobs: ClassVar[bool] = False

    def check(self, inp: MethodInput, engine: PolicyEngine) -> None:
        """Reject inputs this method cannot serve (raise `APIError`); default accepts all."""
        return None

    def default_max_tokens(self, params: dict[str, BaseModel], room: int) -> int | None:
        """`max_tokens` when the request leaves it out; `room` is what the context has left.

        None keeps the OpenAI default (16), which suits one plain completion. A method whose
        `max_tokens` means something else (REBASE: the token budget of every path) overrides
        this, so an omitted field does not silently cut every path to 16 tokens."""
        return None

    def work(self, inp: MethodInput) -> RequestWork:
        """Upper bound of the engine work one prompt may cause: sequences alive at once and
        tokens generated. Why: the gateway caps both per request before admitting it
        (server/limits.py); a method that fans out (trees) or thinks (Quiet-STaR) must say
        so here. Default: `n` independent sequences of up to `max_tokens` tokens each."""
        return RequestWork((("n", inp.n),), inp.sampling.max_tokens)

    @abstractmethod
    def run(self, ctx: MethodContext, inp: MethodInput) -> AsyncIterator[ChoiceDelta]:
        """Stream deltas of choices 0..n-1; each choice ends with a delta that has a
        `finish_reason`."""
