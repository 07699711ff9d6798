"""The live view on the operator port: the web page, its assets, and the live feed WebSocket.

* ``GET /`` — the page (``gateway/operator/web/index.html``); ``GET /ui/<file>`` — its script, style
  and icon. They hold no data and need no token: the page asks for one and sends it with
  every API call and on the feed.
* ``WS /api/v1/feed`` — the live feed (docs/live.md). The client authenticates with an
  ``Authorization: Bearer`` header at the handshake (scripts) or with ``token`` in its first
  message (browsers cannot set headers on a WebSocket); tokens never travel in a URL, so
  they never reach an access log. Then the gateway sends ``subscribed`` and every message of
  :mod:`gateway.operator.feed` that matches the filter, in order, until either side closes.

Close codes of the feed: 4400 bad subscribe message, 4401 no or unknown token (also when the
token is removed while subscribed: ``iotgw token remove`` ends its subscriptions), 4408 no
subscribe message in time, 4409 the token holds ``api.feed_subscribers_per_token``
subscriptions already, 4429 the subscriber fell behind (slow-subscriber policy), 1001
the gateway is shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from importlib import resources
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, HTTPException, WebSocket
from fastapi.responses import Response
from starlette.websockets import WebSocketDisconnect, WebSocketState

from gateway.operator.api.auth import operator_for_token
from gateway.operator.api.context import ApiContext
from gateway.operator.api.routes import API
from gateway.operator.feed import (
    KINDS,
    Feed,
    FeedFilter,
    SubscriberTooSlow,
    SubscriptionClosed,
    SubscriptionRevoked,
)
from gateway.store import operators
from gateway.tokens import bearer_token
from iotgw_common.protocol.messages import DEVICE_NAME_PATTERN, METRIC_NAME_PATTERN
from iotgw_common.urgency import mark_ordinary

log = logging.getLogger(__name__)

FEED_PATH = f"{API}/feed"
SUBSCRIBE_TIMEOUT_S = 10.0
TOKEN_CHECK_S = 0.5
"""How often the subscribers' operator tokens are checked while anyone subscribes (``token remove``)."""
MAX_FILTER_ITEMS = 256


class FeedClose:
    """Close codes of the live feed (docs/live.md, "Close codes")."""

    BAD_SUBSCRIBE = 4400
    UNAUTHORIZED = 4401
    SUBSCRIBE_TIMEOUT = 4408
    TOO_MANY_SUBSCRIPTIONS = 4409
    TOO_SLOW = 4429
    GOING_AWAY = 1001


_Names = Annotated[list[str], msgspec.Meta(max_length=MAX_FILTER_ITEMS)]


class Subscribe(msgspec.Struct, tag_field="type", tag="subscribe", forbid_unknown_fields=True):
    """The client's first message on the feed."""

    token: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    devices: Annotated[list[Annotated[str, msgspec.Meta(pattern=DEVICE_NAME_PATTERN)]], msgspec.Meta(max_length=MAX_FILTER_ITEMS)] | None = None  # fmt: skip
    metrics: Annotated[list[Annotated[str, msgspec.Meta(pattern=METRIC_NAME_PATTERN)]], msgspec.Meta(max_length=MAX_FILTER_ITEMS)] | None = None  # fmt: skip
    types: _Names | None = None
    after: Annotated[int, msgspec.Meta(ge=0)] | None = None
    epoch: Annotated[str, msgspec.Meta(max_length=64)] | None = None


_decode_subscribe = msgspec.json.Decoder(Subscribe).decode

router = APIRouter(tags=["live"])

# -- the page ------------------------------------------------------------------------------

