"""Lifecycle, admission gate, /health report, exposure check and signal handling, with fakes.

The real thing (uvicorn, vLLM, SIGTERM, SIGKILLed engine cores) is in tests/e2e/test_lifecycle.py;
these pin the rules: who is refused, who is cut with which error, and which exit code results.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from vllm.v1.engine.exceptions import EngineDeadError

import server.api.lifecycle as lifecycle_module
from server.api.errors import error_payload
from server.api.health import health_report
from server.api.lifecycle import (
    AdmissionGate,
    EngineUnavailable,
    Lifecycle,
    ServerShuttingDown,
)
from server.app.exposure import insecure_exposure, is_loopback
from server.app.serve import GatewayServer
from server.core.config import Settings
from server.methods.resources import Resources


class Exits:
    """A `request_exit` that records being called."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.event.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self.event.wait(), timeout=30)


def make_lifecycle(grace_s: float = 30.0, in_flight: list[int] | None = None) -> Lifecycle:
    lifecycle = Lifecycle(grace_s)
    lifecycle.ready = True  # past the warm-up: serving
    counter = in_flight if in_flight is not None else [0]
    lifecycle.in_flight = lambda: counter[0]
    lifecycle.request_exit = Exits()
    return lifecycle


async def guarded_forever(lifecycle: Lifecycle, started: asyncio.Event) -> None:
    with lifecycle.guard():
        started.set()
        await asyncio.sleep(3600)


# ---- admission gate -------------------------------------------------------------------------


def gated_app(lifecycle: Lifecycle) -> AdmissionGate:
    async def ok(_):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/v1/completions", ok, methods=["POST"]), Route("/health", ok)])
    return AdmissionGate(app, lifecycle)


