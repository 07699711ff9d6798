"""Sink progress: the ``cursors``, ``forwarder_state`` and ``dead_letters`` tables.

A delivery sink (the InfluxDB forwarder; the MQTT bridge next) sends the rows of
``readings`` and ``events`` in id order, behind one cursor per table named
``<sink>.readings`` and ``<sink>.events`` (:func:`cursor_name`; the InfluxDB sink's
``influx.readings`` and ``influx.events`` are in stores in the field, so the scheme
must not change). A cursor holds the id of the last row the sink confirmed; a sink that
never confirmed anything is at 0 (:func:`cursor_position`).

Each sink has one row in ``forwarder_state`` (:class:`SinkState`: the only definition of
its columns), and files the rows it cannot deliver in ``dead_letters``, where an
operator marks them for a resend (:func:`mark_for_retry`). :func:`read_status` derives
what ``iotgw status`` and ``/api/v1/status`` show from these rows alone: nothing is kept
a second time in memory.

Who calls what. In the running gateway every write here goes through the group-commit
writer thread (``GroupCommitter.call``): :func:`commit_batch`, :func:`save_state`,
:func:`settle_retries`, and retention calling :func:`cursor_position`. The engine's
own read connection calls :func:`pending_readings`, :func:`pending_events`,
:func:`stored_reading`, :func:`stored_event` and :func:`letters_to_resend` from a worker
thread. The command line calls :func:`read_status`, :func:`list_dead_letters` and
:func:`mark_for_retry` from its own process, while the gateway runs (WAL, busy timeout).

The rows *waiting* for a sink are read here too (ids above a cursor); the tables
``readings`` and ``events`` themselves belong to ``gateway.store.readings``.
"""

from __future__ import annotations

import sqlite3
from typing import Literal, NamedTuple

import msgspec

from gateway.store.db import transaction
from iotgw_common.clock import now_ms

__all__ = [
    "DeadLetter",
    "Refused",
    "Resend",
    "SinkState",
    "Status",
    "commit_batch",
    "cursor_name",
    "cursor_position",
    "file_dead_letters",
    "letters_to_resend",
    "list_dead_letters",
    "mark_for_retry",
    "pending_events",
    "pending_readings",
    "read_status",
    "save_state",
    "settle_retries",
    "stored_event",
    "stored_reading",
]

Table = Literal["readings", "events"]


# -- cursors ----------------------------------------------------------------------------------


def cursor_name(sink: str, table: Table) -> str:
    """The cursor of ``sink`` over ``table``: ``influx.readings``, ``influx.events``, …"""
    return f"{sink}.{table}"


def cursor_position(conn: sqlite3.Connection, name: str) -> int:
    """The id of the last row the cursor ``name`` confirmed; 0 if it never moved."""
    row = conn.execute("SELECT last_id FROM cursors WHERE name = ?", (name,)).fetchone()
    return 0 if row is None else int(row[0])


def _advance(conn: sqlite3.Connection, name: str, last_id: int) -> None:
    conn.execute(
        "INSERT INTO cursors (name, last_id) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id",
        (name, last_id),
    )


# -- the rows a sink has not confirmed yet ------------------------------------------------------


def pending_readings(conn: sqlite3.Connection, after_id: int, limit: int) -> list[tuple[int, int, int, str]]:
    """Up to ``limit`` readings above ``after_id``, in id order: ``(id, device_id, ts, data)``."""
    return conn.execute(
        "SELECT id, device_id, ts, data FROM readings WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
    ).fetchall()


def pending_events(
    conn: sqlite3.Connection, after_id: int, limit: int
) -> list[tuple[int, int, int, int, str, str]]:
    """Up to ``limit`` events above ``after_id``, in id order: ``(id, device_id, ts, seq, name, data)``."""
    return conn.execute(
        "SELECT id, device_id, ts, seq, name, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
        (after_id, limit),
    ).fetchall()


def stored_reading(conn: sqlite3.Connection, row_id: int) -> str | None:
    """The data of reading ``row_id``, or None once retention or a purge removed it."""
    row = conn.execute("SELECT data FROM readings WHERE id = ?", (row_id,)).fetchone()
    return None if row is None else str(row[0])


def stored_event(conn: sqlite3.Connection, row_id: int) -> tuple[int, str, str] | None:
    """``(seq, name, data)`` of event ``row_id``, or None once it was removed."""
    row = conn.execute("SELECT seq, name, data FROM events WHERE id = ?", (row_id,)).fetchone()
    return None if row is None else (int(row[0]), str(row[1]), str(row[2]))


# -- state ------------------------------------------------------------------------------------


