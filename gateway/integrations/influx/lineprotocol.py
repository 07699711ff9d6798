"""InfluxDB line protocol, encoded by hand: plain functions, no I/O.

One line per stored reading (one sample) or event::

    iotgw,device=pi-1,room=kitchen temp=21.5,door=false,mode="heating" 1764000000000
    iotgw_events,device=pi-1,event=door.opened,room=kitchen seq=45.0,door="front" 1764000000000

Escaping follows the line protocol reference ("Special characters"):

=================================  ==========================================
element                            escaped with a backslash
=================================  ==========================================
measurement                        comma, space
tag key, tag value, field key      comma, equals sign, space
string field value                 double quote, backslash
=================================  ==========================================

The spec has no escape for a newline. Names (measurement, tag keys and values,
field keys) therefore refuse control characters (``LineError``); they also
refuse a backslash, which InfluxDB 1.x and 2.x/VictoriaMetrics unescape
differently in tag values (``a\\\\`` is two backslashes in 1.x, one elsewhere;
a trailing one is a parse error in 1.x). Device metric and event names are
restricted by the protocol so that none of this can happen; labels come from
operators and are checked when set (``check_label``).

Newlines inside string *values* (which devices may send): InfluxDB's own
parser (1.x, 2.x) reads a quoted string across lines, so ``literal`` mode
keeps them and they round-trip exactly. Engines that split the body at
newlines before parsing (VictoriaMetrics, tested) would drop the point, and a
crafted value could smuggle in a line of its own; ``escape`` mode writes CR and
LF as the two characters ``\\r`` / ``\\n`` instead, so no raw CR or LF ever
appears in the body. Either way a value can never end its quoted string early:
``"`` and ``\\`` are always escaped.

Numbers are always written as floats (Python's ``repr``: ``21.0``, ``1e+16``),
never as integers (``1i``), so a field's type never flips; bools as
``true``/``false``; strings quoted. Timestamps are integer milliseconds
(write with precision ``ms``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

__all__ = [
    "RESERVED_TAG_KEYS",
    "LineError",
    "check_label",
    "check_measurement",
    "encode_event",
    "encode_fields",
    "encode_reading",
    "escape_key",
    "escape_measurement",
    "escape_string",
    "join_lines",
    "series_prefix",
]


class LineError(ValueError):
    """A name or value that cannot be written as line protocol; the message says why."""


# Control characters (C0, DEL, C1) and the backslash: never allowed in names.
_BAD_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")

RESERVED_TAG_KEYS = frozenset({"device", "event", "time"})
"""Tag keys the gateway sets itself (``device``, ``event``) or InfluxDB refuses (``time``)."""

_MEASUREMENT = str.maketrans({",": "\\,", " ": "\\ "})
_KEY = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING = str.maketrans({"\\": "\\\\", '"': '\\"'})
_STRING_NO_NEWLINES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str) or not name:
        raise LineError(f"{what} must be a non-empty string, not {name!r}")
    bad = _BAD_NAME_CHARS.search(name)
    if bad:
        raise LineError(
            f"{what} {name!r} contains {bad.group()!r}: control characters (newline, tab, …) "
            "and backslashes are not allowed in InfluxDB names"
        )


def check_measurement(name: str) -> str:
    """Return ``name`` if it can be a measurement name, else raise LineError."""
    _check_name("measurement", name)
    if name.startswith("_"):
        raise LineError(f"measurement {name!r} starts with '_', which InfluxDB reserves")
    return name


def check_label(key: str, value: str) -> None:
    """Raise LineError unless ``key=value`` can be a device label (an InfluxDB tag).

    Keys and values: non-empty, no control characters, no backslash. Keys must
    not start with ``_`` nor be one of RESERVED_TAG_KEYS. Spaces, commas,
    equals signs, quotes and any other Unicode are fine (they are escaped).
    """
    _check_name("label key", key)
    if key in RESERVED_TAG_KEYS or key.startswith("_"):
        raise LineError(
            f"label key {key!r} is reserved (the gateway sets 'device' and 'event'; "
            "InfluxDB reserves 'time' and keys starting with '_')"
        )
    _check_name(f"value of label {key!r}", value)


def escape_measurement(name: str) -> str:
    """Measurement: escape comma and space (the name must pass check_measurement)."""
    return name.translate(_MEASUREMENT)


def escape_key(name: str) -> str:
    """Tag key, tag value or field key: escape comma, equals sign and space."""
    return name.translate(_KEY)


def escape_string(value: str, *, literal_newlines: bool = True) -> str:
    """A string field value, quotes included: escape backslash and double quote.

    With ``literal_newlines=False`` CR and LF become ``\\r`` and ``\\n`` too.
    """
    return '"' + value.translate(_STRING if literal_newlines else _STRING_NO_NEWLINES) + '"'


def series_prefix(measurement: str, tags: Mapping[str, str]) -> str:
    """``measurement,k=v,...`` plus the separating space, tags sorted by key.

    Tags with an empty value are left out (InfluxDB has no empty tag values).
    Raises LineError for a name that cannot be written.
    """
    _check_name("measurement", measurement)
    parts = [escape_measurement(measurement)]
    for key in sorted(tags, key=lambda k: k.encode()):  # Go bytes.Compare order
        value = tags[key]
        if value == "":
            continue
        _check_name("tag key", key)
        _check_name(f"value of tag {key!r}", value)
        parts.append(f"{escape_key(key)}={escape_key(value)}")
    return ",".join(parts) + " "


_KEY_CACHE: dict[str, str] = {}


def _decode(data: str) -> Any:
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise LineError(f"stored data is not valid JSON ({exc}): {data[:80]!r}") from None


def _field_key(name: str) -> str:
    key = _KEY_CACHE.get(name)
    if key is None:
        _check_name("field key", name)
        # InfluxDB 1.x silently drops a field named "time" (2.x refuses it): rename.
        key = escape_key("time_" if name == "time" else name)
        if len(_KEY_CACHE) < 65536:
            _KEY_CACHE[name] = key
    return key


def encode_fields(values: Mapping[str, Any], *, literal_newlines: bool = True) -> str:
    """``k=v,k=v`` for a map of metric -> float | bool | str (ints are written as floats)."""
    parts: list[str] = []
    append = parts.append
    keys = _KEY_CACHE
    table = _STRING if literal_newlines else _STRING_NO_NEWLINES
    for name, value in values.items():
        key = keys.get(name) or _field_key(name)
        kind = type(value)
        if kind is float:
            if value - value != 0.0:  # inf - inf and nan - nan are nan
                raise LineError(f"field {name!r}: {value!r} is not a finite number")
            append(f"{key}={value!r}")
        elif kind is bool:
            append(f"{key}=true" if value else f"{key}=false")
        elif kind is str:
            append(f'{key}="{value.translate(table)}"')
        elif kind is int:
            try:
                append(f"{key}={float(value)!r}")
            except OverflowError:
                raise LineError(f"field {name!r}: {value} is beyond the float range") from None
        else:
            raise LineError(f"field {name!r}: a {kind.__name__} cannot be a field value")
    if not parts:
        raise LineError("a point needs at least one field")
    if "time" in values and "time_" in values:
        raise LineError("fields 'time' and 'time_' together: 'time' is written as 'time_' (docs/influxdb.md)")
    return ",".join(parts)


def encode_reading(prefix: str, data: str, ts_ms: int, *, literal_newlines: bool = True) -> str:
    """One line for a stored reading: ``prefix`` from series_prefix, ``data`` its JSON metric map."""
    values = _decode(data)
    if type(values) is not dict:
        raise LineError(f"stored reading is not a metric map: {data[:80]!r}")
    return f"{prefix}{encode_fields(values, literal_newlines=literal_newlines)} {int(ts_ms)}"


def encode_event(prefix: str, seq: int, data: str, ts_ms: int, *, literal_newlines: bool = True) -> str:
    """One line for a stored event: field ``seq`` (float) plus its data (data wins on a clash).

    ``prefix`` comes from series_prefix with the ``event`` tag included.
    """
    values = _decode(data)
    if type(values) is not dict:
        raise LineError(f"stored event data is not a map: {data[:80]!r}")
    fields = {"seq": float(seq), **values}
    return f"{prefix}{encode_fields(fields, literal_newlines=literal_newlines)} {int(ts_ms)}"


def join_lines(lines: Iterable[str]) -> bytes:
    """The request body: lines joined by LF, UTF-8."""
    return "\n".join(lines).encode()
