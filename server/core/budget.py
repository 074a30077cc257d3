"""Per-choice compute budgets: `"budget": {"flops": …, "seconds": …, "tokens": …}`.

Why per choice: a budget bounds the work behind one answer (one sequence, one REBASE tree), so
`n` and the prompts of a batch each get the whole budget, as each gets `max_tokens`. A choice's
spend is its own meter (`UsageMeter.child`) plus the running cost of its engine calls still in
flight, priced with the same formula the final charge uses, so a call can be cut within one
engine step of crossing the budget (docs/architecture.md, "Budgets").
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.core.usage import UsageMeter

BudgetKind = Literal["flops", "seconds", "tokens"]


class Budget(BaseModel):
    """What one choice may spend. `flops`: executed FLOPs, all components, as `usage.flops`
    counts them; `tokens`: generated tokens, Quiet-STaR thought tokens included (a compute
    budget, not a thinking-phase cap); `seconds`: from the request's admission."""

    model_config = ConfigDict(extra="forbid")

    flops: float | None = Field(None, gt=0)
    seconds: float | None = Field(None, gt=0)
    tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _something_to_bound(self) -> Budget:
        if self.flops is None and self.seconds is None and self.tokens is None:
            raise ValueError("budget needs at least one of flops, seconds, tokens")
        return self

    def limits(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class CallWatch(Protocol):
    """What an engine-call loop reports to, so that a budget sees a call before its charge:
    `progress` after every output (DELTA: one per engine step), `done` once the call ended and
    its charge is in the meter (also when it was aborted)."""

    def progress(
        self,
        call: object,
        prompt: int,
        cached: int,
        generated: int,
        *,
        rollback_steps: int | None = None,
    ) -> None: ...

    def done(self, call: object) -> None: ...


Output = TypeVar("Output", bound=Any)  # vLLM's RequestOutput, or the remote engine's


async def watched(
    call: AsyncIterator[Output],
    watch: CallWatch | None,
    prompt: int,
    *,
    rollback_steps: int | None = None,
) -> AsyncIterator[Output]:
    """An engine call's outputs, each reported to `watch` before it is handed on, and `done`
    once the call is closed and charged (closing this closes the call, which aborts it). The
    outputs must be DELTA ones when watched: `generated` is their running sum. A finished
    output is not reported: its call is charged as it ends, and a choice that ended by itself
    is not cut."""
    generated = 0
    try:
        async with aclosing(call) as outputs:
            async for output in outputs:
                generated += len(output.outputs[0].token_ids)
                if watch is not None and not output.finished:
                    cached = getattr(output, "num_cached_tokens", None) or 0
                    watch.progress(call, prompt, cached, generated, rollback_steps=rollback_steps)
                yield output
    finally:
        if watch is not None:
            watch.done(call)


@dataclass
class ChoiceBudget:
    """One choice's budget against its meter and its calls in flight (a `CallWatch`)."""

    limit: Budget
    meter: UsageMeter  # the choice's own meter
    started: float = field(default_factory=time.perf_counter)  # the request's admission
    cut: BudgetKind | None = None  # set by `check` once the budget ran out
    # Called once, when `check` first finds the budget spent: how the method stops its work
    # mid-call (the Quiet-STaR decoder stops its call; REBASE halts its search).
    on_spent: Callable[[], None] | None = None
    # call -> (prompt tokens, cached tokens, generated so far, Quiet-STaR rollback steps):
    # calls not yet charged, priced as their final charge will be
    _running: dict[object, tuple[int, int, int, int | None]] = field(default_factory=dict)

    def progress(
        self,
        call: object,
        prompt: int,
        cached: int,
        generated: int,
        *,
        rollback_steps: int | None = None,
    ) -> None:
        """A running call's progress; checks the budget (which may call `on_spent`)."""
        self._running[call] = (prompt, cached, generated, rollback_steps)
        self.check()

    def done(self, call: object) -> None:
        """The call ended: its charge is in the meter now."""
        self._running.pop(call, None)

    def spent(self) -> dict[str, float]:
        """FLOPs and generated tokens (Quiet-STaR's thoughts are generated tokens too) of the
        charged calls plus the running ones; seconds since admission."""
        model = self.meter.policy_flops
        running = self._running.values()
        flops = self.meter.total_flops.executed + sum(
            model.request_flops(p, c, g, rollback_steps=r).executed for p, c, g, r in running
        )
        tokens = self.meter.component("policy").generated_tokens + sum(g for _, _, g, _ in running)
        return {"flops": flops, "tokens": tokens, "seconds": time.perf_counter() - self.started}

    def check(self) -> BudgetKind | None:
        """The first limit reached (and remembered in `cut`), or None."""
        if self.cut is None:
            spent = self.spent()
            for kind, limit in self.limit.limits().items():
                if spent[kind] >= limit:
                    self.cut = kind  # type: ignore[assignment]
                    if self.on_spent is not None:
                        self.on_spent()
                    break
        return self.cut

    def seconds_left(self) -> float | None:
        if self.limit.seconds is None:
            return None
        return self.limit.seconds - (time.perf_counter() - self.started)

    def report(self, choice: str) -> dict:
        """The choice's entry of `method_details["budget"]`."""
        spent = self.spent()
        spent["seconds"] = round(spent["seconds"], 4)
        return {"choice": choice, "limit": self.limit.limits(), "spent": spent, "cut": self.cut}
