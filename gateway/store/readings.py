"""The ``readings`` and ``events`` tables: every statement that touches them.

Writes: the group-commit writer (``gateway.store.writer``) calls
:func:`insert_readings_bulk`, :func:`insert_readings` and :func:`insert_events`
inside its transaction; retention (``gateway.store.retention``) calls
:func:`delete_before`; ``registry.remove_device(purge=True)`` calls
:func:`delete_device`. Reads for operators: latest values, history per metric,
downsampling, events, counts.

``readings.data`` holds one JSON object per sample (metric -> value), so a
metric's history is SQLite's ``json_extract`` over the ``(device_id, ts)``
index: one range scan, no per-metric table. Ranges are half-open,
``start <= ts < end``, ordered by ``(ts, id)`` — insertion order among equal
timestamps — so adjacent ranges never share or miss a sample.

The read functions take a connection and block; the API runs them through
:class:`ReadPool`, whose connections are used from worker threads
(``asyncio.to_thread``), never by the writer thread or the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from gateway.store.schema import connect, ledger_path
from iotgw_common.protocol.messages import Sample

T = TypeVar("T")

LATEST_SCAN_ROWS = 10_000
"""``latest`` looks at a device's newest samples up to this many to find each metric."""


# -- writes (the group-commit writer's transaction) -----------------------------------

ReadingRow = tuple[int, int, int, str]
"""``(device_id, ts, seq, data)``: one sample; ``data`` is ``msgspec.json.encode(sample.values)`` as text."""
ReadingFrame = tuple[int, int, list[Sample]]
"""``(device_id, seq, samples)``: one ``readings`` frame, for :func:`insert_readings_bulk`."""
EventInsert = tuple[int, int, int, str, str]
"""``(device_id, ts, seq, name, data)``: one event; ``data`` is ``msgspec.json.encode(event.data)`` as text."""

_INSERT_READINGS = "INSERT INTO readings (device_id, ts, seq, data) VALUES (?, ?, ?, ?)"
_INSERT_EVENTS = "INSERT INTO events (device_id, ts, seq, name, data) VALUES (?, ?, ?, ?, ?)"
_values_encoder = msgspec.json.Encoder()

# The bulk path: multi-row ``INSERT ... VALUES (?,?,?,?),(?,?,?,?),...`` with bound parameters,
# up to MAX_BULK_ROWS rows a statement (fewer where the build allows fewer parameters: 999
# before SQLite 3.32), the remainder in power-of-two statements, so a connection prepares at
# most 15 shapes per table and keeps them in sqlite3's statement cache. ``data`` is the same
# ``msgspec.json.encode(...)`` text the one-row statements bind, so the rows are the same by
# construction (bulk_insert_works still checks). It replaced one JSON parameter unpacked by
# ``json_each``/``json_extract``, which re-parsed and re-rendered every sample inside SQLite:
# writer CPU per reading at 10 samples per frame 6.3-7.8 -> 3.7-4.6 us, at 1 sample 8.0 ->
# 4.5 us (micro-benchmark of ``BatchWriter.commit``, 1,000 devices, 25,000 readings a commit;
# issue #15). Big statements, not 128 rows: each ``execute`` releases the GIL and must take it
# back from a busy event loop (up to a switch interval, 5 ms); with a thread spinning beside
# it, a 25,000-reading commit took 523 ms in 128-row statements, 354 in 2,048, 275 in 8,192.
# 16,384 rows where the build allows them (Debian's SQLite binds up to 250,000 parameters; the
# stock limit of 32,766 gives 8,192): at the 10-sample ceiling, alternated with 4,096,
# 143,000-161,000 against 133,000-148,000 readings/s; 32,768 was slower again (132,000-140,000).
MAX_BULK_ROWS = 16_384
_bulk_sql: dict[tuple[str, int], str] = {}


def _bulk_rows(conn: sqlite3.Connection, width: int) -> int:
    """The most rows of ``width`` parameters one statement may bind here (a power of two)."""
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width
    rows = MAX_BULK_ROWS
    while rows > limit and rows > 1:
        rows //= 2
    return rows


