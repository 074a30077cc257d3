"""Per-choice budgets: the request field, and a choice's spend against it."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from server.core.budget import Budget, ChoiceBudget, watched
from server.core.flops import FlopsModel
from server.core.usage import UsageMeter

FLOPS = FlopsModel(2, 64, 64, 64, 128, 512, True)


def test_budget_needs_one_positive_limit_and_no_unknown_key() -> None:
    assert Budget(tokens=5).limits() == {"tokens": 5}
    for bad in ({}, {"tokens": 0}, {"flops": -1}, {"seconds": 0}, {"steps": 3}):
        with pytest.raises(ValidationError):
            Budget(**bad)


def test_a_child_meter_charges_its_parent_too() -> None:
    request = UsageMeter(FLOPS)
    choice = request.child()
    choice.record_generation(prompt_tokens=10, cached_tokens=4, generated_tokens=3)
    choice.add_thought_tokens(2)
    request.record_generation(prompt_tokens=5, cached_tokens=0, generated_tokens=1)
    assert choice.component("policy").generated_tokens == 3
    assert request.component("policy").generated_tokens == 4
    assert request.thought_tokens == 2
    assert request.total_flops.executed == (
        FLOPS.request_flops(10, 4, 3).executed + FLOPS.request_flops(5, 0, 1).executed
    )


def test_spend_counts_running_calls_with_the_final_charges_formula() -> None:
    meter = UsageMeter(FLOPS)
    meter.record_generation(prompt_tokens=10, cached_tokens=0, generated_tokens=4)
    limit = FLOPS.request_flops(10, 0, 4).executed + FLOPS.request_flops(8, 8, 3).executed
    budget = ChoiceBudget(Budget(flops=limit), meter)
    budget.progress("call", 8, 8, 2)
    assert budget.spent()["tokens"] == 6 and budget.check() is None
    budget.progress("call", 8, 8, 3)
    assert budget.check() == "flops"
    budget.done("call")  # the running call's charge moves to the meter
    assert budget.spent()["tokens"] == 4 and budget.cut == "flops"


def test_tokens_and_seconds_limits() -> None:
    budget = ChoiceBudget(Budget(tokens=3), UsageMeter(FLOPS))
    budget.progress("a", 1, 0, 2)
    assert budget.check() is None
    budget.progress("b", 1, 0, 1)
    assert budget.check() == "tokens"
    late = ChoiceBudget(Budget(seconds=1.0), UsageMeter(FLOPS), started=0.0)
    assert late.check() == "seconds" and late.seconds_left() < 0
    report = late.report("cmpl-x-p0-0")
    assert report["cut"] == "seconds" and report["limit"] == {"seconds": 1.0}


def test_a_running_quiet_star_call_is_priced_with_its_rollbacks() -> None:
    """A continuation call's thoughts are rolled back, so its tokens sit at shorter contexts
    than a plain call's: the running price must be the one its final charge will be."""
    steps = 4  # s + t + e + 1 positions per talk token (a 2-token thought)
    budget = ChoiceBudget(Budget(tokens=1000), UsageMeter(FLOPS))
    budget.progress("call", 20, 0, 12, rollback_steps=steps)
    rolled_back = FLOPS.request_flops(20, 0, 12, rollback_steps=steps).executed
    assert budget.spent()["flops"] == rolled_back < FLOPS.request_flops(20, 0, 12).executed


def test_the_first_check_that_finds_the_budget_spent_calls_on_spent_once() -> None:
    stops: list[str] = []
    budget = ChoiceBudget(Budget(tokens=3), UsageMeter(FLOPS), on_spent=lambda: stops.append("x"))
    budget.progress("a", 1, 0, 2)  # progress checks the budget itself
    assert stops == [] and budget.cut is None
    budget.progress("a", 1, 0, 3)
    assert stops == ["x"] and budget.cut == "tokens"
    budget.progress("a", 1, 0, 4)
    assert budget.check() == "tokens" and stops == ["x"]  # the method was told once


def test_watched_reports_each_unfinished_output_and_ends_with_done() -> None:
    """The one loop every engine call of a budgeted choice goes through: DELTA outputs summed,
    the finished output left to the call's own charge, `done` after the call is closed, also
    when the consumer stops early (which must close, i.e. abort, the call)."""
    events: list[tuple] = []
    closed: list[bool] = []

    class Watch:
        def progress(self, call, prompt, cached, generated, *, rollback_steps=None) -> None:
            events.append(("progress", prompt, cached, generated, rollback_steps))

        def done(self, call) -> None:
            events.append(("done", bool(closed)))

    def output(tokens: int, finished: bool = False) -> SimpleNamespace:
        completion = SimpleNamespace(token_ids=list(range(tokens)))
        return SimpleNamespace(outputs=[completion], finished=finished, num_cached_tokens=3)

    async def call(outputs):
        try:
            for item in outputs:
                yield item
        finally:
            closed.append(True)

    async def consume(outputs, stop_after: int | None = None) -> int:
        seen = 0
        stream = watched(call(outputs), Watch(), 10, rollback_steps=4)
        async with aclosing(stream):
            async for _ in stream:
                seen += 1
                if seen == stop_after:
                    break
        return seen

    assert asyncio.run(consume([output(1), output(2), output(1, finished=True)])) == 3
    assert events == [
        ("progress", 10, 3, 1, 4),
        ("progress", 10, 3, 3, 4),
        ("done", True),  # the finished output is not reported; done follows the close
    ]
    events.clear(), closed.clear()
    assert asyncio.run(consume([output(1), output(1), output(1)], stop_after=1)) == 1
    assert events == [("progress", 10, 3, 1, 4), ("done", True)]  # stopped early: closed
