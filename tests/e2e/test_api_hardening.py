"""End-to-end API hardening: bad input is a 400 before any stream, the body cap, request ids,
API keys, admission (429 + Retry-After) and traceable engine request ids in JSON logs.

Most tests use the session gateway (no keys, default limits). The `secured` gateway is a
second real gateway with API keys, capacity 1 and JSON debug logs: what those settings change
can only be seen from outside with them on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway, http_client, running_gateway

pytestmark = pytest.mark.e2e

PROMPT = "Q: What is 2 + 3? A:"
SMALL_TREE = {"width": 2, "max_step_tokens": 4, "step_delimiter": " ", "max_depth": 3}


def _raw_post(http: httpx.Client, raw_json: str, **kwargs) -> httpx.Response:
    """POST a JSON text as written (json.dumps cannot write a lone surrogate escape)."""
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    return http.post("/v1/completions", content=raw_json.encode(), headers=headers, **kwargs)


def _assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error
    return error


# ---- item 3: input never causes a 5xx --------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ('{"prompt": "a\\ud800", "max_tokens": 2}', "prompt"),
        ('{"prompt": "hi", "max_tokens": 2, "stop": ["x", "\\udc00"]}', "stop[1]"),
        ('{"prompt": "hi", "max_tokens": 4, "min_tokens": 5}', "min_tokens"),
        ('{"prompt": "hi", "model": "\\ud800"}', "model"),
        ('{"prompt": "hi", "n": 100000}', "n"),
        ('{"prompt": "hi", "logprobs": 100000}', "logprobs"),
        ('{"prompt": "hi", "max_tokens": -1}', "max_tokens"),
        ('{"prompt": "hi", "temperature": NaN}', "temperature"),
        (
            '{"prompt": "hi", "max_tokens": 40, "min_tokens": 10, "method": "rebase", '
            '"rebase": {"max_step_tokens": 4}}',
            "min_tokens",
        ),
    ],
)
def test_bad_input_is_a_400_before_any_stream(
    http: httpx.Client, raw: str, param: str, stream: bool
) -> None:
    raw = raw[:-1] + f', "stream": {json.dumps(stream)}}}'
    response = _raw_post(http, raw)
    assert not response.headers["content-type"].startswith("text/event-stream")
    _assert_error(response, 400, param)


def test_min_tokens_inside_a_rebase_path_never_fails_mid_search(http: httpx.Client) -> None:
    # min_tokens <= max_step_tokens, but late steps have fewer tokens left than min_tokens:
    # each step's min_tokens is capped by that step's max_tokens.
    body = {
        "prompt": PROMPT,
        "max_tokens": 6,
        "min_tokens": 4,
        "method": "rebase",
        "rebase": {**SMALL_TREE, "max_step_tokens": 4},
    }
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text


# ---- item 5 (body cap) and item 9 (request ids) on the session gateway ----------------------
def test_chunked_body_is_cut_off_while_it_streams(http: httpx.Client) -> None:
    sent = 0
    total = 64 * 1024 * 1024

    def body() -> Iterator[bytes]:
        nonlocal sent
        chunk = b"[" + b"1," * (128 * 1024)
        while sent < total:
            sent += len(chunk)
            yield chunk

    # A generator body is sent chunked, without Content-Length.
    response = http.post(
        "/v1/completions", content=body(), headers={"content-type": "application/json"}
    )
    _assert_error(response, 413, "body")
    assert sent < total // 2  # stopped near the 4 MiB cap, not after reading 64 MiB


def test_declared_oversize_body_is_413(http: httpx.Client) -> None:
    response = http.post(
        "/v1/completions",
        json={"prompt": "x" * (5 * 1024 * 1024)},
    )
    _assert_error(response, 413, "body")


def test_request_id_is_echoed_or_generated(http: httpx.Client) -> None:
    body = {"prompt": PROMPT, "max_tokens": 2}
    given = http.post("/v1/completions", json=body, headers={"X-Request-Id": "trace-echo-1"})
    assert given.status_code == 200
    assert given.headers["x-request-id"] == "trace-echo-1"
    assert given.json()["id"] == "cmpl-trace-echo-1"
    made = http.post("/v1/completions", json=body)
    assert len(made.headers["x-request-id"]) == 32
    assert made.json()["id"] == f"cmpl-{made.headers['x-request-id']}"
    error = http.post("/v1/completions", json={"prompt": []}, headers={"X-Request-Id": "e-2"})
    assert error.status_code == 400 and error.headers["x-request-id"] == "e-2"


# ---- the secured gateway: keys, capacity 1, JSON debug logs ---------------------------------
KEYS = ("key-one", "key-two")
FILE_KEY = "key-from-file"


@pytest.fixture(scope="module")
def secured(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("secured")
    key_file = folder / "keys.txt"
    key_file.write_text(f"# one key a line\n{FILE_KEY}\n")
    with running_gateway(
        tiny_model_dir,
        folder / "gateway.log",
        "--api-keys", ",".join(KEYS),
        "--api-key-file", str(key_file),
        "--max-pending-requests", "1",
        "--log-format", "json",
        "--log-level", "debug",
    ) as gw:  # fmt: skip
        yield gw


@pytest.fixture(scope="module")
def shttp(secured: Gateway) -> Iterator[httpx.Client]:
    with http_client(secured) as c:
        yield c


def _auth(key: str = KEYS[0], scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {key}"}


def test_keys_are_checked_before_the_body(shttp: httpx.Client) -> None:
    junk = b"\xff" * (20 * 1024 * 1024)  # 20 MB, not even JSON
    response = shttp.post("/v1/completions", content=junk)
    error = _assert_error(response, 401)
    assert error["code"] == "invalid_api_key"
    assert shttp.get("/health").status_code == 200  # open
    assert shttp.get("/metrics").status_code == 200  # open by default (README)
    assert shttp.get("/v1/models", headers=_auth("wrong")).status_code == 401


@pytest.mark.parametrize(
    "headers",
    [_auth(KEYS[0]), _auth(KEYS[1], "bearer"), _auth(FILE_KEY, "BEARER")],
)
def test_every_configured_key_works_in_any_scheme_case(shttp: httpx.Client, headers) -> None:
    response = shttp.post(
        "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}, headers=headers
    )
    assert response.status_code == 200, response.text


def test_over_capacity_is_429_with_retry_after_before_tokenizing(
    shttp: httpx.Client, secured: Gateway
) -> None:
    # Quiet-STaR thinks 8 tokens before each of 200: still running when the next one arrives.
    long_run = {
        "prompt": PROMPT, "max_tokens": 200, "ignore_eos": True, "stream": True,
        "method": "quiet_star", "quiet_star": {"thought_tokens": 8},
    }  # fmt: skip
    # Too long for the 1024-token context: a 400 if it were tokenized before admission.
    too_long = {"prompt": "hello " * 3000, "max_tokens": 2}
    with shttp.stream("POST", "/v1/completions", json=long_run, headers=_auth()) as stream:
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))  # admitted, running
        rejected = shttp.post("/v1/completions", json=too_long, headers=_auth())
        error = _assert_error(rejected, 429)
        assert rejected.headers["retry-after"] == "1"
        assert error["type"] == "rate_limit_exceeded"
    # Closing the stream cancels the first request and frees the slot (within a few engine
    # steps: the abort and the generator's cleanup run after the disconnect is noticed).
    deadline = time.monotonic() + 60
    while True:
        again = shttp.post("/v1/completions", json=too_long, headers=_auth())
        if again.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    _assert_error(again, 400, "prompt")


def _log_records(gateway: Gateway) -> list[dict]:
    records = []
    for line in gateway.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # vLLM's engine-core process logs in its own format
        if isinstance(record, dict) and "request_id" in record:
            records.append(record)
    return records


@pytest.mark.parametrize(
    ("method", "block"),
    [
        ("rebase", {"rebase": SMALL_TREE}),
        # n = 2: two sequences, two engine requests (continuation makes one per sequence)
        ("quiet_star", {"quiet_star": {"thought_tokens": 2}, "n": 2}),
    ],
)
def test_one_grep_shows_a_requests_whole_engine_tree(
    shttp: httpx.Client, secured: Gateway, method: str, block: dict
) -> None:
    trace = f"trace-{method}-42"
    secret = "Q: my secret prompt 7 + 5? A:"
    body = {"prompt": secret, "max_tokens": 6, "method": method, **block}
    response = shttp.post("/v1/completions", json=body, headers={**_auth(), "X-Request-Id": trace})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == trace
    mine = [r for r in _log_records(secured) if r["request_id"] == trace]
    engine_ids = [
        r["message"].split()[2].rstrip(":")
        for r in mine
        if r["message"].startswith("engine request ")
    ]
    assert len(engine_ids) >= 2  # a tree / a loop of engine calls, not one
    assert all(eid.startswith(f"cmpl-{trace}-") for eid in engine_ids), engine_ids
    assert secret not in secured.log()  # prompts are not logged by default
