"""The `priority` REBASE scheduler: its order, its KV-aware admission, and that it grows the same
trees as `direct` and `fair` for the same seeds (a fake engine whose step finishing order is
scrambled; no vLLM)."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from types import SimpleNamespace

import pytest

from server.core.config import Settings
from server.core.flops import FlopsModel
from server.core.requests import MethodInput, SamplingSpec
from server.core.usage import UsageMeter
from server.methods.base import MethodContext
from server.methods.rebase import GeneratedStep, Rebase
from server.methods.resources import Resources
from server.rebase.kv import KvUsageReader, expansion_cost
from server.rebase.params import RebaseParams
from server.rebase.scheduler import (
    DirectScheduler,
    FairExpansionScheduler,
    KvCost,
    PriorityScheduler,
)

FLOPS = FlopsModel(2, 64, 64, 64, 128, 512, True)


async def _job(log: list, name: str, gate: asyncio.Event) -> str:
    log.append(name)
    await gate.wait()
    return name


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_request_below_its_fair_share_goes_before_any_rank() -> None:
    """Fairness as a bound: a request running nothing gets the next free slot even though an
    older request ranks first; beyond that bound, rank decides."""

    async def main() -> list[str]:
        scheduler = PriorityScheduler(2)
        log: list[str] = []
        gates = {n: asyncio.Event() for n in ("old0", "old_a", "young1", "old1", "old2")}

        def submit(key: str, name: str, rank: int) -> asyncio.Task:
            job = lambda: _job(log, name, gates[name])  # noqa: E731
            return asyncio.create_task(scheduler.run(key, job, rank=(rank,)))

        tasks = [submit("old", "old0", 1), submit("old", "old_a", 1)]
        await _turns()
        tasks += [submit("young", "young1", 2), submit("old", "old1", 1), submit("old", "old2", 1)]
        await _turns()
        for name in ("old0", "old_a", "young1", "old1", "old2"):
            gates[name].set()
            await _turns()
        await asyncio.gather(*tasks)
        return log

    # old0 frees a slot while "old" still runs old_a and "young" runs nothing: young1 goes.
    assert asyncio.run(main()) == ["old0", "old_a", "young1", "old1", "old2"]


def test_rank_orders_jobs_older_request_first_then_deeper_level() -> None:
    async def main() -> list[str]:
        scheduler = PriorityScheduler(1, min_share=0)  # no bound: rank alone
        log: list[str] = []
        gates = {n: asyncio.Event() for n in ("first", "b_new", "a_shallow", "a_deep")}

        def submit(key: str, name: str, rank: tuple) -> asyncio.Task:
            job = lambda: _job(log, name, gates[name])  # noqa: E731
            return asyncio.create_task(scheduler.run(key, job, rank=rank))

        tasks = [submit("b", "first", (1, 0))]
        await _turns()
        tasks += [
            submit("b", "b_new", (1, -1)),  # a younger request
            submit("a", "a_shallow", (0, -1)),
            submit("a", "a_deep", (0, -2)),  # the older request's deeper level: first
        ]
        await _turns()
        for name in ("first", "a_deep", "a_shallow", "b_new"):
            gates[name].set()
            await _turns()
        await asyncio.gather(*tasks)
        return log

    assert asyncio.run(main()) == ["first", "a_deep", "a_shallow", "b_new"]


def test_kv_admission_holds_jobs_that_do_not_fit_and_siblings_share_their_prefix() -> None:
    async def main() -> None:
        # 10 blocks; the parent's prefix takes 4, each sibling 2 of its own.
        scheduler = PriorityScheduler(8, kv_blocks=10, kv_watermark=1.0)
        log: list[str] = []
        gate = asyncio.Event()
        parent = object()
        tasks = [
            asyncio.create_task(
                scheduler.run(
                    "r",
                    lambda n=f"s{i}": _job(log, n, gate),
                    kv=KvCost(group=parent, shared_blocks=4, own_blocks=2),
                )
            )
            for i in range(5)
        ]
        await _turns()
        # 4 + 2 + 2 + 2 = 10: three siblings fit, the prefix counted once.
        assert log == ["s0", "s1", "s2"]
        assert scheduler.reserved_blocks == 10 and scheduler.queued == 2
        assert scheduler.deferred == 1  # the head of the queue, counted once
        gate.set()
        await asyncio.gather(*tasks)
        assert log == [f"s{i}" for i in range(5)]
        assert (scheduler.in_flight, scheduler.reserved_blocks, scheduler.queued) == (0, 0, 0)

    asyncio.run(main())


def test_measured_kv_usage_holds_admission_but_never_wedges() -> None:
    async def main() -> None:
        usage = {"value": 0.99}  # another request fills the cache: the engine says so
        scheduler = PriorityScheduler(8, kv_blocks=100, kv_usage=lambda: usage["value"])
        log: list[str] = []
        gate = asyncio.Event()
        cost = KvCost(group=None, shared_blocks=0, own_blocks=1)
        tasks = [
            asyncio.create_task(scheduler.run("r", lambda n=f"j{i}": _job(log, n, gate), kv=cost))
            for i in range(3)
        ]
        await _turns()
        assert log == ["j0"]  # nothing ran: the first starts anyway; the others wait
        usage["value"] = 0.1
        gate.set()
        await asyncio.gather(*tasks)
        assert log == ["j0", "j1", "j2"]

    asyncio.run(main())


def test_expansion_cost_counts_blocks() -> None:
    cost = expansion_cost("parent", prefix_tokens=70, step_tokens=64, block_size=32)
    assert (cost.shared_blocks, cost.own_blocks) == (2, 3)


def test_the_in_process_engine_reads_its_kv_layout_or_says_none() -> None:
    from server.engines.inprocess import Engine

    config = SimpleNamespace(num_gpu_blocks=512, block_size=32)
    engine = SimpleNamespace(llm=SimpleNamespace(vllm_config=SimpleNamespace(cache_config=config)))
    assert Engine.kv_layout(engine) == (512, 32)  # type: ignore[arg-type]
    config.num_gpu_blocks = None  # not started
    assert Engine.kv_layout(engine) is None  # type: ignore[arg-type]


def test_kv_usage_reader_reads_the_gauge_from_a_registry() -> None:
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    reader = KvUsageReader(max_age_s=0.0, registry=registry)
    assert reader() is None  # no engine logger yet
    gauge = Gauge("vllm:kv_cache_usage_perc", "usage", ["engine"], registry=registry)
    gauge.labels("0").set(0.25)
    assert reader() == 0.25


# --- same seeds, same trees, whatever the scheduler ----------------------------------------


class _FakeStepRebase(Rebase):
    """Steps are a pure function of (prompt, seed), as seeded sampling is; each takes a
    seed-dependent time, so steps finish in a different order from the one they started in."""

    async def generate_step(
        self, ctx, inp, prompt, *, max_tokens, stops, seed, choice_id=None, priority=0, watch=None
    ):
        digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
        await asyncio.sleep(digest[0] / 255 * 0.004)
        a, b = digest[1] % 9, digest[2] % 9
        wrong = digest[3] % 3 == 0  # some steps do bad arithmetic: the PRM scores differ
        if digest[4] % 4 == 0 or len(prompt) > 40:
            text = f"The answer is {a + b}\n"
        else:
            text = f"{a} + {b} = {a + b + wrong}\n"
        tokens = [100 + digest[5] % 50, 100 + digest[6] % 50, 10]
        return GeneratedStep(tokens, text, "stop", "\n")


def _trees(scheduler) -> list:
    inp = MethodInput(
        prompt_token_ids=[1, 2, 3],
        prompt_text="Q: what is it?",
        n=3,
        sampling=SamplingSpec(max_tokens=64, seed=11),
        params={"rebase": RebaseParams(width=6, max_step_tokens=8, step_delimiter="\n")},
    )
    engine = SimpleNamespace(kv_layout=lambda: (64, 4))

    async def one(request: int) -> list:
        ctx = MethodContext(
            engine=engine,  # type: ignore[arg-type]  # only its KV layout is read
            meter=UsageMeter(FLOPS),  # the arithmetic PRM charges nothing
            settings=Settings(),
            prompt_id=f"cmpl-{request}-p0",
            http_request_id=f"cmpl-{request}",
            resources=replace(Resources.build(Settings(), None), rebase_scheduler=scheduler),
        )
        choices = sorted(
            [(d.index, d.text, d.token_ids) async for d in _FakeStepRebase().run(ctx, inp)]
        )
        # Per tree; reward_calls differ by design (priority scores each child on its own).
        trees = sorted(ctx.details["rebase"], key=lambda d: d["request"])
        return [choices, [{k: v for k, v in d.items() if k != "reward_calls"} for d in trees]]

    async def main() -> list:
        return await asyncio.gather(*(one(r) for r in range(3)))

    return asyncio.run(main())


@pytest.mark.parametrize(
    "make",
    [
        lambda: FairExpansionScheduler(4),
        lambda: PriorityScheduler(4),
        lambda: PriorityScheduler(64, kv_blocks=64, kv_watermark=0.5),
    ],
    ids=["fair", "priority", "priority_kv_bound"],
)
def test_same_seeds_grow_the_same_trees_as_direct(make) -> None:
    expected = _trees(DirectScheduler())
    scheduler = make()
    got = _trees(scheduler)
    assert got == expected
    if getattr(scheduler, "kv_blocks", None):  # the KV bound did hold jobs back
        assert scheduler.deferred > 0
    # The trees are not trivial: several levels, and several leaves to vote over.
    details = [d for _, trees in expected for d in trees]
    assert max(d["depth"] for d in details) >= 2
    assert all(d["leaves"] >= 2 for d in details)


def test_the_priority_setting_builds_a_kv_aware_priority_scheduler() -> None:
    engine = SimpleNamespace(kv_layout=lambda: (300, 16))
    settings = Settings(rebase_scheduler="priority", rebase_kv_watermark=0.8, rebase_min_share=0)
    scheduler = Resources.build(settings, engine).rebase_scheduler  # type: ignore[arg-type]
    assert isinstance(scheduler, PriorityScheduler)
    assert (scheduler.kv_blocks, scheduler.kv_watermark, scheduler.min_share) == (300, 0.8, 0)


async def test_the_prm_bound_is_built_once_from_the_setting() -> None:
    """The `priority` scheduler's bound on PRM-engine calls is a field of the service's
    resources, built at start-up, sized by `--rebase-prm-max-in-flight`: one object for every
    request (it was once looked up in a dict that no longer existed: every PRM call failed)."""
    resources = Resources.build(Settings(rebase_prm_max_in_flight=2), None)
    bound = resources.prm_bound
    async with bound, bound:  # two calls in flight: the third must wait
        assert bound.locked()
    assert not bound.locked()
