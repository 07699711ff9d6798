"""Request bodies on the operator API: refused by size and by credentials before they are read.

FastAPI reads and parses a route's whole body before it runs the route's dependencies, the
operator check among them: without this middleware a 400 MB body is read into memory before
its sender is told 401. :class:`BodyLimits` sits in front of the app and, for a request that
carries a body:

1. refuses a ``Content-Length`` above ``max_bytes`` at once: 413, code ``body_too_large``;
2. on ``/api/v1/`` paths, refuses a request without a known operator token at once: 401, as
   the routes would (the role check, 403, stays with the route);
3. passes the rest on, counting what it reads: a chunked body that grows past ``max_bytes``
   stops being read (413, ``body_too_large``), and a body not complete ``body_timeout``
   seconds after its first read gets 408, code ``body_timeout``.

Each of these answers closes the connection (``Connection: close``), so the rest of an unread
body is never read. The codes are listed in docs/api.md, "Limits and quotas".
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.operator.api.auth import UNAUTHORIZED_HEADERS, operator_for_token
from gateway.operator.api.context import ApiContext
from gateway.tokens import bearer_token

API_PREFIX = "/api/v1/"
CLOSE = {"Connection": "close"}


class LimitExceeded(HTTPException):
    """A request refused by a limit; ``code`` names the limit (the error body carries it)."""

    def __init__(self, status_code: int, code: str, detail: str) -> None:
        super().__init__(status_code, detail, headers=CLOSE)
        self.code = code


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class BodyLimits:
    """ASGI middleware: ``app.add_middleware(BodyLimits, ctx=ctx)``; the limits come from ``ctx.settings``."""

    def __init__(self, app: ASGIApp, *, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.ctx.settings.max_body_bytes
        length_header = _header(scope, b"content-length")
        chunked = (_header(scope, b"transfer-encoding") or b"").lower().endswith(b"chunked")
        length = int(length_header) if length_header is not None and length_header.isdigit() else 0
        if length == 0 and not chunked:
            await self.app(scope, receive, send)  # no body to guard
            return
        if length > max_bytes:
            refusal = _refuse(413, "body_too_large", _too_large(max_bytes))
            await refusal(scope, receive, send)
            return
        if scope["path"].startswith(API_PREFIX) and not await self._authorized(scope):
            await _unauthorized()(scope, receive, send)
            return
        await self.app(scope, self._guarded(receive, max_bytes), send)

    async def _authorized(self, scope: Scope) -> bool:
        authorization = _header(scope, b"authorization")
        token = bearer_token(authorization.decode("latin-1")) if authorization is not None else None
        return bool(token) and await operator_for_token(self.ctx, token or "") is not None

    def _guarded(self, receive: Receive, max_bytes: int) -> Receive:
        timeout = self.ctx.settings.body_timeout
        received = 0
        deadline: float | None = None

        async def limited() -> Message:
            nonlocal received, deadline
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + timeout
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                detail = f"the request body did not arrive within {timeout:g} s (api.body_timeout)"
                raise LimitExceeded(408, "body_timeout", detail) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise LimitExceeded(413, "body_too_large", _too_large(max_bytes))
            return message

        return limited


def _too_large(max_bytes: int) -> str:
    return f"the request body is larger than {max_bytes} bytes (api.max_body_bytes)"


def _refuse(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status, headers=CLOSE)


def _unauthorized() -> JSONResponse:
    detail = "missing or unknown operator token (iotgw token add)"
    return JSONResponse({"detail": detail}, 401, headers={**CLOSE, **UNAUTHORIZED_HEADERS})


__all__ = ["API_PREFIX", "BodyLimits", "LimitExceeded"]
