"""The FastAPI application of the operator API: routes, error bodies, request metrics.

``create_app(ctx)`` builds it around an :class:`~gateway.operator.api.context.ApiContext`;
:mod:`gateway.operator.api.server` serves it with uvicorn in the gateway's event loop.
Every error answer is an ``ErrorOut`` JSON body (``{"detail": ...}``), so the
OpenAPI document describes every response the API gives.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import __version__
from gateway.operator.api import live
from gateway.operator.api.command_fast_path import CommandFastPath
from gateway.operator.api.context import ApiContext
from gateway.operator.api.limits import BodyLimits, LimitExceeded
from gateway.operator.api.request_metrics import RequestMetrics
from gateway.operator.api.routes import API, public, router, send_command
from gateway.operator.api.schemas import ErrorOut

OPENAPI_PATH = f"{API}/openapi.json"
DOCS_PATH = f"{API}/docs"


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="iotgw operator API",
        version=__version__,
        description="Devices, readings and commands of an iotgw gateway. Authenticate with "
        "`Authorization: Bearer <operator token>` (`iotgw token add NAME --role read|control`). "
        "See docs/api.md.",
        openapi_url=OPENAPI_PATH,
        docs_url=DOCS_PATH,
        redoc_url=None,
    )
    app.state.iotgw = ctx
    app.include_router(public)
    app.include_router(router)
    app.include_router(live.router)  # the web page and the live feed (docs/live.md)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = exc.code if isinstance(exc, LimitExceeded) else None
        body = ErrorOut(detail=str(exc.detail), code=code).model_dump(exclude_none=True)
        return JSONResponse(body, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(
            exc.errors(), custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")}
        )
        first = errors[0] if errors else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        detail = f"invalid request: {where}: {first.get('msg', 'invalid')}" if first else "invalid request"
        return JSONResponse(ErrorOut(detail=detail, errors=errors).model_dump(exclude_none=True), 422)

    # Each middleware added runs inside those added after it: the body limits guard what the
    # command fast path reads, and the counting middleware counts every answer of both.
    app.add_middleware(CommandFastPath, ctx=ctx, route=_route_of(send_command))
    app.add_middleware(BodyLimits, ctx=ctx)
    app.add_middleware(RequestMetrics, metrics=ctx.metrics)

    return app


def _route_of(endpoint: object) -> APIRoute:
    return next(r for r in router.routes if isinstance(r, APIRoute) and r.endpoint is endpoint)
