"""Client, solving and scheduling against an in-process fake gateway (httpx.MockTransport).

Why a fake: these tests pin the client's side of the protocol (SSE parsing, usage sums, the
answer-extraction pass, concurrency bounds, Poisson release times) without an engine; the
e2e test (tests/e2e/test_loadtest.py) replays against the real gateway.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from loadtest.harness.client import GatewayClient, base_url
from loadtest.harness.data import Problem
from loadtest.harness.driver import poisson_arrivals
from loadtest.protocols import MethodConfig
from loadtest.runner import (
    RunSettings,
    majority_vote,
    replay,
    run_config,
    solve,
)

SUFFIX = "\nTherefore, the answer (arabic numerals) is"


def usage(prompts: int) -> dict[str, Any]:
    return {
        "prompt_tokens": 10 * prompts,
        "completion_tokens": 5 * prompts,
        "total_tokens": 15 * prompts,
        "thought_tokens": 1,
        "flops": {
            "executed": 1e9 * prompts,
            "nominal": 2e9 * prompts,
            "policy_executed": 1e9 * prompts,
            "policy_nominal": 2e9 * prompts,
            "reward_executed": 0.0,
            "reward_nominal": 0.0,
        },
    }


def sse(events: list[Any]) -> httpx.Response:
    text = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)
    return httpx.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})


class FakeGateway:
    """Answers /v1/models and streamed /v1/completions; remembers bodies and send times."""

    def __init__(
        self,
        reply: Callable[[dict[str, Any], str, int], str] = lambda body, prompt, i: "#### 7",
        *,
        methods: list[str] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.reply = reply
        self.methods: list[str] | None = ["baseline"] if methods is None else methods
        self.delay = delay
        self.bodies: list[dict[str, Any]] = []
        self.sent_at: list[float] = []
        self.in_flight = self.max_in_flight = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            card: dict[str, Any] = {"id": "fake"}
            if self.methods is not None:
                card["methods"] = self.methods
            return httpx.Response(200, json={"object": "list", "data": [card]})
        body = json.loads(request.content)
        self.bodies.append(body)
        self.sent_at.append(time.perf_counter())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        n = body.get("n", 1)
        events: list[Any] = []
        for p, prompt in enumerate(prompts):
            for c in range(n):
                text = self.reply(body, prompt, p * n + c)
                for piece, finish in ((text[:3], None), (text[3:], "length")):
                    events.append(
                        {"choices": [{"index": p * n + c, "text": piece, "finish_reason": finish}]}
                    )
        events += [{"choices": [], "usage": usage(len(prompts))}, "[DONE]"]
        return sse(events)

    def client(self, timeout: float = 30.0) -> GatewayClient:
        return GatewayClient(
            "http://fake/v1/", timeout=timeout, transport=httpx.MockTransport(self)
        )


PROBLEM = Problem(id="test-3", index=3, question="Q?", answer="... #### 7", reference="7")


def test_base_url() -> None:
    assert base_url("http://h:1/v1/") == base_url("http://h:1") == "http://h:1"


async def test_client_collects_choices_usage_and_ttft() -> None:
    fake = FakeGateway(lambda body, prompt, i: f"choice {i} text")
    async with fake.client() as client:
        result = await client.complete({"prompt": "x", "n": 2, "max_tokens": 4})
    assert result.error is None
    assert result.texts == ["choice 0 text", "choice 1 text"]
    assert result.finish_reasons == ["length", "length"]
    assert result.usage == usage(1)
    assert 0 <= result.ttft <= result.latency
    assert fake.bodies[0]["stream"] is True
    assert fake.bodies[0]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (httpx.Response(400, json={"error": {"message": "bad n", "type": "x"}}), "HTTP 400: bad n"),
        (httpx.Response(502, text="upstream down"), "HTTP 502: upstream down"),
        (sse([{"error": {"message": "Request timed out"}}, "[DONE]"]), "Request timed out"),
        (sse([{"choices": [{"index": 0, "text": "a"}]}]), "stream ended without [DONE]"),
    ],
)
async def test_client_errors_are_recorded(response: httpx.Response, error: str) -> None:
    transport = httpx.MockTransport(lambda request: response)
    async with GatewayClient("http://fake", transport=transport) as client:
        result = await client.complete({"prompt": "x"})
    assert result.error == error


async def test_client_timeout() -> None:
    async with FakeGateway(delay=2.0).client(timeout=0.1) as client:
        result = await client.complete({"prompt": "x"})
    assert result.error == "timeout after 0.1 s"
    assert result.latency < 1.5


def test_majority_vote() -> None:
    assert majority_vote(["3", None, "5", "5", "3"]) == "3"  # tie: first seen wins
    assert majority_vote([None, "4"]) == "4"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


async def test_solve_votes_over_samples() -> None:
    answers = ["#### 7", "it is 5", "#### 7.0"]
    fake = FakeGateway(lambda body, prompt, i: answers[i])
    settings = RunSettings(n=3, temperature=0.7, max_tokens=20, model="fake", sample_seed=100)
    config = MethodConfig.from_params("baseline")
    async with fake.client() as client:
        record = await solve(client, PROBLEM, "PROMPT", config, settings)
    assert fake.bodies[0] | {"stream": None, "stream_options": None} == {
        "prompt": "PROMPT",
        "max_tokens": 20,
        "temperature": 0.7,
        "n": 3,
        "method": "baseline",
        "model": "fake",
        "seed": 103,
        "stream": None,
        "stream_options": None,
    }
    assert record.votes == ["7", "5", "7"]
    assert (record.predicted, record.correct, record.error) == ("7", True, None)
    assert record.requests == 1
    assert record.flops_executed == 1e9 and record.flops_nominal == 2e9
    assert record.end_time >= record.start_time
    assert record.texts is None


async def test_solve_with_answer_pass_charges_both_requests() -> None:
    def reply(body: dict[str, Any], prompt: str, i: int) -> str:
        return f"thinking {i}" if body["max_tokens"] == 384 else f" {40 + i}. Next"

    fake = FakeGateway(reply)
    config = MethodConfig.from_params(
        "rebase w=3",
        {"method": "rebase", "rebase": {"width": 3}, "n": 2, "answer_method": "baseline"},
    )
    settings = RunSettings(
        max_tokens=384,
        temperature=1.0,
        answer_suffix=SUFFIX,
        extractor="first_integer",
        save_text=True,
    )
    async with fake.client() as client:
        record = await solve(client, PROBLEM, "P", config, settings)
    first, second = fake.bodies
    assert first["method"] == "rebase" and first["rebase"] == {"width": 3} and first["n"] == 2
    assert "answer_method" not in first
    assert second["prompt"] == ["Pthinking 0" + SUFFIX, "Pthinking 1" + SUFFIX]
    assert (second["n"], second["max_tokens"], second["method"]) == (1, 12, "baseline")
    assert "rebase" not in second  # another method's parameters would be a 400
    assert record.votes == ["40", "41"]
    assert record.predicted == "40" and not record.correct
    assert record.texts == [
        "thinking 0" + SUFFIX + " 40. Next",
        "thinking 1" + SUFFIX + " 41. Next",
    ]
    assert record.requests == 2 and len(record.usages) == 2
    # one prompt in the first request, two in the second
    assert record.flops_executed == 3e9 and record.flops_nominal == 6e9
    assert record.prompt_tokens == 30 and record.thought_tokens == 2


async def test_answer_pass_with_the_same_method_keeps_its_parameters() -> None:
    fake = FakeGateway()
    config = MethodConfig.from_params("quiet_star", {"quiet_star": {"t": 4}, "n": 2})
    async with fake.client() as client:
        await solve(client, PROBLEM, "P", config, RunSettings(answer_suffix=SUFFIX))
    assert fake.bodies[1]["method"] == "quiet_star"
    assert fake.bodies[1]["quiet_star"] == {"t": 4}


async def test_failed_request_is_a_wrong_answer_without_second_pass() -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(429, json={"error": {"message": "at capacity"}})
    )
    async with GatewayClient("http://fake", transport=transport) as client:
        record = await solve(
            client,
            PROBLEM,
            "P",
            MethodConfig("baseline", "baseline"),
            RunSettings(answer_suffix=SUFFIX),
        )
    assert record.error == "HTTP 429: at capacity"
    assert (record.correct, record.predicted, record.requests) == (False, None, 1)


def _problems(k: int) -> tuple[list[Problem], list[str]]:
    problems = [Problem(f"test-{i}", i, f"Q{i}", "#### 7", "7") for i in range(k)]
    return problems, [f"prompt {i}" for i in range(k)]


async def test_closed_loop_bounds_concurrency() -> None:
    fake = FakeGateway(delay=0.05)
    problems, prompts = _problems(7)
    async with fake.client() as client:
        records = await run_config(
            client,
            problems,
            prompts,
            MethodConfig("baseline", "baseline"),
            RunSettings(concurrency=2),
            progress=False,
        )
    assert fake.max_in_flight == 2
    assert [r.problem_id for r in records] == [p.id for p in problems]
    assert all(r.correct for r in records)


def test_poisson_schedule_is_seeded_with_the_right_mean() -> None:
    a = poisson_arrivals(20_000, rate=4.0, seed=1)
    assert a == poisson_arrivals(20_000, rate=4.0, seed=1)
    assert a != poisson_arrivals(20_000, rate=4.0, seed=2)
    assert a[0] == 0.0 and a == sorted(a)
    gaps = [b - x for x, b in itertools.pairwise(a)]
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.03)
    # exponential gaps: standard deviation equals the mean
    assert statistics.stdev(gaps) == pytest.approx(0.25, rel=0.05)
    with pytest.raises(ValueError):
        poisson_arrivals(3, rate=0, seed=0)


async def test_open_loop_releases_on_the_schedule() -> None:
    fake = FakeGateway(delay=0.3)  # slower than the arrivals: an open loop doesn't wait
    problems, prompts = _problems(8)
    settings = RunSettings(rate=20.0, concurrency=None, arrival_seed=5)
    async with fake.client() as client:
        t0 = time.perf_counter()
        records = await run_config(
            client,
            problems,
            prompts,
            MethodConfig("baseline", "baseline"),
            settings,
            progress=False,
        )
    assert len(records) == 8
    expected = poisson_arrivals(8, 20.0, 5)
    sent = sorted(t - t0 for t in fake.sent_at)
    for got, want in zip(sent, expected, strict=True):
        assert want - 0.01 <= got <= want + 0.25
    assert fake.max_in_flight > 1


async def test_replay_skips_methods_the_server_lacks() -> None:
    fake = FakeGateway(methods=["baseline", "rebase"])
    problems, prompts = _problems(2)
    configs = [
        MethodConfig("baseline", "baseline"),
        MethodConfig("quiet_star", "quiet_star"),
        MethodConfig("rebase w=3", "rebase", {"rebase": {"width": 3}}, answer_method="quiet_star"),
        MethodConfig("rebase w=6", "rebase", {"rebase": {"width": 6}}),
    ]
    messages: list[str] = []
    async with fake.client() as client:
        records = await replay(
            client, problems, prompts, configs, RunSettings(), progress=False, log=messages.append
        )
    assert [r.config for r in records] == ["baseline"] * 2 + ["rebase w=6"] * 2
    assert {r.model for r in records} == {"fake"}
    assert all(b["model"] == "fake" for b in fake.bodies)
    assert len(messages) == 2
    assert "quiet_star" in messages[0] and "offers: baseline, rebase" in messages[0]


async def test_replay_runs_everything_when_the_server_lists_no_methods() -> None:
    fake = FakeGateway()
    fake.methods = None  # e.g. plain `vllm serve`: no "methods" in its model card
    problems, prompts = _problems(1)
    async with fake.client() as client:
        records = await replay(
            client, problems, prompts, [MethodConfig("x", "x")], RunSettings(), progress=False
        )
    assert len(records) == 1
