"""The remote engine against a scripted replica (httpx MockTransport): the request it sends,
how it rebuilds vLLM outputs from the stream, failover, and what it charges."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import replace
from types import SimpleNamespace

import httpx
import pytest
from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from kernels.quiet_star.spec import QuietStarSpec
from server.core.config import Settings
from server.core.errors import APIError
from server.core.flops import FlopsModel
from server.core.usage import UsageMeter
from server.engines.base import PolicyEngine
from server.engines.remote import RemoteEngine, completion_body, flat_xargs, parse_logprobs

FLOPS = FlopsModel(
    n_layer=2, d_model=64, d_attn=64, d_kv=64, d_ff=128, vocab_size=512, gated_mlp=True
)


def _spec() -> QuietStarSpec:
    return QuietStarSpec(
        key="k",
        thought_tokens=2,
        mixing_weight=0.5,
        thought_temperature=1.0,
        temperature=0.0,
        top_p=1.0,
        start_token_ids=(3,),
        end_token_ids=(4,),
        banned_token_ids=(0, 3, 4),
    )


def test_quiet_star_spec_survives_vllm_xargs() -> None:
    """vllm_xargs takes flat values only: the nested spec travels as JSON and decodes equal."""
    spec = _spec()
    xargs = flat_xargs(spec.to_extra_args())
    assert isinstance(xargs["quiet_star"], str)
    assert QuietStarSpec.from_extra_args(xargs) == spec
    assert QuietStarSpec.from_extra_args(spec.to_extra_args()) == spec  # in-process form


def test_flat_xargs_keeps_flat_values() -> None:
    assert flat_xargs({"a": 1, "b": "x", "c": [1, 2.5]}) == {"a": 1, "b": "x", "c": [1, 2.5]}
    assert flat_xargs({"d": {"e": [1]}}) == {"d": '{"e": [1]}'}
    assert flat_xargs(None) is None


def test_body_carries_token_prompt_and_sampling() -> None:
    params = SamplingParams(
        max_tokens=7,
        temperature=0.0,
        seed=5,
        stop=["\n"],
        include_stop_str_in_output=True,
        logprobs=2,
        extra_args=_spec().to_extra_args(),
    )
    body = completion_body("tiny", [1, 2, 3], params)
    assert body["prompt"] == [1, 2, 3] and body["model"] == "tiny"
    assert body["return_token_ids"] is True and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 7 and body["seed"] == 5 and body["stop"] == ["\n"]
    assert body["include_stop_str_in_output"] is True
    assert body["logprobs"] == 2 and body["return_tokens_as_token_ids"] is True
    assert json.loads(body["vllm_xargs"]["quiet_star"])["thought_tokens"] == 2
    assert "top_k" not in body  # vLLM's "off"


def test_logprobs_are_keyed_by_token_id_and_floor_is_minus_inf() -> None:
    block = {
        "tokens": ["token_id:5", "token_id:6"],
        "token_logprobs": [-0.5, -9999.0],
        "top_logprobs": [{"token_id:5": -0.5, "token_id:7": -1.5}, None],
    }
    out = parse_logprobs(block, [5, 6])
    assert set(out[0]) == {5, 7} and out[0][7].logprob == -1.5
    assert out[1][6].logprob == -math.inf


def _sse(chunks: list[dict]) -> bytes:
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


def _chunks(tokens: list[int], cached: int = 4) -> list[dict]:
    out = []
    for i, t in enumerate(tokens):
        last = i == len(tokens) - 1
        out.append(
            {
                "choices": [
                    {
                        "index": 0,
                        "text": f"<{t}>",
                        "token_ids": [t],
                        "finish_reason": "length" if last else None,
                        "stop_reason": None,
                    }
                ]
            }
        )
    out.append(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 6,
                "completion_tokens": len(tokens),
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }
    )
    return out


def _engine(handler, **settings) -> RemoteEngine:
    s = Settings(engine_url="http://router", engine_retry_backoff_s=0, **settings)
    engine = RemoteEngine(
        url="http://router",
        model_name="tiny",
        model_path="/m",
        max_model_len=1024,
        flops=FLOPS,
        hf_config=None,
        settings=s,
        _tokenizer=SimpleNamespace(eos_token_id=0),
    )
    engine._client = httpx.AsyncClient(
        base_url="http://router", transport=httpx.MockTransport(handler)
    )
    return engine


async def _collect(engine, kind, meter, **kw):
    params = SamplingParams(max_tokens=3, output_kind=kind)
    return [o async for o in engine.generate([1, 2, 3, 4, 5, 6], params, meter, **kw)]


def test_remote_engine_is_a_policy_engine() -> None:
    assert isinstance(_engine(lambda r: httpx.Response(200)), PolicyEngine)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (RequestOutputKind.DELTA, [[10], [11], [12]]),
        (RequestOutputKind.CUMULATIVE, [[10], [10, 11], [10, 11, 12]]),
        (RequestOutputKind.FINAL_ONLY, [[10, 11, 12]]),
    ],
)
def test_output_kinds_and_cache_aware_charge(kind, expected) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=_sse(_chunks([10, 11, 12])))

    meter = UsageMeter(FLOPS)
    outs = asyncio.run(_collect(_engine(handler), kind, meter, choice_id="tree-1"))
    assert [list(o.outputs[0].token_ids) for o in outs] == expected
    assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "length"
    assert outs[-1].num_cached_tokens == 4
    policy = meter.component("policy")
    assert (policy.engine_calls, policy.cached_tokens, policy.generated_tokens) == (1, 4, 3)
    assert seen[0].headers["x-session-id"] == "tree-1"


@pytest.mark.parametrize(("forward", "expected"), [(False, None), (True, 1700)])
def test_priority_reaches_replicas_only_when_they_schedule_by_it(forward, expected) -> None:
    """A replica on vLLM's default policy refuses any non-zero priority: the gateway sends
    it only under --engine-priority-scheduling, and a zero priority never."""
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, content=_sse(_chunks([10])))

    engine = _engine(handler, engine_priority_scheduling=forward)
    for priority in (1700, 0):
        asyncio.run(
            _collect(engine, RequestOutputKind.FINAL_ONLY, UsageMeter(FLOPS), priority=priority)
        )
    assert bodies[0].get("priority") == expected
    assert "priority" not in bodies[1]


def test_a_failed_replica_is_retried_whole_and_charged_once() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ConnectError("connection refused", request=request)
        if calls["n"] == 2:
            return httpx.Response(503, text="no healthy worker")
        return httpx.Response(200, content=_sse(_chunks([10, 11, 12])))

    meter = UsageMeter(FLOPS)
    outs = asyncio.run(_collect(_engine(handler), RequestOutputKind.FINAL_ONLY, meter))
    assert calls["n"] == 3
    assert list(outs[-1].outputs[0].token_ids) == [10, 11, 12]
    assert meter.component("policy").engine_calls == 1


def test_a_stream_cut_mid_call_is_retried_when_nothing_was_yielded() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        chunks = _chunks([10, 11, 12])
        if calls["n"] == 1:  # the replica died after one token: no finish, no [DONE]
            body = f"data: {json.dumps(chunks[0])}\n\n".encode()
            return httpx.Response(200, content=body)
        return httpx.Response(200, content=_sse(chunks))

    outs = asyncio.run(_collect(_engine(handler), RequestOutputKind.FINAL_ONLY, UsageMeter(FLOPS)))
    assert calls["n"] == 2 and list(outs[-1].outputs[0].token_ids) == [10, 11, 12]


def _cut_after(count: int, chunks: list[dict]) -> httpx.Response:
    """A replica that streamed the first `count` of `chunks` and died (no finish, no [DONE])."""
    return httpx.Response(
        200, content=b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks[:count])
    )


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (RequestOutputKind.DELTA, [[10], [11], [12]]),
        (RequestOutputKind.CUMULATIVE, [[10], [10, 11], [10, 11, 12]]),
    ],
)
def test_a_stream_cut_after_yielding_resumes_on_another_replica(kind, expected) -> None:
    """Tokens already streamed to the client are kept: the call goes on after them, with the
    prompt grown by them and the budget shrunk, and each attempt is charged for its part."""
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if len(bodies) == 1:
            return _cut_after(2, _chunks([10, 11, 12]))
        return httpx.Response(200, content=_sse(_chunks([12], cached=7)))

    meter = UsageMeter(FLOPS)
    outs = asyncio.run(_collect(_engine(handler), kind, meter))
    assert [list(o.outputs[0].token_ids) for o in outs] == expected
    assert all(o.prompt_token_ids == [1, 2, 3, 4, 5, 6] for o in outs)
    assert outs[-1].finished and outs[-1].num_cached_tokens == 7
    assert [b["prompt"] for b in bodies] == [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 10, 11]]
    assert [b["max_tokens"] for b in bodies] == [3, 1]
    policy = meter.component("policy")
    assert (policy.engine_calls, policy.prompt_tokens, policy.generated_tokens) == (2, 14, 3)
    assert policy.cached_tokens == 7  # the cut attempt never reported its cache hits


def test_a_call_cut_after_its_last_token_finishes_without_another_call() -> None:
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        chunks = _chunks([10, 11, 12])
        chunks[2]["choices"][0]["finish_reason"] = None  # the finish never arrived
        return _cut_after(3, chunks)

    outs = asyncio.run(_collect(_engine(handler), RequestOutputKind.DELTA, UsageMeter(FLOPS)))
    assert len(bodies) == 1
    assert [list(o.outputs[0].token_ids) for o in outs] == [[10], [11], [12], []]
    assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "length"


class _DiesAfter(httpx.AsyncByteStream):
    """A stream that sends `chunks`, then loses the connection (no usage chunk, no [DONE])."""

    def __init__(self, chunks: list[dict]) -> None:
        self.chunks = chunks

    async def __aiter__(self):
        for chunk in self.chunks:
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        raise httpx.ReadError("connection reset")


def test_a_stream_lost_after_the_finish_is_a_finished_call() -> None:
    """The finish arrived; only the usage chunk was lost: the call is done (charged without
    cache hits), not sent again asking for zero more tokens."""
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, stream=_DiesAfter(_chunks([10, 11, 12])[:3]))

    meter = UsageMeter(FLOPS)
    outs = asyncio.run(_collect(_engine(handler), RequestOutputKind.DELTA, meter))
    assert len(bodies) == 1
    assert [list(o.outputs[0].token_ids) for o in outs] == [[10], [11], [12]]
    assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "length"
    policy = meter.component("policy")
    assert (policy.engine_calls, policy.generated_tokens, policy.cached_tokens) == (1, 3, 0)


@pytest.mark.parametrize(
    "unresumable",
    [
        pytest.param({"extra_args": _spec().to_extra_args()}, id="logits-processor-state"),
        # vLLM holds back streamed text while a stop string may match: text lost at the cut.
        pytest.param({"stop": ["\n\n"]}, id="stop-strings"),
    ],
)
def test_an_unresumable_call_cut_after_yielding_is_a_503(unresumable) -> None:
    """Cut after streaming: state the new replica cannot rebuild means a clean 503."""
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return _cut_after(1, _chunks([10, 11, 12]))

    params = SamplingParams(max_tokens=3, output_kind=RequestOutputKind.DELTA, **unresumable)

    async def run() -> list:
        engine = _engine(handler)
        return [o async for o in engine.generate([1, 2], params, UsageMeter(FLOPS))]

    with pytest.raises(APIError) as err:
        asyncio.run(run())
    assert calls["n"] == 1 and err.value.status == 503


# ---- Quiet-STaR continuation calls (replicas run our continuation scheduler) -------------
ROUND = 5  # start, two thought tokens, end, then the talk token: s + t + e + 1 positions
FIRST, SECOND, THIRD = [3, 20, 21, 4, 50], [3, 22, 23, 4, 51], [3, 24, 25, 4, 52]


def _continuation_params(max_talk: int, seed: int | None = 9) -> SamplingParams:
    spec = replace(_spec(), continuation=True, context_len=6)
    return SamplingParams(
        max_tokens=max_talk,
        seed=seed,
        ignore_eos=True,
        extra_args=spec.to_extra_args(),
        output_kind=RequestOutputKind.DELTA,
    )


async def _continue(engine, params, meter) -> list:
    call = engine.generate([1, 2, 3, 4, 5, 6], params, meter, rollback_steps=ROUND)
    return [list(o.outputs[0].token_ids) async for o in call]


def _spec_of(body: dict) -> dict:
    return json.loads(body["vllm_xargs"]["quiet_star"])


def _rolled_back_charge(*attempts: tuple[int, int, int]) -> float:
    """FLOPs of (prompt, cached, generated tokens) attempts, as the in-process engine charges."""
    meter = UsageMeter(FLOPS)
    for prompt, cached, generated in attempts:
        meter.record_generation(
            prompt_tokens=prompt, cached_tokens=cached, generated_tokens=generated,
            rollback_steps=ROUND,
        )  # fmt: skip
    return meter.component("policy").flops


def test_a_continuation_call_hands_over_whole_rounds_and_is_charged_rolled_back() -> None:
    """The stream's tokens reach the decoder a round at a time (it keeps each round's last
    token), and the call is charged as the in-process engine charges it: thoughts rolled back."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_sse(_chunks([*FIRST, *SECOND], cached=0)))

    meter = UsageMeter(FLOPS)
    outs = asyncio.run(_continue(_engine(handler), _continuation_params(2), meter))
    assert outs == [FIRST, SECOND]
    policy = meter.component("policy")
    assert (policy.engine_calls, policy.generated_tokens) == (1, 10)
    assert policy.flops == _rolled_back_charge((6, 0, 10))


