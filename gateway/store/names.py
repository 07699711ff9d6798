"""Each device's known metric and event names: the ``device_names`` table (migration 5).

The device plane caps how many distinct names a device may create
(``gateway/device/quotas.py``, docs/operations.md "Quotas"); this table is how
the cap survives a restart. Every statement on ``device_names`` lives here.

What the caller must do:

* the running gateway ``load``s a device's names on the event loop when its
  first session opens (one indexed query, at most the two caps' worth of rows);
* it stores new names with ``add`` through the writer thread
  (``committer.call``) and waits for that to return *before* submitting the
  frame that brought them, so that the names stored always cover every frame
  stored, even across a crash (a name may be stored for a frame that was not:
  the device resends that frame);
* ``forget`` (an operator resetting a device that renamed its metrics) takes
  effect at the device's next connection. Removing a device from ``devices``
  deletes its names (a trigger, so the CLI's ``device remove`` needs no call here).

Names are never forgotten by retention: a name counts toward the cap from its
first accepted frame until the device is removed or its names are reset.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Literal

from gateway.store.db import transaction

Kind = Literal["metric", "event"]
METRIC: Kind = "metric"
EVENT: Kind = "event"


def load(conn: sqlite3.Connection, device_id: int) -> tuple[set[str], set[str]]:
    """(metric names, event names) stored for the device."""
    metrics: set[str] = set()
    events: set[str] = set()
    for kind, name in conn.execute("SELECT kind, name FROM device_names WHERE device_id = ?", (device_id,)):
        (metrics if kind == METRIC else events).add(name)
    return metrics, events


def add(
    conn: sqlite3.Connection,
    device_id: int,
    metrics: Iterable[str] = (),
    events: Iterable[str] = (),
    *,
    now_ms: int,
) -> None:
    """Store new names of the device in one transaction (names it has already are kept as they are).

    ``conn`` must be outside a transaction (the writer thread's, through ``committer.call``).
    """
    rows = [(device_id, METRIC, name, now_ms) for name in metrics]
    rows.extend((device_id, EVENT, name, now_ms) for name in events)
    if not rows:
        return
    with transaction(conn):
        conn.executemany(
            "INSERT OR IGNORE INTO device_names (device_id, kind, name, created_ms) VALUES (?, ?, ?, ?)", rows
        )


def count(conn: sqlite3.Connection, device_id: int) -> dict[Kind, int]:
    """How many metric and event names the device has."""
    found: dict[Kind, int] = {METRIC: 0, EVENT: 0}
    for kind, number in conn.execute(
        "SELECT kind, count(*) FROM device_names WHERE device_id = ? GROUP BY kind", (device_id,)
    ):
        if kind in (METRIC, EVENT):
            found[kind] = int(number)
    return found


def forget(conn: sqlite3.Connection, device_id: int, kind: Kind | None = None) -> int:
    """Delete the device's names (of one kind, or both); returns how many were deleted.

    The running gateway keeps the names of a connected device in memory: the
    reset counts from the device's next connection.
    """
    with transaction(conn):
        if kind is None:
            cursor = conn.execute("DELETE FROM device_names WHERE device_id = ?", (device_id,))
        else:
            cursor = conn.execute(
                "DELETE FROM device_names WHERE device_id = ? AND kind = ?", (device_id, kind)
            )
        return cursor.rowcount


__all__ = ["EVENT", "METRIC", "Kind", "add", "count", "forget", "load"]