def _insert_many(conn: sqlite3.Connection, into: str, width: int, params: list[Any]) -> None:
    """Insert ``len(params) // width`` rows of ``width`` flat parameters, in order, with
    multi-row VALUES statements; ``into`` is ``INSERT INTO table (columns)``."""
    rows = len(params) // width
    done = 0
    size = _bulk_rows(conn, width)
    while done < rows:
        while rows - done < size:
            size //= 2
        sql = _bulk_sql.get((into, size))
        if sql is None:
            row = "(" + ",".join("?" * width) + ")"
            sql = _bulk_sql[(into, size)] = f"{into} VALUES {','.join([row] * size)}"
        conn.execute(sql, params[done * width : (done + size) * width])
        done += size


def insert_readings_bulk(conn: sqlite3.Connection, frames: list[ReadingFrame]) -> None:
    """Insert every sample of ``frames``, in order (so in ``readings.id`` order), a few
    statements of up to :data:`MAX_BULK_ROWS` rows.

    Stores exactly what :func:`insert_readings` stores for the same samples. Use only where
    :func:`bulk_insert_works` said yes; the caller holds the transaction.
    """
    encode = _values_encoder.encode
    params: list[Any] = []
    add = params.extend
    for device_id, seq, samples in frames:
        for sample in samples:
            add((device_id, sample.ts, seq, encode(sample.values).decode()))
    _insert_many(conn, "INSERT INTO readings (device_id, ts, seq, data)", 4, params)


def insert_readings(conn: sqlite3.Connection, rows: list[ReadingRow]) -> None:
    """Insert samples one row each (the fallback where the bulk statements are unavailable)."""
    conn.executemany(_INSERT_READINGS, rows)


def insert_events(conn: sqlite3.Connection, rows: list[EventInsert], *, bulk: bool = False) -> None:
    """Insert events in order; the caller holds the transaction.

    ``bulk`` (only where :func:`bulk_insert_works` said yes): the multi-row statements of
    :func:`insert_readings_bulk` instead of one ``executemany`` step per event (each step
    releases and re-takes the GIL). The same rows either way.
    """
    if bulk:
        _insert_many(
            conn, "INSERT INTO events (device_id, ts, seq, name, data)", 5, [v for row in rows for v in row]
        )
    else:
        conn.executemany(_INSERT_EVENTS, rows)


def bulk_insert_works() -> bool:
    """Whether this SQLite stores a batch through :func:`insert_readings_bulk` exactly as
    :func:`insert_readings` does: the same rows, byte for byte, in the same id order.

    Multi-row VALUES needs SQLite 3.7.11; the probe writes a few statement shapes (129 rows
    in two frames: 128 and 1) and compares what is stored
    with the one-row statements' rows, so a SQLite that differs falls back to ``executemany``
    instead of changing what is stored.
    """
    values: dict[str, bool | float | str] = {
        "a": 21.5, "b.c": -0.0, "d": 1e16, "e": 5e-324, "f": True, "g": "é\"\\\n\u2028😀\x01", "h": "",
    }  # fmt: skip
    samples = [
        Sample(ts=1_764_000_000_000 + i, values=values if i % 2 else {"x": float(i)}) for i in range(128)
    ]
    frames: list[ReadingFrame] = [(7, 3, samples), (2, 4, [Sample(ts=1_764_000_000_000, values=values)])]
    expected = [
        (device_id, s.ts, seq, msgspec.json.encode(s.values).decode())
        for device_id, seq, ss in frames
        for s in ss
    ]
    try:
        conn = sqlite3.connect(":memory:")
        try:
            conn.execute(
                "CREATE TABLE readings (id INTEGER PRIMARY KEY AUTOINCREMENT, device_id, ts, seq, data)"
            )
            insert_readings_bulk(conn, frames)
            rows = conn.execute("SELECT device_id, ts, seq, data FROM readings ORDER BY id").fetchall()
            kinds = conn.execute("SELECT DISTINCT typeof(data) FROM readings").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return rows == expected and kinds == [("text",)]


# -- deletes ------------------------------------------------------------------------------

NO_LIMIT = 2**63 - 1
"""The largest row id: ``max_id`` for :func:`delete_before` when no cursor holds rows back."""


