"""The completion request path, top to bottom, and the one lifecycle every request follows:

route -> `CompletionService.handle`: validate (400/404) -> admit (429) -> tokenize and check
against the model (400) -> run the method -> JSON body or SSE events -> release + metrics.

`prepare` does everything that can reject a request, cheapest first, so bad input is a 4xx
before any engine work and an over-capacity request is a 429 before it is even tokenized.
`handle` owns what both response kinds share: the exception-to-status mapping, the release
of the admission slot and the metrics, each exactly once (see `_outcome`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from vllm.exceptions import VLLMClientError

from server.api.cancellation import ClientDisconnected, run_unless_disconnected
from server.api.errors import error_payload, vllm_error
from server.api.lifecycle import Lifecycle
from server.api.logprobs import LogprobsBuilder, joined
from server.api.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamChoice,
    CompletionStreamResponse,
    CompletionTokensDetails,
    CompletionUsage,
    ComponentUsage,
    FlopsUsage,
    find_lone_surrogate,
)
from server.core import metrics
from server.core.config import Settings
from server.core.errors import APIError
from server.core.limits import check_request_work
from server.core.requests import ChoiceDelta, MethodInput, SamplingSpec
from server.core.usage import UsageMeter
from server.engines.base import PolicyEngine
from server.methods import METHODS, parameter_blocks
from server.methods.base import Method, MethodContext
from server.methods.resources import Resources
from server.methods.streams import merge_streams

logger = logging.getLogger(__name__)

# Prompts longer than this (characters) are tokenized in a worker thread, so a burst of big
# prompts does not stall the event loop (and /health, /metrics) while the tokenizer runs.
INLINE_TOKENIZE_CHARS = 2048


@dataclass
class PreparedRequest:
    """A validated, admitted request: the method, its inputs per prompt, its accounting."""

    request: CompletionRequest
    method: Method
    inputs: list[MethodInput]
    meter: UsageMeter
    request_id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    completion_tokens: int = 0  # visible output tokens sent to the client
    details: dict = field(default_factory=dict)
    finished: bool = False  # slot released and metrics recorded (exactly once)


class _ClosingEventSourceResponse(EventSourceResponse):
    """An SSE response that runs `on_close` however it ends.

    Why: a client that drops a stream before its first event never starts the event
    generator, so the generator's own cleanup (releasing the admission slot) never runs; and
    a send to a closed socket can end the response before a background task would."""

    def __init__(self, *args, on_close: Callable[[], None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class CompletionService:
    """Validates, admits and runs completion requests against one engine."""

    def __init__(
        self,
        engine: PolicyEngine,
        settings: Settings,
        lifecycle: Lifecycle | None = None,
        resources: Resources | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        # Cuts requests at the end of a shutdown's grace period or when an engine dies.
        self.lifecycle = lifecycle or Lifecycle(settings.shutdown_grace_s)
        self.admitted = 0
        # Built once, at start-up (the app passes them with its PRM engine): see Resources.
        self.resources = resources or Resources.build(settings, engine)

    # ---- the lifecycle ----------------------------------------------------------------
    async def handle(self, request: CompletionRequest, http: Request) -> Response:
        """Serve one request, streamed or not; APIErrors raised here become 4xx/5xx JSON."""
        request_id = f"cmpl-{getattr(http.state, 'request_id', None) or uuid.uuid4().hex}"
        try:
            prepared = await self.prepare(request, request_id)
        except APIError as exc:
            if exc.status != 429:  # admission already counted it as "rejected"
                known = request.method in METHODS
                metrics.record_request_outcome(
                    request.method if known else "unknown", "client_error"
                )
            raise
        if request.stream:
            # "\n" line endings: clients that split events on "\n\n" (vllm bench) must not
            # lose events that arrive together in one read.
            return _ClosingEventSourceResponse(
                self._sse_events(prepared),
                ping=15,
                sep="\n",
                on_close=lambda: self._finish(prepared, "cancelled"),
            )
        try:
            async with self._outcome(prepared):
                response = await run_unless_disconnected(http, self.complete(prepared))
        except ClientDisconnected:
            return Response(status_code=499)
        return JSONResponse(response.model_dump(exclude_none=True))

    @asynccontextmanager
    async def _outcome(self, prepared: PreparedRequest) -> AsyncIterator[None]:
        """Map whatever ends a running request to a metrics status and, for the client, an
        APIError; release the admission slot and record the metrics exactly once."""
        status = "server_error"
        try:
            yield
            status = "ok"
        except (ClientDisconnected, asyncio.CancelledError, GeneratorExit):
            status = "cancelled"  # the client went away; nothing to send
            raise
        except TimeoutError:
            status = "timeout"
            raise APIError("Request timed out", status=504) from None
        except APIError as exc:
            status = "client_error" if exc.status < 500 else "server_error"
            raise
        except VLLMClientError as exc:  # vLLM rejected the input after all
            status = "client_error"
            raise vllm_error(exc) from None
        except Exception as exc:
            logger.exception("request failed")
            raise APIError(f"Internal server error: {type(exc).__name__}", status=500) from exc
        finally:
            self._finish(prepared, status)

    async def _sse_events(self, prepared: PreparedRequest) -> AsyncIterator[dict]:
        """OpenAI streaming: one chunk per delta, an optional usage chunk, then [DONE]; an
        error after the stream started is one error event before [DONE]."""
        try:
            async with self._outcome(prepared), aclosing(self.stream_chunks(prepared)) as chunks:
                async for chunk in chunks:
                    yield {"data": chunk.model_dump_json(exclude_unset=True)}
        except APIError as exc:
            yield {"data": json.dumps(error_payload(exc))}  # ASCII-escaped: always encodable
        yield {"data": "[DONE]"}

    async def stream_chunks(
        self, prepared: PreparedRequest
    ) -> AsyncIterator[CompletionStreamResponse]:
        """The typed chunks of a streamed completion."""

        def chunk(**fields) -> CompletionStreamResponse:
            return CompletionStreamResponse(
                id=prepared.request_id,
                object="text_completion",
                created=prepared.created,
                model=self.engine.model_name,
                method=prepared.method.name,
                **fields,
            )

        builders: dict[int, LogprobsBuilder] = {}
        echo = _Echo(prepared)
        async with aclosing(self.deltas(prepared)) as deltas:
            async for delta in deltas:
                prompt = echo.take(delta.index)  # the choice's first chunk starts with it
                logprobs = None
                if prepared.request.logprobs is not None:
                    builder = builders.setdefault(
                        delta.index, LogprobsBuilder(self.engine.tokenizer)
                    )
                    if prompt is not None:
                        echoed = builder.add_prompt(prompt.prompt_token_ids, delta.prompt_logprobs)
                        logprobs = joined(echoed, builder.add(delta))
                    else:
                        logprobs = builder.add(delta)
                choice = CompletionStreamChoice(
                    index=delta.index,
                    text=delta.text if prompt is None else prompt.prompt_text + delta.text,
                    logprobs=logprobs,
                    finish_reason=delta.finish_reason,  # type: ignore[arg-type]
                    stop_reason=delta.stop_reason,
                )
                yield chunk(choices=[choice])
        if prepared.request.include_usage:
            extra = {"method_details": prepared.details} if prepared.details else {}
            yield chunk(choices=[], usage=self.usage(prepared), **extra)

    # ---- validation -------------------------------------------------------------------
    async def prepare(self, request: CompletionRequest, request_id: str) -> PreparedRequest:
        """Every check that can reject a request, cheapest first; returns it admitted.

        Order matters: checks of the body alone, then admission (a 429 must not cost a
        tokenization), then the checks that need the prompt's tokens and vLLM's own
        parameter validation, so none of them can fail after a stream has started.
        """
        bad = find_lone_surrogate(request.model_dump(exclude_unset=True))
        if bad is not None:
            raise APIError(
                f"'{bad}' contains a lone UTF-16 surrogate; send valid Unicode", param=bad
            )
        method = self._method(request)
        self._check_model(request)
        s = self.settings
        if request.n > s.max_n:
            raise APIError(f"n must be at most {s.max_n}", param="n")
        if request.logprobs is not None and request.logprobs > s.max_logprobs:
            raise APIError(f"logprobs must be at most {s.max_logprobs}", param="logprobs")
        self._check_echo(request, method)
        prompts = request.prompts
        if len(prompts) > s.max_prompts_per_request:
            raise APIError(
                f"at most {s.max_prompts_per_request} prompts per request", param="prompt"
            )
        params = self._parameter_blocks(request, method)
        prepared = PreparedRequest(
            request, method, [], UsageMeter(self.engine.flops), request_id=request_id
        )
        self.admit(prepared)
        try:
            for prompt in prompts:
                inp = await self._method_input(request, method, prompt, params)
                method.check(inp, self.engine)
                _check_sampling(inp.sampling)
                prepared.inputs.append(inp)
            check_request_work([method.work(inp) for inp in prepared.inputs], s)
        except BaseException:
            self.release(prepared)
            raise
        if s.log_prompts:
            logger.info("%s prompts: %r", method.name, [inp.prompt_text for inp in prepared.inputs])
        return prepared

    def _method(self, request: CompletionRequest) -> Method:
        cls = METHODS.get(request.method)
        if cls is None:
            valid = ", ".join(sorted(METHODS))
            raise APIError(
                f"Unknown method '{request.method}'. Valid methods: {valid}", param="method"
            )
        return cls()

    def _check_echo(self, request: CompletionRequest, method: Method) -> None:
        """`echo` with `logprobs` returns the prompt tokens' logprobs too (OpenAI): a 400 where
        they cannot be had, rather than an echo that silently lacks them."""
        if not request.echo or request.logprobs is None:
            return
        if not method.prompt_logprobs:
            raise APIError(
                f"'echo' with 'logprobs' is not supported for method '{method.name}': it does "
                "not compute the prompt's logprobs (use method 'baseline', or drop one of them)",
                param="echo",
            )
        if not self.engine.prompt_logprobs:
            raise APIError(
                "'echo' with 'logprobs' is not supported by this server's engine: it cannot "
                "return the prompt's logprobs (drop one of them)",
                param="echo",
            )

    def _check_model(self, request: CompletionRequest) -> None:
        if request.model and request.model not in (self.engine.model_name, self.engine.model_path):
            raise APIError(
                f"The model '{request.model}' does not exist; this server serves "
                f"'{self.engine.model_name}'",
                status=404,
                param="model",
                code="model_not_found",
            )

    def _parameter_blocks(self, request: CompletionRequest, method: Method) -> dict[str, BaseModel]:
        known = parameter_blocks()
        for key in request.method_blocks:
            if key not in known:
                raise APIError(f"Unrecognized request argument supplied: {key}", param=key)
        parsed: dict[str, BaseModel] = {}
        for block, model in method.parameter_blocks.items():
            raw = request.method_blocks.get(block) or {}
            if not isinstance(raw, dict):
                raise APIError(f"'{block}' must be an object", param=block)
            try:
                parsed[block] = model.model_validate(raw)
            except ValidationError as exc:
                err = exc.errors()[0]
                path = ".".join(str(x) for x in (block, *err["loc"]))
                msg = str(err["msg"]).removeprefix("Value error, ")
                raise APIError(f"Invalid value for '{path}': {msg}", param=path) from None
        for key in request.method_blocks:
            if key not in method.parameter_blocks:
                raise APIError(
                    f"'{key}' parameters do not apply to method '{method.name}'", param=key
                )
        return parsed

    async def _method_input(
        self,
        request: CompletionRequest,
        method: Method,
        prompt: str | list[int],
        params: dict[str, BaseModel],
    ) -> MethodInput:
        if isinstance(prompt, str):
            ids = await self._off_loop_if_large(len(prompt), self.engine.encode, prompt)
            text = prompt
        else:
            vocab = self.engine.flops.vocab_size
            if any(t < 0 or t >= vocab for t in prompt):
                raise APIError(f"prompt token ids must be in [0, {vocab})", param="prompt")
            ids = list(prompt)
            text = await self._off_loop_if_large(len(ids), self.engine.decode, ids)
        if not ids:
            raise APIError("prompt must contain at least one token", param="prompt")
        limit = self.engine.max_model_len
        max_tokens = request.max_tokens
        if len(ids) >= limit:
            raise APIError(
                f"This model's maximum context length is {limit} tokens; the prompt has "
                f"{len(ids)} tokens",
                param="prompt",
            )
        if "max_tokens" not in request.model_fields_set:
            max_tokens = method.default_max_tokens(params, limit - len(ids)) or max_tokens
        if max_tokens is None:
            max_tokens = limit - len(ids)
        if len(ids) + max_tokens > limit:
            raise APIError(
                f"This model's maximum context length is {limit} tokens; you requested "
                f"{len(ids) + max_tokens} tokens ({len(ids)} in the prompt, {max_tokens} in "
                "the completion). Reduce the prompt or max_tokens.",
                param="max_tokens",
            )
        sampling = SamplingSpec(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            stop=request.stop,  # type: ignore[arg-type]  # normalised to a list
            seed=request.seed,
            logprobs=request.logprobs,
            prompt_logprobs=request.logprobs if request.echo else None,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            repetition_penalty=request.repetition_penalty,
            ignore_eos=request.ignore_eos,
            min_tokens=request.min_tokens,
        )
        self._check_budget(request, ids)
        return MethodInput(ids, text, request.n, sampling, params, budget=request.budget)

    def _check_budget(self, request: CompletionRequest, ids: list[int]) -> None:
        """A FLOPs budget smaller than one engine step (prefill of the prompt and one token) is
        a 400 naming the field: no method could answer within it."""
        if request.budget is None:
            return
        step = self.engine.flops.request_flops(len(ids), 0, 1).executed
        if request.budget.flops is not None and request.budget.flops < step:
            raise APIError(
                f"budget.flops ({request.budget.flops:g}) is less than one engine step for this "
                f"prompt: prefilling its {len(ids)} tokens and sampling one token costs "
                f"{step:.3g} FLOPs",
                param="budget.flops",
            )

    @staticmethod
    async def _off_loop_if_large(size: int, fn, arg):
        """Run the tokenizer inline for small inputs (a thread hop costs more than they do)
        and in a worker thread for large ones, keeping the event loop free."""
        if size <= INLINE_TOKENIZE_CHARS:
            return fn(arg)
        return await asyncio.to_thread(fn, arg)

    # ---- admission --------------------------------------------------------------------
    def admit(self, prepared: PreparedRequest) -> None:
        """Bound the requests in flight; beyond the bound answer 429 instead of queueing.
        The bound is per engine replica (docs/scaling.md)."""
        capacity = self.settings.max_pending_requests * self.settings.engine_replicas
        if self.admitted >= capacity:
            metrics.record_request_outcome(prepared.method.name, "rejected")
            raise APIError(
                f"Server is at capacity ({capacity} requests in flight); retry later",
                status=429,
                code="server_at_capacity",
            )
        self.admitted += 1
        metrics.IN_FLIGHT.labels(method=prepared.method.name).inc()

    def _finish(self, prepared: PreparedRequest, status: str) -> None:
        """Release the slot and record the outcome, once: whichever of the request's own
        cleanup and the response's close comes first decides the status."""
        if prepared.finished:
            return
        prepared.finished = True
        self.release(prepared)
        self.record_metrics(prepared, status)

    def release(self, prepared: PreparedRequest) -> None:
        self.admitted -= 1
        metrics.IN_FLIGHT.labels(method=prepared.method.name).dec()

    # ---- running ----------------------------------------------------------------------
    async def deltas(self, prepared: PreparedRequest) -> AsyncIterator[ChoiceDelta]:
        """Run the method on every prompt; choice indices are global (prompt * n + i).

        Every generator on the way down is closed with `aclosing` wherever its consumer may
        stop early: each engine call is charged when its generator closes, and the usage is
        read right after this one ends (docs/architecture.md, "Accounting identity")."""
        n = prepared.request.n

        async def one_prompt(prompt_index: int, inp: MethodInput) -> AsyncIterator[ChoiceDelta]:
            ctx = MethodContext(
                engine=self.engine,
                meter=prepared.meter,
                settings=self.settings,
                http_request_id=prepared.request_id,
                prompt_id=f"{prepared.request_id}-p{prompt_index}",
                details=prepared.details,
                resources=self.resources,
                admitted_at=prepared.started,
            )
            async with aclosing(prepared.method.run(ctx, inp)) as deltas:
                async for delta in deltas:
                    delta.index += prompt_index * n
                    yield delta

        streams = [one_prompt(i, inp) for i, inp in enumerate(prepared.inputs)]
        with self.lifecycle.guard():
            async with (
                asyncio.timeout(self.settings.request_timeout_s),
                aclosing(merge_streams(streams)) as merged,
            ):
                async for delta in merged:
                    if prepared.first_token_at is None and (delta.text or delta.token_ids):
                        prepared.first_token_at = time.perf_counter()
                    prepared.completion_tokens += len(delta.token_ids)
                    yield delta

    async def complete(self, prepared: PreparedRequest) -> CompletionResponse:
        """Non-streaming: collect every choice, then build the response."""
        texts: dict[int, list[str]] = {}
        builders: dict[int, LogprobsBuilder] = {}
        finish: dict[int, tuple[str | None, int | str | None]] = {}
        want_logprobs = prepared.request.logprobs is not None
        echo = _Echo(prepared)
        async with aclosing(self.deltas(prepared)) as deltas:
            async for delta in deltas:
                prompt = echo.take(delta.index)
                text = texts.setdefault(delta.index, [])
                if prompt is not None:
                    text.append(prompt.prompt_text)
                text.append(delta.text)
                if want_logprobs:
                    builder = builders.setdefault(
                        delta.index, LogprobsBuilder(self.engine.tokenizer)
                    )
                    if prompt is not None:
                        builder.add_prompt(prompt.prompt_token_ids, delta.prompt_logprobs)
                    builder.add(delta)
                if delta.finish_reason is not None:
                    finish[delta.index] = (delta.finish_reason, delta.stop_reason)
        choices = [
            CompletionChoice(
                index=i,
                text="".join(texts.get(i, [])),
                logprobs=builders[i].result() if i in builders else None,
                finish_reason=finish.get(i, (None, None))[0],  # type: ignore[arg-type]
                stop_reason=finish.get(i, (None, None))[1],
            )
            for i in range(len(prepared.inputs) * prepared.request.n)
        ]
        return CompletionResponse(
            id=prepared.request_id,
            created=prepared.created,
            model=self.engine.model_name,
            method=prepared.method.name,
            choices=choices,
            usage=self.usage(prepared),
            method_details=prepared.details or None,
        )

    def usage(self, prepared: PreparedRequest) -> CompletionUsage:
        meter = prepared.meter
        policy, reward = meter.component("policy"), meter.component("reward")
        prompt_tokens = sum(len(inp.prompt_token_ids) for inp in prepared.inputs)
        completion_tokens = prepared.completion_tokens
        total = meter.total_flops
        return CompletionUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            completion_tokens_details=CompletionTokensDetails(
                reasoning_tokens=meter.thought_tokens
            ),
            thought_tokens=meter.thought_tokens,
            cached_tokens=policy.cached_tokens + reward.cached_tokens,
            forward_tokens=policy.forward_tokens + reward.forward_tokens,
            forward_tokens_policy=policy.forward_tokens,
            forward_tokens_reward=reward.forward_tokens,
            reward_tokens=reward.prompt_tokens + reward.generated_tokens,
            engine_calls=policy.engine_calls + reward.engine_calls,
            flops=FlopsUsage(
                executed=total.executed,
                nominal=total.nominal,
                policy_executed=policy.flops.executed,
                policy_nominal=policy.flops.nominal,
                reward_executed=reward.flops.executed,
                reward_nominal=reward.flops.nominal,
            ),
            components={
                name: ComponentUsage(
                    engine_calls=cost.engine_calls,
                    forward_tokens=cost.forward_tokens,
                    emitting_calls=cost.emitting_calls,
                    unreported_calls=cost.unreported_calls,
                    unreported_tokens=cost.unreported_tokens,
                    engine_tokens=cost.engine_counted_tokens,
                    flops_executed=cost.flops.executed,
                    flops_nominal=cost.flops.nominal,
                )
                for name, cost in sorted(meter.components.items())
            }
            or None,
        )

    def record_metrics(self, prepared: PreparedRequest, status: str) -> None:
        """Every request's outcome, cost and latency go to Prometheus, whatever happened."""
        method = prepared.method.name
        metrics.record_request_outcome(method, status)
        meter = prepared.meter
        for component, cost in meter.components.items():
            metrics.FLOPS.labels(method, component, "executed").inc(cost.flops.executed)
            metrics.FLOPS.labels(method, component, "nominal").inc(cost.flops.nominal)
            metrics.ENGINE_CALLS.labels(method, component).inc(cost.engine_calls)
            metrics.ENGINE_CALLS_EMITTING.labels(method, component).inc(cost.emitting_calls)
            metrics.ENGINE_TOKENS.labels(method, component).inc(cost.engine_counted_tokens)
        usage = self.usage(prepared)
        tokens = {
            "prompt": usage.prompt_tokens,
            "completion": usage.completion_tokens,
            "cached": usage.cached_tokens,
            "forward": usage.forward_tokens,
            "forward_unreported": sum(c.unreported_tokens for c in meter.components.values()),
            "thought": usage.thought_tokens,
            "reward": usage.reward_tokens,
        }
        for kind, count in tokens.items():
            metrics.TOKENS.labels(method, kind).inc(count)
        if status != "ok":
            return
        now = time.perf_counter()
        metrics.REQUEST_LATENCY.labels(method).observe(now - prepared.started)
        if prepared.first_token_at is not None:
            metrics.TIME_TO_FIRST_TOKEN.labels(method).observe(
                prepared.first_token_at - prepared.started
            )
        metrics.REQUEST_FLOPS.labels(method).observe(usage.flops.executed)
        if usage.completion_tokens:
            metrics.FORWARD_TOKENS_PER_OUTPUT.labels(method).observe(
                usage.forward_tokens / usage.completion_tokens
            )


class _Echo:
    """OpenAI's `echo`: each choice's text starts with its prompt (and, with `logprobs`, its
    logprobs with the prompt tokens'), once per choice, on its first delta.

    Why here and not in the methods: the prompt is the request's, and every method gets it the
    same way; methods stream only what they generate, so `usage.completion_tokens` (counted
    from the deltas) never includes the echoed prompt."""

    def __init__(self, prepared: PreparedRequest) -> None:
        self._inputs = prepared.inputs
        self._n = prepared.request.n
        self._pending = (
            set(range(len(prepared.inputs) * self._n)) if prepared.request.echo else set()
        )

    def take(self, index: int) -> MethodInput | None:
        """Choice `index`'s prompt if it is still to be echoed (then never again), else None."""
        if index not in self._pending:
            return None
        self._pending.discard(index)
        return self._inputs[index // self._n]


def _check_sampling(spec: SamplingSpec) -> None:
    """Run vLLM's own SamplingParams validation now, while a 400 is still possible; the
    same parameters failing inside the engine would be an error event mid-stream."""
    try:
        spec.to_vllm()
    except (VLLMClientError, ValueError) as exc:  # some of vLLM's checks raise plain ValueErrors
        raise vllm_error(exc) from None