def test_a_continuation_call_cut_mid_round_resumes_after_its_last_talk_token() -> None:
    """A replica dies inside round 2: the round it did not finish is never handed over (a
    thought token must not become text), and the call goes on elsewhere from the visible text
    (prompt + the talk token so far), with one talk token fewer to make, the seed of the next
    round (the scheduler seeds round k with seed + k) and a fresh processor key; the spec's
    context length stays the original prompt's, so `min_tokens` still counts from there."""
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if len(bodies) == 1:
            return _cut_after(7, _chunks([*FIRST, *SECOND, *THIRD]))
        return httpx.Response(200, content=_sse(_chunks([*SECOND, *THIRD], cached=6)))

    meter = UsageMeter(FLOPS)
    outs = asyncio.run(_continue(_engine(handler), _continuation_params(3), meter))
    assert outs == [FIRST, SECOND, THIRD]
    assert [b["prompt"] for b in bodies] == [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 50]]
    assert [b["max_tokens"] for b in bodies] == [3, 2]
    assert [b["seed"] for b in bodies] == [9, 10]
    first, second = (_spec_of(b) for b in bodies)
    assert first["key"] != second["key"]
    assert {k: v for k, v in first.items() if k != "key"} == {
        k: v for k, v in second.items() if k != "key"
    }
    policy = meter.component("policy")
    # Both attempts ran and are charged: the cut one for its 7 tokens (the lost round too).
    assert (policy.engine_calls, policy.generated_tokens) == (2, 17)
    assert policy.flops == _rolled_back_charge((6, 0, 7), (7, 6, 10))


