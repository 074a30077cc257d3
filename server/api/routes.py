"""HTTP routes: /v1/completions, /v1/models, /health, /metrics.

Routes stay thin: API keys, request ids and the body cap are ASGI middleware
(server/api/middleware.py), and a completion's whole lifecycle is `CompletionService.handle`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from server.api.health import health_report
from server.api.protocol import CompletionRequest, ModelCard, ModelList
from server.api.serving import CompletionService
from server.core.errors import APIError
from server.methods import method_names
from server.quiet_star.served_model import quiet_star_card

router = APIRouter()


def get_service(request: Request) -> CompletionService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise APIError("The engine is still starting; retry shortly", status=503)
    return service


ServiceDep = Annotated[CompletionService, Depends(get_service)]


@router.post("/v1/completions")
async def create_completion(
    body: CompletionRequest, request: Request, service: ServiceDep
) -> Response:
    return await service.handle(body, request)


@router.get("/v1/models", response_model_exclude_none=True)
async def list_models(service: ServiceDep) -> ModelList:
    engine = service.engine
    card = ModelCard(
        id=engine.model_name,
        root=engine.model_path,
        max_model_len=engine.max_model_len,
        methods=method_names(),
        quiet_star=quiet_star_card(engine),
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
