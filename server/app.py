"""The FastAPI application and its lifespan (engine start in the background, stop on exit).

Why start the engine in the background: on a CPU the engine takes a minute to start; the
gateway answers `/health` with 503 meanwhile, as orchestrators and load balancers expect,
instead of refusing connections.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server import metrics
from server.api.auth import load_api_keys
from server.api.errors import install_error_handlers
from server.api.middleware import APIKeyMiddleware, BodySizeLimitMiddleware, RequestIdMiddleware
from server.api.routes import router
from server.api.serving import CompletionService
from server.config import Settings, resolve_hardware_defaults
from server.engines import start_policy_engine
from server.health import engines_of
from server.lifecycle import AdmissionGate, Lifecycle
from server.methods import method_names
from server.quiet_star.checkpoint_setup import model_setup
from server.rewards.vllm_prm import VllmProcessRewardModel, prm_config_from_settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = resolve_hardware_defaults(settings or Settings())
    if settings.model:  # refuse a model that cannot be served faithfully before starting
        model_setup(settings, settings.model)
    lifecycle = Lifecycle(settings.shutdown_grace_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        metrics.init_method_series(method_names())
        starter = asyncio.create_task(_start_engine(app, settings))
        try:
            yield
        finally:
            starter.cancel()
            lifecycle.close()
            await asyncio.gather(starter, return_exceptions=True)
            service: CompletionService | None = getattr(app.state, "service", None)
            if service is not None:
                prm = service.resources.vllm_prm
                if prm is not None:
                    prm.shutdown()
                service.engine.shutdown()

    app = FastAPI(title="thinkscale", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.service = None
    app.state.lifecycle = lifecycle
    lifecycle.in_flight = lambda: app.state.service.admitted if app.state.service else 0
    install_error_handlers(app)
    app.add_middleware(AdmissionGate, lifecycle=lifecycle)
    install_middleware(app, settings)
    app.include_router(router)
    return app


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """Outermost first: request id (so even a 401/413 carries it), API key, body cap."""
    open_paths = {"/health"} if settings.protect_metrics else {"/health", "/metrics"}
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        APIKeyMiddleware, keys=load_api_keys(settings), open_paths=frozenset(open_paths)
    )
    app.add_middleware(RequestIdMiddleware)


async def _start_engine(app: FastAPI, settings: Settings) -> None:
    lifecycle: Lifecycle = app.state.lifecycle
    try:
        engine = await asyncio.to_thread(start_policy_engine, settings)
    except asyncio.CancelledError:
        raise
    except Exception:
        # A gateway without an engine can never become healthy: exit so a supervisor
        # (docker, systemd, the test fixture) sees the failure instead of a 503 forever.
        logger.exception("engine failed to start; shutting the gateway down")
        lifecycle.fail("the engine failed to start")
        return
    service = CompletionService(engine, settings, lifecycle)
    prm_config = prm_config_from_settings(settings)
    if prm_config is not None:
        # A model PRM (REBASE's `vllm_prm`): a second vLLM engine in pooling mode.
        prm = VllmProcessRewardModel(prm_config)
        try:
            await asyncio.to_thread(prm.start)
        except Exception:
            logger.exception("PRM engine failed to start; shutting the gateway down")
            engine.shutdown()
            lifecycle.fail("the PRM engine failed to start")
            return
        service.resources.vllm_prm = prm
    app.state.service = service
    # A dead engine core (OOM-killed, crashed) must end the process so it gets restarted.
    lifecycle.watch(engines_of(service))
    logger.info(
        "engine ready: serving %s (max_model_len %d)", engine.model_name, engine.max_model_len
    )
