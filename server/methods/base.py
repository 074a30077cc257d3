"""The method interface: one reasoning method = one subclass, one file.

A method receives one prompt (already tokenized and validated) and streams
:class:`ChoiceDelta` events for its `n` choices; it drives the engine through
:class:`MethodContext`, which charges every engine call to the request's usage meter.
The route does everything else (validation, fan-out over prompts, usage, metrics, SSE),
so a new method is one file plus one line in the registry.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from server.core import metrics
from server.core.budget import ChoiceBudget
from server.core.config import Settings
from server.core.requests import ChoiceDelta, MethodInput, RequestWork
from server.core.usage import UsageMeter
from server.engines.base import PolicyEngine
from server.methods.resources import Resources


@dataclass
class MethodContext:
    """What a method may use: the engine, the request's meter, settings, a details dict.

    Three ids, one name each: `http_request_id` ("cmpl-<id>", the whole HTTP request, shared by
    its prompts: the key under which shared schedulers are fair across requests), `prompt_id`
    ("<http_request_id>-p<prompt index>") and, inside a method, `choice_id`
    ("<prompt_id>-<choice index>": one sequence, or one REBASE tree), the key a replicated
    engine routes a choice's calls by, so they share one replica's prefix cache."""

    engine: PolicyEngine  # in-process or remote replicas: methods do not know which
    meter: UsageMeter
    settings: Settings
    http_request_id: str
    prompt_id: str
    # Process-wide services methods share across requests (schedulers, reward models).
    resources: Resources
    details: dict[str, Any] = field(default_factory=dict)
    # When the request was admitted (time.perf_counter): budgets in seconds count from here.
    admitted_at: float = field(default_factory=time.perf_counter)

    def choice_budget(self, inp: MethodInput, meter: UsageMeter) -> ChoiceBudget | None:
        """The request's budget for one choice, spent from `meter` (the choice's own)."""
        return ChoiceBudget(inp.budget, meter, self.admitted_at) if inp.budget else None


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
        (server/core/limits.py); a method that fans out (trees) or thinks (Quiet-STaR) must say
        so here. Default: `n` independent sequences of up to `max_tokens` tokens each."""
        return RequestWork((("n", inp.n),), inp.sampling.max_tokens)

    @abstractmethod
    def run(self, ctx: MethodContext, inp: MethodInput) -> AsyncIterator[ChoiceDelta]:
        """Stream deltas of choices 0..n-1; each choice ends with a delta that has a
        `finish_reason`."""


def record_budget(ctx: MethodContext, method: str, budget: ChoiceBudget, choice: str) -> None:
    """A budgeted choice's entry in `method_details["budget"]`, and its cut in the metrics."""
    ctx.details.setdefault("budget", []).append(budget.report(choice))
    if budget.cut is not None:
        metrics.BUDGET_CUTS.labels(method, budget.cut).inc()
