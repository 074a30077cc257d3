"""Per-request cost accounting: tokens and FLOPs of every engine call a method makes.

Why a meter object: a method may make one engine call (baseline) or hundreds (REBASE,
Quiet-STaR). Every call reports what it computed (prompt minus prefix-cache hits, plus
generated tokens) and the meter sums it, split by component (policy model vs reward model),
so the response and the metrics say what the *whole* request cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from server.core.flops import FlopsModel, RequestFlops

Component = Literal["policy", "reward"]


@dataclass
class ComponentCost:
    """What one model (policy or reward) computed for a request."""

    engine_calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    flops: RequestFlops = field(default_factory=lambda: RequestFlops(0, 0))

    forward_tokens: int = 0
    # The terms of the accounting identity against the engine's own counter
    # (docs/architecture.md, "Accounting identity"):
    emitting_calls: int = 0  # calls that produced a token: the engine counts their last one
    unreported_calls: int = 0  # calls cut before the engine's first output: it never saw them
    unreported_tokens: int = 0  # forward_tokens charged for those (their whole prompt)

    @property
    def engine_counted_tokens(self) -> int:
        """What vLLM's `vllm:iteration_tokens_total` counts for these calls: every call's
        uncached prompt and every token it emitted, once the engine has reported it."""
        return self.forward_tokens + self.emitting_calls - self.unreported_tokens


@dataclass
class UsageMeter:
    """Accumulates the cost of one API request across all its engine calls."""

    policy_flops: FlopsModel
    reward_flops: FlopsModel | None = None
    components: dict[str, ComponentCost] = field(default_factory=dict)
    thought_tokens: int = 0
    # A choice's own meter (one REBASE tree, one budgeted sequence) charges the request's
    # meter too, so the choice's spend can be read while the request's total stays exact.
    parent: UsageMeter | None = field(default=None, repr=False)

    def child(self) -> UsageMeter:
        """A meter for one choice of this request: every charge to it is also charged here."""
        return UsageMeter(self.policy_flops, self.reward_flops, parent=self)

    def record_generation(
        self,
        *,
        prompt_tokens: int,
        cached_tokens: int,
        generated_tokens: int,
        component: Component = "policy",
        rollback_steps: int | None = None,
        reported: bool = True,
        prompt_logits: Literal["last", "all"] = "last",
    ) -> None:
        """Charge one finished (or aborted) generation call of the policy or a generative judge
        (`rollback_steps`: a Quiet-STaR continuation request, FlopsModel.request_flops;
        `prompt_logits="all"`: it returned the prompt's logprobs).
        `reported`: the engine reported the call (False: it was cut before its first output, so
        whether its prompt ran is unknown; it is charged in full)."""
        if self.parent is not None:
            self.parent.record_generation(
                prompt_tokens=prompt_tokens,
                cached_tokens=cached_tokens,
                generated_tokens=generated_tokens,
                component=component,
                rollback_steps=rollback_steps,
                reported=reported,
                prompt_logits=prompt_logits,
            )
        model = self._model_for(component)
        cost = self.components.setdefault(component, ComponentCost())
        cost.engine_calls += 1
        cost.prompt_tokens += prompt_tokens
        cost.cached_tokens += cached_tokens
        cost.generated_tokens += generated_tokens
        # Positions that ran: the uncached prompt, then every generated token but the last
        # is fed back (the last one is sampled and never run through the model).
        forward = prompt_tokens - cached_tokens + max(generated_tokens - 1, 0)
        cost.forward_tokens += forward
        cost.emitting_calls += generated_tokens > 0
        if not reported:
            cost.unreported_calls += 1
            cost.unreported_tokens += forward
        cost.flops = cost.flops + model.request_flops(
            prompt_tokens,
            cached_tokens,
            generated_tokens,
            rollback_steps=rollback_steps,
            prompt_logits=prompt_logits,
        )

    def record_prefill(
        self, *, prompt_tokens: int, cached_tokens: int, component: Component = "reward"
    ) -> None:
        """Charge a scoring call that only runs the prompt (a pooling PRM): no LM head."""
        if self.parent is not None:
            self.parent.record_prefill(
                prompt_tokens=prompt_tokens, cached_tokens=cached_tokens, component=component
            )
        model = self._model_for(component)
        cost = self.components.setdefault(component, ComponentCost())
        cost.engine_calls += 1
        cost.prompt_tokens += prompt_tokens
        cost.cached_tokens += cached_tokens
        cost.forward_tokens += prompt_tokens - cached_tokens
        cost.flops = cost.flops + model.prefill_flops(prompt_tokens, cached_tokens, logits="none")

    def add_thought_tokens(self, count: int) -> None:
        """Quiet-STaR thought tokens sampled for this request (and its parent's)."""
        self.thought_tokens += count
        if self.parent is not None:
            self.parent.add_thought_tokens(count)

    def charge_reward_at(self, model: FlopsModel) -> None:
        """Charge reward calls at `model`'s size (an engine PRM of its own), here and in every
        meter above, unless one was set already."""
        meter: UsageMeter | None = self
        while meter is not None:
            if meter.reward_flops is None:
                meter.reward_flops = model
            meter = meter.parent

    def component(self, name: Component) -> ComponentCost:
        return self.components.get(name, ComponentCost())

    @property
    def total_flops(self) -> RequestFlops:
        total = RequestFlops(0, 0)
        for cost in self.components.values():
            total = total + cost.flops
        return total

    def _model_for(self, component: Component) -> FlopsModel:
        if component == "reward" and self.reward_flops is not None:
            return self.reward_flops
        return self.policy_flops
