"""Pure ASGI middleware that runs before FastAPI parses a body: request ids, API keys and
the body-size cap.

Why pure ASGI (not `@app.middleware("http")`): these checks must decide from the headers
and from the body *as it streams in*. An unauthenticated 20 MB upload is answered 401 without
reading a byte of it, and a chunked body without Content-Length is cut off (413) as soon as it
passes the cap, instead of after it has been read into memory.
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.auth import is_authorized
from server.api.errors import error_response
from server.core.errors import APIError
from server.core.request_ids import REQUEST_ID, accept_request_id

REQUEST_ID_HEADER = "x-request-id"
# On a refusal whose body we did not read: close the connection. Otherwise uvicorn keeps it
# alive by reading (and discarding) the rest of the upload, all 2 GB of it.
CLOSE = {"Connection": "close"}


class RequestIdMiddleware:
    """Accept the client's X-Request-Id (or make one), expose it as `request.state.request_id`
    and in the logging context, and echo it on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = accept_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


class APIKeyMiddleware:
    """401 for a request without a valid `Authorization: Bearer KEY`, before its body is read.
    `open_paths` (/health, and /metrics unless protected) need no key."""

    def __init__(self, app: ASGIApp, keys: tuple[bytes, ...], open_paths: frozenset[str]) -> None:
        self.app, self.keys, self.open_paths = app, keys, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        authorization = dict(scope["headers"]).get(b"authorization")
        if is_authorized(authorization, self.keys):
            await self.app(scope, receive, send)
            return
        error = APIError(
            "Invalid or missing API key; send 'Authorization: Bearer KEY'",
            status=401,
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer", **CLOSE},
        )
        await error_response(error)(scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised from `receive` when the body passes the cap. An HTTPException, so FastAPI's
    body parsing re-raises it untouched and the error handlers answer 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"Request body is larger than the limit of {limit} bytes", headers=CLOSE
        )


class BodySizeLimitMiddleware:
    """413 for a body over `max_bytes`: at once from Content-Length, else while it streams."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        received = 0
        started = False

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, capped_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = APIError(
            f"Request body is larger than the limit of {self.max_bytes} bytes",
            status=413,
            param="body",
            code="request_too_large",
            headers=CLOSE,
        )
        await error_response(error)(scope, receive, send)
