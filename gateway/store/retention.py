"""Retention: readings and events older than ``store.retention_days`` go, unless a sink still needs them.

The policy lives here; the statements live with the tables' owners (``readings`` deletes
rows, ``delivery`` knows how far each sink has got). The running gateway runs
:func:`run_retention` as a task; each pass goes through the group committer
(``GroupCommitter.call``), so it never writes beside the writer thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3

from gateway.store import delivery, readings
from gateway.store.db import transaction
from gateway.store.writer import GroupCommitter
from iotgw_common.clock import now_ms

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0
"""Seconds between two retention passes."""
_DAY_MS = 86_400_000


def delete_older_than(
    conn: sqlite3.Connection,
    cutoff_ms: int,
    *,
    readings_cursor: str | None = None,
    events_cursor: str | None = None,
) -> int:
    """Delete readings and events stamped before ``cutoff_ms``; returns readings deleted.

    Works device by device through the (device_id, ts) indexes, one short transaction each,
    so ingest is never blocked for long. With a cursor name (a forwarder's), only rows at or
    below that cursor go: a row the sink has not sent yet is kept, however old, and with no
    cursor stored yet nothing goes. Only devices that have readings are visited (as before
    the move). The caller must not be inside a transaction on ``conn``; in a running gateway,
    run it through ``GroupCommitter.call``.
    """
    max_reading_id = readings.NO_LIMIT
    max_event_id = readings.NO_LIMIT
    if readings_cursor is not None:
        max_reading_id = delivery.cursor_position(conn, readings_cursor)
    if events_cursor is not None:
        max_event_id = delivery.cursor_position(conn, events_cursor)
    deleted = 0
    for device_id in readings.device_ids(conn):
        with transaction(conn):
            deleted += readings.delete_before(
                conn, device_id, cutoff_ms, max_reading_id=max_reading_id, max_event_id=max_event_id
            )
    return deleted


async def run_retention(
    committer: GroupCommitter,
    days: float,
    *,
    readings_cursor: str | None = None,
    events_cursor: str | None = None,
    every_s: float = RETENTION_EVERY_S,
) -> None:
    """Delete what is older than ``days`` now and every ``every_s`` seconds, until cancelled.

    Returns at once when ``days`` is 0 or less (keep everything). Pass the cursor names of
    the sinks that are on, so their unsent rows stay. Run it as a task and cancel it before
    stopping the committer.
    """
    if days <= 0:
        return
    while True:
        cutoff = now_ms() - int(days * _DAY_MS)
        delete = functools.partial(
            delete_older_than, cutoff_ms=cutoff, readings_cursor=readings_cursor, events_cursor=events_cursor
        )
        deleted = await committer.call(delete)
        if deleted:
            log.info("retention: deleted %d readings older than %g days", deleted, days)
        await asyncio.sleep(every_s)


__all__ = ["RETENTION_EVERY_S", "delete_older_than", "run_retention"]
