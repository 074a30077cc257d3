"""A closed-loop streaming load generator for ``/v1/completions`` (any OpenAI-style server).

Why not only ``vllm bench serve``: its SSE parser splits events on ``"\\n\\n"`` and silently
drops events that share one TCP read when a server ends events with ``"\\r\\n\\r\\n"`` (which the
gateway does today), so against the gateway it loses the usage chunk and stops its latency
clock early. This client parses SSE line by line (either separator), stops the clock at
``[DONE]``, and takes output-token counts from the usage chunk, so it measures both servers
the same way.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import httpx


@dataclass
class RequestRecord:
    """What one streamed request took."""

    ok: bool
    latency_s: float
    ttft_s: float | None
    output_tokens: int
    prompt_tokens: int
    error: str | None = None


@dataclass
class LoadResult:
    """One closed-loop run: every request's record, and the wall time of the whole run."""

    duration_s: float
    records: list[RequestRecord]

    @property
    def completed(self) -> int:
        return sum(r.ok for r in self.records)

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.records if r.ok)

    def to_json(self) -> dict:
        return {"duration_s": self.duration_s, "records": [asdict(r) for r in self.records]}


def random_token_prompts(
    count: int, length: int, seed: int, low: int = 1000, high: int = 40000
) -> list[list[int]]:
    """Prompts as token ids: both servers see exactly the same tokens (no tokenizer drift).

    The id range avoids SmolLM2's special tokens (ids < 17) and byte-level fragments."""
    rng = random.Random(seed)
    return [[rng.randrange(low, high) for _ in range(length)] for _ in range(count)]


async def _one(client: httpx.AsyncClient, body: dict, url: str) -> RequestRecord:
    start = time.perf_counter()
    ttft: float | None = None
    usage: dict | None = None
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                return RequestRecord(False, time.perf_counter() - start, None, 0, 0, text[:500])
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("choices") and ttft is None:
                    ttft = time.perf_counter() - start
                if chunk.get("usage"):
                    usage = chunk["usage"]
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return RequestRecord(False, time.perf_counter() - start, ttft, 0, 0, repr(exc))
    latency = time.perf_counter() - start
    if usage is None:
        return RequestRecord(False, latency, ttft, 0, 0, "no usage chunk")
    return RequestRecord(
        True, latency, ttft, int(usage["completion_tokens"]), int(usage["prompt_tokens"])
    )


async def run_load(
    base_url: str,
    model: str,
    prompts: Sequence[list[int] | str],
    *,
    max_tokens: int,
    concurrency: int,
    extra_body: dict | None = None,
    timeout_s: float = 600,
) -> LoadResult:
    """Send every prompt (streaming, temperature 0, ignore_eos), ``concurrency`` at a time."""
    url = f"{base_url}/v1/completions"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(prompts)):
        queue.put_nowait(i)
    records: list[RequestRecord | None] = [None] * len(prompts)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                body = {
                    "model": model,
                    "prompt": prompts[i],
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                    "ignore_eos": True,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    **(extra_body or {}),
                }
                records[i] = await _one(client, body, url)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        duration = time.perf_counter() - start
    return LoadResult(duration, [r for r in records if r is not None])
