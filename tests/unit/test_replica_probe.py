"""The replica probe (server/app/replica_probe.py): which answers name which missing flag, the
probe call the gateway sends, and the watch that keeps a failing replica out of the router."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from transformers import AutoConfig, AutoTokenizer

from kernels.quiet_star.spec import QuietStarSpec
from server.app import replica_probe
from server.app.replica_probe import (
    DETAILS_FLAG,
    PROCESSOR_FLAG,
    SCHEDULER_FLAG,
    ProbeCall,
    ReplicaWatch,
    missing_flags,
    probe_at_start,
    probe_request,
)
from server.core.config import Settings
from server.core.flops import FlopsModel
from server.engines.remote import RemoteEngine

START, STEPS = 7, 4  # a one-token thought between one-token delimiters: s + t + e + 1


def _answer(tokens: list[int], details: bool = True) -> ProbeCall:
    return ProbeCall(token_ids=tokens, finish_reason="length", prompt_details=details)


@pytest.mark.parametrize(
    ("call", "continuation", "missing"),
    [
        pytest.param(_answer([START, 11, 8, 12]), True, [], id="a-full-replica"),
        pytest.param(_answer([START]), True, [SCHEDULER_FLAG], id="stock-scheduler"),
        pytest.param(_answer([START, 11, 8, 12]), False, [], id="per-token-gateway"),
        pytest.param(_answer([42]), True, [PROCESSOR_FLAG], id="no-logits-processor"),
        pytest.param(_answer([42, 1, 2, 3]), False, [PROCESSOR_FLAG], id="no-processor-per-token"),
        pytest.param(_answer([START, 11, 8, 12], False), True, [DETAILS_FLAG], id="no-details"),
        pytest.param(
            ProbeCall(status=400, error="unknown logits processor argument 'quiet_star'"),
            True,
            [PROCESSOR_FLAG],
            id="processor-refused",
        ),
    ],
)
def test_each_missing_flag_is_named(call: ProbeCall, continuation: bool, missing) -> None:
    assert missing_flags(call, [START], STEPS, continuation) == missing


def _engine(model_dir: Path, handler, **settings) -> RemoteEngine:
    s = Settings(engine_url="http://router", **settings)
    config = AutoConfig.from_pretrained(model_dir)
    engine = RemoteEngine(
        url="http://router",
        model_name="tiny",
        model_path=str(model_dir),
        max_model_len=1024,
        flops=FlopsModel.from_hf_config(config),
        hf_config=config,
        settings=s,
        quiet_star_continuation=s.quiet_star_engine != "per_token",
        _tokenizer=AutoTokenizer.from_pretrained(model_dir),
    )
    engine._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return engine


@pytest.mark.parametrize("quiet_star_engine", ["continuation", "per_token"])
def test_the_probe_is_one_talk_token_as_the_decoder_asks_for_it(
    tiny_model_dir: Path, quiet_star_engine: str
) -> None:
    engine = _engine(
        tiny_model_dir, lambda r: httpx.Response(500), quiet_star_engine=quiet_star_engine
    )
    body, start_ids, steps = probe_request(engine)
    spec = QuietStarSpec.from_extra_args(body["vllm_xargs"])
    assert spec is not None and spec.continuation == (quiet_star_engine == "continuation")
    assert start_ids == list(spec.start_token_ids) and steps == spec.steps
    assert body["max_tokens"] == (1 if spec.continuation else spec.steps)
    assert body["ignore_eos"] is True and body["return_token_ids"] is True


def _replicas(answers: dict[str, list[list[int]]], health: dict[str, list[int]], log: list):
    """A router listing two replicas, each answering the probe with scripted tokens."""

    def handler(request: httpx.Request) -> httpx.Response:
        url = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        path = request.url.path
        log.append((request.method, url, path, dict(request.url.params)))
        if path == "/list_workers":
            return httpx.Response(200, json={"urls": list(answers)})
        if path == "/health":
            codes = health[url]
            return httpx.Response(codes.pop(0) if len(codes) > 1 else codes[0])
        if path in ("/remove_worker", "/add_worker"):
            return httpx.Response(200, text="ok")
        tokens = answers[url].pop(0) if len(answers[url]) > 1 else answers[url][0]
        chunks = [
            {"choices": [{"token_ids": tokens, "finish_reason": "length"}]},
            {"choices": [], "usage": {"prompt_tokens_details": {"cached_tokens": 0}}},
        ]
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=body)

    return handler


def _good(engine: RemoteEngine) -> list[int]:
    _, start_ids, steps = probe_request(engine)
    return [start_ids[0], *range(100, 100 + steps - 1)]


def test_a_replica_without_the_scheduler_refuses_the_start(tiny_model_dir, monkeypatch) -> None:
    """From the router's worker list: the good replica passes, the stock one is named."""
    log: list = []
    probe_engine = _engine(tiny_model_dir, lambda r: httpx.Response(500))
    answers = {"http://a:1": [_good(probe_engine)], "http://b:2": [_good(probe_engine)[:1]]}
    handler = _replicas(answers, {"http://a:1": [200], "http://b:2": [200]}, log)
    engine = _engine(tiny_model_dir, handler)
    monkeypatch.setattr(
        replica_probe,
        "_client",
        lambda e: httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )
    with pytest.raises(RuntimeError) as err:
        asyncio.run(probe_at_start(engine))
    assert "http://b:2" in str(err.value) and SCHEDULER_FLAG in str(err.value)
    probed = [url for method, url, path, _ in log if path == "/v1/completions"]
    assert probed == ["http://a:1", "http://b:2"]  # straight to each replica