class SinkState(msgspec.Struct, kw_only=True):
    """One row of ``forwarder_state``: a sink's progress and health as it last recorded it.

    The delivery engine keeps one in memory, changes it as it goes and saves a copy with
    :func:`save_state` or :func:`commit_batch`; its fields are the table's columns.
    """

    name: str
    target: str = ""
    """For people: where the sink delivers (never credentials)."""
    state: str = ""
    """``starting``, ``ok``, ``retrying`` or ``stopped``."""
    started_ms: int | None = None
    last_success_ms: int | None = None
    last_attempt_ms: int | None = None
    last_error: str = ""
    last_error_ms: int | None = None
    retries: int = 0
    """Failed attempts since the last success."""
    total_retries: int = 0
    sent_readings: int = 0
    sent_events: int = 0
    batches: int = 0
    updated_ms: int | None = None


_STATE_COLUMNS = SinkState.__struct_fields__
_SAVE_STATE = (
    f"INSERT OR REPLACE INTO forwarder_state ({', '.join(_STATE_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _STATE_COLUMNS)})"
)


def save_state(conn: sqlite3.Connection, state: SinkState) -> None:
    """Replace the sink's row with ``state`` (one statement: atomic on its own, or inside a transaction).

    The caller passes a copy it no longer changes (the writer thread saves it later) with
    ``updated_ms`` set.
    """
    conn.execute(_SAVE_STATE, msgspec.structs.astuple(state))


# -- dead letters ---------------------------------------------------------------------------


class Refused(NamedTuple):
    """A row the sink will not take, on its way to ``dead_letters``."""

    kind: str
    """``reading`` or ``event``."""
    row_id: int
    device_id: int
    ts: int
    line: str
    """The row as the sink encoded it ('' if it could not be encoded)."""
    error: str
    status: int
    """The sink's status code (HTTP for InfluxDB), 0 if none."""


def file_dead_letters(conn: sqlite3.Connection, sink: str, refused: list[Refused]) -> None:
    """Add ``refused`` as dead letters of ``sink``, state ``dead``."""
    if not refused:
        return
    now = now_ms()
    conn.executemany(
        "INSERT INTO dead_letters (forwarder, kind, row_id, device_id, ts, line, error, status, state, "
        "created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'dead', ?, ?)",
        [(sink, *r, now, now) for r in refused],
    )


def commit_batch(conn: sqlite3.Connection, sink: str, *, readings_to: int | None, events_to: int | None,
                 refused: list[Refused], state: SinkState) -> None:  # fmt: skip
    """Record a delivered batch in one transaction: move the cursors, file its dead letters, save the state.

    ``readings_to`` / ``events_to``: the last id of each table the batch covered (None: the
    batch had none of that table and the cursor stays).
    """
    with transaction(conn):
        if readings_to is not None:
            _advance(conn, cursor_name(sink, "readings"), readings_to)
        if events_to is not None:
            _advance(conn, cursor_name(sink, "events"), events_to)
        file_dead_letters(conn, sink, refused)
        save_state(conn, state)


class Resend(NamedTuple):
    """A dead letter an operator marked for a resend."""

    id: int
    kind: str
    row_id: int
    device_id: int
    ts: int
    line: str


def letters_to_resend(conn: sqlite3.Connection, sink: str, limit: int) -> list[Resend]:
    """Up to ``limit`` of the sink's dead letters in state ``retry``, oldest first."""
    rows = conn.execute(
        "SELECT id, kind, row_id, device_id, ts, line FROM dead_letters "
        "WHERE forwarder = ? AND state = 'retry' ORDER BY id LIMIT ?",
        (sink, limit),
    ).fetchall()
    return [Resend(*row) for row in rows]


def settle_retries(
    conn: sqlite3.Connection, *, resent: list[int], failed: dict[int, tuple[str, int]]
) -> None:
    """After a resend: ``resent`` ids are done; ``failed`` ids (-> error, status) are dead again."""
    now = now_ms()
    with transaction(conn):
        conn.executemany(
            "UPDATE dead_letters SET state = 'resent', updated_ms = ? WHERE id = ?",
            [(now, i) for i in resent],
        )
        conn.executemany(
            "UPDATE dead_letters SET state = 'dead', error = ?, status = ?, attempts = attempts + 1, "
            "updated_ms = ? WHERE id = ?",
            [(error, status, now, i) for i, (error, status) in failed.items()],
        )


