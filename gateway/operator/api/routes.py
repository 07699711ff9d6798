"""The endpoints of the operator API (docs/api.md). All JSON; reads need a ``read`` token,
changes a ``control`` token; ``/healthz`` and ``/metrics`` need none."""

from __future__ import annotations

import sqlite3
import time
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response

from gateway import __version__
from gateway.integrations.influx.lineprotocol import check_label
from gateway.integrations.influx.sink import NAME as INFLUX
from gateway.integrations.mqtt.sink import NAME as MQTT
from gateway.operator.api.auth import Controller, Reader
from gateway.operator.api.command_answer import command_out, send_and_answer
from gateway.operator.api.context import ApiContext, context
from gateway.operator.api.schemas import (
    NAME_PATTERN,
    CommandIn,
    CommandOut,
    CommandsOut,
    DeviceOut,
    ErrorOut,
    EventOut,
    EventsOut,
    Health,
    HistoryOut,
    IngestOut,
    LabelsIn,
    LatestOut,
    PointOut,
    StatusOut,
)
from gateway.operator.command_rules import CommandError, UnknownCommand
from gateway.operator.metrics import CONTENT_TYPE
from gateway.store import delivery, ledger, registry
from gateway.store import readings as history
from gateway.store.ledger import CommandRecord
from gateway.store.registry import DeviceRecord
from iotgw_common.clock import now_ms
from iotgw_common.protocol.messages import MAX_SEQ

API = "/api/v1"
HOUR_MS = 3_600_000


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "the body is not valid JSON",
        401: "no or unknown operator token",
        403: "the token's role does not allow this",
        404: "no such device or command",
        409: "the command is past the state this needs",
        413: "the request body is larger than api.max_body_bytes (code body_too_large)",
        422: "invalid request (or a command the device does not accept)",
        429: "a quota is reached (code too_many_open_commands): docs/api.md, Limits and quotas",
    }
    return {code: {"model": ErrorOut, "description": text[code]} for code in codes}


READ_ERRORS = _errors(401, 404, 422)
CONTROL_ERRORS = _errors(401, 403, 404, 422)
BODY_ERRORS = _errors(400, 401, 403, 404, 413, 422)

DeviceName = Annotated[str, Path(max_length=64, description="the device's name")]
TimeMs = Annotated[int | None, Query(ge=0, le=MAX_SEQ)]

public = APIRouter(tags=["health"])
router = APIRouter(prefix=API)


async def _device(ctx: ApiContext, name: str) -> DeviceRecord:
    record = ctx.lookups.run(lambda conn: registry.find_by_name(conn, name))
    if record is None:
        raise HTTPException(404, f"no device named {name!r}")
    return record


def _device_out(ctx: ApiContext, d: DeviceRecord) -> DeviceOut:
    session = ctx.devices.sessions.get(d.id)
    holder = ctx.locate(d.name) if ctx.locate is not None else None
    return DeviceOut.model_validate(
        {
            "name": d.name,
            "online": session is not None or holder is not None,
            "peer": session.peer if session else None,
            "gateway": holder,
            "last_seen_ms": d.last_seen_ms,
            "agent": d.agent,
            "labels": d.labels,
            "sensors": d.sensors,
            "commands": d.commands,
            "info": d.info,
            "buffered": d.buffered,
            "dropped": d.dropped,
            "stream": d.stream,
            "last_seq": d.last_seq,
            "created_ms": d.created_ms,
        }
    )


# -- health and metrics ----------------------------------------------------------------


@public.get("/healthz", response_model=Health, summary="Liveness: the gateway answers")
async def healthz() -> Health:
    return Health(status="ok")


@public.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    return Response(await context(request).metrics.render(), media_type=CONTENT_TYPE)


@router.get("/status", response_model=StatusOut, responses=_errors(401), tags=["status"])
async def status(request: Request, _: Reader) -> StatusOut:
    """Connections, ingest rate, store size, open commands, forwarder state."""
    ctx = context(request)

    def read(conn: sqlite3.Connection) -> tuple[int, list[dict[str, Any]]]:
        count = registry.count_devices(conn)
        sinks = [delivery.read_status(conn, name) for name in (INFLUX, MQTT)]
        return count, [msgspec.to_builtins(sink) for sink in sinks if sink.configured]

    registered, forwarders = await ctx.reads.run(read)
    for forwarder in forwarders:
        live = ctx.live_status.get(forwarder["name"])
        if live is not None:
            forwarder["connection"] = live()
    c = ctx.committer
    return StatusOut(
        version=__version__,
        uptime_s=round(time.monotonic() - ctx.started, 3),
        devices_registered=registered,
        devices_connected=len(ctx.devices.sessions),
        refused_handshakes=ctx.devices.refused_handshakes,
        ingest=IngestOut(
            samples_per_s=round(ctx.rate.per_second(), 3),
            committed_samples=c.committed_samples,
            commits=c.commits,
            failed_commits=c.failed_commits,
            pending_samples=c.pending_samples,
        ),
        store_path=str(ctx.store_path),
        store_bytes=history.store_bytes(ctx.store_path),
        commands_open=ctx.commands.open_counts,
        commands_finished=dict(ctx.commands.finished),
        forwarders=forwarders,
        fleet=ctx.live_status["fleet"]() if "fleet" in ctx.live_status else None,
    )


