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
from schemathesis import GenerationMode

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


def test_no_input_causes_a_5xx(http: httpx.Client, completions) -> None:
    bodies = completions.as_strategy(GenerationMode.POSITIVE) | completions.as_strategy(
        GenerationMode.NEGATIVE
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=bodies)
    def check(case) -> None:
        body = _bounded(case.body)
        if isinstance(body, bytes | str):
            response = http.post(
                "/v1/completions", content=body, headers={"content-type": "application/json"}
            )
        else:
            response = http.post("/v1/completions", json=body)
        _check(response, body)

    check()
