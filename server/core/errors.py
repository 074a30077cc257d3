"""`APIError`: an error meant for the client, raised anywhere in the server.

Why here and not in `server.api`: methods, reward models and Quiet-STaR raise it when a
request asks for something they cannot do, and they sit below the HTTP layer; the HTTP
layer (`server.api.errors`) only maps it to a response. Nothing below `server.api` imports
from `server.api` (tests/unit/test_api_hardening.py checks it).
"""

from __future__ import annotations

from http import HTTPStatus

__all__ = ["APIError", "default_error_type"]


class APIError(Exception):
    """An error that should reach the client as-is, in OpenAI's error shape.

    `headers` are added to the HTTP response (e.g. `Retry-After` on a 429).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = HTTPStatus.BAD_REQUEST,
        param: str | None = None,
        type: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = int(status)
        self.param = param
        self.type = type or default_error_type(self.status)
        self.code = code
        self.headers = dict(headers or {})


def default_error_type(status: int) -> str:
    """OpenAI's `error.type` for a status code."""
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        413: "invalid_request_error",
        429: "rate_limit_exceeded",
        503: "service_unavailable",
        504: "timeout",
    }.get(status, "server_error" if status >= 500 else "invalid_request_error")
