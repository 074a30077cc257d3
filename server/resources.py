"""Process-wide services the methods share across requests, as one typed object.

Why typed: these used to travel as a string-keyed dict, where a misspelt key silently built a
second scheduler or missed the PRM engine (a method still reading the old dict failed every
PRM scoring call). Each field is created once: the bound on PRM calls with the object, from the
settings (`Resources.for_settings`); the PRM engine by the app at start-up; the reward models
and the REBASE scheduler lazily by the first method that needs them
(server/rewards/provider.py, server/methods/rebase.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.config import Settings
    from server.rebase.scheduler import DirectScheduler, ExpansionScheduler
    from server.rewards.base import RewardModel
    from server.rewards.vllm_prm import VllmProcessRewardModel


@dataclass
class Resources:
    """What every request of this gateway process shares (one instance per CompletionService)."""

    # The model PRM's own vLLM engine (pooling mode), when the operator configured one.
    vllm_prm: VllmProcessRewardModel | None = None
    # Reward-model instances by name (the policy judge keeps a score cache across requests).
    reward_models: dict[str, RewardModel] = field(default_factory=dict)
    # The one REBASE scheduler all trees share (fair across HTTP requests).
    rebase_scheduler: ExpansionScheduler | DirectScheduler | None = None
    # The bound on PRM-engine scoring calls in flight under the `priority` scheduler, which
    # scores each child as soon as its step ends, outside the policy slots (the PRM has its own
    # engine). None only where no settings built this object (unit tests without a PRM).
    prm_bound: asyncio.Semaphore | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> Resources:
        """What a gateway with these settings shares, before any engine or request exists."""
        return cls(prm_bound=asyncio.Semaphore(settings.rebase_prm_max_in_flight))
