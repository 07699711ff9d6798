"""The operator HTTP API (docs/api.md): FastAPI on uvicorn, in the gateway's event loop.

Importing this package pulls in FastAPI, uvicorn and prometheus-client (the
``gateway`` extra); ``gateway.app`` imports it only when ``[api] enabled``.
"""

from gateway.operator.api.app import DOCS_PATH, OPENAPI_PATH, create_app
from gateway.operator.api.context import ApiContext
from gateway.operator.api.server import ApiServer, OperatorApi

__all__ = ["DOCS_PATH", "OPENAPI_PATH", "ApiContext", "ApiServer", "OperatorApi", "create_app"]
