"""Request and response bodies of the operator API (pydantic models: FastAPI turns them into OpenAPI).

Times are integers, milliseconds since the Unix epoch (UTC), like the device
protocol; durations given by operators are seconds (floats).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.operator.command_rules import DEFAULT_TIMEOUT_S, DEFAULT_TTL_S, MAX_TIMEOUT_S, MAX_TTL_S
from iotgw_common.protocol.messages import MAX_SEQ

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$"
"""Metric, event and command names (docs/protocol.md section 8)."""
LABEL_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$"
Ms = Annotated[int, Field(ge=0, le=MAX_SEQ, description="ms since the Unix epoch (UTC)")]
LabelKey = Annotated[str, Field(pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, Field(max_length=256)]
Scalar = bool | int | float | str


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(_Out):
    """Every 4xx answer. ``code``: a stable name for a refusal by a limit (docs/api.md, "Limits and
    quotas"); ``declared``: a device's accepted commands (undeclared command); ``errors``: what
    failed validation (422)."""

    detail: str
    code: str | None = None
    declared: list[str] | None = None
    errors: list[dict[str, Any]] | None = None


class Health(_Out):
    status: Literal["ok"]


class SensorOut(_Out):
    metric: str
    unit: str = ""
    kind: str = ""


class CommandInfoOut(_Out):
    name: str
    description: str = ""
    args: dict[str, str] = {}


class DeviceOut(_Out):
    name: str
    online: bool
    peer: str | None = Field(None, description="address of the live connection")
    gateway: str | None = Field(
        None, description="in a fleet: the gateway holding the device now (docs/scale-out.md); else null"
    )
    last_seen_ms: Ms | None
    agent: str = Field(description="agent or firmware name and version from the device's hello")
    labels: dict[str, str]
    sensors: list[SensorOut]
    commands: list[CommandInfoOut]
    info: dict[str, Scalar]
    buffered: int
    dropped: int
    stream: str
    last_seq: int
    created_ms: Ms


class LabelsIn(BaseModel):
    """``PUT``: the new label set. ``PATCH``: keys to set, ``null`` to remove."""

    model_config = ConfigDict(extra="forbid")
    labels: Annotated[dict[LabelKey, LabelValue | None], Field(max_length=64)]


class PointOut(_Out):
    ts: Ms
    value: Scalar


class LatestOut(_Out):
    device: str
    values: dict[str, PointOut]


class BucketOut(_Out):
    ts: Ms = Field(description="bucket start; buckets are aligned to the epoch")
    count: int
    mean: float
    min: float
    max: float


class HistoryOut(_Out):
    """``points`` (raw values) without ``every``; ``buckets`` with it."""

    device: str
    metric: str
    start: Ms
    end: Ms
    every: int | None = Field(None, description="bucket width in ms, when downsampled")
    truncated: bool = Field(description="more data in the range than `limit`: ask again from the last ts")
    points: list[PointOut]
    buckets: list[BucketOut]


class EventOut(_Out):
    ts: Ms
    seq: int
    name: str
    data: dict[str, Scalar]


class EventsOut(_Out):
    device: str
    start: Ms
    end: Ms
    truncated: bool
    events: list[EventOut]


class CommandIn(BaseModel):
    """A command for a device. ``timeout``: seconds the device has to answer once the command is
    sent (and how long this request waits); ``ttl``: seconds the command may wait for an offline
    device (0: now or never); ``wait``: false answers 202 at once."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    args: dict[str, Any] = {}
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] = DEFAULT_TIMEOUT_S
    ttl: Annotated[float, Field(ge=0, le=MAX_TTL_S)] = DEFAULT_TTL_S
    wait: bool = True


class StateChangeOut(_Out):
    state: str
    ts: Ms
    detail: str


class CommandOut(_Out):
    id: str
    device: str
    name: str
    args: dict[str, Any]
    state: Literal["queued", "sent", "succeeded", "failed", "expired"]
    sender: str = Field(description="the operator whose token sent it")
    created_ms: Ms
    expires_ms: Ms = Field(description="a command not sent by then expires")
    timeout: float = Field(description="seconds the device has to answer once sent")
    deadline_ms: Ms = Field(description="sent + timeout; 0 until sent. The device does not start it later")
    updated_ms: Ms
    value: Any = Field(None, description="the device's answer, when it succeeded (or failed with a value)")
    error: str | None = Field(None, description="why it failed or expired")
    history: list[StateChangeOut]


class CommandsOut(_Out):
    device: str
    commands: list[CommandOut]


class IngestOut(_Out):
    samples_per_s: float
    committed_samples: int
    commits: int
    failed_commits: int
    pending_samples: int


class StatusOut(_Out):
    version: str
    uptime_s: float
    devices_registered: int
    devices_connected: int
    refused_handshakes: int
    ingest: IngestOut
    store_path: str
    store_bytes: int
    commands_open: dict[str, int]
    commands_finished: dict[str, int]
    forwarders: list[dict[str, Any]] = Field(
        description="Each delivery sink that is on (name influx, mqtt): state, target, last success, "
        "retries, pending readings, oldest pending timestamp (ms), dead letters; the MQTT bridge adds "
        "connection (broker, connected, connects, disconnects, in_flight, last_error, devices_online); "
        "empty when no sink is configured"
    )
    fleet: dict[str, Any] | None = Field(
        None,
        description="In a fleet (docs/scale-out.md): this gateway's name, connected, peers, devices held "
        "here and elsewhere, commands forwarded and served, registry rows published and applied; else null",
    )
