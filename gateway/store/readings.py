"""Reads for operators: latest values, history per metric, downsampling, events.

``readings.data`` holds one JSON object per sample (metric -> value), so a
metric's history is SQLite's ``json_extract`` over the ``(device_id, ts)``
index: one range scan, no per-metric table. Ranges are half-open,
``start <= ts < end``, ordered by ``(ts, id)`` — insertion order among equal
timestamps — so adjacent ranges never share or miss a sample.

The functions take a connection and block; the API runs them through
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

from gateway import store

T = TypeVar("T")

LATEST_SCAN_ROWS = 10_000
"""``latest`` looks at a device's newest samples up to this many to find each metric."""


class ReadPool:
    """A few query-only store connections for worker threads; ``await run(fn)``; ``close()``."""

    def __init__(self, path: str | Path, size: int = 4) -> None:
        self.path = Path(path)
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        for _ in range(size):
            conn = store.connect(self.path, create=False)
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
    """Size of the store on disk: the database file plus its WAL and shared-memory files."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += (path.parent / (path.name + suffix)).stat().st_size
    return total


__all__ = [
    "LATEST_SCAN_ROWS",
    "Bucket",
    "EventRow",
    "Point",
    "ReadPool",
    "downsample",
    "events",
    "history",
    "latest",
    "store_bytes",
]