_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "controls.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
_SECURITY_HEADERS = {
    # Everything comes from the gateway itself: no CDN, works without internet.
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> bytes:
    return resources.files("gateway.operator").joinpath("web", name).read_bytes()


@router.get("/", include_in_schema=False)
async def page() -> Response:
    return Response(_asset("index.html"), media_type="text/html; charset=utf-8", headers=_SECURITY_HEADERS)


@router.get("/ui/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, f"no asset {name!r}")
    return Response(_asset(name), media_type=media_type, headers=_SECURITY_HEADERS)


# -- the feed ------------------------------------------------------------------------------


@router.websocket(FEED_PATH)
async def feed_socket(websocket: WebSocket) -> None:
    ctx: ApiContext = websocket.app.state.iotgw
    feed = ctx.feed
    await websocket.accept()
    try:
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                first = await websocket.receive_text()
        except TimeoutError:
            await websocket.close(FeedClose.SUBSCRIBE_TIMEOUT, "send a subscribe message first")
            return
        try:
            request = _decode_subscribe(first)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await websocket.close(FeedClose.BAD_SUBSCRIBE, _reason(f"bad subscribe message: {exc}"))
            return
        kinds = frozenset(request.types) if request.types is not None else None
        if kinds is not None and not kinds <= KINDS:
            unknown = ", ".join(sorted(kinds - KINDS))
            await websocket.close(FeedClose.BAD_SUBSCRIBE, _reason(f"unknown types: {unknown}"))
            return
        token = request.token or bearer_token(websocket.headers.get("authorization"))
        operator = await operator_for_token(ctx, token) if token else None
        if operator is None:
            await websocket.close(FeedClose.UNAUTHORIZED, "missing or unknown operator token")
            return
        if feed is None:
            await websocket.close(FeedClose.GOING_AWAY, "the live feed is not running")
            return
        held = ctx.feed_subscriptions.get(operator.id, 0)
        if held >= ctx.settings.feed_subscribers_per_token:  # a quota per token (docs/api.md)
            log.warning("live feed: %s refused: %d subscriptions open already", operator.name, held)
            reason = f"too many subscriptions: this token holds {held} (api.feed_subscribers_per_token)"
            await websocket.close(FeedClose.TOO_MANY_SUBSCRIPTIONS, _reason(reason))
            return
        flt = FeedFilter(
            devices=frozenset(request.devices) if request.devices is not None else None,
            metrics=frozenset(request.metrics) if request.metrics is not None else None,
            kinds=kinds,
        )
        sub, resumed = feed.subscribe(flt, after=request.after, epoch=request.epoch, owner=token)
        if feed.watch is None or feed.watch.done():
            feed.watch = asyncio.create_task(_watch_tokens(ctx, feed), name="feed-token-watch")
        ctx.feed_subscriptions[operator.id] = held + 1  # no await since the check: no race
        try:
            hello: dict[str, Any] = {
                "type": "subscribed", "epoch": feed.epoch, "last_id": feed.last_id, "resumed": resumed,
                "operator": operator.name, "role": operator.role, "queue": sub.maxsize,
            }  # fmt: skip
            await websocket.send_text(msgspec.json.encode(hello).decode())
            log.info("live feed: %s subscribed (%d subscribers)", operator.name, feed.subscribers)
            code, reason = await _pump(websocket, sub)
        finally:
            sub.close()
            ctx.release_subscription(operator.id)
        if code is not None:
            with contextlib.suppress(Exception):
                await websocket.close(code, reason)
    except WebSocketDisconnect:
        return


async def _pump(websocket: WebSocket, sub: Any) -> tuple[int | None, str]:
    """Send the subscription's messages until the client leaves; the close code to send, if any."""

    async def send() -> tuple[int, str]:
        mark_ordinary()  # a stream of readings, not the urgent request/response of the API
        while True:
            try:
                entry = await sub.get()
            except SubscriberTooSlow:
                log.warning("live feed: subscriber dropped: more than %d messages behind", sub.maxsize)
                return FeedClose.TOO_SLOW, f"too slow: resubscribe with after={sub.last_id}"
            except SubscriptionRevoked as revoked:
                return FeedClose.UNAUTHORIZED, str(revoked)
            except SubscriptionClosed:
                return FeedClose.GOING_AWAY, "gateway shutting down"
            raw = sub.encode(entry)
            if raw is not None:
                await websocket.send_text(raw.decode())

    async def receive() -> None:
        while True:  # the client says nothing after subscribing; this notices it leaving
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return

    sender = asyncio.create_task(send())
    listener = asyncio.create_task(receive())
    try:
        done, _ = await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, listener):
            task.cancel()
        await asyncio.gather(sender, listener, return_exceptions=True)
    connected = websocket.application_state == WebSocketState.CONNECTED
    if sender in done and not sender.cancelled() and sender.exception() is None and connected:
        return sender.result()
    return None, ""


async def _watch_tokens(ctx: ApiContext, feed: Feed) -> None:
    """While the feed has subscribers: end those whose operator token was removed (close 4401).

    ``iotgw token remove`` writes the store from another process; this finds out within
    ``TOKEN_CHECK_S`` with one indexed lookup per distinct token, on the API's read pool.
    """
    while feed.subscribers:
        await asyncio.sleep(TOKEN_CHECK_S)
        held = feed.owners()
        if not held:
            continue
        try:
            valid = await ctx.reads.run(functools.partial(_still_valid, tokens=held))
        except Exception as exc:  # the store is busy or failing: look again next time
            log.warning("live feed: cannot check operator tokens: %s", exc)
            continue
        for token in held - valid:
            ended = feed.revoke(token, "the operator token was removed (iotgw token remove)")
            log.warning("live feed: %d subscription(s) ended: their operator token was removed", ended)


def _still_valid(conn: sqlite3.Connection, tokens: set[str]) -> set[str]:
    return {token for token in tokens if operators.find_by_token(conn, token) is not None}


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes (RFC 6455 section 5.5)."""
    encoded = text.encode()
    return text if len(encoded) <= 123 else encoded[:120].decode(errors="ignore") + "..."


__all__ = ["FEED_PATH", "FeedClose", "router"]
