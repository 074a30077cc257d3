"""End-to-end: a tiny random checkpoint in the Quiet-STaR reference's format, served through
the gateway with its own mixing head (the vLLM model plugin), against an independent pure-torch
implementation of the reference's inference equations (tests/quiet_star_reference.py)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import pytest
import torch

from tests.conftest import Gateway, completion_ok, http_client, running_gateway
from tests.quiet_star_checkpoint import START, build_quiet_star_checkpoint
from tests.quiet_star_reference import ReferenceQuietStar

pytestmark = pytest.mark.e2e

PROMPT = "Q: Weng earns 12 an hour for babysitting. How much for 50 minutes?\nA:"
MAX_MODEL_LEN = 1024  # what start_gateway configures


@pytest.fixture(scope="module")
def checkpoint_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    model_dir = build_quiet_star_checkpoint(tmp_path_factory.mktemp("quiet-star-ckpt"))
    log_path = tmp_path_factory.mktemp("qs-gateway") / "gateway.log"
    # processed logprobs: the talk token's distribution as sampled (after the processor);
    # float32 stated: 'auto' is bf16 on a CPU with native bf16, too coarse for the 1e-4 bound
    args = ["--logprobs-mode", "processed_logprobs", "--max-logprobs", "100", "--dtype", "float32"]
    with running_gateway(model_dir, log_path, *args) as gw:
        yield gw


@pytest.fixture(scope="module")
def qs(checkpoint_gateway: Gateway) -> Iterator[httpx.Client]:
    with http_client(checkpoint_gateway) as c:
        yield c


@pytest.fixture(scope="module")
def reference(checkpoint_gateway: Gateway) -> ReferenceQuietStar:
    return ReferenceQuietStar(checkpoint_gateway.model_dir)


def complete(qs: httpx.Client, **body) -> dict:
    payload = {"prompt": PROMPT, "method": "quiet_star", "seed": 7, **body}
    payload.setdefault("quiet_star", {"return_thoughts": True})
    return completion_ok(qs, payload)


def served_probs(top: dict[str, float], tokenizer, vocab: int) -> torch.Tensor:
    """The served top-logprobs dict (keyed by token text) as a probability vector."""
    by_text = {tokenizer.decode([i]): i for i in range(vocab)}
    assert len(by_text) == vocab  # the test tokenizer decodes every id to a distinct string
    probs = torch.zeros(vocab, dtype=torch.float64)
    for text, logprob in top.items():
        probs[by_text[text]] = math.exp(logprob)
    return probs


def test_checkpoint_is_served_with_its_head_and_thought_length(qs, reference) -> None:
    body = complete(qs, max_tokens=3, temperature=1.0)
    detail = body["method_details"]["quiet_star"][0]
    assert detail["mixing_weight_source"] == "head"
    assert detail["thought_tokens"] == reference.n_ahead - 3 == 5  # from max_thoughts = 10
    start, end = reference.start_id, reference.end_id
    for step in detail["step_token_ids"]:
        assert len(step) == 5 + 3
        assert step[0] == start and step[-2] == end
        assert not {start, end} & set(step[1:-2])
    assert not {start, end} & {s[-1] for s in detail["step_token_ids"]}


def test_talk_distribution_matches_the_reference(qs, reference) -> None:
    tokenizer, vocab = reference.tokenizer, len(reference.tokenizer)
    temperature = 0.9  # the reference eval's --temp
    body = complete(qs, max_tokens=4, temperature=temperature, logprobs=vocab)
    detail = body["method_details"]["quiet_star"][0]
    tops = body["choices"][0]["logprobs"]["top_logprobs"]
    context = tokenizer.encode(PROMPT)  # with BOS, as the reference eval tokenizes
    assert len(tops) == len(detail["step_token_ids"]) == 4
    for step, top in zip(detail["step_token_ids"], tops, strict=True):
        logits, w = reference.talk_logits(context, step[1:-2])
        expected = (logits / temperature).softmax(-1)
        served = served_probs(top, tokenizer, vocab)
        assert float((served - expected).abs().max()) <= 1e-4, (w, step)
        # sensitivity: a fixed w (the fallback 0.1) would be visibly different
        fixed, _ = reference.talk_logits(context, step[1:-2], w=0.1)
        if abs(w - 0.1) > 0.05:
            assert float((served - (fixed / temperature).softmax(-1)).abs().max()) > 1e-3
        start_id = tokenizer.convert_tokens_to_ids(START)
        assert served[start_id] == 0 and served[vocab - 1] == 0  # thought ids are masked
        context.append(step[-1])


def test_greedy_tokens_match_the_reference_over_16_steps(qs, reference) -> None:
    body = complete(qs, max_tokens=16, temperature=0, ignore_eos=True)
    detail = body["method_details"]["quiet_star"][0]
    steps = detail["step_token_ids"]
    assert len(steps) == 16
    context = reference.tokenizer.encode(PROMPT)
    for step in steps:
        logits, _ = reference.talk_logits(context, step[1:-2])
        top2 = logits.topk(2).values
        assert float(top2[0] - top2[1]) > 1e-6  # a real argmax, not a tie
        assert step[-1] == int(logits.argmax())
        context.append(step[-1])
    assert body["choices"][0]["text"] == reference.tokenizer.decode(
        [s[-1] for s in steps], skip_special_tokens=True
    )


def test_top_k_is_honoured_on_the_talk_token(qs, reference) -> None:
    tokenizer, vocab = reference.tokenizer, len(reference.tokenizer)
    body = complete(qs, max_tokens=2, temperature=1.0, top_k=3, logprobs=vocab)
    step = body["method_details"]["quiet_star"][0]["step_token_ids"][0]
    logits, _ = reference.talk_logits(tokenizer.encode(PROMPT), step[1:-2])
    kept = logits.topk(3).indices
    expected = torch.zeros(vocab, dtype=torch.float64)
    expected[kept] = logits[kept].softmax(-1)
    served = served_probs(body["choices"][0]["logprobs"]["top_logprobs"][0], tokenizer, vocab)
    assert float((served - expected).abs().max()) <= 1e-4


def test_a_request_mixing_weight_overrides_the_head(qs, reference) -> None:
    block = {"mixing_weight": 0.0, "return_thoughts": True}
    body = complete(qs, max_tokens=3, temperature=0, quiet_star=block)
    detail = body["method_details"]["quiet_star"][0]
    assert detail["mixing_weight_source"] == "request"
    context = reference.tokenizer.encode(PROMPT)
    for step in detail["step_token_ids"]:
        logits, _ = reference.talk_logits(context, step[1:-2], w=0.0)  # the base prediction
        assert step[-1] == int(logits.argmax())
        context.append(step[-1])


@pytest.mark.parametrize(
    ("field", "value"),
    [("presence_penalty", 0.5), ("frequency_penalty", 0.5), ("repetition_penalty", 1.2)],
)
def test_penalties_are_refused(qs, field, value) -> None:
    response = qs.post(
        "/v1/completions", json={"prompt": PROMPT, "method": "quiet_star", field: value}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field


# -- the context limit (no thought token may ever leak) ----------------------------------------


def filler_ids(tokenizer, count: int) -> list[int]:
    ids = tokenizer.encode(PROMPT * 40, add_special_tokens=False)
    assert len(ids) >= count - 1
    return [tokenizer.bos_token_id, *ids[: count - 1]]


def test_stops_cleanly_where_the_next_thought_would_pass_the_context_limit(qs, reference) -> None:
    prompt = filler_ids(reference.tokenizer, 1000)
    steps_per_token = 5 + 3
    fits = MAX_MODEL_LEN - len(prompt) - steps_per_token + 1  # talk tokens that fit: 17
    # prompt + max_tokens is within the limit, but the later talk tokens' thoughts are not
    # (ignore_eos: the random talk tokens of the tiny model may be EOS; the limit is the point)
    body = complete(
        qs, prompt=prompt, max_tokens=MAX_MODEL_LEN - len(prompt), temperature=1.0, ignore_eos=True
    )
    choice = body["choices"][0]
    detail = body["method_details"]["quiet_star"][0]
    assert choice["finish_reason"] == "length"
    assert detail["stopped_at_context_limit"] is True
    assert body["usage"]["completion_tokens"] == detail["output_tokens"] == fits
    talk = [s[-1] for s in detail["step_token_ids"]]
    assert all(len(s) == steps_per_token for s in detail["step_token_ids"])
    assert not {reference.start_id, reference.end_id} & set(talk)
    assert reference.tokenizer.decode(talk, skip_special_tokens=True) == choice["text"]


def test_a_prompt_without_room_for_one_thought_is_refused(qs, reference) -> None:
    prompt = filler_ids(reference.tokenizer, MAX_MODEL_LEN - 4)
    response = qs.post(
        "/v1/completions",
        json={"prompt": prompt, "method": "quiet_star", "max_tokens": 4},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "prompt"
