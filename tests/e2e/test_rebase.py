"""End-to-end REBASE on the tiny model: concurrency, streaming, cancellation, validation."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import scrape_metrics

pytestmark = pytest.mark.e2e

QUESTION = "Q: Natalia sold 48 clips in April and half as many in May. How many in total?\nA:"
# The tiny random model rarely writes a newline; a space makes steps a few tokens long.
SMALL_TREE = {"width": 4, "max_step_tokens": 6, "step_delimiter": " ", "max_depth": 8}


def rebase_body(**overrides) -> dict:
    body = {"prompt": QUESTION, "max_tokens": 48, "method": "rebase", "rebase": SMALL_TREE}
    body.update(overrides)
    return body


def engine_requests(samples: dict[str, float]) -> float:
    return sum(
        v
        for k, v in samples.items()
        if k.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting{"))
    )


def test_concurrent_rebase_requests_complete(http) -> None:
    with ThreadPoolExecutor(4) as pool:
        responses = list(
            pool.map(lambda s: http.post("/v1/completions", json=rebase_body(seed=s)), range(4))
        )
    for response in responses:
        assert response.status_code == 200, response.text
        body = response.json()
        stats = body["method_details"]["rebase"][0]
        assert len(body["choices"]) >= 1 and body["choices"][0]["text"]
        assert stats["leaves"] >= 1
        assert stats["nodes_expanded"] == sum(stats["level_sizes"])
        assert max(stats["level_sizes"]) <= SMALL_TREE["width"]
        assert stats["depth"] <= SMALL_TREE["max_depth"]
        usage = body["usage"]
        # One engine call per node; the arithmetic PRM runs on the CPU (no reward FLOPs).
        assert usage["engine_calls"] == stats["nodes_expanded"]
        assert usage["flops"]["reward_executed"] == 0
        # Children share their parent's prefix: the prefix cache must have served some of it.
        assert usage["cached_tokens"] > 0
        assert usage["flops"]["executed"] < usage["flops"]["nominal"]


def test_seeded_trees_of_one_request_differ_and_reproduce(http) -> None:
    """n = 2 with a seed: two different trees (choice i is not choice 0 again), the same two
    on a second try, and choice 0 is the n = 1 request's tree."""
    # early_stop "off": where an early stop lands depends on the order steps finish in
    # (docs/architecture.md, "Early stopping"); a seed then fixes the answer, not the text.
    off = {**SMALL_TREE, "early_stop": "off"}
    body = rebase_body(seed=7, n=2, temperature=1.0, ignore_eos=True, rebase=off)
    first, again = (http.post("/v1/completions", json=body).json() for _ in range(2))
    texts = [c["text"] for c in sorted(first["choices"], key=lambda c: c["index"])]
    assert texts == [c["text"] for c in sorted(again["choices"], key=lambda c: c["index"])]
    assert texts[0] != texts[1]
    single = http.post("/v1/completions", json={**body, "n": 1}).json()
    assert single["choices"][0]["text"] == texts[0]


def test_seeded_rebase_is_reproducible(http) -> None:
    body = rebase_body(seed=7, rebase={**SMALL_TREE, "early_stop": "off"})
    first, again = (http.post("/v1/completions", json=body).json() for _ in range(2))
    assert first["choices"][0]["text"] == again["choices"][0]["text"]
    # Executed FLOPs depend on what the prefix cache holds; the tree does not.
    varies = ("request", "spent")
    assert [
        {k: v for k, v in tree.items() if k not in varies}
        for tree in first["method_details"]["rebase"]
    ] == [
        {k: v for k, v in tree.items() if k not in varies}
        for tree in again["method_details"]["rebase"]
    ]


def test_rebase_streams_answer_then_usage(http) -> None:
    body = rebase_body(stream=True, stream_options={"include_usage": True})
    with http.stream("POST", "/v1/completions", json=body) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert "rebase" in chunks[-1]["method_details"]


def test_disconnected_client_leaves_no_engine_work(gateway, http) -> None:
    before = scrape_metrics(http)
    big = rebase_body(
        max_tokens=600,
        # ~1000 engine calls: far longer than the client waits.
        rebase={"width": 16, "max_step_tokens": 8, "step_delimiter": "@@", "max_depth": 64},
    )
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.url}/v1/completions", json=big, timeout=1.5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = scrape_metrics(http)
        cancelled = after['thinkscale_requests_total{method="rebase",status="cancelled"}']
        if cancelled > before['thinkscale_requests_total{method="rebase",status="cancelled"}']:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the gateway never noticed the disconnect")
    # vLLM's gauges are refreshed on its next stats interval: wait for them to settle.
    deadline = time.monotonic() + 30
    while engine_requests(scrape_metrics(http)) > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    samples = scrape_metrics(http)
    assert engine_requests(samples) == 0
    assert samples['thinkscale_requests_in_flight{method="rebase"}'] == 0


