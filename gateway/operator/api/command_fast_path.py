"""The command endpoint's fast path: a well-formed ``POST /api/v1/devices/{name}/commands`` answered
without FastAPI's per-request machinery.

A command is the API's one latency-critical request (docs/performance.md, "Commands: a fast
path"): FastAPI spent ~0.8 ms of event-loop time on it before the route ran (routing, the
bearer/operator/role dependencies, reading and validating the body) and ~0.4 ms after it
(validating the returned model again, encoding it), a quarter of a command's round trip.

:class:`CommandFastPath` sits just outside the FastAPI application and serves the requests the
route would accept: JSON body decoded by msgspec under the same constraints as
``schemas.CommandIn``, ``Authorization: Bearer`` of a ``control`` operator, a known device. The
answer comes from ``command_answer.send_and_answer``, as the route's does. **Everything else
goes to FastAPI** with the body replayed: another path or method, a body msgspec cannot
decode or that breaks a constraint, a missing, unknown or read-only token, an unknown device.
So every error answer is the route's own, and what is accepted is never more than the route
accepts (msgspec is the stricter of the two: ``"timeout": "5"`` goes to pydantic, which may
take it).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.operator.api.auth import operator_for_token
from gateway.operator.api.command_answer import send_and_answer
from gateway.operator.api.context import ApiContext
from gateway.operator.api.schemas import NAME_PATTERN
from gateway.operator.command_rules import DEFAULT_TIMEOUT_S, DEFAULT_TTL_S, MAX_TIMEOUT_S, MAX_TTL_S
from gateway.store import registry

PATH = re.compile(r"/api/v1/devices/([^/]+)/commands")
"""The route ``/api/v1/devices/{name}/commands`` as Starlette matches it (a segment of any characters but /)."""
MAX_DEVICE_NAME = 64
"""The route's ``Path(max_length=64)``."""
_NAME = re.compile(NAME_PATTERN)


class CommandRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``schemas.CommandIn`` for msgspec: the same fields, defaults and limits."""

    name: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout: Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT_S)] = DEFAULT_TIMEOUT_S
    ttl: Annotated[float, msgspec.Meta(ge=0, le=MAX_TTL_S)] = DEFAULT_TTL_S
    wait: bool = True


_decode = msgspec.json.Decoder(CommandRequest).decode


class CommandFastPath:
    """ASGI middleware: ``app.add_middleware(CommandFastPath, ctx=ctx, route=...)``, added first so
    that the body limits and the request counting (added after it) wrap it.

    ``route`` is the FastAPI route of the endpoint: the fast path puts it in the scope, as
    FastAPI's router would, so the request is counted under its path template. The requests
    answered here are counted by ``iotgw_http_command_fast_path_total`` (docs/api.md).
    """

    def __init__(self, app: ASGIApp, *, ctx: ApiContext, route: BaseRoute) -> None:
        self.app = app
        self.ctx = ctx
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        matched = PATH.fullmatch(scope["path"])
        if matched is None or len(matched[1]) > MAX_DEVICE_NAME or not _json_or_none(scope):
            await self.app(scope, receive, send)
            return
        try:
            body, more = await _read_body(receive)
        except Exception as exc:  # a body limit (LimitExceeded): FastAPI answers it as it would
            await self.app(scope, _raising(exc), send)
            return
        if more is not None:  # the client went away mid-body: nothing to answer
            return
        request = _valid(body)
        ctx = self.ctx
        token = _bearer(scope)
        operator = None if request is None or token is None else await operator_for_token(ctx, token)
        device_name = matched[1]
        device = (
            None
            if operator is None or not operator.may("control")
            else ctx.lookups.run(lambda conn: registry.find_by_name(conn, device_name))
        )
        if request is None or operator is None or device is None:
            await self.app(scope, _replay(body, receive), send)
            return
        ctx.metrics.command_fast_path.inc()
        scope["route"] = self.route
        scope["path_params"] = {"name": device_name}
        response = await send_and_answer(
            ctx,
            device,
            request.name,
            request.args,
            sender=operator.name,
            timeout_s=request.timeout,
            ttl_s=request.ttl,
            wait=request.wait,
        )
        await response(scope, receive, send)


def _header(scope: Scope, name: bytes) -> bytes | None:
    """The header's value; None if it is missing or given more than once (left to FastAPI)."""
    values = [value for key, value in scope["headers"] if key == name]
    return values[0] if len(values) == 1 else None


def _json_or_none(scope: Scope) -> bool:
    """No content type, or one ``application/json`` (FastAPI decodes both as JSON)."""
    if not any(key == b"content-type" for key, _ in scope["headers"]):
        return True
    content_type = _header(scope, b"content-type")
    return content_type is not None and content_type.split(b";", 1)[0].strip().lower() == b"application/json"


def _bearer(scope: Scope) -> str | None:
    """The token of exactly ``Bearer <token>`` (FastAPI's ``HTTPBearer`` reads that the same way);
    anything looser is left to FastAPI."""
    header = _header(scope, b"authorization")
    if header is None:
        return None
    scheme, _, token = header.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token or token != token.strip() or len(token) > 256:
        return None
    return token


def _valid(body: bytes) -> CommandRequest | None:
    """The request if msgspec takes it and the name matches as pydantic's pattern does (whole string)."""
    if not body:
        return None
    try:
        request = _decode(body)
    except msgspec.DecodeError:  # ValidationError too
        return None
    return request if _NAME.fullmatch(request.name) else None


async def _read_body(receive: Receive) -> tuple[bytes, Message | None]:
    """The whole body; the second item is the message that ended it early (a disconnect), else None."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then whatever the connection says (a disconnect)."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _raising(exc: BaseException) -> Receive:
    async def failing() -> Message:
        raise exc

    return failing


__all__ = ["PATH", "CommandFastPath", "CommandRequest"]
