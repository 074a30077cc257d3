"""Refuse `vllm serve` replicas that lack what the methods need, before a request finds out.

Why behavioural probes: the gateway cannot read how a replica was started, and a replica
without our continuation scheduler or logits processor still answers every plain call; the
first Quiet-STaR request would fail (or, worse, return a thought token as text). So each
replica gets one tiny Quiet-STaR call sent straight to it (not through the router), whose
answer only a correctly started replica gives, and a replica that fails it is named with the
flag it is missing (docs/scaling.md, "What a replica needs"):

* the first token must be the thought's start delimiter, which only our logits processor forces
  (`--logits-processors kernels.quiet_star.processor:QuietStarLogitsProcessor`);
* with `--quiet-star-engine continuation`, a one-talk-token continuation call must come back as
  exactly one round (`s + t + e + 1` tokens, the last a talk token): a stock scheduler stops
  after one token (`--scheduler-cls kernels.quiet_star.scheduler.QuietStarScheduler
  --no-async-scheduling`);
* the usage must carry `prompt_tokens_details` (`--enable-prompt-tokens-details`), which
  cache-aware FLOPs need.

At start every replica is probed and the gateway refuses to start if one fails
(server/app/factory.py); afterwards `ReplicaWatch` probes a replica again whenever it comes
back (its `/health` turns 200 after failing), and takes a failing one out of the router's
ring (vllm-router's `/remove_worker`) until a later probe passes (`/add_worker`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

import httpx
from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from server.core.requests import SamplingSpec
from server.core.usage import UsageMeter
from server.engines.remote import RemoteEngine
from server.quiet_star.decoder import QuietStarDecoder
from server.quiet_star.params import QuietStarParams

logger = logging.getLogger(__name__)

PROCESSOR_FLAG = "--logits-processors kernels.quiet_star.processor:QuietStarLogitsProcessor"
SCHEDULER_FLAG = (
    "--scheduler-cls kernels.quiet_star.scheduler.QuietStarScheduler --no-async-scheduling"
)
DETAILS_FLAG = "--enable-prompt-tokens-details"
PROBE_TEXT = "The probe"


@dataclass
class ProbeCall:
    """What a replica answered to the probe."""

    status: int = 200
    error: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_details: bool = False


def probe_request(engine: RemoteEngine) -> tuple[dict, list[int], int]:
    """The probe's body, the start delimiter it must begin with and the tokens it must return:
    one talk token with a one-token thought, as the engine's own decoder would ask for it."""
    decoder = QuietStarDecoder(
        engine,
        UsageMeter(engine.flops),
        QuietStarParams(thought_tokens=1, mixing_weight=0.5),
        SamplingSpec(max_tokens=1, temperature=0.0, seed=0),
        seed_base=0,
        request_id="replica-probe",
    )
    context = decoder.context(engine.encode(PROBE_TEXT))
    continuation = engine.quiet_star_continuation
    spec = decoder.spec(0, context_len=len(context) if continuation else None)
    params = SamplingParams(
        max_tokens=1 if continuation else spec.steps,  # continuation counts talk tokens
        temperature=1.0,
        top_p=1.0,
        seed=0,
        ignore_eos=True,
        detokenize=False,
        skip_special_tokens=False,
        extra_args=spec.to_extra_args(),
        output_kind=RequestOutputKind.DELTA,
    )
    body = engine.completion_body(context, params)
    return body, list(spec.start_token_ids), spec.steps


def missing_flags(
    call: ProbeCall, start_ids: list[int], steps: int, continuation: bool
) -> list[str]:
    """The replica flags the answer shows missing (empty: the replica serves every method)."""
    if call.status != 200:
        mentions = call.error.lower()
        if "logits" in mentions or "quiet_star" in mentions or "xargs" in mentions:
            return [PROCESSOR_FLAG]
        return [f"(probe failed: HTTP {call.status}: {call.error[:200]})"]
    missing = []
    if not call.token_ids or call.token_ids[0] != start_ids[0]:
        missing.append(PROCESSOR_FLAG)
    elif len(call.token_ids) != steps:
        # One talk token must cost one whole round; a stock scheduler ends at one token.
        missing.append(SCHEDULER_FLAG if continuation else f"(got {len(call.token_ids)} tokens)")
    if not call.prompt_details:
        missing.append(DETAILS_FLAG)
    return missing


async def send_probe(client: httpx.AsyncClient, url: str, body: dict) -> ProbeCall:
    """Send the probe straight to one replica and read its stream."""
    call = ProbeCall()
    async with client.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        if response.status_code != 200:
            await response.aread()
            call.status, call.error = response.status_code, response.text
            return call
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunk = json.loads(line[5:])
            if "error" in chunk:
                call.status, call.error = 500, json.dumps(chunk["error"])
                return call
            for choice in chunk.get("choices") or []:
                call.token_ids += [int(t) for t in choice.get("token_ids") or []]
                call.finish_reason = choice.get("finish_reason") or call.finish_reason
            usage = chunk.get("usage") or {}
            if "cached_tokens" in (usage.get("prompt_tokens_details") or {}):
                call.prompt_details = True
    return call


