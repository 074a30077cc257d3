"""API hardening without an engine: layering, auth and body-cap middleware at the ASGI level,
admission before tokenizing, vLLM's validation as 400s, request ids and JSON logs.

A fake engine stands in for vLLM here (unit tests); tests/e2e/test_api_hardening.py runs the
same behaviour against the real gateway.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from server.api.auth import bearer_token, is_authorized, load_api_keys
from server.api.errors import error_response
from server.api.protocol import CompletionRequest, find_lone_surrogate
from server.api.serving import INLINE_TOKENIZE_CHARS, CompletionService
from server.app import create_app
from server.config import Settings
from server.errors import APIError
from server.logging_setup import JsonFormatter, RequestIdFilter
from server.methods.base import SamplingSpec
from server.tracing import REQUEST_ID, accept_request_id, engine_request_id

SERVER = Path(__file__).resolve().parents[2] / "server"


# ---- layering ------------------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_nothing_below_the_http_layer_imports_it() -> None:
    # the app layer: the process, its start-up and the warm-up that drives the API's service
    top = {SERVER / "app.py", SERVER / "__main__.py", SERVER / "warmup.py"}
    # the process lifecycle belongs to the API layer: its admission gate answers in the API's
    # error shape (server.api.errors), and only the API and the app use it
    top.add(SERVER / "lifecycle.py")
    offenders = {
        str(path.relative_to(SERVER)): sorted(
            m for m in _imports(path) if m.startswith("server.api")
        )
        for path in SERVER.rglob("*.py")
        if SERVER / "api" not in path.parents and path not in top
    }
    assert {k: v for k, v in offenders.items() if v} == {}


# ---- ASGI helpers ---------------------------------------------------------------------------
def _scope(path: str, headers: dict[str, str], method: str = "POST") -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


class Upload:
    """An ASGI `receive` that streams `chunks` chunks of junk and counts what was read."""

    def __init__(self, chunks: int, size: int = 64 * 1024) -> None:
        self.chunks, self.size, self.read = chunks, size, 0

    async def __call__(self) -> dict:
        if self.read >= self.chunks:
            return {"type": "http.disconnect"}
        self.read += 1
        more = self.read < self.chunks
        return {"type": "http.request", "body": b"x" * self.size, "more_body": more}


async def _call(app, scope: dict, receive) -> tuple[int, dict[str, str], dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, json.loads(body) if body else {}


def _app(**settings):
    return create_app(Settings(device="cpu", **settings))


def _assert_openai_error(body: dict) -> None:
    assert set(body) == {"error"}
    assert {"message", "type", "param", "code"} <= set(body["error"])
    assert body["error"]["message"]


# ---- auth -----------------------------------------------------------------------------------
async def test_unauthenticated_upload_is_401_without_reading_the_body() -> None:
    app = _app(api_keys="k1,k2")
    upload = Upload(chunks=320)  # 20 MB of junk
    scope = _scope("/v1/completions", {"content-type": "application/json"})
    status, headers, body = await _call(app, scope, upload)
    assert status == 401
    assert upload.read == 0
    assert headers["www-authenticate"] == "Bearer"
    assert body["error"]["code"] == "invalid_api_key"
    _assert_openai_error(body)


@pytest.mark.parametrize(
    ("authorization", "ok"),
    [
        ("Bearer k1", True),
        ("bearer k2", True),
        ("BEARER   from-file", True),
        ("Bearer old", True),  # the single `api_key` setting still works
        ("Bearer k3", False),
        ("Basic k1", False),
        ("k1", False),
        ("Bearer ", False),
    ],
)
async def test_api_keys_from_all_sources_and_any_bearer_case(
    tmp_path: Path, authorization: str, ok: bool
) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# operators\nfrom-file  # alice\n\n")
    app = _app(api_key="old", api_keys="k1, k2", api_key_file=key_file)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/v1/models", headers={"Authorization": authorization})
    # Past the key check the app answers 503: no engine in this test (lifespan not run).
    assert response.status_code == (503 if ok else 401)
    _assert_openai_error(response.json())


async def test_health_open_and_metrics_open_unless_protected() -> None:
    for protect, metrics_status in ((False, 200), (True, 401)):
        app = _app(api_keys="k", protect_metrics=protect)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/health")).status_code == 503  # starting, not 401
            assert (await client.get("/metrics")).status_code == metrics_status


def test_key_helpers() -> None:
    assert load_api_keys(Settings(device="cpu")) == ()
    assert load_api_keys(Settings(device="cpu", api_key="a", api_keys="a,b,,")) == (b"a", b"b")
    assert bearer_token(b"bEaReR tok") == b"tok"
    assert not is_authorized(None, (b"a",))


# ---- body cap -------------------------------------------------------------------------------
async def test_chunked_body_is_cut_off_at_the_cap() -> None:
    app = _app(max_body_bytes=256 * 1024)
    upload = Upload(chunks=32 * 1024)  # 2 GiB if read to the end; no Content-Length
    scope = _scope("/v1/completions", {"content-type": "application/json"})
    status, _, body = await _call(app, scope, upload)
    assert status == 413
    assert upload.read == 5  # 4 chunks fit; the 5th passes the cap
    assert body["error"]["param"] == "body"
    _assert_openai_error(body)


async def test_declared_oversize_body_is_413_before_reading() -> None:
    app = _app(max_body_bytes=1024 * 1024)
    upload = Upload(chunks=100)
    scope = _scope("/v1/completions", {"content-length": str(100 * 64 * 1024)})
    status, _, body = await _call(app, scope, upload)
    assert status == 413 and upload.read == 0
    _assert_openai_error(body)


def test_every_429_says_when_to_retry() -> None:
    response = error_response(APIError("full", status=429))
    assert response.headers["retry-after"] == "1"
    assert json.loads(response.body)["error"]["type"] == "rate_limit_exceeded"


def test_error_with_a_lone_surrogate_still_renders() -> None:
    response = error_response(APIError("model '\ud800' does not exist", status=404))
    assert json.loads(response.body)["error"]["message"] == "model '\ud800' does not exist"


# ---- admission and validation in CompletionService.prepare ----------------------------------
class FakeEngine:
    """Just what `prepare` touches; records the thread each tokenization ran on."""

    model_name = model_path = "fake"
    max_model_len = 1 << 20

    def __init__(self) -> None:
        self.flops = SimpleNamespace(vocab_size=1000)
        self.encode_threads: list[threading.Thread] = []

    def encode(self, text: str) -> list[int]:
        self.encode_threads.append(threading.current_thread())
        return [1] * max(1, len(text) // 4)

    def decode(self, ids: list[int]) -> str:
        return "x" * len(ids)


def _service(**settings) -> tuple[CompletionService, FakeEngine]:
    engine = FakeEngine()
    return CompletionService(engine, Settings(device="cpu", **settings)), engine  # type: ignore[arg-type]


async def test_over_capacity_is_429_before_tokenizing() -> None:
    service, engine = _service(max_pending_requests=1)
    first = await service.prepare(CompletionRequest(prompt="hello"), "cmpl-1")
    with pytest.raises(APIError) as info:
        await service.prepare(CompletionRequest(prompt="x" * 100_000), "cmpl-2")
    assert info.value.status == 429
    assert len(engine.encode_threads) == 1  # only the first request was tokenized
    service.release(first)
    assert service.admitted == 0


async def test_the_admission_bound_is_per_engine_replica() -> None:
    """Behind a router of 2 replicas (docs/scaling.md) twice as many requests are admitted."""
    service, _ = _service(max_pending_requests=1, engine_replicas=2)
    admitted = [await service.prepare(CompletionRequest(prompt="a"), f"c{i}") for i in range(2)]
    with pytest.raises(APIError) as info:
        await service.prepare(CompletionRequest(prompt="a"), "c3")
    assert info.value.status == 429 and "2 requests" in info.value.message
    for prepared in admitted:
        service.release(prepared)


async def test_large_prompts_are_tokenized_off_the_event_loop() -> None:
    service, engine = _service()
    small = await service.prepare(CompletionRequest(prompt="hi"), "cmpl-s")
    big = await service.prepare(CompletionRequest(prompt="y" * (INLINE_TOKENIZE_CHARS + 1)), "b")
    loop_thread = threading.current_thread()
    assert engine.encode_threads[0] is loop_thread
    assert engine.encode_threads[1] is not loop_thread
    service.release(small)
    service.release(big)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "hi", "max_tokens": 4, "min_tokens": 5}, "min_tokens"),
        (
            {
                "prompt": "hi",
                "max_tokens": 64,
                "min_tokens": 10,
                "method": "rebase",
                "rebase": {"max_step_tokens": 8},
            },
            "min_tokens",
        ),
        ({"prompt": "a\ud800"}, "prompt"),
        ({"prompt": ["ok", "b\udc00"]}, "prompt[1]"),
        ({"prompt": "hi", "stop": ["fine", "\ud83d"]}, "stop[1]"),
        (
            {"prompt": "hi", "method": "rebase", "rebase": {"step_delimiter": "\ud800"}},
            "rebase.step_delimiter",
        ),
        ({"prompt": "hi", "model": "\udfff"}, "model"),
        ({"prompt": "hi", "n": 10_000}, "n"),
        ({"prompt": "hi", "logprobs": 10_000}, "logprobs"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field_before_admission_ends(body, param) -> None:
    service, _ = _service()
    with pytest.raises(APIError) as info:
        await service.prepare(CompletionRequest.model_validate(body), "cmpl-x")
    assert info.value.status == 400
    assert info.value.param == param
    assert service.admitted == 0  # a rejected request never holds a slot


def test_negative_values_are_rejected_by_the_schema() -> None:
    for field in ("max_tokens", "min_tokens", "n", "logprobs", "seed", "top_k"):
        with pytest.raises(ValueError):
            CompletionRequest.model_validate({"prompt": "x", field: -5})
    with pytest.raises(ValueError):
        CompletionRequest.model_validate({"prompt": "x", "temperature": float("nan")})


def test_per_call_max_tokens_caps_min_tokens() -> None:
    spec = SamplingSpec(max_tokens=100, min_tokens=50)
    assert spec.to_vllm(max_tokens=8).min_tokens == 8
    assert spec.to_vllm().min_tokens == 50


def test_find_lone_surrogate_paths() -> None:
    assert find_lone_surrogate({"a": ["ok", {"b": "\ud800"}]}) == "a[1].b"
    assert find_lone_surrogate({"a": "fine ✓"}) is None


# ---- request ids and logs -------------------------------------------------------------------
def test_request_ids_accept_sane_tokens_only() -> None:
    assert accept_request_id("trace-42.a") == "trace-42.a"
    for bad in (None, "", "has space", "x" * 200, "new\nline"):
        generated = accept_request_id(bad)
        assert generated != bad and len(generated) == 32


async def test_engine_ids_and_log_lines_carry_the_request_id() -> None:
    token = REQUEST_ID.set("trace-7")
    try:
        ids = await asyncio.gather(*(asyncio.to_thread(lambda: 0) for _ in range(1)))
        assert ids == [0]
        assert engine_request_id().startswith("trace-7-")
        assert engine_request_id("cmpl-trace-7-p0").startswith("cmpl-trace-7-p0-")
        record = logging.LogRecord("server.x", logging.INFO, __file__, 1, "hello %s", ("w",), None)
        RequestIdFilter().filter(record)
        line = json.loads(JsonFormatter().format(record))
    finally:
        REQUEST_ID.reset(token)
    assert line["request_id"] == "trace-7"
    assert line["message"] == "hello w" and line["level"] == "info"