def device_ids(conn: sqlite3.Connection) -> list[int]:
    """The ids of the devices that have readings or events stored (removed devices included).

    A skip scan on the ``(device_id, ts)`` indexes: one index seek per device, however many
    rows each has (``SELECT DISTINCT`` would read the whole index).
    """
    found: set[int] = set()
    for table in ("readings", "events"):
        after = -(2**63)
        while True:
            (next_id,) = conn.execute(
                f"SELECT min(device_id) FROM {table} WHERE device_id > ?", (after,)
            ).fetchone()
            if next_id is None:
                break
            found.add(next_id)
            after = next_id
    return sorted(found)


def delete_before(
    conn: sqlite3.Connection, device_id: int, cutoff_ms: int, *, max_reading_id: int, max_event_id: int
) -> int:
    """Delete the device's readings and events stamped before ``cutoff_ms`` whose id is at most
    ``max_reading_id`` / ``max_event_id``; returns the readings deleted.

    Two range scans on the ``(device_id, ts)`` indexes. The caller holds the transaction.
    """
    deleted: int = conn.execute(
        "DELETE FROM readings WHERE device_id = ? AND ts < ? AND id <= ?",
        (device_id, cutoff_ms, max_reading_id),
    ).rowcount
    conn.execute(
        "DELETE FROM events WHERE device_id = ? AND ts < ? AND id <= ?", (device_id, cutoff_ms, max_event_id)
    )
    return deleted


def delete_device(conn: sqlite3.Connection, device_id: int) -> int:
    """Delete every reading and event of a device; returns the readings deleted.

    The caller holds the transaction (``registry.remove_device`` with ``purge``).
    """
    deleted: int = conn.execute("DELETE FROM readings WHERE device_id = ?", (device_id,)).rowcount
    conn.execute("DELETE FROM events WHERE device_id = ?", (device_id,))
    return deleted


# -- reads --------------------------------------------------------------------------------


def reading_counts(conn: sqlite3.Connection) -> dict[int, int]:
    """Readings stored per device id."""
    return dict(conn.execute("SELECT device_id, count(*) FROM readings GROUP BY device_id").fetchall())


class ReadPool:
    """A few query-only store connections for worker threads; ``await run(fn)``; ``close()``."""

    def __init__(self, path: str | Path, size: int = 4) -> None:
        self.path = Path(path)
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        for _ in range(size):
            conn = connect(self.path, create=False)
            conn.execute("PRAGMA query_only=ON")
            self._all.append(conn)
            self._idle.put(conn)
        self._slots = asyncio.Semaphore(size)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on an idle connection in a worker thread; its result."""
        async with self._slots:
            conn = self._idle.get_nowait()
            try:
                return await asyncio.to_thread(fn, conn)
            finally:
                self._idle.put(conn)

    def close(self) -> None:
        for conn in self._all:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._all.clear()


def totals(conn: sqlite3.Connection) -> tuple[int, int]:
    """Readings and events stored, in all (``iotgw status``)."""
    (readings,) = conn.execute("SELECT count(*) FROM readings").fetchone()
    (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
    return int(readings), int(events)


def newest_sample(conn: sqlite3.Connection, device_id: int) -> str | None:
    """The JSON text of the device's newest stored sample, or None (the demo's summary line)."""
    row = conn.execute(
        "SELECT data FROM readings WHERE device_id = ? ORDER BY id DESC LIMIT 1", (device_id,)
    ).fetchone()
    return None if row is None else str(row[0])


def event_count(conn: sqlite3.Connection, device_id: int) -> int:
    """Events stored for one device."""
    (count,) = conn.execute("SELECT count(*) FROM events WHERE device_id = ?", (device_id,)).fetchone()
    return int(count)


def _path(metric: str) -> str:
    """JSON path of a metric; names never contain a quote (protocol section 8)."""
    return f'$."{metric}"'


def _value(raw: Any, kind: str | None) -> bool | float | str | None:
    if kind == "true":
        return True
    if kind == "false":
        return False
    if kind in ("real", "integer"):
        return float(raw)
    if kind == "text":
        return str(raw)
    return None


@dataclass(slots=True)
class Point:
    ts: int
    value: bool | float | str


@dataclass(slots=True)
class Bucket:
    ts: int
    count: int
    mean: float
    min: float
    max: float


def latest(conn: sqlite3.Connection, device_id: int, scan: int = LATEST_SCAN_ROWS) -> dict[str, Point]:
    """The newest value of every metric found in the device's last ``scan`` samples."""
    found: dict[str, Point] = {}
    rows = conn.execute(
        "SELECT r.ts, j.key, j.value, j.type FROM "
        "(SELECT id, ts, data FROM readings WHERE device_id = ? ORDER BY ts DESC, id DESC LIMIT ?) r, "
        "json_each(r.data) j ORDER BY r.ts DESC, r.id DESC",
        (device_id, scan),
    )
    for ts, key, raw, kind in rows:
        if key not in found:
            value = _value(raw, kind)
            if value is not None:
                found[key] = Point(ts, value)
    return dict(sorted(found.items()))


