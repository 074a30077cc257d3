"""The cross-request scheduler: bounded, fair, and cancellation-safe."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from server.core.config import Settings
from server.core.flops import FlopsModel
from server.core.requests import MethodInput, SamplingSpec
from server.core.usage import UsageMeter
from server.methods.base import MethodContext
from server.methods.rebase import GeneratedStep, Rebase
from server.methods.resources import Resources
from server.rebase.params import RebaseParams
from server.rebase.scheduler import FairExpansionScheduler

FLOPS = FlopsModel(2, 64, 64, 64, 128, 512, True)


async def _job(log: list, name: str, gate: asyncio.Event | None = None) -> str:
    log.append(("start", name))
    if gate is not None:
        await gate.wait()
    else:
        await asyncio.sleep(0)
    log.append(("end", name))
    return name


def test_never_more_than_max_in_flight() -> None:
    async def main() -> int:
        scheduler = FairExpansionScheduler(3)
        peak = 0

        async def job() -> None:
            nonlocal peak
            peak = max(peak, scheduler.in_flight)
            await asyncio.sleep(0.001)

        await asyncio.gather(*(scheduler.run(f"t{i % 4}", job) for i in range(40)))
        assert scheduler.in_flight == 0 and scheduler.queued == 0
        return peak

    assert asyncio.run(main()) == 3


def test_a_narrow_tree_is_not_starved_by_a_wide_one() -> None:
    async def main() -> list:
        scheduler = FairExpansionScheduler(2)
        log: list = []
        gate = asyncio.Event()
        wide = [asyncio.create_task(scheduler.run("wide", lambda i=i: _job(log, f"w{i}", gate)))
                for i in range(10)]  # fmt: skip
        await asyncio.sleep(0)
        narrow = asyncio.create_task(scheduler.run("narrow", lambda: _job(log, "n0")))
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*wide, narrow)
        return [name for kind, name in log if kind == "start"]

    starts = asyncio.run(main())
    # The narrow tree's only job starts as soon as the first slot frees, before the wide
    # tree's 10 queued jobs run out.
    assert starts.index("n0") <= 3


def test_cancelled_waiter_is_withdrawn_and_running_job_is_cancelled() -> None:
    async def main() -> None:
        scheduler = FairExpansionScheduler(1)
        started = asyncio.Event()
        never = asyncio.Event()
        cancelled = []

        async def blocking() -> None:
            started.set()
            try:
                await never.wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        running = asyncio.create_task(scheduler.run("a", blocking))
        await started.wait()
        waiting = asyncio.create_task(scheduler.run("b", blocking))
        await asyncio.sleep(0)
        assert scheduler.queued == 1
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert scheduler.queued == 0
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        assert cancelled == [True]
        assert scheduler.in_flight == 0
        # The scheduler still works afterwards.
        assert await scheduler.run("c", lambda: _job([], "ok")) == "ok"

    asyncio.run(main())


def test_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError):
        FairExpansionScheduler(0)


def test_cancelling_a_request_whose_jobs_are_queued_leaks_no_slot() -> None:
    """The slot leak once found: a request is cancelled while it has running AND queued jobs.

    Its running jobs free their slots first (their tasks wake first); the scheduler must not
    hand those slots to the request's own queued jobs, whose waits are already cancelled."""

    async def main() -> None:
        scheduler = FairExpansionScheduler(2)
        never = asyncio.Event()

        async def blocking() -> None:
            await never.wait()

        wide = [asyncio.create_task(scheduler.run("wide", blocking)) for _ in range(16)]
        await asyncio.sleep(0)
        assert (scheduler.in_flight, scheduler.queued) == (2, 14)
        request = asyncio.gather(*wide)
        request.cancel()  # what a client disconnect does to a REBASE level
        outcomes = await asyncio.gather(*wide, return_exceptions=True)
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
        assert (scheduler.in_flight, scheduler.queued) == (0, 0)
        assert await asyncio.wait_for(scheduler.run("next", lambda: _job([], "ok")), 5) == "ok"

    asyncio.run(main())


def test_slots_alternate_between_keys_by_jobs_running() -> None:
    """Two keys (two HTTP requests): each freed slot goes to the key running fewer jobs,
    however many jobs the other key has queued; within a key, jobs start oldest first."""

    async def main() -> list[str]:
        scheduler = FairExpansionScheduler(2)
        log: list = []
        gates: dict[str, asyncio.Event] = {}

        def submit(key: str, name: str) -> asyncio.Task:
            gates[name] = asyncio.Event()
            return asyncio.create_task(scheduler.run(key, lambda: _job(log, name, gates[name])))

        tasks = [submit("big", f"b{i}") for i in range(6)]
        await asyncio.sleep(0)
        tasks += [submit("small", f"s{i}") for i in range(2)]
        await asyncio.sleep(0)
        for name in ("b0", "b1", "s0", "b2", "s1", "b3", "b4", "b5"):
            gates[name].set()
            for _ in range(5):
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return [name for kind, name in log if kind == "start"]

    # b0 frees -> small runs 0, big 1: s0. b1 frees -> big 0, small 1: b2. s0 frees -> s1.
    assert asyncio.run(main()) == ["b0", "b1", "s0", "b2", "s1", "b3", "b4", "b5"]


class _RecordingScheduler:
    """Stands in for the process-wide scheduler: records the key of every job."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def run(self, key: str, job, label: str = "", **_ordering):
        self.keys.append(key)
        return await job()


class _OneStepRebase(Rebase):
    """Every step states an answer at once, so each tree is one level (no engine)."""

    async def generate_step(
        self, ctx, inp, prompt, *, max_tokens, stops, seed, choice_id=None, priority=0, watch=None
    ) -> GeneratedStep:
        return GeneratedStep([5, 6], "The answer is 7", "length", None)


def test_all_trees_of_one_http_request_share_one_fairness_key() -> None:
    """Fairness is across HTTP requests: 2 prompts x n=3 trees must not count as 6 requests."""
    scheduler = _RecordingScheduler()
    resources = replace(Resources.build(Settings(), None), rebase_scheduler=scheduler)
    inp = MethodInput(
        prompt_token_ids=[1, 2, 3],
        prompt_text="Q: 3 + 4?",
        n=3,
        sampling=SamplingSpec(max_tokens=32),
        params={"rebase": RebaseParams(width=4, early_stop="off")},
    )

    async def main() -> int:
        choices = 0
        for prompt_index in range(2):
            ctx = MethodContext(
                engine=None,  # type: ignore[arg-type]  # unused: no root prefix to encode
                meter=UsageMeter(FLOPS),  # the arithmetic PRM charges nothing
                settings=Settings(),
                prompt_id=f"cmpl-abc-p{prompt_index}",
                http_request_id="cmpl-abc",
                resources=resources,
            )
            async for delta in _OneStepRebase().run(ctx, inp):
                choices += delta.finish_reason is not None
        return choices

    assert asyncio.run(main()) == 6
    # Per tree: 4 expansions + 1 scoring call; 6 trees.
    assert len(scheduler.keys) == 6 * 5
    assert set(scheduler.keys) == {"cmpl-abc"}
