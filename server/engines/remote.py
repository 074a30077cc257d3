"""The remote policy engine: stock `vllm serve` replicas behind a router, over vLLM's OpenAI API.

Why this shape: every engine call of every method is self-contained (its full token-id prompt,
its sampling parameters, its logits-processor arguments), so one call maps onto one streamed
`POST /v1/completions` with a token-id prompt, and a call that fails on a dead replica can be
sent again, whole, to another one (only that replica's prefix cache is lost). The router
(docs/scaling.md) picks the replica from the `choice_id` header: one tree or one sequence
keeps one replica's prefix cache, and different trees spread.

What vLLM's API must give back, and how it is asked for:

* the sampled token ids: `return_token_ids` (the text alone would be re-tokenized wrongly);
* prefix-cache hits for cache-aware FLOPs: `usage.prompt_tokens_details.cached_tokens`
  (replicas run with `--enable-prompt-tokens-details`) in the stream's final usage chunk;
* logprobs keyed by token id: `return_tokens_as_token_ids` ("token_id:N" strings);
* our logits processor's per-request spec: `vllm_xargs`, whose values must be flat, so a
  nested value travels JSON-encoded (`kernels/quiet_star/spec.py` decodes it).

The outputs are vLLM `RequestOutput`s with the params' `output_kind` honoured, so methods run
unchanged on either engine (server/engines/base.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from vllm import SamplingParams
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind

from kernels.quiet_star.spec import QuietStarSpec
from server.core.config import Settings
from server.core.errors import APIError
from server.core.flops import FlopsModel
from server.core.request_ids import engine_request_id
from server.core.usage import Component, UsageMeter

logger = logging.getLogger(__name__)

# vLLM's OpenAI layer writes -inf logprobs as this floor (JSON has no -inf).
_LOGPROB_FLOOR = -9999.0
_TOKEN_ID_PREFIX = "token_id:"


class ReplicaError(Exception):
    """A call failed for a reason another replica may not have (connection lost, 5xx)."""


@dataclass
class _Call:
    """What one streamed call has produced so far."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    cached_tokens: int | None = None
    yielded: bool = False
    # A Quiet-STaR continuation call streams whole rounds of `round_len` tokens (start,
    # thought, end, talk): only complete rounds are released to the caller, so a call cut
    # mid-round resumes after its last talk token (`released` tokens were handed over).
    round_len: int | None = None
    released: int = 0

    def talk_tokens(self) -> list[int]:
        """The visible tokens of the released rounds (the last token of each round)."""
        assert self.round_len
        return self.token_ids[self.round_len - 1 : self.released : self.round_len]

    def drop_unreleased(self) -> None:
        """Forget the tokens of a round the replica did not finish (charged already)."""
        del self.token_ids[self.released :]
        if self.logprobs is not None:
            del self.logprobs[self.released :]


def flat_xargs(extra_args: dict[str, Any] | None) -> dict[str, Any] | None:
    """`SamplingParams.extra_args` as `vllm_xargs` accepts them: scalars and lists of scalars
    pass as they are, anything nested is JSON-encoded (the engine side decodes it)."""
    if not extra_args:
        return None
    out: dict[str, Any] = {}
    for key, value in extra_args.items():
        flat = _is_scalar(value) or (isinstance(value, list) and all(map(_is_scalar, value)))
        out[key] = value if flat else json.dumps(value)
    return out


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _resumable(params: SamplingParams, *, continuation: bool = False) -> bool:
    """Whether a call cut after some tokens may go on, on another replica, from where it was.

    The resumed call's prompt is the original prompt plus the tokens already generated, and its
    budgets (`max_tokens`, `min_tokens`) shrink by their number: greedy decoding goes on from the
    same context (the uncut call's tokens, up to numerical differences between replicas);
    sampled, it is an equally valid sample (a seed restarts its generator there).

    A Quiet-STaR continuation call (`continuation`) is resumable too: its processor state (the
    round position, the saved base distribution) depends only on the visible text, so the next
    attempt's prompt is the call's prompt plus the talk tokens of its finished rounds, and the
    replica rebuilds that state from it (`completion_body`).

    Not resumable:
    * a call with other logits-processor arguments (the processor keeps per-call state over the
      whole output, e.g. Quiet-STaR's thought and talk phases) or with prompt logprobs;
    * a call with stop strings: unless the stop string is kept in the output, vLLM holds back
      the last (longest stop string - 1) characters of the streamed text until the call ends,
      so at a cut the text of the tokens already streamed is not all sent; and a stop string
      begun before the cut and completed after it would go unseen by the new replica.
      Resumed, the text would be wrong; a clean 503 is better (docs/scaling.md)."""
    if params.prompt_logprobs or params.stop:
        return False
    return continuation or not params.extra_args


