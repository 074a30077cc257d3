"""End-to-end: how the gateway process ends (SIGTERM drain, grace-period cut, dead engine core).

Each test starts its OWN gateway (never the session one): it sends that gateway a signal or
kills its engine core, then checks what in-flight clients saw and the process's exit code.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.conftest import Gateway, start_gateway, stop_gateway

pytestmark = pytest.mark.e2e

PROMPT = "Q: What is 2 + 3?\nA:"
LONG = {"max_tokens": 600, "ignore_eos": True, "temperature": 0.8}
# Quiet-STaR thinks 32 tokens before each of 900 output tokens: a request that stays in flight
# for minutes even on a quiet machine.
SLOW = {
    "max_tokens": 900,
    "ignore_eos": True,
    "temperature": 0.8,
    "method": "quiet_star",
    "quiet_star": {"thought_tokens": 32},
}


@pytest.fixture
def own_gateway(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(*args: str) -> Gateway:
        gw = start_gateway(tiny_model_dir, tmp_path / f"gateway{len(started)}.log", *args)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        if gw.process.poll() is None:
            stop_gateway(gw)


def in_flight(gw: Gateway) -> float:
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("thinkscale_requests_in_flight{")
    )


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, futures: tuple = ()
) -> None:
    """Poll ``condition``; fail at once (with the reason) if a request meant to still be
    running has already ended, instead of timing out blind."""
    deadline = time.monotonic() + timeout
    while not condition():
        for future in futures:
            if future.done():
                raise AssertionError(f"a request ended before {what}: {future.result()!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def sse_events(gw: Gateway, body: dict) -> list:
    """Every `data:` payload of one streamed completion, `[DONE]` as the string."""
    events: list = []
    with httpx.stream(
        "POST", f"{gw.url}/v1/completions", json={**body, "stream": True}, timeout=600
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                data = line.removeprefix("data:").strip()
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def openai_client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=600)


def post(gw: Gateway, body: dict) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/completions", json=body, timeout=600)


def streamed_text(events: list) -> str:
    return "".join(c["text"] for e in events if isinstance(e, dict) for c in e.get("choices", []))


def test_sigterm_lets_in_flight_requests_finish_then_exits_zero(own_gateway) -> None:
    gw = own_gateway("--shutdown-grace-s", "300")
    client = openai_client(gw)
    # Four kinds of request, each sent once the previous one is in flight, so all four are in
    # flight when the signal comes. Slowest first (on a 2-core CPU, all four together: Quiet-STaR
    # ~39 s, REBASE ~18 s, the batched baseline ~16 s): the quickest goes last and the signal
    # follows the moment it is in flight. Sent first, the baseline once ended while the slower
    # ones were still being admitted on a loaded machine.
    requests: dict[str, Callable[[], object]] = {
        "quiet_star": lambda: client.completions.create(
            model="tiny",
            prompt=PROMPT,
            max_tokens=300,
            extra_body={
                "ignore_eos": True,
                "method": "quiet_star",
                "quiet_star": {"thought_tokens": 24},
            },
        ),
        "stream_quiet_star": lambda: sse_events(
            gw,
            {
                **SLOW,
                "max_tokens": 300,
                "quiet_star": {"thought_tokens": 24},
                "prompt": PROMPT,
                "stream_options": {"include_usage": True},
            },
        ),
        "stream_rebase": lambda: sse_events(
            gw,
            {
                "prompt": PROMPT,
                "max_tokens": 960,
                "ignore_eos": True,
                "method": "rebase",
                # A delimiter the model never writes: 60 levels of 16-token steps, 32 leaves.
                "rebase": {
                    "width": 32,
                    "max_depth": 60,
                    "max_step_tokens": 16,
                    "step_delimiter": "\n\n\n\n",
                },
            },
        ),
        "baseline": lambda: client.completions.create(
            model="tiny",
            prompt=[PROMPT] * 4,
            max_tokens=1000,
            temperature=0.8,
            n=16,
            extra_body={"ignore_eos": True},
        ),
    }
    with ThreadPoolExecutor(len(requests)) as pool:
        futures: dict[str, Future] = {}
        for name, send in requests.items():
            futures[name] = pool.submit(send)
            wait_until(
                lambda: in_flight(gw) >= len(futures),
                120,
                f"{len(futures)} requests in flight",
                tuple(futures.values()),
            )
        gw.process.send_signal(signal.SIGTERM)

        # Draining: new work and /health get a 503, the in-flight requests keep running.
        refused = post(gw, {"prompt": PROMPT, "max_tokens": 4})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "server_shutting_down"
        health = httpx.get(f"{gw.url}/health", timeout=10)
        assert (health.status_code, health.json()["status"]) == (503, "draining")

        baseline = futures["baseline"].result(timeout=600)
        assert [c.finish_reason for c in baseline.choices] == ["length"] * 64
        assert baseline.usage.completion_tokens == 64 * 1000
        quiet = futures["quiet_star"].result(timeout=600)
        assert quiet.usage.completion_tokens == 300
        for name in ("stream_quiet_star", "stream_rebase"):
            events = futures[name].result(timeout=600)
            assert events[-1] == "[DONE]", name
            assert not any(isinstance(e, dict) and "error" in e for e in events), name
        stream_usage = futures["stream_quiet_star"].result()[-2]["usage"]
        assert stream_usage["completion_tokens"] == 300

    assert gw.process.wait(timeout=120) == 0, gw.log()[-3000:]


def test_grace_period_end_cuts_requests_with_a_503_and_done(own_gateway) -> None:
    gw = own_gateway("--shutdown-grace-s", "1")
    with ThreadPoolExecutor(2) as pool:
        stream = pool.submit(sse_events, gw, {**SLOW, "prompt": PROMPT})
        plain = pool.submit(post, gw, {**SLOW, "prompt": PROMPT})
        wait_until(lambda: in_flight(gw) >= 2, 120, "2 requests in flight", (stream, plain))
        gw.process.send_signal(signal.SIGTERM)

        response = plain.result(timeout=120)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "server_shutting_down"
        events = stream.result(timeout=120)
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "server_shutting_down"
    assert gw.process.wait(timeout=120) == 0, gw.log()[-3000:]


def test_dead_engine_core_fails_requests_fast_and_exits_non_zero(own_gateway) -> None:
    gw = own_gateway()
    with ThreadPoolExecutor(2) as pool:
        stream = pool.submit(sse_events, gw, {**SLOW, "prompt": PROMPT})
        plain = pool.submit(post, gw, {**SLOW, "prompt": PROMPT})
        wait_until(lambda: in_flight(gw) >= 2, 120, "2 requests in flight", (stream, plain))

        engine_cores = psutil.Process(gw.process.pid).children(recursive=True)
        assert engine_cores, "the engine core runs in a child process"
        for proc in engine_cores:
            proc.send_signal(signal.SIGKILL)

        response = plain.result(timeout=120)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "engine_dead"
        events = stream.result(timeout=120)
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "engine_dead"
    code = gw.process.wait(timeout=60)
    assert code != 0, gw.log()[-3000:]
    assert "engine core died" in gw.log()
