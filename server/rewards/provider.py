"""Reward-model instances shared by all requests of the gateway (built on first use).

Why shared: an engine-backed PRM is a second vLLM engine; the policy judge holds a score
cache. A request names a reward model (or takes the server default) and gets the one instance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.core.errors import APIError
from server.rewards.arithmetic import ArithmeticRewardModel
from server.rewards.base import RewardModel

if TYPE_CHECKING:
    from server.methods.base import MethodContext


def get_reward_model(ctx: MethodContext, name: str | None) -> RewardModel:
    name = name or ctx.settings.reward_model
    models = ctx.resources.reward_models
    if name not in models:
        models[name] = _build(ctx, name)
    return models[name]


def _build(ctx: MethodContext, name: str) -> RewardModel:
    if name == "arithmetic":
        return ArithmeticRewardModel()
    try:
        from server.rewards import build_reward_model
    except ImportError:  # pragma: no cover - registry not available
        build_reward_model = None
    if build_reward_model is None:
        raise APIError(f"reward model '{name}' is not available", param="rebase.reward_model")
    try:
        return build_reward_model(name, engine=ctx.engine, prm=ctx.resources.vllm_prm)
    except ValueError as exc:
        raise APIError(str(exc), param="rebase.reward_model") from None
