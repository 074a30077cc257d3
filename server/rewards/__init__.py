"""Process reward models: score each reasoning step of a candidate path in [0, 1].

``base.RewardModel`` is the one interface REBASE talks to; ``arithmetic`` is the CPU-only default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.rewards.base import RewardModel

if TYPE_CHECKING:
    from server.engines.base import PolicyEngine as Engine
    from server.rewards.vllm_prm import VllmProcessRewardModel

__all__ = ["REWARD_MODELS", "RewardModel", "build_reward_model"]

REWARD_MODELS = ("arithmetic", "policy_judge", "vllm_prm")
"""Names a request or the settings may pick; each module imports vLLM only when built."""


def build_reward_model(
    name: str, *, engine: Engine | None, prm: VllmProcessRewardModel | None
) -> RewardModel:
    """The reward model called ``name``.

    ``engine`` is the running policy engine (``policy_judge`` needs it); ``prm`` the started PRM
    engine, present only when the operator configured one. Raises ValueError for an unknown name
    or a reward whose backend is missing, with what to configure.
    """
    if name == "arithmetic":
        from server.rewards.arithmetic import ArithmeticRewardModel

        return ArithmeticRewardModel()
    if name == "policy_judge":
        if engine is None:
            raise ValueError("reward model 'policy_judge' needs the policy engine")
        from server.rewards.policy_judge import PolicyJudgeRewardModel

        return PolicyJudgeRewardModel(engine)
    if name == "vllm_prm":
        if prm is None:
            raise ValueError(
                "reward model 'vllm_prm' is not configured: start the gateway with a PRM model "
                "(a Math-Shepherd or Qwen2.5-Math-PRM checkpoint; see docs/prm.md)"
            )
        if not prm.started:
            raise ValueError("reward model 'vllm_prm' is configured but its engine is not started")
        return prm
    raise ValueError(f"unknown reward model {name!r}; choose one of {', '.join(REWARD_MODELS)}")