def completion_body(
    model: str,
    prompt_token_ids: Sequence[int],
    params: SamplingParams,
    *,
    already: Sequence[int] = (),
    priority: int = 0,
    continuation: bool = False,
) -> dict:
    """The `/v1/completions` body that makes `vllm serve` run exactly `params` on the prompt.

    `already`: tokens this call has generated on a replica that then failed; the body resumes
    after them (they join the prompt, and the token budgets shrink by their number). For a
    Quiet-STaR continuation call (`continuation`) they are the talk tokens only (thoughts never
    join the context), `max_tokens` counts talk tokens, and the resumed call is seeded with
    `seed + len(already)`: the continuation scheduler samples round k with `seed + k`, so the
    rounds after the cut draw the seeds the uncut call would have used for them.
    `priority`: vLLM's (lower first); sent only when non-zero, so a replica on the default
    first-come policy, which refuses any other value, never sees it."""
    done = len(already)
    body: dict[str, Any] = {
        "model": model,
        "prompt": [*prompt_token_ids, *already],
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
        "n": 1,
        "max_tokens": params.max_tokens - done if params.max_tokens is not None else None,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k and params.top_k > 0 else None,
        "min_p": params.min_p,
        "seed": params.seed + done if continuation and params.seed is not None else params.seed,
        "stop": list(params.stop) if params.stop else None,
        "stop_token_ids": list(params.stop_token_ids) if params.stop_token_ids else None,
        "ignore_eos": params.ignore_eos,
        "min_tokens": max(params.min_tokens - done, 0),
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "repetition_penalty": params.repetition_penalty,
        "include_stop_str_in_output": params.include_stop_str_in_output,
        "skip_special_tokens": params.skip_special_tokens,
        "spaces_between_special_tokens": params.spaces_between_special_tokens,
    }
    logprob_ids = getattr(params, "logprob_token_ids", None)
    if params.logprobs is not None or logprob_ids:
        body["logprobs"] = params.logprobs if params.logprobs is not None else 0
        body["return_tokens_as_token_ids"] = True
    if logprob_ids:
        body["logprob_token_ids"] = list(logprob_ids)
    if priority:
        body["priority"] = priority
    extra_args = params.extra_args
    if continuation and done:
        extra_args = _fresh_spec_key(extra_args)
    xargs = flat_xargs(extra_args)
    if xargs:
        body["vllm_xargs"] = xargs
    return {k: v for k, v in body.items() if v is not None}


def _fresh_spec_key(extra_args: dict[str, Any] | None) -> dict[str, Any] | None:
    """The Quiet-STaR spec with a new `key` (it keys per-request state on a replica): a resumed
    call is a new engine request and must not meet state left by the cut one."""
    spec = QuietStarSpec.from_extra_args(extra_args)
    if spec is None:
        return extra_args
    return {**(extra_args or {}), **replace(spec, key=uuid.uuid4().hex).to_extra_args()}


def _token_id(token: str) -> int:
    return int(token.removeprefix(_TOKEN_ID_PREFIX))


def _logprob(value: float | None) -> float:
    if value is None or value <= _LOGPROB_FLOOR:
        return -math.inf
    return float(value)


