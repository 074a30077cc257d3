"""End-to-end `echo`, as OpenAI's legacy completions: the prompt starts each choice's text, for
every method; with `logprobs`, the prompt tokens' logprobs come first (the first one null) where
they can be had (`baseline`), else a 400 naming `echo`. The echoed prompt is never usage."""

from __future__ import annotations

import pytest

from server.core.flops import FlopsModel

pytestmark = pytest.mark.e2e

PROMPT = "Natalia sold clips to 48 of her friends in April."
OTHER = "Q: How many clips did she sell in May?\nA:"
GREEDY = {"model": "tiny", "max_tokens": 5, "temperature": 0}
IGNORE_EOS = {"ignore_eos": True}


def test_baseline_echo_prefixes_each_choice_with_its_own_prompt(client) -> None:
    plain = client.completions.create(prompt=[PROMPT, OTHER], n=2, extra_body=IGNORE_EOS, **GREEDY)
    echoed = client.completions.create(
        prompt=[PROMPT, OTHER], n=2, echo=True, extra_body=IGNORE_EOS, **GREEDY
    )
    assert len(echoed.choices) == 4
    for choice, without in zip(echoed.choices, plain.choices, strict=True):
        prompt = PROMPT if choice.index < 2 else OTHER
        assert choice.text == prompt + without.text
        assert choice.finish_reason == without.finish_reason == "length"
    # the prompt is not completion: usage is that of the same request without echo
    assert echoed.usage.completion_tokens == plain.usage.completion_tokens == 4 * 5
    assert echoed.usage.prompt_tokens == plain.usage.prompt_tokens
    assert echoed.usage.total_tokens == plain.usage.total_tokens


def test_baseline_echo_streams_the_prompt_first_in_each_choice(client) -> None:
    plain = client.completions.create(prompt=PROMPT, n=2, extra_body=IGNORE_EOS, **GREEDY)
    stream = client.completions.create(
        prompt=PROMPT,
        n=2,
        echo=True,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=IGNORE_EOS,
        **GREEDY,
    )
    texts: dict[int, list[str]] = {0: [], 1: []}
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index].append(choice.text)
        usage = chunk.usage or usage
    for index, parts in texts.items():
        assert parts[0].startswith(PROMPT)  # the first chunk of each choice carries it
        assert all(not part.startswith(PROMPT) for part in parts[1:])  # and only the first
        assert "".join(parts) == PROMPT + plain.choices[index].text
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens


def test_quiet_star_echo_text_begins_with_the_prompt(client) -> None:
    result = client.completions.create(
        model="tiny",
        prompt=PROMPT,
        max_tokens=3,
        seed=1,
        echo=True,
        extra_body={"method": "quiet_star", "quiet_star": {"thought_tokens": 2}},
    )
    choice = result.choices[0]
    assert choice.text.startswith(PROMPT)
    assert result.usage.completion_tokens <= 3  # the talk tokens only


def test_quiet_star_echo_streams_the_prompt_first(client) -> None:
    stream = client.completions.create(
        model="tiny",
        prompt=PROMPT,
        max_tokens=3,
        seed=1,
        echo=True,
        stream=True,
        extra_body={"method": "quiet_star", "quiet_star": {"thought_tokens": 2}},
    )
    parts = [c.text for chunk in stream for c in chunk.choices]
    assert parts and parts[0].startswith(PROMPT)


def test_rebase_echo_text_begins_with_the_prompt(client) -> None:
    tree = {"width": 2, "max_step_tokens": 4, "step_delimiter": " ", "max_depth": 3}
    result = client.completions.create(
        model="tiny",
        prompt=OTHER,
        max_tokens=12,
        seed=3,
        echo=True,
        extra_body={"method": "rebase", "rebase": tree},
    )
    assert result.choices and all(c.text.startswith(OTHER) for c in result.choices)
    assert result.usage.completion_tokens <= 12 * 2  # generated text only


def test_baseline_echo_with_logprobs_returns_the_prompt_tokens_logprobs(client, gateway) -> None:
    plain = client.completions.create(prompt=PROMPT, logprobs=2, extra_body=IGNORE_EOS, **GREEDY)
    echoed = client.completions.create(
        prompt=PROMPT, logprobs=2, echo=True, extra_body=IGNORE_EOS, **GREEDY
    )
    prompt_tokens = echoed.usage.prompt_tokens
    lp, generated = echoed.choices[0].logprobs, plain.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == prompt_tokens + 5
    # OpenAI: nothing precedes the first prompt token, so it has no logprob
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for token_lp, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True):
        assert token_lp is not None and token_lp <= 0
        assert 1 <= len(top) <= 3  # top-2 plus the prompt token if it is not among them
    assert "".join(lp.tokens[:prompt_tokens]) == PROMPT
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert lp.text_offset[prompt_tokens] == len(PROMPT)  # generated tokens follow the prompt
    # after the prompt: exactly the logprobs of the same request without echo
    assert lp.tokens[prompt_tokens:] == generated.tokens
    assert lp.token_logprobs[prompt_tokens:] == pytest.approx(generated.token_logprobs, abs=1e-4)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    assert echoed.usage.completion_tokens == 5
    # prompt logprobs run the LM head at every prompt position (vLLM reads no cache for them)
    usage = echoed.usage.model_extra
    flops = FlopsModel.from_pretrained(str(gateway.model_dir))
    expected = flops.request_flops(prompt_tokens, usage["cached_tokens"], 5, prompt_logits="all")
    assert usage["flops"]["executed"] == expected.executed


def test_baseline_echo_with_logprobs_streams_the_prompt_logprobs_first(client) -> None:
    stream = client.completions.create(
        prompt=PROMPT, logprobs=1, echo=True, stream=True, extra_body=IGNORE_EOS, **GREEDY
    )
    chunks = [c for chunk in stream for c in chunk.choices]
    first = chunks[0].logprobs
    assert chunks[0].text.startswith(PROMPT)
    assert first.token_logprobs[0] is None and first.top_logprobs[0] is None
    tokens = [t for c in chunks for t in c.logprobs.tokens or []]  # the last may have none
    assert "".join(tokens).startswith(PROMPT) and len(tokens) > 5


@pytest.mark.parametrize(
    "extra",
    [
        {"method": "quiet_star", "quiet_star": {"thought_tokens": 2}},
        {"method": "rebase", "rebase": {"width": 2, "max_step_tokens": 4, "max_depth": 2}},
    ],
)
def test_echo_with_logprobs_is_a_400_naming_echo_where_prompt_logprobs_are_missing(
    http, extra
) -> None:
    body = {"prompt": PROMPT, "max_tokens": 3, "echo": True, "logprobs": 1, **extra}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "echo" and error["type"] == "invalid_request_error"
    assert "'echo'" in error["message"] and extra["method"] in error["message"]
