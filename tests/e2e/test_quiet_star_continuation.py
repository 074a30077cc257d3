"""End-to-end Quiet-STaR continuation (kernels/quiet_star/scheduler.py): one engine request per
sequence, each token's thought rolled back, checked with vLLM's own counters and against the
per-token engine (one engine request per output token) on the same tiny weights."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import completion_ok, http_client, running_gateway, scrape_metrics

pytestmark = pytest.mark.e2e

PROMPT = "Q: Natalia sold clips to 48 of her friends in April. How many in May?\nA:"
GENERATION = "vllm:generation_tokens_total"
# observed once per engine step that streamed output: at concurrency 1, the engine's steps
STEPS = "vllm:iteration_tokens_total_count"


def generate(http: httpx.Client, **overrides) -> dict:
    body = {
        "prompt": PROMPT,
        "max_tokens": 12,
        "temperature": 1.0,
        "seed": 11,
        "ignore_eos": True,
        "method": "quiet_star",
        "quiet_star": {"thought_tokens": 3, "mixing_weight": 0.5, "return_thoughts": True},
    }
    body.update(overrides)
    return completion_ok(http, body)


def metric(samples: dict[str, float], name: str, label: str = "") -> float:
    """The sum of a series over its labels (those containing `label`, e.g. 'source="x"')."""
    return sum(v for k, v in samples.items() if k.startswith(name) and label in k)


LOCAL = ("vllm:prompt_tokens_by_source_total", 'source="local_compute"')


def counters_after(http: httpx.Client, before: float, name: str, timeout: float = 30) -> float:
    """vLLM publishes its counters with its next stats tick: wait for them to move."""
    deadline = time.monotonic() + timeout
    while True:
        value = metric(scrape_metrics(http), name)
        if value != before or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.fixture(scope="module")
def per_token_http(tiny_model_dir, tmp_path_factory) -> Iterator[httpx.Client]:
    """A second gateway on the same weights, serving quiet_star one engine request per token."""
    log = tmp_path_factory.mktemp("per-token") / "gateway.log"
    with (
        running_gateway(tiny_model_dir, log, "--quiet-star-engine", "per_token") as gw,
        http_client(gw) as client,
    ):
        yield client


@pytest.mark.parametrize("t", [0, 3, 8])
def test_vllm_counts_exactly_t_plus_3_positions_per_output_token(http, t) -> None:
    before = scrape_metrics(http)
    prompt_before = metric(before, *LOCAL)
    body = generate(http, max_tokens=7, quiet_star={"thought_tokens": t, "mixing_weight": 0.5})
    generated = counters_after(http, metric(before, GENERATION), GENERATION) - metric(
        before, GENERATION
    )
    after = scrape_metrics(http)
    prompt_computed = metric(after, *LOCAL) - prompt_before
    # One-token delimiters: one engine step per position (start at the base row, the first
    # step being the prompt's prefill; t thought tokens; end; the talk token).
    assert metric(after, STEPS) - metric(before, STEPS) == 7 * (t + 3)
    usage = body["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["engine_calls"] == 1  # one engine request for the whole sequence
    # vLLM sampled start, t thought tokens, end and the talk token for each output token; each
    # of them but the very last ran through the model once: t + 3 positions per output token.
    assert generated == 7 * (t + 3)
    assert usage["thought_tokens"] == 7 * (t + 2)
    # The prompt was prefilled once (its uncached part), never again per output token.
    assert usage["forward_tokens"] == prompt_computed + 7 * (t + 3) - 1


def test_multi_token_delimiters_add_positions_but_no_steps(http) -> None:
    """A model without thought tokens thinks between multi-token strings; their forced tokens
    ride along with the step before them: t + 2 steps per output token, fewer than with
    one-token delimiters."""
    t = 2
    before = scrape_metrics(http)
    body = generate(
        http,
        max_tokens=5,
        quiet_star={"thought_tokens": t, "mixing_weight": 0.5, "return_thoughts": True,
                    "start_token": "<t>", "end_token": "</t>"},
    )  # fmt: skip
    generated = counters_after(http, metric(before, GENERATION), GENERATION) - metric(
        before, GENERATION
    )
    steps = metric(scrape_metrics(http), STEPS) - metric(before, STEPS)
    rounds = body["method_details"]["quiet_star"][0]["step_token_ids"]
    assert len(rounds) == 5 and len({len(r) for r in rounds}) == 1
    positions = len(rounds[0])  # start delimiter, t thought tokens, end delimiter, talk
    assert positions > t + 3  # the delimiters really are several tokens each
    assert generated == 5 * positions
    assert steps == 5 * (t + 2)


def test_same_seed_gives_the_same_text_even_when_batched_together(http) -> None:
    solo = generate(http)["choices"][0]["text"]
    with ThreadPoolExecutor(3) as pool:
        texts = [b["choices"][0]["text"] for b in pool.map(lambda _: generate(http), range(3))]
    # Identical concurrent requests think identical thoughts: a thought's KV block must never
    # be shared through the prefix cache (it is rewritten after the rollback).
    assert texts == [solo] * 3
    assert generate(http, seed=12)["choices"][0]["text"] != solo


def test_matches_the_per_token_engine(http, per_token_http) -> None:
    """Same seed, same weights, one-token delimiters: the continuation engine and the
    one-request-per-token engine sample the same thoughts and talk tokens (the talk token's KV
    sits where `start` was). With multi-token delimiters the continuation engine appends the
    forced tokens itself and computes them with the step before them (its later draws come from
    streams of their own): without thought tokens to draw, the greedy text is the same."""
    for overrides in (
        {},
        {"temperature": 0.0, "seed": 3, "quiet_star": {"thought_tokens": 5, "mixing_weight": 0.7,
                                                       "return_thoughts": True}},
        {"n": 2, "max_tokens": 9, "min_tokens": 9, "ignore_eos": False},
        {"temperature": 0.0, "quiet_star": {"thought_tokens": 0, "mixing_weight": 0.7,
                                            "start_token": "<t>", "end_token": "</t>",
                                            "return_thoughts": True}},
    ):  # fmt: skip
        ours = generate(http, **overrides)
        theirs = generate(per_token_http, **overrides)
        assert [c["text"] for c in ours["choices"]] == [c["text"] for c in theirs["choices"]]
        assert (
            ours["method_details"]["quiet_star"][0]["step_token_ids"]
            == (theirs["method_details"]["quiet_star"][0]["step_token_ids"])
        )
        assert ours["usage"]["engine_calls"] < theirs["usage"]["engine_calls"]


def test_stop_string_mid_text_ends_the_sequence_there(http) -> None:
    text = generate(http, max_tokens=16)["choices"][0]["text"]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip() and text.index(stop) > 0
    choice = generate(http, max_tokens=16, stop=[stop])["choices"][0]
    assert choice["text"] == text[: text.index(stop)]
    assert choice["finish_reason"] == "stop"


def test_client_disconnect_frees_the_engine(http) -> None:
    body = {
        "prompt": PROMPT,
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
        "method": "quiet_star",
        "quiet_star": {"thought_tokens": 8},
    }
    with http.stream("POST", "/v1/completions", json=body) as response:
        seen: list[str] = []
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(line)
            if len(seen) >= 2:
                break  # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 60
    while True:
        samples = scrape_metrics(http)
        busy = metric(samples, "vllm:num_requests_running") + metric(
            samples, "vllm:num_requests_waiting"
        )
        if busy == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert busy == 0
