"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` for every failure.

Why: clients (the openai package, load-test tools) parse this shape; FastAPI's default 422
body would surface as an unhelpful generic error. Bad input is always a 4xx naming the
field; only our own bugs may become a 500.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from vllm.exceptions import VLLMClientError, VLLMValidationError

from server.api.protocol import ErrorBody, ErrorResponse

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error that should reach the client as-is."""

    def __init__(
        self,
        message: str,
        *,
        status: int = HTTPStatus.BAD_REQUEST,
        param: str | None = None,
        type: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = int(status)
        self.param = param
        self.type = type or _default_type(self.status)
        self.code = code


def _default_type(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_exceeded",
        503: "service_unavailable",
        504: "timeout",
    }.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_response(error: APIError) -> JSONResponse:
    body = ErrorResponse(
        error=ErrorBody(message=error.message, type=error.type, param=error.param, code=error.code)
    )
    return JSONResponse(status_code=error.status, content=body.model_dump())


def error_payload(error: APIError) -> dict:
    """The same body, for an error that happens after a stream has started."""
    return ErrorResponse(
        error=ErrorBody(message=error.message, type=error.type, param=error.param, code=error.code)
    ).model_dump()


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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(APIError(str(exc.detail), status=exc.status_code))

    @app.exception_handler(VLLMValidationError)
    async def _vllm_validation(_: Request, exc: VLLMValidationError) -> JSONResponse:
        return error_response(APIError(str(exc), param=exc.parameter))

    @app.exception_handler(VLLMClientError)
    async def _vllm_client(_: Request, exc: VLLMClientError) -> JSONResponse:
        return error_response(APIError(str(exc)))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return error_response(APIError(f"Internal server error: {type(exc).__name__}", status=500))
