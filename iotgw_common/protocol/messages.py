"""Typed messages of device protocol v1 (docs/protocol.md, "Messages").

Every message is a JSON object whose ``type`` field selects one of the structs
below. The limits of section "Limits" are part of the types, so that msgspec
enforces them while decoding, in C, without a second pass in Python.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

PROTOCOL_VERSION = 1

# -- Limits (docs/protocol.md, "Limits"); fixed by the protocol version. --------
MAX_FRAME_BYTES = 65_536
"""Longest frame the gateway processes; longer ones get ``frame_too_large``."""
HARD_FRAME_BYTES = 1_048_576
"""Longest frame the transport accepts at all; longer ones close the connection (1009)."""
MAX_SAMPLES = 500
MAX_VALUES = 64
MAX_STRING_LENGTH = 256
METRIC_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}\Z"
STREAM_PATTERN = r"^[A-Za-z0-9_-]{1,64}\Z"
DEVICE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z"
MIN_TIMESTAMP_MS = 946_684_800_000
"""2000-01-01T00:00:00Z: anything earlier is an unsynchronised clock."""
DEFAULT_MAX_CLOCK_SKEW_MS = 300_000
MAX_SAFE_INT = 2**53 - 1
"""Every integer a device sends lies within ±MAX_SAFE_INT (``out_of_range``): the store keeps
64-bit integers, JSON clients (JavaScript, the operator API's) read up to 2^53 exactly."""
MAX_SEQ = MAX_SAFE_INT
MAX_NESTING_DEPTH = 32
"""Arrays and objects nest at most this deep in a frame, the top object being 1
(``nesting_too_deep``); checked before decoding (``bounds.nesting_too_deep``)."""
LABEL_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*\Z"
"""Strings shown as one-line labels (``hello.agent``, units, descriptions, ``info`` strings,
``result.id``) hold no control character (C0, DEL, C1) and no line or paragraph separator."""

_FLOAT_MAX = 1.7976931348623157e308
MetricName = Annotated[str, msgspec.Meta(pattern=METRIC_NAME_PATTERN)]
FiniteFloat = Annotated[float, msgspec.Meta(ge=-_FLOAT_MAX, le=_FLOAT_MAX)]
ShortString = Annotated[str, msgspec.Meta(max_length=MAX_STRING_LENGTH)]
Label = Annotated[str, msgspec.Meta(max_length=MAX_STRING_LENGTH, pattern=LABEL_PATTERN)]
"""A short string that is logged, printed and shown on one line: no control characters."""
Value = bool | FiniteFloat | ShortString
"""A reading's value. JSON numbers always decode to float, so 1 and 1.0 are the same value."""
SampleKey = Annotated[str, msgspec.Meta(max_length=64)]
"""A metric name inside a sample or event: the pattern is checked by the codec with a cache of
names already seen (``codec.check_sample_names``), since a regex per key in msgspec costs more than
the rest of a sample's decoding."""
Values = Annotated[dict[SampleKey, Value], msgspec.Meta(min_length=1, max_length=MAX_VALUES)]
Seq = Annotated[int, msgspec.Meta(ge=1, le=MAX_SEQ)]
Timestamp = Annotated[int, msgspec.Meta(ge=MIN_TIMESTAMP_MS, le=MAX_SAFE_INT)]
Counter = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INT)]
SafeInt = Annotated[int, msgspec.Meta(ge=-MAX_SAFE_INT, le=MAX_SAFE_INT)]
InfoValue = bool | SafeInt | float | Label


class _Message(msgspec.Struct, tag_field="type", forbid_unknown_fields=False, omit_defaults=True):
    """Base of all messages; unknown fields are ignored so that v1 can grow."""


# -- Device -> gateway -------------------------------------------------------------


class SensorInfo(msgspec.Struct, omit_defaults=True):
    """A metric the device reports, declared in ``hello``."""

    metric: MetricName
    unit: Label = ""
    kind: Label = ""


class CommandInfo(msgspec.Struct, omit_defaults=True):
    """A command the device accepts, declared in ``hello``."""

    name: MetricName
    description: Label = ""
    args: dict[MetricName, Label] = {}


class Hello(_Message, tag="hello"):
    """First message of every session (docs/protocol.md, "hello")."""

    stream: Annotated[str, msgspec.Meta(pattern=STREAM_PATTERN)]
    agent: Label
    protocol: SafeInt = PROTOCOL_VERSION
    device: Annotated[str, msgspec.Meta(pattern=DEVICE_NAME_PATTERN)] | None = None
    last_acked: Counter = 0
    sensors: Annotated[list[SensorInfo], msgspec.Meta(max_length=MAX_VALUES)] = []
    commands: Annotated[list[CommandInfo], msgspec.Meta(max_length=MAX_VALUES)] = []
    buffered: Counter = 0
    dropped: Counter = 0
    info: Annotated[dict[MetricName, InfoValue], msgspec.Meta(max_length=MAX_VALUES)] = {}


# gc=False on the data messages (Sample, Readings, Event): their instances are not tracked by
# the cycle collector. A decoded message is a tree (ints, floats, strings, lists and dicts of
# them) and nothing gives it a reference back to itself, so it can never be part of a cycle;
# untracked, the tens of thousands of samples waiting for a group commit are neither counted
# toward nor walked by every collection (on the gateway's loop: 10-sample frames held as a
# pending batch, 10.0 -> 8.4 us per frame, GC 1.6 -> 0.6 us; issue #15). Do not
# store a reference to a message inside its own values.


class Sample(msgspec.Struct, gc=False):
    """One moment's values: ``ts`` in milliseconds since the Unix epoch (UTC)."""

    ts: Timestamp
    values: Values


class Readings(_Message, tag="readings", gc=False):
    """A batch of samples under one sequence number."""

    seq: Seq
    samples: Annotated[list[Sample], msgspec.Meta(min_length=1, max_length=MAX_SAMPLES)]


class Event(_Message, tag="event", gc=False):
    """A discrete happening (button pressed, door opened), sequenced like readings."""

    seq: Seq
    ts: Timestamp
    name: MetricName
    data: Annotated[dict[SampleKey, Value], msgspec.Meta(max_length=MAX_VALUES)] = {}


class Result(_Message, tag="result"):
    """The outcome of a command the gateway sent."""

    id: Label
    ok: bool
    value: Any = None
    error: ShortString | None = None


class Status(_Message, tag="status"):
    """Periodic health of the device: buffer depth, drops, free memory and such."""

    buffered: Counter = 0
    dropped: Counter = 0
    info: Annotated[dict[MetricName, InfoValue], msgspec.Meta(max_length=MAX_VALUES)] = {}


DeviceMessage = Hello | Readings | Event | Result | Status


# -- Gateway -> device -------------------------------------------------------------


class Welcome(_Message, tag="welcome"):
    """Answer to ``hello``: who the device is, the clock, and where its stream stands."""

    device: str
    server_time: int
    last_seq: int
    settings: dict[str, Any] = {}
    limits: dict[str, int] = {}


class Ack(_Message, tag="ack"):
    """Every data message of the stream with seq <= ``seq`` is durably stored."""

    seq: int


class Command(_Message, tag="command"):
    """Do ``name`` with ``args`` unless the clock has passed ``deadline`` (ms)."""

    id: str
    name: str
    args: dict[str, Any] = {}
    deadline: int = 0


class Error(_Message, tag="error", omit_defaults=False):
    """One frame was refused; ``seq`` names it when it had one (always present, may be null)."""

    code: str
    detail: str
    seq: int | None = None


GatewayMessage = Welcome | Ack | Command | Error