# -- devices -----------------------------------------------------------------------------


@router.get("/devices", response_model=list[DeviceOut], responses=_errors(401), tags=["devices"])
async def list_devices(request: Request, _: Reader) -> list[DeviceOut]:
    """Every registered device, online or not, by name."""
    ctx = context(request)
    records = await ctx.reads.run(registry.list_devices)
    return [_device_out(ctx, d) for d in records]


@router.get("/devices/{name}", response_model=DeviceOut, responses=READ_ERRORS, tags=["devices"])
async def get_device(request: Request, name: DeviceName, _: Reader) -> DeviceOut:
    ctx = context(request)
    return _device_out(ctx, await _device(ctx, name))


async def _set_labels(request: Request, name: str, body: LabelsIn, *, merge: bool) -> DeviceOut:
    ctx = context(request)
    record = await _device(ctx, name)

    def write(conn: sqlite3.Connection) -> dict[str, str]:
        stored = registry.stored_labels(conn, record.id)
        if stored is None:
            raise LookupError(name)
        labels = stored if merge else {}
        for key, value in body.labels.items():
            if value is None:
                labels.pop(key, None)
            else:
                check_label(key, value)  # labels become InfluxDB tags (raises LineError, a ValueError)
                labels[key] = value
        if len(labels) > 64:
            raise ValueError("a device has at most 64 labels")
        registry.set_labels(conn, record.id, labels)
        return labels

    try:
        record.labels = await ctx.committer.call(write)
    except LookupError:
        raise HTTPException(404, f"no device named {name!r}") from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return _device_out(ctx, record)


@router.put("/devices/{name}/labels", response_model=DeviceOut, responses=BODY_ERRORS, tags=["devices"])
async def replace_labels(request: Request, name: DeviceName, body: LabelsIn, _: Controller) -> DeviceOut:
    """Replace the device's labels with ``labels`` (``null`` values are left out)."""
    return await _set_labels(request, name, body, merge=False)


@router.patch("/devices/{name}/labels", response_model=DeviceOut, responses=BODY_ERRORS, tags=["devices"])
async def update_labels(request: Request, name: DeviceName, body: LabelsIn, _: Controller) -> DeviceOut:
    """Set the given labels; a ``null`` value removes that label; others stay."""
    return await _set_labels(request, name, body, merge=True)


# -- readings and events ------------------------------------------------------------------


@router.get(
    "/devices/{name}/readings/latest", response_model=LatestOut, responses=READ_ERRORS, tags=["readings"]
)
async def latest(request: Request, name: DeviceName, _: Reader) -> LatestOut:
    """The newest value and its timestamp of every metric in the device's recent samples."""
    ctx = context(request)
    record = await _device(ctx, name)
    found = await ctx.reads.run(lambda conn: history.latest(conn, record.id))
    return LatestOut(device=name, values={m: PointOut(ts=p.ts, value=p.value) for m, p in found.items()})


def _range(start: int | None, end: int | None) -> tuple[int, int]:
    end_ = MAX_SEQ if end is None else end
    start_ = max(0, (now_ms() if end is None else end_) - HOUR_MS) if start is None else start
    if start_ > end_:
        raise HTTPException(422, f"start ({start_}) is after end ({end_})")
    return start_, end_


