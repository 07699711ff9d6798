"""Operator authentication: ``Authorization: Bearer iotgw_o_...``, a role per token.

No or unknown token: 401 with ``WWW-Authenticate: Bearer``. A ``read`` token on
an endpoint that needs ``control``: 403. The route gets the :class:`Operator`,
whose name is recorded as the sender of every command.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.operator.api.context import ApiContext, context
from gateway.store import operators
from gateway.store.operators import Operator, Role
from iotgw_common.clock import now_ms

TOUCH_EVERY_MS = 60_000
"""``last_used_ms`` of a token is written at most this often."""

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="operator token",
    description="An operator token from `iotgw token add NAME --role read|control`.",
)


UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="iotgw operators"'}
"""The headers of every 401 answer."""


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers=UNAUTHORIZED_HEADERS)


async def current_operator(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Operator:
    if credentials is None:
        raise _unauthorized("missing 'Authorization: Bearer <operator token>' (iotgw token add)")
    found = await operator_for_token(context(request), credentials.credentials)
    if found is None:
        raise _unauthorized("unknown operator token")
    return found


async def operator_for_token(ctx: ApiContext, token: str) -> Operator | None:
    """The operator owning ``token`` (its use recorded), or None; the HTTP routes and the live feed use it."""
    if len(token) > 256:
        return None
    found = ctx.lookups.run(lambda conn: operators.find_by_token(conn, token))
    if found is None:
        return None
    now = now_ms()
    if found.last_used_ms is None or now - found.last_used_ms > TOUCH_EVERY_MS:
        last = ctx.touched.get(found.id, 0)
        if now - last > TOUCH_EVERY_MS:
            ctx.touched[found.id] = now
            written = ctx.committer.call(lambda conn: operators.touch(conn, found.id, now))
            written.add_done_callback(lambda f: f.cancelled() or f.exception())  # best effort
    return found


def require(role: Role) -> Callable[..., Awaitable[Operator]]:
    """A dependency that admits operators whose role includes ``role``."""

    async def check(operator: Annotated[Operator, Depends(current_operator)]) -> Operator:
        if not operator.may(role):
            raise HTTPException(
                403, f"operator {operator.name!r} has role {operator.role!r}; this needs {role!r}"
            )
        return operator

    return check


Reader = Annotated[Operator, Depends(require("read"))]
Controller = Annotated[Operator, Depends(require("control"))]
