"""Run the app under uvicorn with our shutdown: drain on SIGTERM, then exit 0 (or 1 if failed).

Why not plain `uvicorn.run`: on SIGTERM uvicorn closes its socket at once (new clients get
"connection refused", not a 503), waits for connections only `timeout_graceful_shutdown`, and
then re-raises the signal, so the process ends with -15 instead of 0; and sse-starlette, on the
same signal, cancels every open stream. Here the first SIGTERM/SIGINT starts
:meth:`Lifecycle.begin_drain`; uvicorn is told to stop only when the drain is over. A second
signal stops at once (uvicorn's shutdown, engines closed), a third forces the exit.
"""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import uvicorn
from fastapi import FastAPI
from sse_starlette.sse import AppStatus

from server.api.lifecycle import CUT_FLUSH_S, Lifecycle

logger = logging.getLogger(__name__)


class GatewayServer(uvicorn.Server):
    """uvicorn's server with the gateway's signal handling (see module docstring)."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.signals = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        lifecycle.request_exit = self._exit

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def _exit(self) -> None:
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in a signal handler: only hand the work to the event loop.
        self.signals += 1
        if self.signals == 1 and self._loop is not None:
            self._loop.call_soon_threadsafe(self.lifecycle.begin_drain)
        elif self.signals == 2:
            logger.warning("second signal: stopping without waiting for requests")
            self.should_exit = True
        else:
            self.should_exit = self.force_exit = True


def run(app: FastAPI, host: str, port: int, log_level: str) -> int:
    """Serve until drained or failed; return the process exit code."""
    lifecycle: Lifecycle = app.state.lifecycle
    # We drain streams ourselves; sse-starlette must not cancel them on the signal.
    AppStatus.disable_automatic_graceful_drain()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,  # uvicorn's loggers propagate to ours (same format, request ids)
        # By the time uvicorn stops, requests are done or cut: this only bounds the flush.
        timeout_graceful_shutdown=int(CUT_FLUSH_S),
    )
    GatewayServer(config, lifecycle).run()
    return lifecycle.exit_code
