"""Process-wide services the methods share across requests, built once at start-up.

Why typed and built up front: these used to travel as a string-keyed dict filled lazily by the
first request that needed them, where a misspelt key silently built a second scheduler or, as
happened to the PRM bound, outlived a refactor and raised on every call. Built here, at start-up,
from the settings and the started engines, every field exists before the first request, and a
reward model that cannot be built says why once, when a request asks for it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from server.core import metrics
from server.core.config import Settings
from server.engines.base import PolicyEngine
from server.rebase.kv import KvUsageReader
from server.rebase.scheduler import DirectScheduler, FairExpansionScheduler, PriorityScheduler
from server.rewards import REWARD_MODELS, build_reward_model
from server.rewards.base import RewardModel
from server.rewards.vllm_prm import VllmProcessRewardModel

# `PriorityScheduler` is a `FairExpansionScheduler` with another order and KV admission.
RebaseScheduler = FairExpansionScheduler | DirectScheduler


@dataclass
class Resources:
    """What every request of this gateway process shares (one instance per CompletionService)."""

    # The one REBASE scheduler all trees share (`--rebase-scheduler`).
    rebase_scheduler: RebaseScheduler
    # Bounds the `priority` scheduler's scoring calls on the PRM engine (its own engine, so
    # its own bound, not policy slots): `--rebase-prm-max-in-flight`.
    prm_bound: asyncio.Semaphore
    # Reward-model instances by name (the policy judge keeps a score cache across requests).
    reward_models: dict[str, RewardModel] = field(default_factory=dict)
    # Why each reward model missing from `reward_models` cannot be served here.
    unavailable: dict[str, str] = field(default_factory=dict)
    # The model PRM's own vLLM engine (pooling mode), when the operator configured one.
    vllm_prm: VllmProcessRewardModel | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        engine: PolicyEngine | None,
        prm: VllmProcessRewardModel | None = None,
    ) -> Resources:
        """Every service, from the settings and the started engines (`engine` None: unit tests
        with no policy engine; the policy judge is then unavailable)."""
        models: dict[str, RewardModel] = {}
        unavailable: dict[str, str] = {}
        for name in REWARD_MODELS:
            try:
                models[name] = build_reward_model(name, engine=engine, prm=prm)
            except ValueError as exc:
                unavailable[name] = str(exc)
        return cls(
            rebase_scheduler=build_rebase_scheduler(settings, engine),
            prm_bound=asyncio.Semaphore(settings.rebase_prm_max_in_flight),
            reward_models=models,
            unavailable=unavailable,
            vllm_prm=prm,
        )

    def reward_model(self, name: str) -> RewardModel:
        """The shared instance called `name`; ValueError saying why when it cannot be served."""
        model = self.reward_models.get(name)
        if model is None:
            raise ValueError(self.unavailable.get(name) or f"unknown reward model {name!r}")
        return model


def build_rebase_scheduler(settings: Settings, engine: PolicyEngine | None) -> RebaseScheduler:
    """The scheduler `--rebase-scheduler` names; the `thinkscale_rebase_jobs_in_flight` gauge
    reads its slot count (docs/architecture.md, "The scheduler")."""
    scheduler: RebaseScheduler
    on_queue = lambda method, queued: metrics.QUEUE_DEPTH.labels(method).set(queued)  # noqa: E731
    if settings.rebase_scheduler == "direct":
        scheduler = DirectScheduler()
    elif settings.rebase_scheduler == "priority":
        layout = engine.kv_layout() if engine is not None else None
        priority = PriorityScheduler(
            settings.rebase_max_in_flight,
            on_queue,
            min_share=settings.rebase_min_share,
            kv_blocks=layout[0] if layout else None,
            kv_usage=KvUsageReader(),
            kv_watermark=settings.rebase_kv_watermark,
            on_defer=metrics.REBASE_KV_DEFERRALS.inc,
        )
        metrics.REBASE_KV_RESERVED.set_function(lambda: priority.reserved_blocks)
        scheduler = priority
    else:
        # per replica (docs/scaling.md): more replicas take more jobs at once
        scheduler = FairExpansionScheduler(
            settings.rebase_max_in_flight * settings.engine_replicas, on_queue
        )
    metrics.REBASE_JOBS_IN_FLIGHT.set_function(lambda: scheduler.in_flight)
    return scheduler