@router.get("/devices/{name}/readings", response_model=HistoryOut, responses=READ_ERRORS, tags=["readings"])
async def readings(
    request: Request,
    name: DeviceName,
    _: Reader,
    metric: Annotated[str, Query(pattern=NAME_PATTERN, description="the metric")],
    start: Annotated[
        TimeMs, Query(description="first ms included; default: end - 1 h (or now - 1 h)")
    ] = None,
    end: Annotated[TimeMs, Query(description="first ms excluded; default: no end")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    every: Annotated[
        int | None, Query(ge=1, le=MAX_SEQ, description="downsample: bucket width in ms")
    ] = None,
) -> HistoryOut:
    """History of one metric, ``start <= ts < end``, oldest first; raw points, or buckets with ``every``."""
    ctx = context(request)
    record = await _device(ctx, name)
    start_, end_ = _range(start, end)
    if every is None:
        points, truncated = await ctx.reads.run(
            lambda conn: history.history(conn, record.id, metric, start_, end_, limit)
        )
        return HistoryOut(
            device=name,
            metric=metric,
            start=start_,
            end=end_,
            every=None,
            truncated=truncated,
            points=[PointOut(ts=p.ts, value=p.value) for p in points],
            buckets=[],
        )
    buckets, truncated = await ctx.reads.run(
        lambda conn: history.downsample(conn, record.id, metric, start_, end_, every, limit)
    )
    return HistoryOut.model_validate(
        {
            "device": name,
            "metric": metric,
            "start": start_,
            "end": end_,
            "every": every,
            "truncated": truncated,
            "points": [],
            "buckets": [
                {"ts": b.ts, "count": b.count, "mean": b.mean, "min": b.min, "max": b.max} for b in buckets
            ],
        }
    )


@router.get("/devices/{name}/events", response_model=EventsOut, responses=READ_ERRORS, tags=["readings"])
async def events(
    request: Request,
    name: DeviceName,
    _: Reader,
    start: Annotated[
        TimeMs, Query(description="first ms included; default: end - 1 h (or now - 1 h)")
    ] = None,
    end: Annotated[TimeMs, Query(description="first ms excluded; default: no end")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    event: Annotated[str | None, Query(pattern=NAME_PATTERN, description="only events of this name")] = None,
) -> EventsOut:
    """Events (button presses, inputs changing), ``start <= ts < end``, oldest first."""
    ctx = context(request)
    record = await _device(ctx, name)
    start_, end_ = _range(start, end)
    rows, truncated = await ctx.reads.run(
        lambda conn: history.events(conn, record.id, start_, end_, limit, event)
    )
    return EventsOut(
        device=name,
        start=start_,
        end=end_,
        truncated=truncated,
        events=[EventOut(ts=r.ts, seq=r.seq, name=r.name, data=msgspec.json.decode(r.data)) for r in rows],
    )


# -- commands -----------------------------------------------------------------------------


@router.post(
    "/devices/{name}/commands",
    response_model=CommandOut,
    status_code=200,
    responses={
        202: {
            "model": CommandOut,
            "description": "not final yet (wait=false, or the timeout passed): poll it",
        },
        **BODY_ERRORS,
        **_errors(429),
    },
    tags=["commands"],
)
async def send_command(request: Request, name: DeviceName, body: CommandIn, operator: Controller) -> Response:
    """Send a command; with ``wait`` (default) answer 200 once it is final, or 202 after ``timeout``."""
    # Well-formed requests of a control operator for a known device are answered before they get
    # here, by the command fast path (command_fast_path.py) with the same send_and_answer.
    ctx = context(request)
    record = await _device(ctx, name)
    return await send_and_answer(
        ctx,
        record,
        body.name,
        body.args,
        sender=operator.name,
        timeout_s=body.timeout,
        ttl_s=body.ttl,
        wait=body.wait,
    )


@router.get("/devices/{name}/commands", response_model=CommandsOut, responses=READ_ERRORS, tags=["commands"])
async def device_commands(
    request: Request,
    name: DeviceName,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    state: Annotated[str | None, Query(pattern="^(queued|sent|succeeded|failed|expired)$")] = None,
) -> CommandsOut:
    """The device's most recent commands, newest first, with who sent them and every state change."""
    ctx = context(request)
    record = await _device(ctx, name)
    rows = await ctx.reads.run(lambda conn: ledger.list_commands(conn, record.id, limit=limit, state=state))
    merged = [ctx.commands.get(r.id) or r for r in rows]
    return CommandsOut(device=name, commands=[command_out(r) for r in merged])


async def _command(ctx: ApiContext, command_id: str) -> CommandRecord:
    live = ctx.commands.get(command_id)
    if live is not None:
        return live
    stored = await ctx.reads.run(lambda conn: ledger.load_command(conn, command_id))
    if stored is None:
        raise HTTPException(404, f"no command {command_id!r}")
    return stored


CommandId = Annotated[str, Path(max_length=64)]


@router.get("/commands/{command_id}", response_model=CommandOut, responses=READ_ERRORS, tags=["commands"])
async def get_command(
    request: Request,
    command_id: CommandId,
    _: Reader,
    wait: Annotated[float, Query(ge=0, le=300, description="seconds to wait for a final state")] = 0,
) -> CommandOut:
    """One command: its state, result, sender and history. ``wait`` long-polls until it is final."""
    ctx = context(request)
    record = await _command(ctx, command_id)
    if wait > 0 and not record.final:
        record = await ctx.commands.wait(command_id, min(wait, ctx.settings.max_wait)) or record
    return command_out(record)


@router.delete(
    "/commands/{command_id}",
    response_model=CommandOut,
    responses={**CONTROL_ERRORS, **_errors(409)},
    tags=["commands"],
)
async def cancel_command(request: Request, command_id: CommandId, operator: Controller) -> CommandOut:
    """Cancel a queued command: it becomes failed, "cancelled by NAME". A sent one cannot be recalled."""
    ctx = context(request)
    try:
        return command_out(await ctx.commands.cancel(command_id, operator.name))
    except UnknownCommand:
        record = await _command(ctx, command_id)  # 404 if unknown
        raise HTTPException(
            409, f"command {command_id} is {record.state}; only a queued one can be cancelled"
        ) from None
    except CommandError as exc:
        raise HTTPException(409, exc.detail) from None