async def call(app, method: str, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.request(method, path)


async def test_gate_admits_while_serving() -> None:
    response = await call(gated_app(make_lifecycle()), "POST", "/v1/completions")
    assert (response.status_code, response.text) == (200, "ok")


async def test_gate_refuses_new_v1_requests_while_draining_with_openai_error() -> None:
    lifecycle = make_lifecycle()
    lifecycle.draining = True
    app = gated_app(lifecycle)
    response = await call(app, "POST", "/v1/completions")
    assert response.status_code == 503
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "server_shutting_down"
    assert response.json() == error_payload(ServerShuttingDown())  # the one error builder
    assert response.headers["connection"] == "close"
    # /health is not gated: it reports the draining itself.
    assert (await call(app, "GET", "/health")).status_code == 200


async def test_gate_names_a_dead_engine() -> None:
    lifecycle = make_lifecycle()
    lifecycle.failure = "the policy engine core died"
    response = await call(gated_app(lifecycle), "POST", "/v1/completions")
    assert response.status_code == 503
    assert response.json() == error_payload(EngineUnavailable("the policy engine core died"))


# ---- drain ------------------------------------------------------------------------------------


async def test_drain_waits_for_in_flight_requests_then_exits_zero() -> None:
    in_flight = [2]
    lifecycle = make_lifecycle(grace_s=60, in_flight=in_flight)
    lifecycle.begin_drain()
    assert lifecycle.draining and not lifecycle.admitting
    await asyncio.sleep(0.2)
    assert not lifecycle.request_exit.event.is_set()  # two requests still running
    in_flight[0] = 0
    await lifecycle.request_exit.wait()
    assert lifecycle.exit_code == 0


async def test_grace_period_end_cuts_guarded_requests_with_503() -> None:
    in_flight = [1]
    lifecycle = make_lifecycle(grace_s=0.1, in_flight=in_flight)
    started = asyncio.Event()
    request = asyncio.create_task(guarded_forever(lifecycle, started))
    await started.wait()
    lifecycle.begin_drain()
    with pytest.raises(ServerShuttingDown) as info:
        await asyncio.wait_for(request, timeout=30)
    assert info.value.status == 503
    in_flight[0] = 0
    await lifecycle.request_exit.wait()
    assert lifecycle.exit_code == 0
    # A request that reaches the engine after the cut is refused at once.
    with pytest.raises(ServerShuttingDown), lifecycle.guard():
        pass


async def test_other_cancellations_stay_cancellations() -> None:
    """A client disconnect (a plain cancel) must not turn into a 503 body."""
    lifecycle = make_lifecycle()
    started = asyncio.Event()
    request = asyncio.create_task(guarded_forever(lifecycle, started))
    await started.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request


# ---- dead engine --------------------------------------------------------------------------------


async def test_engine_dead_error_fails_every_request_and_exits_non_zero() -> None:
    lifecycle = make_lifecycle()
    started = asyncio.Event()
    bystander = asyncio.create_task(guarded_forever(lifecycle, started))
    await started.wait()
    with pytest.raises(EngineUnavailable) as info, lifecycle.guard():
        raise EngineDeadError()
    assert info.value.status == 503
    with pytest.raises(EngineUnavailable):
        await asyncio.wait_for(bystander, timeout=30)
    await lifecycle.request_exit.wait()
    assert lifecycle.exit_code != 0
    assert lifecycle.failure


@pytest.mark.parametrize("dying", ["policy", "prm"])
async def test_watchdog_notices_any_dead_engine(monkeypatch, dying: str) -> None:
    monkeypatch.setattr(lifecycle_module, "WATCH_INTERVAL_S", 0.01)
    lifecycle = make_lifecycle()
    engines = {"policy": SimpleNamespace(errored=False), "prm": SimpleNamespace(errored=False)}
    lifecycle.watch(engines)
    await asyncio.sleep(0.05)
    assert lifecycle.failure is None
    engines[dying].errored = True
    await lifecycle.request_exit.wait()
    assert dying in (lifecycle.failure or "")
    assert lifecycle.exit_code != 0


# ---- /health ----------------------------------------------------------------------------------


class FakeLLM:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    async def check_health(self) -> None:
        if self.error is not None:
            raise self.error


def fake_service(policy: FakeLLM, prm: FakeLLM | None = None) -> SimpleNamespace:
    resources = replace(
        Resources.build(Settings(), None),
        vllm_prm=SimpleNamespace(llm=prm) if prm is not None else None,
    )
    return SimpleNamespace(engine=policy, resources=resources)


async def test_health_ok_when_every_engine_is() -> None:
    service = fake_service(FakeLLM(), FakeLLM())
    assert await health_report(make_lifecycle(), service) == (200, {"status": "ok"})


async def test_health_covers_the_prm_engine() -> None:
    service = fake_service(FakeLLM(), FakeLLM(EngineDeadError()))
    status, body = await health_report(make_lifecycle(), service)
    assert status == 503
    assert body["status"] == "unhealthy" and body["error"].startswith("prm engine")


async def test_health_is_503_while_starting_draining_or_failed() -> None:
    lifecycle = make_lifecycle()
    assert (await health_report(lifecycle, None))[0] == 503
    service = fake_service(FakeLLM())
    lifecycle.draining = True
    assert await health_report(lifecycle, service) == (503, {"status": "draining"})
    lifecycle.failure = "the policy engine core died"
    assert (await health_report(lifecycle, service))[1]["status"] == "unhealthy"


# ---- exposure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.53", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("gateway.example", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def settings(**values) -> SimpleNamespace:
    return SimpleNamespace(
        **{"host": "0.0.0.0", "api_key": None, "allow_insecure_no_auth": False, **values}
    )


def test_exposure_refuses_network_without_key() -> None:
    problem = insecure_exposure(settings())
    assert problem and "--api-key" in problem and "--allow-insecure-no-auth" in problem
    assert insecure_exposure(settings(api_key="k")) is None
    assert insecure_exposure(settings(api_keys=["a", "b"])) is None
    assert insecure_exposure(settings(allow_insecure_no_auth=True)) is None
    assert insecure_exposure(settings(host="127.0.0.1")) is None


def test_main_exits_2_before_starting_anything(monkeypatch, capsys) -> None:
    import server.__main__ as entry

    monkeypatch.delenv("THINKSCALE_API_KEY", raising=False)
    monkeypatch.delenv("THINKSCALE_ALLOW_INSECURE_NO_AUTH", raising=False)

    def must_not_start(*_args, **_kwargs):
        raise AssertionError("the app must not be created")

    monkeypatch.setattr(entry, "create_app", must_not_start)
    with pytest.raises(SystemExit) as info:
        entry.main(["--host", "0.0.0.0"])
    assert info.value.code == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in capsys.readouterr().err


# ---- signal handling ----------------------------------------------------------------------------


async def test_first_signal_drains_instead_of_stopping_uvicorn() -> None:
    in_flight = [1]
    lifecycle = make_lifecycle(grace_s=60, in_flight=in_flight)
    server = GatewayServer(uvicorn.Config(gated_app(lifecycle)), lifecycle)
    server._loop = asyncio.get_running_loop()
    server.handle_exit(signal.SIGTERM, None)
    await asyncio.sleep(0.1)
    assert lifecycle.draining and not server.should_exit
    in_flight[0] = 0
    await asyncio.wait_for(_until(lambda: server.should_exit), timeout=30)
    assert server._captured_signals == []  # nothing re-raised: the exit code stays ours
    assert lifecycle.exit_code == 0


async def test_second_signal_stops_at_once() -> None:
    lifecycle = make_lifecycle(grace_s=60, in_flight=[1])
    server = GatewayServer(uvicorn.Config(gated_app(lifecycle)), lifecycle)
    server._loop = asyncio.get_running_loop()
    server.handle_exit(signal.SIGTERM, None)
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit and not server.force_exit
    lifecycle.close()


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)


async def test_an_engine_death_during_the_warm_up_is_left_to_the_start_up_report() -> None:
    """Before the warm-up passed, the start-up reports the death with its cause
    (server/app/warmup.py); the guard must not fail the process first with a generic reason."""
    lifecycle = make_lifecycle()
    lifecycle.ready = False
    with pytest.raises(EngineUnavailable), lifecycle.guard():
        raise EngineDeadError()
    assert lifecycle.failure is None and lifecycle.exit_code == 0
