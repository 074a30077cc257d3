"""Request ids: one id per HTTP request, carried by a context variable to every log line
and every engine request the request makes.

Why a context variable: a REBASE or Quiet-STaR request fans out into many engine requests,
from tasks the method creates (tree expansions, reward-model calls, merged streams); asyncio
copies the context into each task, so the id reaches them without threading it through
every signature. `grep <id>` over the logs then shows the request's whole tree.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

__all__ = ["REQUEST_ID", "accept_request_id", "current_request_id", "engine_request_id"]

REQUEST_ID: ContextVar[str | None] = ContextVar("thinkscale_request_id", default=None)

# What we echo from a client's X-Request-Id: short, printable, no spaces (it ends up in log
# lines and vLLM request ids). Anything else is replaced by a generated id.
_VALID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def accept_request_id(header: str | None) -> str:
    """The client's X-Request-Id if it is a sane token, else a fresh one."""
    if header is not None and _VALID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def engine_request_id(prefix: str | None = None) -> str:
    """A unique engine request id under `prefix` (default: the current request's id), for
    engine calls that have no structural name of their own (reward-model calls)."""
    base = prefix or current_request_id() or "internal"
    return f"{base}-{uuid.uuid4().hex[:8]}"
