"""Retention: what the store keeps, and for how long.

* readings and events older than ``store.retention_days`` go, unless a sink still needs them
  (every device that has rows is visited, devices that only send events too);
* final commands and their state histories last changed more than ``store.command_days`` ago
  go (open ones stay, however old);
* dead letters last changed more than ``store.dead_letter_days`` ago go (resent ones, and
  ones nobody resent); those marked for a resend stay.

The policy lives here; the statements live with the tables' owners (``readings`` deletes
rows, ``delivery`` knows how far each sink has got). The running gateway runs
:func:`run_retention` as a task; each pass goes through the writer of the file it prunes
(``GroupCommitter.call`` for the store file, ``LedgerWriter.call`` for the command ledger's
file), so it never writes beside a writer thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Sequence

from gateway.store import delivery, ledger, readings
from gateway.store.db import transaction
from gateway.store.ledger_writer import LedgerWriter
from gateway.store.writer import GroupCommitter
from iotgw_common.clock import now_ms

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0
"""Seconds between two retention passes."""
_DAY_MS = 86_400_000
Cursors = str | Sequence[str] | None
"""A sink's cursor name, several (each sink that is on), or None: no sink holds rows back."""


def delete_older_than(
    conn: sqlite3.Connection,
    cutoff_ms: int,
    *,
    readings_cursor: Cursors = None,
    events_cursor: Cursors = None,
) -> int:
    """Delete readings and events stamped before ``cutoff_ms``; returns readings deleted.

    Works device by device through the (device_id, ts) indexes, one short transaction each,
    so ingest is never blocked for long. With a cursor name (a forwarder's), only rows at or
    below that cursor go: a row the sink has not sent yet is kept, however old, and with no
    cursor stored yet nothing goes; with several (one per sink that is on), the lowest
    holds: a row goes once every sink has sent it. Every device with readings or events is visited. The
    caller must not be inside a transaction on ``conn``; in a running gateway, run it
    through ``GroupCommitter.call``.
    """
    max_reading_id = _lowest(conn, readings_cursor)
    max_event_id = _lowest(conn, events_cursor)
    deleted = 0
    for device_id in readings.device_ids(conn):
        with transaction(conn):
            deleted += readings.delete_before(
                conn, device_id, cutoff_ms, max_reading_id=max_reading_id, max_event_id=max_event_id
            )
    return deleted


def _lowest(conn: sqlite3.Connection, cursors: Cursors) -> int:
    """The highest row id every named sink has sent (``NO_LIMIT`` when none is named)."""
    names = [cursors] if isinstance(cursors, str) else list(cursors or ())
    return min((delivery.cursor_position(conn, name) for name in names), default=readings.NO_LIMIT)


async def prune_commands(ledger_writer: LedgerWriter, before_ms: int) -> int:
    """Delete final commands last changed before ``before_ms``, a batch per ledger writer call; the count."""
    total = 0
    while True:
        deleted = await ledger_writer.call(functools.partial(ledger.prune_final, before_ms=before_ms))
        total += deleted
        if deleted < ledger.PRUNE_BATCH:
            return total


async def run_retention(
    committer: GroupCommitter,
    days: float,
    *,
    readings_cursor: Cursors = None,
    events_cursor: Cursors = None,
    command_days: float = 0.0,
    ledger_writer: LedgerWriter | None = None,
    dead_letter_days: float = 0.0,
    every_s: float = RETENTION_EVERY_S,
) -> None:
    """Apply the retention rules now and every ``every_s`` seconds, until cancelled.

    ``days`` (readings and events), ``command_days`` and ``dead_letter_days``: 0 or less keeps
    that kind for ever; returns at once when all three do. Pass the cursor names of the sinks
    that are on, so their unsent rows stay, and the ``ledger_writer`` when ``command_days`` is
    set. Run it as a task and cancel it before stopping the committer and the ledger writer.
    """
    if days <= 0 and command_days <= 0 and dead_letter_days <= 0:
        return
    if command_days > 0 and ledger_writer is None:
        raise ValueError("pruning commands (command_days) needs the ledger writer")
    while True:
        now = now_ms()
        if days > 0:
            delete = functools.partial(
                delete_older_than,
                cutoff_ms=now - int(days * _DAY_MS),
                readings_cursor=readings_cursor,
                events_cursor=events_cursor,
            )
            deleted = await committer.call(delete)
            if deleted:
                log.info("retention: deleted %d readings older than %g days", deleted, days)
        if command_days > 0:
            assert ledger_writer is not None
            pruned = await prune_commands(ledger_writer, now - int(command_days * _DAY_MS))
            if pruned:
                log.info("retention: deleted %d commands final for more than %g days", pruned, command_days)
        if dead_letter_days > 0:
            cutoff = now - int(dead_letter_days * _DAY_MS)
            letters = await committer.call(functools.partial(delivery.prune_dead_letters, before_ms=cutoff))
            if letters:
                log.info("retention: deleted %d dead letters older than %g days", letters, dead_letter_days)
        await asyncio.sleep(every_s)


__all__ = ["RETENTION_EVERY_S", "delete_older_than", "prune_commands", "run_retention"]
