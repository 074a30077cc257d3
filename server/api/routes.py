"""HTTP routes: /v1/completions, /v1/models, /health, /metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sse_starlette.sse import EventSourceResponse

from server import metrics
from server.api.cancellation import ClientDisconnected, run_unless_disconnected
from server.api.errors import APIError, error_payload
from server.api.logprobs import LogprobsBuilder
from server.api.protocol import CompletionRequest, ModelCard, ModelList
from server.api.serving import CompletionService, PreparedRequest
from server.health import health_report
from server.methods import method_names

logger = logging.getLogger(__name__)
router = APIRouter()


def get_service(request: Request) -> CompletionService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise APIError("The engine is still starting; retry shortly", status=503)
    return service


ServiceDep = Annotated[CompletionService, Depends(get_service)]


def check_api_key(request: Request) -> None:
    expected = request.app.state.settings.api_key
    if expected and request.headers.get("authorization") != f"Bearer {expected}":
        raise APIError("Invalid or missing API key", status=401, code="invalid_api_key")


@router.post("/v1/completions", dependencies=[Depends(check_api_key)])
async def create_completion(
    body: CompletionRequest, request: Request, service: ServiceDep
) -> Response:
    try:
        prepared = service.prepare(body)
    except APIError:
        known = body.method in method_names()
        metrics.record_request_outcome(body.method if known else "unknown", "client_error")
        raise
    service.admit(prepared)
    if body.stream:
        # "\n" line endings: clients that split events on "\n\n" (vllm bench) must not lose
        # events that arrive together in one read.
        return EventSourceResponse(_sse_events(service, prepared), ping=15, sep="\n")
    try:
        response = await run_unless_disconnected(request, service.complete(prepared))
    except ClientDisconnected:
        service.record_metrics(prepared, "cancelled")
        return Response(status_code=499)
    except TimeoutError:
        service.record_metrics(prepared, "timeout")
        raise APIError("Request timed out", status=504) from None
    except APIError:
        service.record_metrics(prepared, "client_error")
        raise
    except Exception:
        service.record_metrics(prepared, "server_error")
        raise
    finally:
        service.release(prepared)
    service.record_metrics(prepared, "ok")
    return JSONResponse(response.model_dump(exclude_none=True))


async def _sse_events(service: CompletionService, prepared: PreparedRequest) -> AsyncIterator:
    """OpenAI streaming: one chunk per delta, an optional usage chunk, then [DONE]."""
    base = {
        "id": prepared.request_id,
        "object": "text_completion",
        "created": prepared.created,
        "model": service.engine.model_name,
        "method": prepared.method.name,
    }
    builders: dict[int, LogprobsBuilder] = {}
    status = "server_error"
    try:
        async for delta in service.deltas(prepared):
            logprobs = None
            if prepared.request.logprobs is not None:
                builder = builders.setdefault(
                    delta.index, LogprobsBuilder(service.engine.tokenizer)
                )
                logprobs = builder.add(delta).model_dump()
            choice = {
                "index": delta.index,
                "text": delta.text,
                "logprobs": logprobs,
                "finish_reason": delta.finish_reason,
                "stop_reason": delta.stop_reason,
            }
            yield {"data": json.dumps({**base, "choices": [choice]})}
        if prepared.request.include_usage:
            usage = service.usage(prepared).model_dump()
            extra = {"method_details": prepared.details} if prepared.details else {}
            yield {"data": json.dumps({**base, "choices": [], "usage": usage, **extra})}
        status = "ok"
    except TimeoutError:
        status = "timeout"
        yield {"data": json.dumps(error_payload(APIError("Request timed out", status=504)))}
    except APIError as exc:
        status = "client_error"
        yield {"data": json.dumps(error_payload(exc))}
    except BaseException as exc:
        # CancelledError: the client went away (sse-starlette cancels us); nothing to send.
        status = "cancelled" if _is_cancellation(exc) else "server_error"
        if status == "cancelled":
            raise
        logger.exception("stream failed")
        error = APIError(f"Internal server error: {type(exc).__name__}", status=500)
        yield {"data": json.dumps(error_payload(error))}
    finally:
        service.release(prepared)
        service.record_metrics(prepared, status)
    yield {"data": "[DONE]"}


def _is_cancellation(exc: BaseException) -> bool:
    import asyncio

    return isinstance(exc, asyncio.CancelledError | GeneratorExit)


@router.get("/v1/models", dependencies=[Depends(check_api_key)])
async def list_models(service: ServiceDep) -> ModelList:
    engine = service.engine
    card = ModelCard(
        id=engine.model_name,
        root=engine.model_path,
        max_model_len=engine.max_model_len,
        methods=method_names(),
    )
    return ModelList(data=[card])


@router.get("/health")
async def health(request: Request) -> Response:
    state = request.app.state
    status, body = await health_report(state.lifecycle, getattr(state, "service", None))
    return JSONResponse(body, status_code=status)


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