def parse_logprobs(block: dict | None, token_ids: list[int]) -> list[dict[int, Logprob]] | None:
    """OpenAI completions logprobs ("token_id:N" tokens) -> vLLM's per-token {id: Logprob}."""
    if not block:
        return None
    out: list[dict[int, Logprob]] = []
    tops = block.get("top_logprobs") or []
    sampled = block.get("token_logprobs") or []
    for i, token_id in enumerate(token_ids):
        top = tops[i] if i < len(tops) and tops[i] else {}
        entry = {_token_id(t): Logprob(_logprob(lp)) for t, lp in top.items()}
        if token_id not in entry and i < len(sampled):
            entry[token_id] = Logprob(_logprob(sampled[i]))
        out.append(entry)
    return out


@dataclass
class RemoteEngine:
    """Policy engine calls sent to `vllm serve` replicas through a router at `url`."""

    url: str
    model_name: str
    model_path: str
    max_model_len: int
    flops: FlopsModel
    hf_config: Any
    settings: Settings
    # Quiet-STaR as one call per sequence: the replicas run our continuation scheduler
    # (`--quiet-star-engine continuation`, docs/scaling.md); else one call per output token.
    quiet_star_continuation: bool = False
    # vLLM's OpenAI server returns prompt logprobs only unstreamed; calls here stream.
    prompt_logprobs: bool = False
    _tokenizer: Any = None
    _client: httpx.AsyncClient | None = None
    _warned_no_cache_details: bool = False

    # ---- start ------------------------------------------------------------------------
    @classmethod
    def start(cls, settings: Settings) -> RemoteEngine:
        """Wait for the router to list a model, then load its tokenizer and config locally
        (the gateway tokenizes, counts FLOPs and reads the architecture itself). Blocking."""
        url = (settings.engine_url or "").rstrip("/")
        card = _wait_for_model(url, settings)
        model_path = settings.model or card.get("root") or card["id"]
        hf_config = _load_hf_config(settings, model_path)
        from vllm.tokenizers import get_tokenizer

        from kernels.quiet_star.checkpoint_setup import model_setup

        source = model_setup(settings, model_path).tokenizer or model_path
        tokenizer = get_tokenizer(source, trust_remote_code=settings.trust_remote_code)
        max_len = int(card.get("max_model_len") or settings.max_model_len or 0)
        if max_len <= 0:
            raise RuntimeError(f"{url}/v1/models does not say max_model_len; set --max-model-len")
        logger.info("remote engine at %s: %s (max_model_len %d)", url, card["id"], max_len)
        engine = cls(
            url=url,
            model_name=settings.served_model_name or card["id"],
            model_path=model_path,
            max_model_len=max_len,
            flops=FlopsModel.from_hf_config(hf_config),
            hf_config=hf_config,
            settings=settings,
            quiet_star_continuation=settings.quiet_star_engine == "continuation",
            _tokenizer=tokenizer,
        )
        return engine

    @property
    def client(self) -> httpx.AsyncClient:
        """One pooled client, created on the serving loop (not in the start-up thread)."""
        if self._client is None:
            s = self.settings
            headers = {"Authorization": f"Bearer {s.engine_api_key}"} if s.engine_api_key else {}
            self._client = httpx.AsyncClient(
                base_url=self.url,
                headers=headers,
                # No pool cap: the gateway's own bounds (admission, REBASE scheduler) limit
                # concurrency; a cap here would queue calls invisibly.
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
                timeout=httpx.Timeout(s.engine_read_timeout_s, connect=s.engine_connect_timeout_s),
            )
        return self._client

    def shutdown(self) -> None:
        """Drop the pooled client; its connections close with the process (the lifespan
        calls this synchronously on exit, when no call is left in flight)."""
        self._client = None

    def completion_body(self, prompt_token_ids: list[int], params: SamplingParams) -> dict:
        """The body of one call of `params` on a replica (the replica probe sends one)."""
        return completion_body(self.model_name, prompt_token_ids, params)

    # ---- the model ----------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def eos_token_id(self) -> int | None:
        return self._tokenizer.eos_token_id

    @property
    def max_logprobs(self) -> int:
        return self.settings.max_logprobs  # replicas are started with the same value

    @property
    def logprobs_mode(self) -> str:
        return self.settings.logprobs_mode  # replicas are started with the same value

    @property
    def errored(self) -> bool:
        return False  # a dead replica is failed over, not a reason to restart the gateway

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=True)

    def kv_layout(self) -> tuple[int, int] | None:
        return None  # each replica has its own KV cache; the router decides where work goes

    async def check_health(self) -> None:
        response = await self.client.get("/health", timeout=5)
        if response.status_code != 200:
            raise RuntimeError(f"router /health answered {response.status_code}")

    async def num_unfinished_requests(self) -> int:
        return 0  # the replicas' own /metrics have vllm:num_requests_running

    # ---- generation ---------------------------------------------------------------------
    async def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        meter: UsageMeter,
        *,
        component: Component = "policy",
        request_id: str | None = None,
        choice_id: str | None = None,
        priority: int = 0,
        rollback_steps: int | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """One engine call as one streamed completion, failed over to another replica when
        its replica fails (connection lost, 5xx, stream cut): sent again whole if nothing was
        yielded yet, else resumed after the tokens already yielded (`_resumable`).

        `priority` is forwarded only under `--engine-priority-scheduling`: a replica started
        without `--scheduling-policy priority` refuses any non-zero priority, and the gateway
        cannot see how replicas were started; the REBASE scheduler's own order of submission
        applies either way (docs/scaling.md).

        `rollback_steps` marks a Quiet-STaR continuation call (the replicas run our
        continuation scheduler): it streams rounds of that many tokens, is charged with its
        thoughts rolled back, and a cut one resumes after its last complete round."""
        if not self.settings.engine_priority_scheduling:
            priority = 0
        if params.n != 1:
            raise ValueError("RemoteEngine.generate runs one sequence; fan out n in the method")
        request_id = request_id or engine_request_id()
        headers = {
            self.settings.engine_routing_header: choice_id or request_id,
            "X-Request-Id": request_id,
        }
        prompt = list(prompt_token_ids)
        continuation = rollback_steps is not None  # a Quiet-STaR continuation call
        call = _Call(round_len=rollback_steps)
        segment = 0  # where the attempt now running started in call.token_ids
        attempt_prompt = len(prompt)  # the prompt tokens the attempt now running was sent
        charge = False  # whether an attempt is left to charge when the call ends
        attempts = self.settings.engine_retries + 1
        try:
            for attempt in range(1, attempts + 1):
                segment = len(call.token_ids)
                call.cached_tokens = None
                already = call.talk_tokens() if continuation else call.token_ids
                attempt_prompt = len(prompt) + len(already)
                body = completion_body(
                    self.model_name,
                    prompt,
                    params,
                    already=already,
                    priority=priority,
                    continuation=continuation,
                )
                charge = True
                try:
                    # Closed with the call, however it ends: an open stream keeps the replica
                    # generating (and the charge would wait for the garbage collector).
                    async with aclosing(
                        self._stream(body, headers, call, params, request_id, prompt)
                    ) as stream:
                        async for output in stream:
                            call.yielded = True
                            yield output
                    return
                except ReplicaError as exc:
                    resume = call.yielded and _resumable(params, continuation=continuation)
                    if attempt == attempts or (call.yielded and not resume):
                        logger.warning("engine call %s failed: %s", request_id, exc)
                        raise APIError(
                            f"engine replica failed: {exc}", status=503, code="engine_unavailable"
                        ) from None
                    if resume:
                        # It ran: charge it (as with whole retries, an attempt that gave no
                        # token is not), a round cut short included.
                        if len(call.token_ids) > segment:
                            self._charge(
                                meter, component, attempt_prompt, call, segment, rollback_steps
                            )
                        charge = False
                        if continuation:
                            call.drop_unreleased()
                            call.finish_reason = call.stop_reason = None
                    else:
                        call = _Call(round_len=rollback_steps)
                    logger.info(
                        "engine call %s failed on its replica (%s); %s, try %d", request_id, exc,
                        f"resumed after {len(call.token_ids)} tokens" if resume else "sent again",
                        attempt + 1,
                    )  # fmt: skip
                    await asyncio.sleep(self.settings.engine_retry_backoff_s * attempt)
        finally:
            if charge:
                self._charge(meter, component, attempt_prompt, call, segment, rollback_steps)

    @staticmethod
    def _charge(
        meter: UsageMeter,
        component: Component,
        prompt_tokens: int,
        call: _Call,
        segment: int,
        rollback_steps: int | None,
    ) -> None:
        """Charge one attempt: it was sent `prompt_tokens` (the call's prompt plus what an
        earlier attempt had produced) and generated the tokens after `segment`."""
        generated = len(call.token_ids) - segment
        meter.record_generation(
            prompt_tokens=prompt_tokens,
            cached_tokens=call.cached_tokens or 0,
            generated_tokens=generated,
            component=component,
            rollback_steps=rollback_steps,  # Quiet-STaR continuation: positions roll back
            # the replica streamed something back: its engine saw the call
            reported=generated > 0 or call.finish_reason is not None,
        )

    async def _stream(
        self,
        body: dict,
        headers: dict[str, str],
        call: _Call,
        params: SamplingParams,
        request_id: str,
        prompt: list[int],
    ) -> AsyncIterator[RequestOutput]:
        """Read one attempt's SSE stream into `call`, yielding per `params.output_kind` (the
        outputs carry the call's own `prompt`, not a resumed attempt's longer one). The
        output that finishes the call is held until the usage chunk after it (the cache
        hits), so a caller that stops at `finished` still gets the call charged right."""
        kind = params.output_kind
        pending: RequestOutput | None = None
        try:
            async with self.client.stream(
                "POST", "/v1/completions", json=body, headers=headers
            ) as response:
                if response.status_code >= 500:
                    await response.aread()
                    raise ReplicaError(f"HTTP {response.status_code}: {response.text[:200]}")
                if response.status_code != 200:
                    await response.aread()
                    raise _client_error(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise _stream_error(chunk["error"])
                    self._usage(chunk.get("usage"), call)
                    delta = self._apply(chunk, call)
                    if delta is None:
                        continue
                    output = self._output(request_id, prompt, call, delta, kind)
                    if output is None:
                        continue
                    if output.finished:
                        pending = output
                    else:
                        yield output
        except httpx.TransportError as exc:
            if call.finish_reason is None:
                raise ReplicaError(f"{type(exc).__name__}: {exc}") from None
            # The call had finished; only the usage chunk after it was lost (its cache hits:
            # charged as uncached). Sent again it would ask for 0 tokens.
            logger.info("engine call %s: stream lost after its finish (%s)", request_id, exc)
        if call.finish_reason is None:
            produced = len(call.token_ids)
            if call.round_len:  # max_tokens counts talk tokens: one per complete round
                produced //= call.round_len
            if params.max_tokens is None or produced < params.max_tokens:
                raise ReplicaError("the stream ended before the call finished")
            # Cut after its last token, before the chunk that said so: the call is done.
            call.finish_reason = "length"
            done = CompletionOutput(
                index=0,
                text="",
                token_ids=[],
                cumulative_logprob=None,
                logprobs=None,
                finish_reason="length",
            )
            pending = self._output(request_id, prompt, call, done, kind)
        if pending is not None:
            pending.num_cached_tokens = call.cached_tokens
            yield pending

    def _usage(self, usage: dict | None, call: _Call) -> None:
        if not usage:
            return
        details = usage.get("prompt_tokens_details") or {}
        if "cached_tokens" in details:
            call.cached_tokens = int(details["cached_tokens"] or 0)
        elif not self._warned_no_cache_details:
            self._warned_no_cache_details = True
            logger.warning(
                "replicas report no prompt_tokens_details: start them with "
                "--enable-prompt-tokens-details, or FLOPs ignore prefix-cache hits"
            )

    @staticmethod
    def _apply(chunk: dict, call: _Call) -> CompletionOutput | None:
        """Add one chunk's choice to `call`; returns the delta (None: a usage-only chunk)."""
        choices = chunk.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        ids = [int(t) for t in choice.get("token_ids") or []]
        text = choice.get("text") or ""
        logprobs = parse_logprobs(choice.get("logprobs"), ids)
        call.text += text
        call.token_ids += ids
        if logprobs is not None:
            call.logprobs = (call.logprobs or []) + logprobs
        if choice.get("finish_reason") is not None:
            call.finish_reason = choice["finish_reason"]
            call.stop_reason = choice.get("stop_reason")
        return CompletionOutput(
            index=0,
            text=text,
            token_ids=ids,
            cumulative_logprob=None,
            logprobs=logprobs,
            finish_reason=call.finish_reason,
            stop_reason=call.stop_reason,
        )

    @staticmethod
    def _output(
        request_id: str,
        prompt: list[int],
        call: _Call,
        delta: CompletionOutput,
        kind: RequestOutputKind,
    ) -> RequestOutput | None:
        finished = call.finish_reason is not None
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        end = len(call.token_ids)
        if call.round_len:
            # Continuation: hand over complete rounds only (all that is left at the finish).
            if not finished:
                end -= end % call.round_len
            if kind == RequestOutputKind.DELTA:
                ids = call.token_ids[call.released : end]
                if not ids and not finished:
                    return None
                logprobs = call.logprobs[call.released : end] if call.logprobs else None
                delta = CompletionOutput(
                    index=0,
                    text="",  # the decoder keeps token ids; thoughts have no text to show
                    token_ids=ids,
                    cumulative_logprob=None,
                    logprobs=logprobs,
                    finish_reason=call.finish_reason,
                    stop_reason=call.stop_reason,
                )
            call.released = end
        if kind == RequestOutputKind.DELTA:
            completion = delta
        else:
            completion = CompletionOutput(
                index=0,
                text=call.text,
                token_ids=call.token_ids[:end],
                cumulative_logprob=None,
                logprobs=call.logprobs[:end] if call.logprobs is not None else None,
                finish_reason=call.finish_reason,
                stop_reason=call.stop_reason,
            )
        return RequestOutput(
            request_id=request_id,
            prompt=None,
            prompt_token_ids=prompt,
            prompt_logprobs=None,
            outputs=[completion],
            finished=finished,
            num_cached_tokens=call.cached_tokens,
        )


def _client_error(response: httpx.Response) -> APIError:
    """A 4xx from the replica: the call itself is wrong; retrying elsewhere cannot help."""
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    message = error.get("message") or response.text[:500] or f"HTTP {response.status_code}"
    status = response.status_code if 400 <= response.status_code < 500 else 400
    return APIError(message, status=status, param=error.get("param"))


def _stream_error(error: dict) -> Exception:
    code = int(error.get("code") or 500) if str(error.get("code", "")).isdigit() else 500
    message = str(error.get("message") or error)
    if code >= 500:
        return ReplicaError(message)
    return APIError(message, status=code, param=error.get("param"))


def _wait_for_model(url: str, settings: Settings) -> dict:
    """The router's first model card, polling until a replica is up (they start slowly)."""
    import time

    deadline = time.monotonic() + settings.engine_start_timeout_s
    headers = (
        {"Authorization": f"Bearer {settings.engine_api_key}"} if settings.engine_api_key else {}
    )
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/v1/models", headers=headers, timeout=5)
            if response.status_code == 200 and response.json().get("data"):
                return response.json()["data"][0]
            last = f"HTTP {response.status_code}"
        except (httpx.HTTPError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1)
    raise RuntimeError(f"no model at {url}/v1/models in {settings.engine_start_timeout_s}s: {last}")


def _load_hf_config(settings: Settings, model_path: str) -> Any:
    """The model's config as the replicas serve it (a Quiet-STaR checkpoint gets the same
    architecture override the in-process engine applies)."""
    from transformers import AutoConfig

    from kernels.quiet_star.checkpoint_setup import quiet_star_overrides

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=settings.trust_remote_code)
    for key, value in (quiet_star_overrides(settings, model_path) or {}).items():
        setattr(config, key, value)
    return config
