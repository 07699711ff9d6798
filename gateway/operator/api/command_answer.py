"""How ``POST /api/v1/devices/{name}/commands`` answers: submit, wait if asked, the response.

One function for both ways a command request is served: the FastAPI route
(``routes.send_command``, every request it gets) and the command fast path
(``command_fast_path.CommandFastPath``, well-formed requests of a ``control`` operator for a
known device). Both pass what they validated; this submits the command, waits for it, and
builds the response, so the two cannot drift apart.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.responses import JSONResponse, Response

from gateway.operator.api.context import ApiContext
from gateway.operator.api.schemas import CommandOut, ErrorOut
from gateway.operator.command_rules import CommandError, TooManyOpenCommands
from gateway.store.ledger import CommandRecord
from gateway.store.registry import DeviceRecord
from iotgw_common.clock import now_ms

COMMANDS_PATH = "/api/v1/commands"
"""Where a command is read back: ``Location: /api/v1/commands/<id>``."""
SWEEP_GRACE_S = 0.25
"""Extra wait past a sent command's deadline for the sweeper to mark it failed."""


def command_out(record: CommandRecord) -> CommandOut:
    """The API's view of a command (``GET /commands/{id}``, lists, and the send answer)."""
    return CommandOut.model_validate(
        {
            "id": record.id,
            "device": record.device,
            "name": record.name,
            "args": record.args,
            "state": record.state,
            "sender": record.sender,
            "created_ms": record.created_ms,
            "expires_ms": record.expires_ms,
            "timeout": record.timeout_ms / 1000,
            "deadline_ms": record.deadline_ms,
            "updated_ms": record.updated_ms,
            "value": record.value,
            "error": record.error,
            "history": [{"state": c.state, "ts": c.ts_ms, "detail": c.detail} for c in record.history],
        }
    )


async def send_and_answer(
    ctx: ApiContext,
    device: DeviceRecord,
    name: str,
    args: dict[str, Any],
    *,
    sender: str,
    timeout_s: float,
    ttl_s: float,
    wait: bool,
) -> Response:
    """Submit the command and answer: 200 with the final command, or 202 if it is not final yet
    (``wait`` false, or the wait ran out); 429 at the device's open-command quota, 422 for a
    command the device does not accept or arguments too large.

    The caller has checked the operator (``control``), the device, and the body's limits
    (``schemas.CommandIn``). The body is encoded here (pydantic's JSON of ``CommandOut``), so
    FastAPI passes the response through without validating it again.
    """
    try:
        command = await ctx.commands.submit(
            device, name, args, sender=sender, timeout_s=timeout_s, ttl_s=ttl_s
        )
    except TooManyOpenCommands as exc:
        return JSONResponse(ErrorOut(detail=exc.detail, code=exc.code).model_dump(exclude_none=True), 429)
    except CommandError as exc:
        return JSONResponse(
            ErrorOut(detail=exc.detail, declared=exc.declared).model_dump(exclude_none=True), 422
        )
    if wait and not command.final:
        budget = ctx.settings.max_wait
        started = time.monotonic()
        command = await ctx.commands.wait(command.id, min(timeout_s, budget)) or command
        if command.state == "sent":  # sent late in the wait: its deadline (sent + timeout) decides
            left = (command.deadline_ms - now_ms()) / 1000 + SWEEP_GRACE_S
            left = min(left, budget - (time.monotonic() - started))
            if left > 0:
                command = await ctx.commands.wait(command.id, left) or command
    return Response(
        command_out(command).model_dump_json(),
        status_code=200 if command.final else 202,
        media_type="application/json",
        headers={"Location": f"{COMMANDS_PATH}/{command.id}"},
    )


__all__ = ["COMMANDS_PATH", "SWEEP_GRACE_S", "command_out", "send_and_answer"]