def test_a_replica_down_at_start_is_skipped_and_the_others_pass(
    tiny_model_dir, monkeypatch
) -> None:
    log: list = []
    probe_engine = _engine(tiny_model_dir, lambda r: httpx.Response(500))
    answers = {"http://a:1": [_good(probe_engine)], "http://b:2": [[]]}
    handler = _replicas(answers, {"http://a:1": [200], "http://b:2": [503]}, log)
    engine = _engine(tiny_model_dir, handler, engine_replica_urls=["http://a:1", "http://b:2/"])
    monkeypatch.setattr(
        replica_probe,
        "_client",
        lambda e: httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )
    # b was down: not probed now, watched as down, so it is probed when it comes up
    assert asyncio.run(probe_at_start(engine)) == {"http://a:1": True, "http://b:2": False}
    assert not any(path == "/list_workers" for _, _, path, _ in log)  # the setting wins


def test_a_replica_that_comes_back_without_a_flag_is_kept_out_until_it_passes(
    tiny_model_dir,
) -> None:
    """Down, back with a stock scheduler (removed from the router), then fixed (added back)."""
    log: list = []
    probe_engine = _engine(tiny_model_dir, lambda r: httpx.Response(500))
    good = _good(probe_engine)
    answers = {"http://a:1": [good], "http://b:2": [good[:1], good]}
    health = {"http://a:1": [200], "http://b:2": [503, 200, 200]}
    handler = _replicas(answers, health, log)
    engine = _engine(tiny_model_dir, handler)
    watch = ReplicaWatch(engine)
    watch.up = {"http://a:1": True, "http://b:2": True}
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))

    def router_calls() -> list:
        return [(p, q["url"]) for _, _, p, q in log if p in ("/remove_worker", "/add_worker")]

    asyncio.run(watch.check(client))  # b is down: nothing probed
    assert watch.up["http://b:2"] is False and router_calls() == []
    asyncio.run(watch.check(client))  # b is back, with a stock scheduler
    assert router_calls() == [("/remove_worker", "http://b:2")]
    assert watch.refused == {"http://b:2"}
    asyncio.run(watch.check(client))  # b passes now
    assert router_calls() == [("/remove_worker", "http://b:2"), ("/add_worker", "http://b:2")]
    assert watch.refused == set()
    probes = [url for _, url, path, _ in log if path == "/v1/completions"]
    assert probes == ["http://b:2", "http://b:2"]  # a, always up, is never probed again
