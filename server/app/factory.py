"""The FastAPI application and its lifespan (engine start in the background, stop on exit).

Why start the engine in the background: on a CPU the engine takes a minute to start; the
gateway answers `/health` with 503 meanwhile, as orchestrators and load balancers expect,
instead of refusing connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from contextlib import asynccontextmanager

from fastapi import FastAPI

from kernels.quiet_star.checkpoint_setup import model_setup
from server.api.auth import load_api_keys
from server.api.errors import install_error_handlers
from server.api.health import engines_of
from server.api.lifecycle import AdmissionGate, Lifecycle
from server.api.middleware import APIKeyMiddleware, BodySizeLimitMiddleware, RequestIdMiddleware
from server.api.routes import router
from server.api.serving import CompletionService
from server.app.dtype_probe import settle_cpu_dtype
from server.app.replica_probe import probe_at_start, watch_replicas
from server.app.warmup import WarmupFailed, engine_exit_report, failure_message, warm_up
from server.core import metrics
from server.core.config import Settings, cpu_flags, resolve_hardware_defaults
from server.engines import start_policy_engine
from server.engines.inprocess import resolve_model_path
from server.engines.remote import RemoteEngine
from server.methods import method_names
from server.methods.resources import Resources
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
            watch = getattr(app.state, "replica_watch", None)
            if watch is not None:
                watch.cancel()
            lifecycle.close()
            await asyncio.gather(starter, *([watch] if watch else []), return_exceptions=True)
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
    """Start the engine(s), run the warm-up, then serve; on any failure exit non-zero with a
    message naming the model, dtype, KV size and the likely cause (server/app/warmup.py)."""
    lifecycle: Lifecycle = app.state.lifecycle
    model = settings.engine_url or settings.model or "the embedded model"
    engine = None
    prm = None
    stage = "start"
    try:
        model, settings = await asyncio.to_thread(settle_engine_settings, settings)
        app.state.settings = settings
        engine = await asyncio.to_thread(start_policy_engine, settings)
        probed: dict[str, bool] = {}
        if isinstance(engine, RemoteEngine):
            # Refuse to start behind a replica that lacks a flag a method needs (it would
            # fail, or answer wrongly, only when the first such request came).
            stage = "replica probe"
            probed = await probe_at_start(engine)
        prm_config = prm_config_from_settings(settings)
        if prm_config is not None:
            # A model PRM (REBASE's `vllm_prm`): a second vLLM engine in pooling mode.
            stage = "PRM engine start"
            prm = VllmProcessRewardModel(prm_config)
            await asyncio.to_thread(prm.start)
        resources = Resources.build(settings, engine, prm)
        service = CompletionService(engine, settings, lifecycle, resources)
        stage = "warm-up"
        seconds = await warm_up(service)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        exits = await engine_exit_report(engine)
        died = engine is not None and bool(engine.errored)
        message = failure_message(settings, model, stage, _short(exc), exits, died)
        logger.error("%s", message, exc_info=not isinstance(exc, WarmupFailed))
        # A gateway without a working engine can never become healthy: exit so a supervisor
        # (docker, systemd, the test fixture) sees the failure instead of a 503 forever.
        print(f"thinkscale: {message}", file=sys.stderr, flush=True)
        for started in (prm, engine):
            if started is not None:
                with contextlib.suppress(Exception):
                    started.shutdown()
        lifecycle.fail(message)
        return
    app.state.service = service
    lifecycle.ready = True
    info = engine_info(settings, engine)
    metrics.ENGINE.info(info)
    # A dead engine core (OOM-killed, crashed) must end the process so it gets restarted.
    lifecycle.watch(engines_of(service))
    if isinstance(engine, RemoteEngine):  # a replica that comes back is probed again
        app.state.replica_watch = asyncio.create_task(watch_replicas(engine, probed))
    logger.info(
        "engine ready: serving %s (dtype %s, max_model_len %d; warm-up %.1f s)",
        engine.model_name,
        info["dtype"],
        engine.max_model_len,
        seconds,
    )


def engine_info(settings: Settings, engine: object) -> dict[str, str]:
    """What `thinkscale_engine_info` says (strings only: Prometheus labels). The dtype is the
    one vLLM resolved (it turns 'auto' into the model's), for the in-process engine."""
    flags = cpu_flags()
    model_config = getattr(getattr(engine, "llm", None), "model_config", None)
    dtype = getattr(model_config, "dtype", None) or settings.dtype or "auto"
    return {
        "device": settings.device,
        "dtype": str(dtype).removeprefix("torch."),
        "cpu_native_bf16": str(bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))).lower(),
        "cpu_threads_bind": settings.cpu_threads_bind or "",
        "quiet_star_engine": settings.quiet_star_engine or "",
        "kv_cache_gib": str(settings.kv_cache_gib) if settings.device == "cpu" else "",
        "remote": str(bool(settings.engine_url)).lower(),
    }


def settle_engine_settings(settings: Settings) -> tuple[str, Settings]:
    """The model to serve (the embedded one converted on first use) and the settings with
    the CPU dtype settled by the bf16 probe where it applies (server/app/dtype_probe.py)."""
    if settings.engine_url:
        return settings.engine_url, settings
    model = resolve_model_path(settings)
    return model, settle_cpu_dtype(settings.model_copy(update={"model": model}), model)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