def history(
    conn: sqlite3.Connection, device_id: int, metric: str, start: int, end: int, limit: int
) -> tuple[list[Point], bool]:
    """Every stored value of ``metric`` with ``start <= ts < end``, oldest first; (points, truncated)."""
    path = _path(metric)
    rows = conn.execute(
        "SELECT ts, json_extract(data, ?1), json_type(data, ?1) FROM readings "
        "WHERE device_id = ?2 AND ts >= ?3 AND ts < ?4 AND json_type(data, ?1) IS NOT NULL "
        "ORDER BY ts, id LIMIT ?5",
        (path, device_id, start, end, limit + 1),
    ).fetchall()
    points = [Point(ts, value) for ts, raw, kind in rows if (value := _value(raw, kind)) is not None]
    return points[:limit], len(points) > limit


def downsample(
    conn: sqlite3.Connection, device_id: int, metric: str, start: int, end: int, every_ms: int, limit: int
) -> tuple[list[Bucket], bool]:
    """Numeric values of ``metric`` in buckets of ``every_ms`` aligned to the epoch; (buckets, truncated).

    Booleans count as 0 and 1; strings are left out.
    """
    path = _path(metric)
    rows = conn.execute(
        "SELECT (ts / ?5) * ?5 AS bucket, count(v), avg(v), min(v), max(v) FROM ("
        "  SELECT ts, CASE json_type(data, ?1) WHEN 'true' THEN 1.0 WHEN 'false' THEN 0.0 "
        "  ELSE json_extract(data, ?1) END AS v FROM readings "
        "  WHERE device_id = ?2 AND ts >= ?3 AND ts < ?4 "
        "  AND json_type(data, ?1) IN ('real', 'integer', 'true', 'false')"
        ") GROUP BY bucket ORDER BY bucket LIMIT ?6",
        (path, device_id, start, end, every_ms, limit + 1),
    ).fetchall()
    buckets = [Bucket(int(b), int(n), float(mean), float(lo), float(hi)) for b, n, mean, lo, hi in rows]
    return buckets[:limit], len(buckets) > limit


@dataclass(slots=True)
class EventRow:
    ts: int
    seq: int
    name: str
    data: str


def events(
    conn: sqlite3.Connection, device_id: int, start: int, end: int, limit: int, name: str | None = None
) -> tuple[list[EventRow], bool]:
    """Events with ``start <= ts < end`` (optionally one name), oldest first; (events, truncated)."""
    sql = "SELECT ts, seq, name, data FROM events WHERE device_id = ? AND ts >= ? AND ts < ?"
    params: list[Any] = [device_id, start, end]
    if name is not None:
        sql += " AND name = ?"
        params.append(name)
    rows = conn.execute(sql + " ORDER BY ts, id LIMIT ?", [*params, limit + 1]).fetchall()
    found = [EventRow(*row) for row in rows]
    return found[:limit], len(found) > limit


def store_bytes(path: Path) -> int:
    """Size of the store on disk: the store file and the command ledger's file, each with its WAL
    and shared-memory files."""
    total = 0
    for file in (path, ledger_path(path)):
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += (file.parent / (file.name + suffix)).stat().st_size
    return total


__all__ = [
    "LATEST_SCAN_ROWS",
    "MAX_BULK_ROWS",
    "NO_LIMIT",
    "Bucket",
    "EventInsert",
    "EventRow",
    "Point",
    "ReadPool",
    "ReadingFrame",
    "ReadingRow",
    "bulk_insert_works",
    "delete_before",
    "delete_device",
    "device_ids",
    "downsample",
    "events",
    "history",
    "insert_events",
    "insert_readings",
    "insert_readings_bulk",
    "latest",
    "reading_counts",
    "store_bytes",
]
