"""OpenAI-style error responses: `{"error": {"message", "type", "param", "code"}}`, always.

Why: clients (the openai package, load-test tools) parse this shape; FastAPI's default 422
body would surface as an unhelpful generic error. Bad input is always a 4xx naming the
field; only our own bugs may become a 500. `APIError` itself lives in `server.core.errors` so that
code below the HTTP layer can raise it; this module maps it (and every other exception) to
a response.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from vllm.exceptions import VLLMClientError, VLLMValidationError

from server.api.protocol import ErrorBody, ErrorResponse
from server.core.errors import APIError

logger = logging.getLogger(__name__)

# Every 429 tells the client when to come back (seconds); admission frees up quickly.
RETRY_AFTER_S = "1"


class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error message may quote client input, and a lone
    UTF-16 surrogate in it would make Starlette's UTF-8 rendering raise (a 500)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_payload(error: APIError) -> dict:
    """The OpenAI error body of `error` (also sent as an SSE event after a stream started)."""
    return ErrorResponse(
        error=ErrorBody(message=error.message, type=error.type, param=error.param, code=error.code)
    ).model_dump()


def error_response(error: APIError) -> JSONResponse:
    headers = dict(error.headers)
    if error.status == 429:
        headers.setdefault("Retry-After", RETRY_AFTER_S)
    return SafeJSONResponse(
        status_code=error.status, content=error_payload(error), headers=headers or None
    )


def _field_path(loc: tuple) -> str:
    """`("body", "rebase", "width")` -> `rebase.width`; list indices as `[i]`."""
    parts: list[str] = []
    for item in loc:
        if item == "body" and not parts:
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif parts:
            parts.append(f".{item}")
        else:
            parts.append(str(item))
    return "".join(parts)


def validation_error(exc: RequestValidationError) -> APIError:
    """Turn pydantic's error list into one message naming the first offending field."""
    first = exc.errors()[0]
    loc = tuple(first.get("loc", ()))
    # Drop pydantic's union-branch names (e.g. "str", "list[str]") from the path.
    loc = tuple(x for x in loc if not (isinstance(x, str) and ("[" in x or x in _TYPE_NAMES)))
    field = _field_path(loc) or "body"
    if first.get("type") == "json_invalid":
        return APIError(f"Request body is not valid JSON: {first.get('msg')}", param="body")
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return APIError(f"Invalid value for '{field}': {msg}", param=field)


_TYPE_NAMES = {"str", "int", "float", "bool", "function-after", "function-plain"}


def vllm_error(exc: VLLMClientError | ValueError) -> APIError:
    """vLLM's own input validation (SamplingParams, the engine's checks) is the client's
    fault: a 400 naming the parameter, which vLLM gives as `parameter` or, more often, as
    the first word of its message ("min_tokens must be less than or equal to ...")."""
    message = str(exc.args[0]) if exc.args else str(exc)
    param = getattr(exc, "parameter", None) or _leading_identifier(message)
    return APIError(message, param=param)


def _leading_identifier(message: str) -> str | None:
    head = message.split(" ", 1)[0].strip("'\"`:,")
    return head if head.isidentifier() else None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        too_large = exc.status_code == 413  # the body cap (server.api.middleware)
        return error_response(
            APIError(
                str(exc.detail),
                status=exc.status_code,
                headers=exc.headers,
                param="body" if too_large else None,
                code="request_too_large" if too_large else None,
            )
        )

    @app.exception_handler(VLLMValidationError)
    async def _vllm_validation(_: Request, exc: VLLMValidationError) -> JSONResponse:
        return error_response(vllm_error(exc))

    @app.exception_handler(VLLMClientError)
    async def _vllm_client(_: Request, exc: VLLMClientError) -> JSONResponse:
        return error_response(vllm_error(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return error_response(APIError(f"Internal server error: {type(exc).__name__}", status=500))