def test_a_continuation_call_cut_before_its_first_round_is_sent_again_whole() -> None:
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if len(bodies) == 1:
            return _cut_after(3, _chunks([*FIRST]))
        return httpx.Response(200, content=_sse(_chunks([*FIRST])))

    meter = UsageMeter(FLOPS)
    outs = asyncio.run(_continue(_engine(handler), _continuation_params(1), meter))
    assert outs == [FIRST]
    assert bodies[0] == bodies[1]  # the same call again: nothing was handed over
    assert meter.component("policy").engine_calls == 1


def test_retries_exhausted_is_a_clean_503() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    engine = _engine(handler, engine_retries=2)
    with pytest.raises(APIError) as err:
        asyncio.run(_collect(engine, RequestOutputKind.FINAL_ONLY, UsageMeter(FLOPS)))
    assert err.value.status == 503 and err.value.code == "engine_unavailable"


def test_a_client_error_is_not_retried_and_keeps_its_status() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        error = {"message": "bad max_tokens", "type": "BadRequestError", "param": "max_tokens"}
        return httpx.Response(400, json={"error": error})

    with pytest.raises(APIError) as err:
        asyncio.run(_collect(_engine(handler), RequestOutputKind.DELTA, UsageMeter(FLOPS)))
    assert calls["n"] == 1 and err.value.status == 400 and err.value.param == "max_tokens"


def test_the_engine_url_selects_the_remote_engine(monkeypatch) -> None:
    """`--engine-url` starts the remote engine; without it the in-process one starts."""
    from server import engines
    from server.engines import inprocess as in_process
    from server.engines import remote

    started = []
    monkeypatch.setattr(
        remote.RemoteEngine, "start", classmethod(lambda c, s: started.append("remote"))
    )
    monkeypatch.setattr(
        in_process.Engine, "start", classmethod(lambda c, s: started.append("local"))
    )
    engines.start_policy_engine(Settings(engine_url="http://router:8000"))
    engines.start_policy_engine(Settings())
    assert started == ["remote", "local"]
