"""A bounded soak: mixed methods, concurrency 8, a quarter of the clients leave mid-way.

What an operator needs to hold under real traffic: no response is a 5xx, every request whose
client stayed is complete, and once the load stops nothing is left behind: vLLM runs and queues
nothing, the REBASE scheduler holds no slot, the gateway counts no request in flight.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import scrape_metrics

pytestmark = pytest.mark.e2e

PROMPT = "Q: Natalia sold 48 clips in April and half as many in May. How many in total?\nA:"
TREE = {"width": 4, "max_step_tokens": 4, "step_delimiter": " ", "max_depth": 6}
BODIES = {
    "baseline": {"max_tokens": 16},
    "quiet_star": {"max_tokens": 4, "quiet_star": {"thought_tokens": 2}},
    "rebase": {"max_tokens": 20, "rebase": TREE},
    "quiet_star+rebase": {
        "max_tokens": 8,
        "rebase": {**TREE, "width": 2},
        "quiet_star": {"thought_tokens": 2, "think": "step_start"},
    },
}
REQUESTS = 48
CONCURRENCY = 8


@dataclass
class Outcome:
    method: str
    stream: bool
    dropped: bool
    status: int | None = None
    complete: bool = False
    error: str = ""


def one_request(base_url: str, i: int) -> Outcome:
    rng = random.Random(i)
    method = list(BODIES)[i % len(BODIES)]
    stream = i % 3 == 0
    dropped = (i // 4) % 4 == 1  # a quarter of the clients (every method) go away mid-way
    body = {"prompt": PROMPT, "method": method, "seed": i, "stream": stream, **BODIES[method]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    out = Outcome(method, stream, dropped)
    timeout = rng.uniform(0.2, 1.5) if dropped and not stream else 300
    try:
        with httpx.Client(base_url=base_url, timeout=timeout) as client:
            if not stream:
                response = client.post("/v1/completions", json=body)
                out.status = response.status_code
                if response.status_code == 200:
                    choices = response.json()["choices"]
                    out.complete = bool(choices) and all(c["finish_reason"] for c in choices)
                else:
                    out.error = response.text[:300]
                return out
            with client.stream("POST", "/v1/completions", json=body) as response:
                out.status = response.status_code
                events, finished = 0, set()
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line.removeprefix("data:").strip()
                    if data == "[DONE]":
                        out.complete = bool(finished)
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        out.error = data[:300]
                        break
                    events += 1
                    finished |= {c["index"] for c in chunk["choices"] if c.get("finish_reason")}
                    if dropped and events >= 1:
                        break  # leave after the first event: the context manager closes it
    except httpx.TimeoutException:
        pass  # the dropped non-streaming clients
    return out


def leftovers(samples: dict[str, float]) -> dict[str, float]:
    """Everything that must be back at zero once no request is running."""
    watched = (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting{",
        "thinkscale_requests_in_flight",
        "thinkscale_rebase_jobs_in_flight",
        "thinkscale_queue_depth",
    )
    return {k: v for k, v in samples.items() if k.startswith(watched) and v != 0}


def test_mixed_soak_with_dropped_clients_leaves_nothing_behind(gateway, http) -> None:
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        outcomes = list(pool.map(lambda i: one_request(gateway.url, i), range(REQUESTS)))

    server_errors = [o for o in outcomes if o.status is not None and o.status >= 500]
    assert not server_errors, server_errors
    kept = [o for o in outcomes if not o.dropped]
    incomplete = [o for o in kept if not (o.status == 200 and o.complete)]
    assert not incomplete, incomplete
    assert {o.method for o in kept} == set(BODIES)
    assert any(o.stream for o in kept) and any(o.stream for o in outcomes if o.dropped)

    deadline = time.monotonic() + 60  # aborts and cleanups land within a few engine steps
    while (left := leftovers(scrape_metrics(http))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left
