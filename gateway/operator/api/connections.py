"""Connection limits of the operator port, in the protocol objects uvicorn makes per connection.

uvicorn bounds concurrent requests (``limit_concurrency``: 503 once a request head arrives) and
idle keep-alive connections (``timeout_keep_alive``), and h11 bounds a request head's size
(``h11_max_incomplete_event_size``). It has no limit on a connection that never finishes its
request head (3,000 sockets trickling headers stay open) and none per client address. The two
protocol classes here add them, as nginx does (``client_header_timeout``, ``limit_conn``)::

    limits = ConnectionLimits(max_connections=1000, per_address=AddressLimiter(64, exempt), header_timeout=10.0)
    config = uvicorn.Config(app, http=limits.http_protocol(), ws=limits.ws_protocol(), ...)

* **per address**: a connection beyond ``per_address.limit`` open ones from the same address is
  answered ``429`` (``too_many_connections``) and closed before anything is read. Addresses are
  counted as on the device port (``gateway.device.admission``: an IPv6 address as its /64; the
  exempt networks, loopback by default, not limited);
* **in total**: one beyond ``max_connections`` gets ``503`` (``too_many_connections``), closed;
* **header timeout**: a connection that has not sent a complete request head within
  ``header_timeout`` seconds of connecting (or of its previous response) gets ``408``
  (``header_timeout``) and is closed.

A connection counts from accept to close, WebSocket upgrades (the live feed) included: the
upgraded protocol releases it. Counts are per :class:`ConnectionLimits` (one per server).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_remote_addr
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from gateway.device.admission import AddressLimiter

log = logging.getLogger(__name__)

_REASONS = {408: "Request Timeout", 429: "Too Many Requests", 503: "Service Unavailable"}


def _refusal(status: int, code: str, detail: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection: an ``ErrorOut`` JSON body."""
    body = json.dumps({"detail": detail, "code": code}).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionLimits:
    """Counts of open connections per address and in total, and the protocol classes enforcing them.

    Behind a reverse proxy every client has the proxy's address: exempt it (``per_address``'s
    exempt networks). Use from the event loop the server runs on.
    """

    def __init__(self, *, max_connections: int, per_address: AddressLimiter, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.per_address = per_address
        self.header_timeout = header_timeout
        self._open: dict[asyncio.BaseTransport, str | None] = {}  # transport -> its address key
        self.refused = 0
        """Connections refused by a cap since start."""
        self.timed_out = 0
        """Connections closed by the header timeout since start."""

    @property
    def open(self) -> int:
        return len(self._open)

    def admit(self, transport: asyncio.BaseTransport) -> bytes | None:
        """Count a new connection, or return the refusal to write before closing it."""
        remote = get_remote_addr(transport)  # type: ignore[arg-type]
        host = remote[0] if remote else None
        if len(self._open) >= self.max_connections:
            self.refused += 1
            detail = f"the API has {len(self._open)} connections open, its most (api.max_connections)"
            return _refusal(503, "too_many_connections", detail)
        key, number = self.per_address.acquire(host)
        if number > self.per_address.limit:
            self.per_address.release(key)
            self.refused += 1
            detail = (
                f"{self.per_address.limit} connections from {host} are open, the most one address may "
                "have (api.max_connections_per_address)"
            )
            return _refusal(429, "too_many_connections", detail)
        self._open[transport] = key
        return None

    def release(self, transport: asyncio.BaseTransport) -> None:
        """Forget a closed connection; safe to call twice (the HTTP and the WebSocket protocol may)."""
        if transport in self._open:
            self.per_address.release(self._open.pop(transport))

    def http_protocol(self) -> type[H11Protocol]:
        """The HTTP protocol class for ``uvicorn.Config(http=...)``."""
        limits = self

        class LimitedH11Protocol(H11Protocol):
            _head_timer: asyncio.TimerHandle | None = None
            _refused = False

            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                refusal = limits.admit(transport)
                if refusal is not None:
                    self._refused = True
                    self.transport = transport
                    transport.write(refusal)
                    transport.close()
                    return
                super().connection_made(transport)
                self._await_head()

            def connection_lost(self, exc: Exception | None) -> None:
                if self._refused:
                    return
                self._head_received()
                limits.release(self.transport)
                super().connection_lost(exc)

            def data_received(self, data: bytes) -> None:
                if not self._refused:
                    super().data_received(data)

            def handle_events(self) -> None:
                before = self.cycle
                super().handle_events()
                if self.cycle is not before:  # a whole request head arrived
                    self._head_received()

            def handle_websocket_upgrade(self, event: Any) -> None:
                self._head_received()
                super().handle_websocket_upgrade(event)

            def on_response_complete(self) -> None:
                super().on_response_complete()
                if not self.transport.is_closing():
                    self._await_head()  # the next request's head must arrive in time too

            def _await_head(self) -> None:
                self._head_received()
                self._head_timer = self.loop.call_later(limits.header_timeout, self._head_too_slow)

            def _head_received(self) -> None:
                if self._head_timer is not None:
                    self._head_timer.cancel()
                    self._head_timer = None

            def _head_too_slow(self) -> None:
                self._head_timer = None
                if self.transport.is_closing() or (
                    self.cycle is not None and not self.cycle.response_complete
                ):
                    return
                limits.timed_out += 1
                detail = f"no complete request head within {limits.header_timeout:g} s (api.header_timeout)"
                self.transport.write(_refusal(408, "header_timeout", detail))
                self.transport.close()

        return LimitedH11Protocol

    def ws_protocol(self) -> type[WebSocketsSansIOProtocol]:
        """The WebSocket protocol class for ``uvicorn.Config(ws=...)``: releases the upgraded connection."""
        limits = self

        class LimitedWebSocketProtocol(WebSocketsSansIOProtocol):
            def connection_lost(self, exc: Exception | None) -> None:
                limits.release(self.transport)
                super().connection_lost(exc)

        return LimitedWebSocketProtocol


__all__ = ["ConnectionLimits"]