def mark_for_retry(conn: sqlite3.Connection, sink: str, ids: list[int] | None) -> int:
    """Mark dead letters of ``sink`` (all that are dead if ``ids`` is None) for the running gateway to resend.

    A short transaction from any process (WAL, busy timeout); returns how many were marked.
    """
    now = now_ms()
    with transaction(conn, immediate=True):
        if ids is None:
            return conn.execute(
                "UPDATE dead_letters SET state = 'retry', updated_ms = ? WHERE forwarder = ? AND state = 'dead'",
                (now, sink),
            ).rowcount
        count = 0
        for dead_id in ids:
            count += conn.execute(
                "UPDATE dead_letters SET state = 'retry', updated_ms = ? WHERE forwarder = ? AND id = ? AND state = 'dead'",
                (now, sink, dead_id),
            ).rowcount
        return count


def prune_dead_letters(conn: sqlite3.Connection, before_ms: int) -> int:
    """Delete dead letters of every sink last changed before ``before_ms``: those resent, and
    those still dead that nobody resent in that time; returns how many went.

    Letters marked ``retry`` stay (the running gateway is about to resend them). One
    transaction; call it on the store's writer (``GroupCommitter.call``).
    """
    with transaction(conn):
        deleted: int = conn.execute(
            "DELETE FROM dead_letters WHERE state IN ('resent', 'dead') AND updated_ms < ?", (before_ms,)
        ).rowcount
    return deleted


class DeadLetter(msgspec.Struct):
    """One dead letter as ``iotgw deadletters`` shows it."""

    id: int
    kind: str
    row_id: int
    device: str
    """The device's name (``removed-<id>`` once it was removed)."""
    ts: int
    line: str
    error: str
    status: int
    state: str
    """``dead``, ``retry`` (marked for a resend) or ``resent``."""
    attempts: int
    created_ms: int
    updated_ms: int


def list_dead_letters(
    conn: sqlite3.Connection, sink: str, *, include_resent: bool = False
) -> list[DeadLetter]:
    """The sink's dead letters, oldest first; those already resent only with ``include_resent``."""
    where = "" if include_resent else "AND d.state != 'resent'"
    rows = conn.execute(
        "SELECT d.id, d.kind, d.row_id, coalesce(v.name, 'removed-' || d.device_id), d.ts, d.line, d.error, "
        "d.status, d.state, d.attempts, d.created_ms, d.updated_ms "
        f"FROM dead_letters d LEFT JOIN devices v ON v.id = d.device_id WHERE d.forwarder = ? {where} "
        "ORDER BY d.id",
        (sink,),
    ).fetchall()
    return [DeadLetter(*row) for row in rows]


# -- status -----------------------------------------------------------------------------------


class Status(SinkState, kw_only=True):
    """A sink as the store shows it: its saved state plus what waits for it (``iotgw status``)."""

    configured: bool = True
    """False: the sink never ran on this store (the other fields are defaults)."""
    cursor_readings: int = 0
    cursor_events: int = 0
    pending_readings: int = 0
    pending_events: int = 0
    oldest_pending_ts: int | None = None
    """Timestamp (ms) of the oldest reading not yet delivered."""
    dead_letters: int = 0
    dead_letters_retrying: int = 0


def read_status(conn: sqlite3.Connection, sink: str) -> Status:
    """The sink's saved state and, derived from the store, its backlog and dead letters.

    Safe from any process while the gateway runs (a few reads, no transaction).
    """
    row = conn.execute(
        f"SELECT {', '.join(_STATE_COLUMNS)} FROM forwarder_state WHERE name = ?", (sink,)
    ).fetchone()
    if row is None:
        return Status(name=sink, configured=False)
    r_cursor = cursor_position(conn, cursor_name(sink, "readings"))
    e_cursor = cursor_position(conn, cursor_name(sink, "events"))
    (pending_r,) = conn.execute("SELECT count(*) FROM readings WHERE id > ?", (r_cursor,)).fetchone()
    (pending_e,) = conn.execute("SELECT count(*) FROM events WHERE id > ?", (e_cursor,)).fetchone()
    oldest = conn.execute("SELECT ts FROM readings WHERE id > ? ORDER BY id LIMIT 1", (r_cursor,)).fetchone()
    dead = dict(
        conn.execute(
            "SELECT state, count(*) FROM dead_letters WHERE forwarder = ? GROUP BY state", (sink,)
        ).fetchall()
    )
    return Status(
        **dict(zip(_STATE_COLUMNS, row, strict=True)),
        cursor_readings=r_cursor,
        cursor_events=e_cursor,
        pending_readings=pending_r,
        pending_events=pending_e,
        oldest_pending_ts=None if oldest is None else oldest[0],
        dead_letters=dead.get("dead", 0),
        dead_letters_retrying=dead.get("retry", 0),
    )
