"""Counting API requests by route template: a plain ASGI middleware.

Plain ASGI, not Starlette's ``BaseHTTPMiddleware`` (``@app.middleware("http")``): that one runs
every request in an anyio task group whose cancellation leaves a reference cycle behind (scope,
task group, ``CancelledError`` and its traceback, ~40 objects per request), so each request made
garbage only the cyclic collector could free, and cost ~2.5 ms more per command round trip. The
gateway's runtime policy (``gateway/device/runtime.py``) freezes the heap instead of collecting
it while serving: what serves requests must not make cyclic garbage.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.operator.metrics import GatewayMetrics, method_label


class RequestMetrics:
    """``app.add_middleware(RequestMetrics, metrics=...)``: counts each HTTP request once, when its
    response starts (or as a 500 when the application fails before it does), by method, route
    template and status, and observes the time to that moment."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        counted = False

        def count(status: int) -> None:
            nonlocal counted
            counted = True
            route = getattr(scope.get("route"), "path", "unmatched")
            method = method_label(scope["method"])  # bounded: a client cannot add a series
            self.metrics.http_requests.labels(method, route, str(status)).inc()
            self.metrics.http_seconds.labels(route).observe(time.perf_counter() - started)

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not counted:
                count(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:  # a cancelled request (client gone) is not an error of the API
            if not counted:
                count(500)
            raise


__all__ = ["RequestMetrics"]
