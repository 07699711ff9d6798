"""The InfluxDB sink of the delivery engine: stored rows as line protocol, written by a writer.

``DeliveryEngine(InfluxSink(settings), settings, store_path, committer)`` is the InfluxDB
forwarder (``gateway.app`` builds it when ``influx.enabled``). The sink encodes each
stored reading or event as one line (``lineprotocol``): the series prefix (measurement,
the device's name and labels as tags, the event name) is looked up once per device and
cached for ``LABEL_CACHE_S``, so a relabelled device shows up within that time. String
values keep raw newlines in ``literal`` mode (InfluxDB itself) and write them as ``\\n``
otherwise (``influx.string_newlines``, see ``lineprotocol``). The body goes to the v1 or
v2 writer (``writers``); its ``WriteError`` becomes the engine's ``DeliveryError``.

Each point is keyed by series and millisecond timestamp, so a batch the engine replays
after a crash overwrites identical points and creates no duplicates.

Units: a point holds every metric of one sample, so a unit cannot be a tag of it. When a
device's declared units are new to this sink (its first reading since start, a ``hello`` that
changed them, or ``UNITS_RESEND_S`` later), the line of its next reading is preceded by one
point per declared metric that has a unit, in ``<measurement>_units`` (tags: device, labels,
``metric``; fields ``unit`` and ``kind``, as the device declared them in ``hello``), at that
reading's timestamp, until a write that carried them succeeds (the engine may encode a batch
and read it again later). Dashboards read the newest (docs/grafana.md).
"""

from __future__ import annotations

import sqlite3
import time

from gateway.config import InfluxSettings
from gateway.integrations.influx.lineprotocol import (
    LineError,
    check_measurement,
    encode_event,
    encode_fields,
    encode_reading,
    join_lines,
    series_prefix,
)
from gateway.integrations.influx.writers import WriteError, Writer, make_writer
from gateway.integrations.sink import DeliveryError, EncodeError
from gateway.store import registry
from gateway.store.delivery import cursor_name

__all__ = ["EVENTS_CURSOR", "LABEL_CACHE_S", "NAME", "READINGS_CURSOR", "UNITS_RESEND_S", "InfluxSink"]

NAME = "influx"
"""The sink's name: its state row, dead letters and config section (``influx.required``)."""
READINGS_CURSOR = cursor_name(NAME, "readings")
"""``influx.readings``: stores in the field have this cursor; retention keeps rows above it."""
EVENTS_CURSOR = cursor_name(NAME, "events")
UNITS_RESEND_S = 6 * 3600.0
"""Units points are written again this often, so InfluxDB's retention never leaves a metric without."""
LABEL_CACHE_S = 30.0
"""How long a device's series prefix (name and labels) is reused before it is looked up again."""


def _delivery_error(exc: WriteError) -> DeliveryError:
    return DeliveryError(
        exc.message,
        retryable=exc.retryable,
        status=exc.status,
        retry_after=exc.retry_after,
        summary=exc.summary,
        needs_operator=exc.status in (401, 403, 404),  # credentials, database/bucket
    )