@pytest.mark.parametrize(
    ("rebase", "extra", "param"),
    [
        ({"width": 0}, {}, "rebase.width"),
        ({"width": 1000}, {}, "rebase.width"),
        ({"balance_temperature": 0}, {}, "rebase.balance_temperature"),
        ({"aggregation": "vibes"}, {}, "rebase.aggregation"),
        ({"max_depth": 0}, {}, "rebase.max_depth"),
        ({"step_format": "essay"}, {}, "rebase.step_format"),
        ({"reward_model": "oracle"}, {}, "rebase.reward_model"),
        ({"widht": 3}, {}, "rebase.widht"),
        ({}, {"logprobs": 2}, "logprobs"),
        ({}, {"stop": ["x"]}, "stop"),
    ],
)
def test_invalid_rebase_parameters_are_400(http, rebase, extra, param) -> None:
    response = http.post("/v1/completions", json=rebase_body(rebase=rebase, **extra))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_rebase_block_must_be_an_object(http) -> None:
    response = http.post("/v1/completions", json=rebase_body(rebase=[1, 2]))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "rebase"


def test_policy_judge_reward_is_selectable_per_request_and_charged(http) -> None:
    body = rebase_body(seed=3, rebase={**SMALL_TREE, "reward_model": "policy_judge"})
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    stats = result["method_details"]["rebase"][0]
    assert stats["reward_model"] == "policy_judge"
    usage = result["usage"]
    # The judge runs on the policy engine: its prompts are charged as reward FLOPs.
    assert usage["flops"]["reward_executed"] > 0
    assert usage["reward_tokens"] > 0
    assert usage["engine_calls"] > stats["nodes_expanded"]


def test_unconfigured_model_prm_is_a_400(http) -> None:
    body = rebase_body(rebase={**SMALL_TREE, "reward_model": "vllm_prm"})
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "rebase.reward_model" and "not configured" in error["message"]


def test_rebase_without_max_tokens_gets_the_trees_budget(http) -> None:
    # Steps of exactly 6 tokens (a delimiter the model never writes, EOS ignored): under the
    # OpenAI default of 16 tokens every path would stop after 3 steps. Left out, max_tokens
    # becomes the tree's own budget (max_depth x max_step_tokens = 48 here).
    tree = {"width": 2, "max_step_tokens": 6, "step_delimiter": "\n\n\n\n", "max_depth": 8}
    body = {"prompt": QUESTION, "method": "rebase", "rebase": tree, "ignore_eos": True, "seed": 3}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    stats = data["method_details"]["rebase"][0]
    assert stats["depth"] == 8
    assert data["usage"]["completion_tokens"] == 48


# Greedy: all 16 first steps are the same 6 tokens, cut by the path's token cap, so every leaf
# votes (vote_leaves "all") for the same number, with the same (neutral) score.
UNANIMOUS_WIDE = rebase_body(
    prompt="0 1 2 3 4 5 6 7 8",  # the tiny model repeats the last number: " 8 8 8 8 8 8"
    max_tokens=6,
    temperature=0.0,
    rebase={"width": 16, "max_step_tokens": 6, "max_depth": 4, "vote_leaves": "all"},
)


def _unanimous(http, early_stop) -> dict:
    body = {**UNANIMOUS_WIDE, "rebase": {**UNANIMOUS_WIDE["rebase"], "early_stop": early_stop}}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_adaptive_stop_in_windows_never_starts_the_rest_of_the_level(http) -> None:
    """At the default scheduler cap all 16 children start together without a window, so a stop
    after three agreeing leaves can only abort the others; with a window of 2 the children
    beyond it wait, and the stop withdraws them before they reach the engine."""
    full = _unanimous(http, "off")
    together = _unanimous(http, {"confidence": 0.9, "window": None})
    windowed = _unanimous(http, {"confidence": 0.9, "window": 2})
    trees = [r["method_details"]["rebase"][0] for r in (full, together, windowed)]
    calls = [r["usage"]["components"]["policy"]["engine_calls"] for r in (full, together, windowed)]
    assert trees[0]["answer"] is not None and trees[0]["ended"] == "complete"
    assert all(t["answer"] == trees[0]["answer"] for t in trees)
    assert trees[1]["ended"] == trees[2]["ended"] == "confident"
    assert trees[2]["window"] == 2 and trees[1]["window"] is None
    # Three neutral-scored leaves settle 0.9 with 13 to come (server/rebase/stopping.py): the
    # window starts at most one more child than that.
    assert calls[2] <= 4 < calls[0] == 16
    assert calls[2] < calls[1]
    # Without the window the 16 identical steps end in the same engine step: the stop comes
    # when everything has run (the case the window exists for).
    assert trees[2]["spent"]["flops"] < trees[1]["spent"]["flops"] <= trees[0]["spent"]["flops"]
