"""Async HTTP client for the gateway: one streamed completion call -> texts, usage, timings.

Why streaming: time-to-first-token only exists on the wire. Every call asks for
`stream_options.include_usage`, so the final chunk carries the same `usage` (tokens, FLOPs) a
non-streamed response would. Errors never raise out of :meth:`GatewayClient.complete`: a load
test records a failed request and moves on.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class CallResult:
    """One /v1/completions call as the client saw it. Times are seconds (perf_counter based)."""

    texts: list[str] = field(default_factory=list)  # by choice index
    finish_reasons: list[str | None] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    ttft: float | None = None  # from sending the request to the first non-empty text
    latency: float = 0.0
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # the gateway's `method_details`

    @property
    def completion_tokens(self) -> int:
        return int((self.usage or {}).get("completion_tokens") or 0)


@dataclass(frozen=True)
class ServerInfo:
    """What GET /v1/models says. `methods` is None for a server that doesn't list any."""

    model: str
    methods: list[str] | None


def base_url(url: str) -> str:
    """Accept "http://host:port", ".../" or ".../v1" alike."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def _error_message(payload: Any, fallback: str) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("message") or fallback)
    return fallback


class GatewayClient:
    """A thin async client of one thinkscale (or any OpenAI-completions) server."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = base_url(url)
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            # The runner bounds concurrency; the pool must not add a hidden second bound.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            transport=transport,
        )

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def server_info(self) -> ServerInfo:
        """The served model and its methods; raises httpx errors (the run can't start without)."""
        response = await self._http.get("/v1/models", timeout=30.0)
        response.raise_for_status()
        card = response.json()["data"][0]
        methods = card.get("methods")
        return ServerInfo(model=card["id"], methods=list(methods) if methods is not None else None)

    async def complete(self, body: dict[str, Any]) -> CallResult:
        """POST /v1/completions (streamed) within the per-request timeout; never raises."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        result = CallResult()
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                await self._stream(body, result, start)
        except TimeoutError:
            result.error = f"timeout after {self.timeout:g} s"
        except httpx.HTTPError as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        result.latency = time.perf_counter() - start
        return result

    async def post(self, body: dict[str, Any]) -> CallResult:
        """POST /v1/completions without streaming (the body carries `method_details`, e.g.
        REBASE's tree statistics); never raises."""
        result = CallResult()
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._http.post("/v1/completions", json={**body, "stream": False})
                payload = response.json() if response.content else None
        except TimeoutError:
            payload, response = None, None
            result.error = f"timeout after {self.timeout:g} s"
        except (httpx.HTTPError, ValueError) as exc:
            payload, response = None, None
            result.error = f"{type(exc).__name__}: {exc}"
        result.latency = time.perf_counter() - start
        if response is not None and response.status_code != 200:
            result.error = f"HTTP {response.status_code}: {_error_message(payload, 'error')}"
        elif isinstance(payload, dict):
            choices = sorted(payload.get("choices") or [], key=lambda c: c.get("index", 0))
            result.texts = [c.get("text") or "" for c in choices]
            result.finish_reasons = [c.get("finish_reason") for c in choices]
            result.usage = payload.get("usage")
            result.details = payload.get("method_details") or {}
        return result

    async def _stream(self, body: dict[str, Any], result: CallResult, start: float) -> None:
        async with self._http.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                raw = await response.aread()
                try:
                    payload = json.loads(raw)
                except ValueError:
                    payload = None
                text = raw.decode(errors="replace")[:300]
                result.error = f"HTTP {response.status_code}: {_error_message(payload, text)}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = _error_message(chunk, "error in stream")
                    continue
                self._add_chunk(chunk, result, start)
        if result.error is None:
            result.error = "stream ended without [DONE]"

    @staticmethod
    def _add_chunk(chunk: dict[str, Any], result: CallResult, start: float) -> None:
        for choice in chunk.get("choices") or []:
            i = int(choice.get("index", 0))
            while len(result.texts) <= i:
                result.texts.append("")
                result.finish_reasons.append(None)
            text = choice.get("text") or ""
            if text and result.ttft is None:
                result.ttft = time.perf_counter() - start
            result.texts[i] += text
            if choice.get("finish_reason") is not None:
                result.finish_reasons[i] = choice["finish_reason"]
        if chunk.get("usage"):
            result.usage = chunk["usage"]
        if chunk.get("method_details"):
            result.details = chunk["method_details"]
