"""Fuzz /v1/completions from the app's own OpenAPI schema against the real tiny engine.

Why: "input never causes a 5xx" is a claim about all inputs, not the ones we thought of.
schemathesis draws bodies from the schema the gateway publishes (so the fuzzer follows the
API as it changes): bodies that fit it and bodies that break it; every answer must be < 500
and every 4xx must carry the OpenAI error shape. Cost is bounded: a fixed number of examples,
and token counts clamped small, since this checks validation, not generation.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from server.api.protocol import CompletionRequest

pytestmark = pytest.mark.e2e

EXAMPLES = 150


def _bounded(body: Any) -> Any:
    """Keep valid bodies cheap to serve; out-of-range values stay as drawn (they are 4xx)."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if isinstance(body.get("max_tokens"), int) and 4 < body["max_tokens"] < 10_000:
        body["max_tokens"] = 4
    if isinstance(body.get("n"), int) and 2 < body["n"] <= 16:
        body["n"] = 2
    if isinstance(body.get("prompt"), list):
        body["prompt"] = body["prompt"][:3]
    if isinstance(body.get("prompt"), str):
        body["prompt"] = body["prompt"][:200]
    return body


@pytest.fixture(scope="module")
def completions(http: httpx.Client):
    """The /v1/completions operation of the schema the running gateway serves."""
    schema = schemathesis.openapi.from_dict(http.get("/openapi.json").json())
    return schema["/v1/completions"]["POST"]


def _check(response: httpx.Response, body: Any) -> None:
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, response.text
        assert isinstance(error["message"], str) and error["message"]
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line[5:].strip() for line in response.text.splitlines() if line[:5] == "data:"]
        assert events[-1] == "[DONE]", response.text
        for event in events[:-1]:
            assert "error" not in json.loads(event), (body, event)


def _reshaped(body: Any, known: bool, stream: bool) -> Any:
    """Schema-valid bodies mostly carry random extra keys (the schema allows them; the
    gateway rejects unknown ones), which would stop nearly every case there. Half the
    cases keep only the schema's own fields, and half are streamed, so the checks after it
    run too, including those that used to fail only once an SSE stream had started."""
    if not isinstance(body, dict):
        return body
    if known:  # ... and a real model and method, which random strings never are
        body = {k: v for k, v in body.items() if k in COMPLETION_FIELDS - {"model", "method"}}
        body = _within_limits(body)
    if stream:
        body = {**body, "stream": True}
    return body


COMPLETION_FIELDS = set(CompletionRequest.model_fields)


def _small_ids(value: Any) -> Any:
    """Token ids into the tiny model's vocabulary (random ids are almost never in it)."""
    if isinstance(value, bool) or not isinstance(value, int | list):
        return value
    if isinstance(value, int):
        return abs(value) % 100
    return [_small_ids(v) for v in value]


def _within_limits(body: dict) -> dict:
    """Bring the server-side limits (max_logprobs, max_n, context) within reach, so that
    cases get past them to the engine; min_tokens and the sampling values stay as drawn."""
    body = dict(body)
    if isinstance(body.get("logprobs"), int):
        body["logprobs"] = min(body["logprobs"], 5)
    if isinstance(body.get("n"), int):
        body["n"] = min(body["n"], 2)
    if isinstance(body.get("max_tokens"), int):
        body["max_tokens"] = min(body["max_tokens"], 4)
    if "prompt" in body:
        body["prompt"] = _small_ids(body["prompt"])
    return body


def test_no_input_causes_a_5xx(http: httpx.Client, completions) -> None:
    cases = completions.as_strategy(GenerationMode.POSITIVE) | completions.as_strategy(
        GenerationMode.NEGATIVE
    )
    bodies = st.builds(
        lambda case, known, stream: _reshaped(_bounded(case.body), known, stream),
        cases,
        st.booleans(),
        st.booleans(),
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=bodies)
    def check(body: Any) -> None:
        if isinstance(body, bytes | str):
            response = http.post(
                "/v1/completions", content=body, headers={"content-type": "application/json"}
            )
        else:
            response = http.post("/v1/completions", json=body)
        _check(response, body)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    statuses: dict[int, int] = {}
    check()
    print("status codes:", statuses)  # shown with -s: how far the cases got
    assert statuses.get(200, 0) >= 5  # some cases get through validation to the engine
