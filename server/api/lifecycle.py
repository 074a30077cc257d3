"""The gateway process's life: serving, draining after SIGTERM, or failed because an engine died.

Why one object: three places must agree on it. The admission gate answers 503 to new `/v1/*`
requests once the process is stopping; running requests must be cut (with an error their client
can read) when the grace period ends or an engine dies; and the process must then exit, 0 after a
drain, non-zero after a failure, so Docker or Kubernetes restarts it (vLLM's own server does the
same with `terminate_if_errored`). See README "Operating it" for the operator's view.

The request path only needs :meth:`Lifecycle.guard` around its engine work; everything else
(signals, the uvicorn server) lives in :mod:`server.app.serve`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from vllm.v1.engine.exceptions import EngineDeadError

from server.api.errors import error_response
from server.core.errors import APIError

logger = logging.getLogger(__name__)

# After cutting requests, how long their handlers get to send the error (and `[DONE]`).
CUT_FLUSH_S = 5.0
# How often the engine watchdog looks at the engines (vLLM's own watchdog: every 5 s).
WATCH_INTERVAL_S = 1.0
EXIT_ENGINE_DEAD = 1


class ServerShuttingDown(APIError):
    """A request that was cut because the grace period of a shutdown ended."""

    def __init__(self) -> None:
        super().__init__(
            "The server is shutting down; retry on another replica",
            status=503,
            code="server_shutting_down",
        )


class EngineUnavailable(APIError):
    """A request that failed because an engine died; the process is about to exit."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"The inference engine is no longer running ({reason}); the server is restarting",
            status=503,
            code="engine_dead",
        )


class Lifecycle:
    """Whether new requests are admitted, and how the process ends.

    `in_flight` counts admitted, unfinished requests (the app wires it to
    `CompletionService.admitted`); `request_exit` stops the HTTP server (wired by
    :mod:`server.app.serve`; without it, e.g. under a bare `uvicorn` command, SIGTERM ourselves).
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.draining = False
        self.failure: str | None = None
        self.exit_code = 0
        # False until the engine has started and passed its warm-up (server/app/warmup.py): a dead
        # engine during the warm-up is reported by the start-up, with its cause, not here.
        self.ready = False
        self.in_flight: Callable[[], int] = lambda: 0
        self.request_exit: Callable[[], None] = lambda: os.kill(os.getpid(), signal.SIGTERM)
        self._guarded: dict[asyncio.Task, bool] = {}  # task -> cut by us
        self._cut_error: APIError | None = None
        self._stopper: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None

    @property
    def admitting(self) -> bool:
        return not self.draining and self.failure is None

    # ---- the two ways to stop -------------------------------------------------------------
    def begin_drain(self) -> None:
        """SIGTERM: refuse new requests, let running ones finish within the grace period."""
        if self._stopper is not None:
            return
        self.draining = True
        logger.warning(
            "shutting down: refusing new requests, %d in flight get up to %.0f s",
            self.in_flight(),
            self.grace_s,
        )
        self._stopper = asyncio.get_running_loop().create_task(self._stop(self.grace_s))

    def fail(self, reason: str) -> None:
        """An engine died (or never started): fail everything now and exit non-zero."""
        if self.failure is not None:
            return
        logger.error("%s: failing in-flight requests and exiting", reason)
        self.failure = reason
        self.draining = True
        self.exit_code = EXIT_ENGINE_DEAD
        self.cut(EngineUnavailable(reason))
        if self._stopper is not None:
            self._stopper.cancel()
        self._stopper = asyncio.get_running_loop().create_task(self._stop(0.0))

    async def _stop(self, grace_s: float) -> None:
        await self._wait_idle(grace_s)
        if self.in_flight() and self._cut_error is None:
            logger.warning("grace period over: cutting %d request(s)", self.in_flight())
            self.cut(ServerShuttingDown())
        await self._wait_idle(CUT_FLUSH_S)
        self.request_exit()

    async def _wait_idle(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.in_flight() > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)

    # ---- cutting running requests -----------------------------------------------------------
    def cut(self, error: APIError) -> None:
        """Make every guarded request (and any that starts later) fail with `error`."""
        self._cut_error = error
        current = asyncio.current_task()
        for task in list(self._guarded):
            # The current task is the one reporting the failure; it raises its own error.
            if task is not current and not self._guarded[task]:
                self._guarded[task] = True
                task.cancel(msg=error.message)

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Wrap one request's engine work: a cut turns into its 503, a dead engine too.

        Like `asyncio.timeout`, a cut cancels the running task and the scope turns that
        cancellation into an exception the route already answers (503 JSON, or an SSE error
        event followed by `[DONE]`). A cut that lands while a stream is handing a chunk to the
        client (outside this scope) ends that stream like a disconnect.
        """
        if self._cut_error is not None:
            raise self._cut_error
        task = asyncio.current_task()
        assert task is not None
        self._guarded[task] = False
        try:
            yield
        except asyncio.CancelledError:
            if self._guarded.get(task) and task.uncancel() == 0 and self._cut_error is not None:
                raise self._cut_error from None
            raise
        except EngineDeadError as exc:
            if self.ready:
                self.fail("engine core died")
            raise EngineUnavailable("engine core died") from exc
        finally:
            self._guarded.pop(task, None)

    # ---- watching the engines -----------------------------------------------------------------
    def watch(self, engines: dict[str, Any]) -> None:
        """Poll each vLLM `AsyncLLM`'s `errored` flag (set by vLLM's process monitor) and fail
        on the first dead one, so an idle gateway with a dead engine exits too."""
        self._watcher = asyncio.get_running_loop().create_task(self._watch(engines))

    async def _watch(self, engines: dict[str, Any]) -> None:
        while self.failure is None:
            for name, llm in engines.items():
                if llm is not None and llm.errored:
                    self.fail(f"the {name} engine core died")
                    return
            await asyncio.sleep(WATCH_INTERVAL_S)

    def close(self) -> None:
        for task in (self._watcher, self._stopper):
            if task is not None and task is not asyncio.current_task():
                task.cancel()


class AdmissionGate:
    """Pure ASGI middleware: while the process is stopping, new `/v1/*` requests get a 503.

    Why middleware and not a route dependency: it must also cover routes added later and answer
    before the body is read; `Connection: close` sends the client's next try elsewhere.
    """

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lifecycle = self.lifecycle
        if scope["type"] == "http" and scope["path"].startswith("/v1/") and not lifecycle.admitting:
            if lifecycle.failure is not None:
                error: APIError = EngineUnavailable(lifecycle.failure)
            else:
                error = ServerShuttingDown()
            response = error_response(error)
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
