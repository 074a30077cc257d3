"""End-to-end: the official openai client against the real gateway on the tiny Llama."""

from __future__ import annotations

import json

import openai
import pytest

from server.core.flops import FlopsModel

pytestmark = pytest.mark.e2e

PROMPT = "Natalia sold clips to 48 of her friends in April."


def test_models_lists_served_model_and_methods(client) -> None:
    models = client.models.list()
    card = models.data[0]
    assert card.id == "tiny"
    assert "baseline" in card.model_extra["methods"]


def test_non_streaming_completion_reports_usage_and_flops(client, gateway) -> None:
    result = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=7, extra_body={"ignore_eos": True}
    )
    choice = result.choices[0]
    assert choice.finish_reason == "length"
    usage = result.usage
    assert usage.completion_tokens == 7
    assert usage.total_tokens == usage.prompt_tokens + 7
    # FLOPs: the model's own formula for exactly this call (prompt computed, 6 fed back).
    flops = FlopsModel.from_pretrained(str(gateway.model_dir))
    cached = usage.model_extra["cached_tokens"]
    expected = flops.request_flops(usage.prompt_tokens, cached, 7)
    assert usage.model_extra["flops"]["executed"] == expected.executed
    assert usage.model_extra["flops"]["nominal"] == expected.nominal
    assert result.model_extra["method"] == "baseline"


def test_prefix_cache_lowers_executed_flops(client) -> None:
    long_prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 12)
    body = {"model": "tiny", "prompt": long_prompt, "max_tokens": 2, "temperature": 0}
    client.completions.create(**body)
    second = client.completions.create(**body)
    usage = second.usage.model_extra
    assert usage["cached_tokens"] >= 32  # at least one full KV block was reused
    assert usage["flops"]["executed"] < usage["flops"]["nominal"]


def test_streaming_with_usage_chunk(client) -> None:
    stream = client.completions.create(
        model="tiny",
        prompt=PROMPT,
        max_tokens=6,
        extra_body={"ignore_eos": True},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text_chunks = [c for c in chunks if c.choices]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0]
    assert usage_chunks[0].usage.completion_tokens == 6
    assert text_chunks[-1].choices[0].finish_reason == "length"
    # Each token arrives in its own chunk (streamed as decided, not batched at the end).
    assert len(text_chunks) == 6


def test_stream_ends_with_done_marker(http) -> None:
    body = {"prompt": PROMPT, "max_tokens": 3, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        data_lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert data_lines[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(line[6:]) for line in data_lines[:-1])


def test_n_and_list_prompts_index_choices(client) -> None:
    result = client.completions.create(
        model="tiny", prompt=[PROMPT, "Hello world"], n=3, max_tokens=4, seed=11
    )
    assert sorted(c.index for c in result.choices) == list(range(6))
    assert 6 <= result.usage.completion_tokens <= 24
    assert result.usage.prompt_tokens > 0
    assert result.usage.model_extra["engine_calls"] == 6


def test_seed_reproducible_at_positive_temperature(client) -> None:
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 12, "temperature": 1.0}
    first = client.completions.create(seed=1234, **body).choices[0].text
    again = client.completions.create(seed=1234, **body).choices[0].text
    others = {client.completions.create(seed=s, **body).choices[0].text for s in range(5)}
    assert first == again
    assert len(others) > 1  # different seeds really sample differently


def test_stop_string_ends_completion(client) -> None:
    # Find a piece of greedy output, then ask to stop at it.
    greedy = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0)
    text = greedy.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), f"greedy text too short to pick a stop string: {text!r}"
    stopped = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop]
    )
    choice = stopped.choices[0]
    assert choice.finish_reason == "stop"
    assert stop not in choice.text
    assert text.startswith(choice.text)


def test_logprobs_shape(client) -> None:
    result = client.completions.create(
        model="tiny",
        prompt=PROMPT,
        max_tokens=5,
        logprobs=3,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    lp = result.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    for token_lp, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert token_lp <= 0
        assert 1 <= len(top) <= 4  # top-3 plus the sampled token if it is not among them
        # Greedy: the sampled token is the most likely one.
        assert token_lp == pytest.approx(max(top.values()), abs=1e-4)
    assert lp.text_offset == sorted(lp.text_offset)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "temperature": 3}, "temperature"),
        ({"prompt": "hi", "top_p": 0}, "top_p"),
        ({"prompt": "hi", "n": 0}, "n"),
        ({"prompt": "hi", "n": 1000}, "n"),
        ({"prompt": "hi", "logprobs": 500}, "logprobs"),
        ({"prompt": []}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "hi", "stop": ["a", ""]}, "stop"),
        ({"prompt": "hi", "method": "nope"}, "method"),
        ({"prompt": "hi", "frobnicate": 1}, "frobnicate"),
        ({"prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "hi", "max_tokens": 5000}, "max_tokens"),
        ({"prompt": "word " * 2000, "max_tokens": 1}, "prompt"),
        ({"prompt": [[1, 2, 999999]]}, "prompt"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(http, body, param) -> None:
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert param in error["message"] or param == "prompt"
    assert error["type"] == "invalid_request_error"


def test_unknown_method_error_lists_valid_methods(http) -> None:
    response = http.post("/v1/completions", json={"prompt": "hi", "method": "magic"})
    assert "baseline" in response.json()["error"]["message"]


def test_invalid_json_is_a_400(http) -> None:
    response = http.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_wrong_model_is_a_404(client) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-9", prompt="hi", max_tokens=1)
    assert "gpt-9" in str(info.value)


def test_openai_client_surfaces_bad_request(client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="hi", extra_body={"method": "magic"})
    assert "magic" in str(info.value)


def test_health_and_metrics_after_traffic(http) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
    http.post("/v1/completions", json={"prompt": PROMPT, "method": "nope"})
    text = http.get("/metrics").text
    samples = {
        line.split(" ")[0]: float(line.split(" ")[-1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['thinkscale_requests_total{method="baseline",status="ok"}'] >= 1
    assert samples['thinkscale_request_latency_seconds_count{method="baseline"}'] >= 1
    assert samples['thinkscale_request_flops_count{method="baseline"}'] >= 1
    assert (
        samples[
            'thinkscale_flops_total{accounting="executed",component="policy",method="baseline"}'
        ]
        > 0
    )
    assert samples['thinkscale_tokens_total{kind="completion",method="baseline"}'] >= 2
    assert samples['thinkscale_requests_total{method="unknown",status="client_error"}'] >= 1
    # vLLM's own series are served by the same endpoint.
    assert any(name.startswith("vllm:num_requests_running") for name in samples)
    assert any(name.startswith("vllm:prefix_cache_queries_total") for name in samples)
