"""`echo` below the HTTP wire: which requests may echo with logprobs (the 400 naming `echo`),
what the engine is asked for, the prompt tokens' logprobs entries, and their FLOPs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from vllm.logprobs import Logprob

from server.api.logprobs import LOGPROB_FLOOR, LogprobsBuilder
from server.api.protocol import CompletionRequest
from server.api.serving import CompletionService
from server.core.config import Settings
from server.core.errors import APIError
from server.core.flops import FlopsModel
from server.core.requests import ChoiceDelta
from server.core.usage import UsageMeter

FLOPS = FlopsModel(2, 64, 64, 64, 128, 512, True)


class FakeEngine:
    """Just what `prepare` touches."""

    model_name = model_path = "fake"
    max_model_len = 1 << 20

    def __init__(self, prompt_logprobs: bool) -> None:
        self.flops = SimpleNamespace(vocab_size=1000)
        self.prompt_logprobs = prompt_logprobs

    def encode(self, text: str) -> list[int]:
        return [1] * max(1, len(text) // 4)

    def decode(self, ids: list[int]) -> str:
        return "x" * len(ids)


async def _prepare(body: dict, *, prompt_logprobs: bool = True):
    engine = FakeEngine(prompt_logprobs)
    service = CompletionService(engine, Settings(device="cpu"))  # type: ignore[arg-type]
    return service, await service.prepare(CompletionRequest.model_validate(body), "cmpl-e")


@pytest.mark.parametrize(
    ("body", "engine_has_them"),
    [
        ({"method": "quiet_star"}, True),
        ({"method": "rebase"}, True),
        ({"method": "quiet_star+rebase"}, True),
        ({}, False),  # baseline on an engine that cannot return them (the remote one)
    ],
)
async def test_echo_with_logprobs_without_prompt_logprobs_is_a_400_naming_echo(
    body, engine_has_them
) -> None:
    request = {"prompt": "hello there", "echo": True, "logprobs": 1, **body}
    with pytest.raises(APIError) as info:
        await _prepare(request, prompt_logprobs=engine_has_them)
    assert (info.value.status, info.value.param) == (400, "echo")


async def test_baseline_echo_with_logprobs_asks_the_engine_for_prompt_logprobs() -> None:
    service, prepared = await _prepare({"prompt": "hello there", "echo": True, "logprobs": 3})
    assert prepared.inputs[0].sampling.prompt_logprobs == 3
    assert prepared.inputs[0].sampling.to_vllm().prompt_logprobs == 3
    service.release(prepared)


@pytest.mark.parametrize(
    "body",
    [
        {"echo": True},  # echo alone: the prompt's text only, no engine work for it
        {"logprobs": 2},
    ],
)
async def test_prompt_logprobs_are_asked_only_for_echo_with_logprobs(body) -> None:
    service, prepared = await _prepare({"prompt": "hello there", **body})
    assert prepared.inputs[0].sampling.prompt_logprobs is None
    service.release(prepared)


class _Tokenizer:
    def decode(self, ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)


def test_prompt_logprobs_come_first_the_first_one_null_and_offsets_run_on() -> None:
    builder = LogprobsBuilder(_Tokenizer())
    prompt = builder.add_prompt(
        [5, 6, 7],
        [
            None,
            {6: Logprob(-1.5, rank=2, decoded_token="b"), 9: Logprob(-0.5, 1, "z")},
            {7: Logprob(float("-inf"), rank=3, decoded_token="cc")},
        ],
    )
    assert prompt.tokens == ["<5>", "b", "cc"]
    assert prompt.token_logprobs == [None, -1.5, LOGPROB_FLOOR]  # JSON has no -inf
    assert prompt.top_logprobs == [None, {"b": -1.5, "z": -0.5}, {"cc": LOGPROB_FLOOR}]
    assert prompt.text_offset == [0, 3, 4]
    generated = builder.add(
        ChoiceDelta(0, "d", token_ids=[8], logprobs=[{8: Logprob(-0.1, 1, "d")}])
    )
    assert generated.text_offset == [6]
    assert builder.result().tokens == ["<5>", "b", "cc", "d"]


def test_prompt_logprobs_are_charged_logits_at_every_prompt_position() -> None:
    meter, plain = UsageMeter(FLOPS), UsageMeter(FLOPS)
    meter.record_generation(
        prompt_tokens=10, cached_tokens=0, generated_tokens=4, prompt_logits="all"
    )
    plain.record_generation(prompt_tokens=10, cached_tokens=0, generated_tokens=4)
    expected = FLOPS.request_flops(10, 0, 4, prompt_logits="all")
    assert meter.total_flops == expected
    assert meter.total_flops.executed > plain.total_flops.executed
    assert meter.component("policy").forward_tokens == plain.component("policy").forward_tokens
