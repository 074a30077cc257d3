"""End-to-end Quiet-STaR: the logits processor inside the real engine, checked independently
with transformers on the same tiny weights."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.conftest import completion_ok

pytestmark = pytest.mark.e2e

PROMPT = "Q: Weng earns $12 an hour. How much for 50 minutes?\nA:"


@pytest.fixture(scope="module")
def hf_model(gateway):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gateway.model_dir, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(gateway.model_dir)


def next_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)


def quiet_star(http, **overrides) -> dict:
    body = {
        "prompt": PROMPT,
        "max_tokens": 4,
        "temperature": 0,
        "method": "quiet_star",
        "quiet_star": {"thought_tokens": 3, "mixing_weight": 0.5, "return_thoughts": True},
    }
    body.update(overrides)
    return completion_ok(http, body)


def test_forced_tokens_land_at_their_positions_and_banned_never_sampled(http, hf_model) -> None:
    _, tokenizer = hf_model
    start = tokenizer.convert_tokens_to_ids("<|startthought|>")
    end = tokenizer.convert_tokens_to_ids("<|endthought|>")
    body = quiet_star(http, temperature=1.0, seed=3, max_tokens=6, quiet_star={
        "thought_tokens": 5, "thought_temperature": 2.0, "return_thoughts": True
    })  # fmt: skip
    steps = body["method_details"]["quiet_star"][0]["step_token_ids"]
    assert len(steps) == 6
    for step in steps:
        assert len(step) == 5 + 3
        assert step[0] == start and step[6] == end
        assert not {start, end, tokenizer.eos_token_id} & set(step[1:6])


def test_greedy_talk_token_is_argmax_of_the_mixed_distribution(http, hf_model) -> None:
    model, tokenizer = hf_model
    w = 0.5
    body = quiet_star(http)
    detail = body["method_details"]["quiet_star"][0]
    assert detail["mixing_weight_source"] == "request"  # a plain model has no mixing head
    context = tokenizer.encode(PROMPT, add_special_tokens=False)
    delimiters = tokenizer.convert_tokens_to_ids(["<|startthought|>", "<|endthought|>"])
    for step in detail["step_token_ids"]:
        base = next_logprobs(model, context)
        post = next_logprobs(model, context + step[:-1])  # start + thought + end
        mixed = (1 - w) * base + w * post
        mixed[delimiters] = float("-inf")  # a thought delimiter is never text
        talk = step[-1]
        top2 = mixed.topk(2).values
        if float(top2[0] - top2[1]) > 1e-3:  # skip numerical near-ties between engines
            assert talk == int(mixed.argmax())
        # The talk token is never simply the base's or the thought's argmax when they differ
        # from the mix's choice: it is the mix that decides.
        assert mixed[talk] >= top2[0] - 1e-3
        context.append(talk)


def test_zero_mixing_weight_reproduces_plain_greedy_decoding(http) -> None:
    plain = http.post(
        "/v1/completions", json={"prompt": PROMPT, "max_tokens": 5, "temperature": 0}
    ).json()
    thought = quiet_star(http, max_tokens=5, quiet_star={"thought_tokens": 2, "mixing_weight": 0})
    assert thought["choices"][0]["text"] == plain["choices"][0]["text"]


def test_usage_counts_thought_and_forward_tokens(http) -> None:
    body = quiet_star(http, max_tokens=4, quiet_star={"thought_tokens": 3})
    usage = body["usage"]
    assert usage["completion_tokens"] == 4
    assert usage["thought_tokens"] == 4 * (3 + 2)
    assert usage["engine_calls"] == 1  # one engine request per sequence (continuation)
    # Every engine call computes at least the t + 3 step tokens (the last is sampled, not fed).
    assert usage["forward_tokens"] >= 4 * (3 + 2)
    assert usage["flops"]["executed"] > 0


def test_concurrent_requests_with_different_parameters_match_solo_runs(http) -> None:
    variants = [
        {"thought_tokens": 1, "mixing_weight": 0.2},
        {"thought_tokens": 4, "mixing_weight": 0.7},
        {"thought_tokens": 2, "mixing_weight": 1.0, "thought_temperature": 0.5},
        {"thought_tokens": 3, "mixing_weight": 0.5, "think": "step_start", "step_delimiter": " "},
    ]
    seeded = [dict(v, return_thoughts=True) for v in variants]
    solo = [quiet_star(http, seed=5, quiet_star=v)["choices"][0]["text"] for v in seeded]
    with ThreadPoolExecutor(len(seeded)) as pool:
        batched = list(pool.map(lambda v: quiet_star(http, seed=5, quiet_star=v), seeded))
    # Greedy talk tokens and seeded thoughts: batching with other requests changes nothing.
    assert [b["choices"][0]["text"] for b in batched] == solo


def test_step_start_mode_thinks_less(http) -> None:
    every = quiet_star(http, max_tokens=8, quiet_star={"thought_tokens": 3})
    cheap = quiet_star(
        http,
        max_tokens=8,
        quiet_star={"thought_tokens": 3, "think": "step_start", "step_delimiter": "\n"},
    )
    assert cheap["usage"]["thought_tokens"] < every["usage"]["thought_tokens"]
    assert cheap["usage"]["flops"]["executed"] < every["usage"]["flops"]["executed"]


def test_streaming_emits_tokens_as_decided(http) -> None:
    body = {
        "prompt": PROMPT,
        "max_tokens": 5,
        "method": "quiet_star",
        "seed": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
        "quiet_star": {"thought_tokens": 2},
    }
    with http.stream("POST", "/v1/completions", json=body) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text_chunks = [c for c in chunks if c["choices"]]
    assert len(text_chunks) >= 5  # one per talk token, plus the final finish chunk
    assert chunks[-1]["usage"]["thought_tokens"] == 5 * 4


def test_n_gives_independent_samples(http) -> None:
    body = quiet_star(http, n=3, temperature=1.0, seed=9, max_tokens=6)
    assert sorted(c["index"] for c in body["choices"]) == [0, 1, 2]
    assert len({c["text"] for c in body["choices"]}) > 1


@pytest.mark.parametrize(
    ("block", "extra", "param"),
    [
        ({"thought_tokens": -1}, {}, "quiet_star.thought_tokens"),
        ({"thought_tokens": 500}, {}, "quiet_star.thought_tokens"),
        ({"mixing_weight": 1.5}, {}, "quiet_star.mixing_weight"),
        ({"thought_temperature": 0}, {}, "quiet_star.thought_temperature"),
        ({"think": "sometimes"}, {}, "quiet_star.think"),
        (
            {"start_token": "a very long thought opening string indeed"},
            {},
            "quiet_star.start_token",
        ),
        ({"bogus": 1}, {}, "quiet_star.bogus"),
        ({}, {"logprobs": 1}, "logprobs"),  # the session gateway reports raw logprobs
        ({}, {"presence_penalty": 1.0}, "presence_penalty"),
        ({}, {"min_tokens": 2, "stop": ["."]}, "min_tokens"),
        ({}, {"prompt": list(range(5, 1020))}, "prompt"),  # no room for one thought
    ],
)
def test_invalid_quiet_star_parameters_are_400(http, block, extra, param) -> None:
    body = {"prompt": PROMPT, "method": "quiet_star", "quiet_star": block, **extra}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_no_thought_token_leaks_at_the_context_limit(http, hf_model) -> None:
    """The prompt and max_tokens fit max_model_len (1024), but the last talk tokens' thoughts
    (t + 2 positions after them) would not: generation stops before them, cleanly."""
    _, tokenizer = hf_model
    prompt = tokenizer.encode(PROMPT * 100, add_special_tokens=False)[:1000]
    assert len(prompt) == 1000
    body = quiet_star(
        http, prompt=prompt, max_tokens=24, temperature=1.0, seed=7,
        quiet_star={"thought_tokens": 5, "return_thoughts": True},
    )  # fmt: skip
    choice, detail = body["choices"][0], body["method_details"]["quiet_star"][0]
    steps = detail["step_token_ids"]
    assert choice["finish_reason"] == "length" and detail["stopped_at_context_limit"]
    assert len(steps) == 1024 - 1000 - (5 + 3) + 1  # every step that fits, no more
    assert all(len(step) == 5 + 3 for step in steps)  # no step cut short by the engine
    delimiters = set(tokenizer.convert_tokens_to_ids(["<|startthought|>", "<|endthought|>"]))
    assert not delimiters & {step[-1] for step in steps}
    assert body["usage"]["completion_tokens"] == len(steps)