async def probe_replica(engine: RemoteEngine, client: httpx.AsyncClient, url: str) -> list[str]:
    """The flags replica `url` is missing (empty: it passed)."""
    body, start_ids, steps = probe_request(engine)
    call = await send_probe(client, url, body)
    return missing_flags(call, start_ids, steps, engine.quiet_star_continuation)


def refusal(url: str, missing: list[str]) -> str:
    return (
        f"replica {url} cannot serve every method: start it with {' and '.join(missing)} "
        "(docs/scaling.md, 'What a replica needs')"
    )


async def replica_urls(engine: RemoteEngine, client: httpx.AsyncClient) -> list[str]:
    """The replicas: `--engine-replica-urls`, else the router's worker list (vllm-router's
    `GET /list_workers`); empty when neither says (a single replica as `--engine-url`)."""
    if engine.settings.engine_replica_urls:
        return [u.rstrip("/") for u in engine.settings.engine_replica_urls]
    try:
        response = await client.get(f"{engine.url}/list_workers", timeout=5)
        if response.status_code == 200:
            return [u.rstrip("/") for u in response.json().get("urls") or []]
    except (httpx.HTTPError, ValueError):
        pass
    return []


async def probe_at_start(engine: RemoteEngine) -> dict[str, bool]:
    """Probe every replica that is up; raise naming the first one that lacks a flag. Returns
    each replica and whether it was up (and passed): one that was down is probed when it comes
    up (`ReplicaWatch`). A router with no worker list is probed itself (it then is one
    replica, or forwards the probe to one)."""
    async with _client(engine) as client:
        urls = await replica_urls(engine, client) or [engine.url]
        up: dict[str, bool] = {}
        for url in urls:
            up[url] = await _healthy(client, url)
            if not up[url]:
                logger.warning("replica %s is down at start; it is probed when it comes up", url)
                continue
            missing = await probe_replica(engine, client, url)
            if missing:
                raise RuntimeError(refusal(url, missing))
        logger.info("replicas probed: %s", ", ".join(u for u, ok in up.items() if ok) or "none")
        return up


@dataclass
class ReplicaWatch:
    """Probes a replica again whenever it comes back, and keeps a failing one out of the ring.

    A replica that was down and answers `/health` again may have been restarted with other
    flags; until it passes the probe the router must not send it work, so it is removed from
    the router (`/remove_worker`), and added back (`/add_worker`) once a later probe passes."""

    engine: RemoteEngine
    interval_s: float = 2.0
    up: dict[str, bool] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)

    async def run(self, client: httpx.AsyncClient, up: dict[str, bool]) -> None:
        self.up = dict(up)  # as the start found them: a replica down then is probed when up
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check(client)

    async def check(self, client: httpx.AsyncClient) -> None:
        """One pass: probe each replica that came back, or that is still refused."""
        for url in list(self.up):
            healthy = await _healthy(client, url)
            came_back = healthy and not self.up[url]
            self.up[url] = healthy
            if not (came_back or (healthy and url in self.refused)):
                continue
            try:
                missing = await probe_replica(self.engine, client, url)
            except httpx.HTTPError as exc:
                missing = [f"(probe failed: {type(exc).__name__})"]
            if missing and url not in self.refused:
                logger.error("%s; taking it out of the router", refusal(url, missing))
                self.refused.add(url)
                await _router(client, self.engine, "remove_worker", url)
            elif not missing and url in self.refused:
                logger.info("replica %s passes the probe now; adding it back", url)
                self.refused.discard(url)
                await _router(client, self.engine, "add_worker", url)


async def watch_replicas(engine: RemoteEngine, up: dict[str, bool]) -> None:
    """Re-probe a replica whenever it comes back; runs until cancelled."""
    if engine.settings.engine_probe_interval_s <= 0:
        return
    async with _client(engine) as client:
        await ReplicaWatch(engine, engine.settings.engine_probe_interval_s).run(client, up)


async def _router(client: httpx.AsyncClient, engine: RemoteEngine, action: str, url: str) -> None:
    try:
        response = await client.post(f"{engine.url}/{action}", params={"url": url}, timeout=10)
        if response.status_code >= 400:
            logger.error("router %s %s: HTTP %d %s", action, url, response.status_code,
                         response.text[:200])  # fmt: skip
    except httpx.HTTPError as exc:
        logger.error("router %s %s failed: %s", action, url, exc)


async def _healthy(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(f"{url}/health", timeout=5)).status_code == 200
    except httpx.HTTPError:
        return False


def _client(engine: RemoteEngine) -> httpx.AsyncClient:
    key = engine.settings.engine_api_key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(headers=headers)