class InfluxSink:
    """Line protocol to InfluxDB 1.x (``/write``) or a v2 write API; see the module docstring."""

    name = NAME
    title = "InfluxDB"

    def __init__(self, settings: InfluxSettings, writer: Writer | None = None) -> None:
        """Raises LineError (a ValueError) if ``settings.measurement`` cannot be a measurement name."""
        self.measurement = check_measurement(settings.measurement)
        self.writer = writer if writer is not None else make_writer(settings)
        self.target = self.writer.target
        mode = settings.string_newlines
        self.literal_newlines = mode == "literal" or (mode == "auto" and settings.api == "v1")
        self._prefixes: dict[tuple[int, str | None], str] = {}
        self._prefixes_at = 0.0
        self._units_due: dict[int, list[tuple[str, str]]] = {}  # device -> [(series prefix, fields)]
        self._units_sent: dict[int, tuple[str, float]] = {}  # device -> (what, when written)

    def prepare(self, conn: sqlite3.Connection, *, resend: bool = False) -> None:
        if resend:  # labels may have been fixed since
            self._prefixes.clear()
        elif time.monotonic() - self._prefixes_at > LABEL_CACHE_S:
            self._prefixes.clear()
            self._prefixes_at = time.monotonic()

    def encode_reading(self, conn: sqlite3.Connection, device_id: int, ts: int, data: str) -> str:
        try:
            prefix = self._prefixes.get((device_id, None)) or self._prefix(conn, device_id, None)
            line = encode_reading(prefix, data, ts, literal_newlines=self.literal_newlines)
            due = self._units_due.get(device_id)
            if due:
                return "".join(f"{unit_prefix}{fields} {int(ts)}\n" for unit_prefix, fields in due) + line
            return line
        except LineError as exc:
            raise EncodeError(str(exc)) from None

    def encode_event(self, conn: sqlite3.Connection, device_id: int, ts: int, seq: int, name: str,
                     data: str) -> str:  # fmt: skip
        try:
            prefix = self._prefix(conn, device_id, name)
            return encode_event(prefix, seq, data, ts, literal_newlines=self.literal_newlines)
        except LineError as exc:
            raise EncodeError(str(exc)) from None

    def _prefix(self, conn: sqlite3.Connection, device_id: int, event: str | None) -> str:
        """``measurement,device=..,labels.. `` for a device (and an event name); cached."""
        key = (device_id, event)
        prefix = self._prefixes.get(key)
        if prefix is None:
            device = registry.find_by_id(conn, device_id)
            if device is None:  # removed without --purge: its stored readings still go out
                name, labels = f"removed-{device_id}", {}
            else:
                name, labels = device.name, device.labels
            tags = {**labels, "device": name}
            measurement = self.measurement
            if event is not None:
                tags["event"] = event
                measurement += "_events"
            prefix = series_prefix(measurement, tags)  # raises LineError for a bad label
            self._prefixes[key] = prefix
            if event is None and device is not None:
                self._note_units(device_id, tags, device.sensors)
        return prefix

    def _note_units(self, device_id: int, tags: dict[str, str], sensors: list[dict[str, object]]) -> None:
        """Make the device's units due if they are new or were last written ``UNITS_RESEND_S`` ago."""
        points = self._unit_points(tags, sensors)
        what = repr(points)
        sent = self._units_sent.get(device_id)
        if points and (sent is None or sent[0] != what or time.monotonic() - sent[1] > UNITS_RESEND_S):
            self._units_due[device_id] = points

    def _unit_points(self, tags: dict[str, str], sensors: list[dict[str, object]]) -> list[tuple[str, str]]:
        """``(series prefix, fields)`` of the units point of each declared metric that has a unit."""
        points = []
        for sensor in sensors:
            metric, unit, kind = sensor.get("metric"), sensor.get("unit"), sensor.get("kind")
            if not isinstance(metric, str) or not isinstance(unit, str) or not unit:
                continue
            fields = {"unit": unit, "kind": kind if isinstance(kind, str) else ""}
            try:
                prefix = series_prefix(f"{self.measurement}_units", {**tags, "metric": metric})
            except LineError:  # a label that cannot be a tag fails the reading itself, not here
                continue
            points.append((prefix, encode_fields(fields, literal_newlines=self.literal_newlines)))
        return points

    def write(self, items: list[str]) -> None:
        try:
            self.writer.write(join_lines(items))
        except WriteError as exc:
            raise _delivery_error(exc) from None
        for device_id, points in list(self._units_due.items()):  # rarely any: new devices, new units
            marker = points[0][0]
            if any(item.startswith(marker) for item in items):
                del self._units_due[device_id]
                self._units_sent[device_id] = (repr(points), time.monotonic())

    def check(self) -> None:
        try:
            self.writer.check()
        except WriteError as exc:
            raise _delivery_error(exc) from None

    def close(self) -> None:
        self.writer.close()
