"""The command ledger: the ``commands`` and ``command_states`` tables, and a command's life.

Both tables live in the ledger file beside the store (``schema.ledger_path``), attached as
schema ``ledger`` to every store connection; the SQL here names them unqualified, so it runs
on a store connection and on the ledger file's own (``schema.connect_ledger``) alike, except
the reads, which join ``devices`` and need a store connection.

Every command an operator gives a device has one ``commands`` row (its current state,
``sender``, ``args``, the device's result) and one ``command_states`` row per state change
(state, time, detail). This module is the only one that reads or writes those two tables,
and it holds the state machine those rows follow (docs/commands.md, section 1)::

    queued ──> sent ──> succeeded      (result ok)
      │          └───> failed         (result not ok, no result within the timeout,
      │                                 connection lost, gateway restarted)
      ├──> expired                    (not delivered within its TTL)
      └──> failed                     (undeclared by the device at delivery, cancelled)

A final state (succeeded, failed, expired) has no way out.

Two halves, both plain functions without asyncio:

- In memory: :func:`new_command` makes a queued :class:`CommandRecord`,
  :func:`transition` and :func:`finish` move one along a valid edge. Each returns the
  :data:`Change` the store must get; the caller (``gateway.operator.commands``) collects
  changes and hands a batch to :func:`write_changes`. A change is a snapshot taken when the
  state changed, so later changes to the record do not alter it.
- In the store: :func:`write_changes` (one transaction), :func:`load_open` (what a starting
  gateway resumes), :func:`load_command`, :func:`list_commands`,
  :func:`delete_device_commands` for ``device remove --purge``, and :func:`prune_final`
  for retention (``store.command_days``).

Write functions run on the ledger's writer (``gateway.store.ledger_writer.LedgerWriter``, on
its thread or the event loop's in a running gateway); :func:`delete_device_commands` runs in the device removal's
transaction (the CLI). Read functions take any store connection.
"""

from __future__ import annotations

import enum
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.store.db import transaction
from iotgw_common.protocol.messages import MAX_STRING_LENGTH


class CommandState(enum.StrEnum):
    """Where a command is in its life (the ``state`` column)."""

    QUEUED = "queued"
    SENT = "sent"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"


FINAL_STATES = frozenset({CommandState.SUCCEEDED, CommandState.FAILED, CommandState.EXPIRED})
TRANSITIONS: dict[CommandState, frozenset[CommandState]] = {
    CommandState.QUEUED: frozenset({CommandState.SENT, CommandState.FAILED, CommandState.EXPIRED}),
    CommandState.SENT: frozenset({CommandState.SUCCEEDED, CommandState.FAILED}),
}
"""Allowed state changes; a final state has none."""


class InvalidTransition(RuntimeError):
    """A state change the ledger does not allow (a bug in the caller, never a device's doing)."""


@dataclass(slots=True)
class StateChange:
    """One entry of a command's history (a ``command_states`` row)."""

    state: str
    ts_ms: int
    detail: str = ""


@dataclass(slots=True)
class CommandRecord:
    """A command as the ledger holds it. ``value`` / ``error`` come from the device's result."""

    id: str
    device_id: int
    device: str
    name: str
    args: dict[str, Any]
    state: str
    sender: str
    created_ms: int
    expires_ms: int
    timeout_ms: int
    deadline_ms: int = 0
    updated_ms: int = 0
    value: Any = None
    error: str | None = None
    history: list[StateChange] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def sent_ms(self) -> int | None:
        """When the command last became ``sent``; None if it never was."""
        for change in reversed(self.history):
            if change.state == CommandState.SENT:
                return change.ts_ms
        return None


@dataclass(frozen=True, slots=True)
class Insert:
    """A new ``commands`` row and its first ``command_states`` row."""

    id: str
    device_id: int
    name: str
    args: str  # JSON
    state: str
    sender: str
    created_ms: int
    deadline_ms: int
    expires_ms: int
    updated_ms: int
    timeout_ms: int
    detail: str


@dataclass(frozen=True, slots=True)
class Update:
    """A state change: the ``commands`` row updated, one ``command_states`` row added."""

    id: str
    state: str
    ts_ms: int
    detail: str
    deadline_ms: int
    result: str | None  # JSON {"value", "error"} when the state is final, else None (kept as is)


Change = Insert | Update
"""What :func:`write_changes` takes."""


def new_command_id(created_ms: int) -> str:
    """Opaque, unique, and sorting by creation time: 12 hex digits of ms + 8 random."""
    return f"{created_ms:012x}{secrets.token_hex(4)}"


def shorten(text: str) -> str:
    """``text`` cut to what a protocol string may hold (the longest detail or error stored)."""
    return text if len(text) <= MAX_STRING_LENGTH else text[: MAX_STRING_LENGTH - 1] + "…"


# -- the state machine, in memory ---------------------------------------------------------


def new_command(
    *,
    device_id: int,
    device: str,
    name: str,
    args: dict[str, Any],
    sender: str,
    now_ms: int,
    ttl_ms: int,
    timeout_ms: int,
) -> tuple[CommandRecord, Insert]:
    """A new queued command and the insert that logs it.

    The caller checks ``name`` and ``args`` first; ``timeout_ms`` must be at least 1. The
    command expires ``ttl_ms`` after ``now_ms`` unless it was sent by then.
    """
    detail = f"by {sender}"
    record = CommandRecord(
        id=new_command_id(now_ms),
        device_id=device_id,
        device=device,
        name=name,
        args=args,
        state=CommandState.QUEUED,
        sender=sender,
        created_ms=now_ms,
        expires_ms=now_ms + ttl_ms,
        timeout_ms=timeout_ms,
        updated_ms=now_ms,
        history=[StateChange(CommandState.QUEUED, now_ms, detail)],
    )
    insert = Insert(
        id=record.id,
        device_id=device_id,
        name=name,
        args=msgspec.json.encode(args).decode(),
        state=record.state,
        sender=sender,
        created_ms=now_ms,
        deadline_ms=record.deadline_ms,
        expires_ms=record.expires_ms,
        updated_ms=now_ms,
        timeout_ms=timeout_ms,
        detail=detail,
    )
    return record, insert


def transition(record: CommandRecord, state: CommandState, now_ms: int, detail: str = "") -> Update:
    """Move ``record`` to ``state`` at ``now_ms`` (appending to its history); the update to store.

    Raises InvalidTransition, leaving ``record`` as it was, unless :data:`TRANSITIONS` allows
    the change. For a final state, set ``record.value`` and ``record.error`` first (or use
    :func:`finish`): they are stored as the result. For ``sent``, set ``record.deadline_ms``
    first.
    """
    current = CommandState(record.state)
    if state not in TRANSITIONS.get(current, frozenset()):
        raise InvalidTransition(f"command {record.id}: {current} -> {state} is not a valid change")
    record.state = state
    record.updated_ms = now_ms
    record.history.append(StateChange(state, now_ms, detail))
    result = None
    if state in FINAL_STATES:
        result = msgspec.json.encode({"value": record.value, "error": record.error}).decode()
    return Update(record.id, state.value, now_ms, detail, record.deadline_ms, result)


def finish(
    record: CommandRecord, state: CommandState, now_ms: int, *, value: Any = None, error: str | None = None
) -> Update:
    """Move ``record`` to the final ``state`` with the device's ``value`` and ``error``.

    ``error`` is shortened to a protocol string's length and also becomes the history detail.
    Raises InvalidTransition (``record`` unchanged) if ``record`` cannot reach ``state``.
    """
    current = CommandState(record.state)
    if state not in FINAL_STATES or state not in TRANSITIONS.get(current, frozenset()):
        raise InvalidTransition(f"command {record.id}: {current} -> {state} is not a valid change")
    record.value = value
    record.error = shorten(error) if error is not None else None
    return transition(record, state, now_ms, record.error or "")


# -- the store --------------------------------------------------------------------------------

_INSERT_COMMAND = (
    "INSERT INTO commands (id, device_id, name, args, state, sender, created_ms, deadline_ms, "
    "expires_ms, updated_ms, timeout_ms, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_COMMAND = "UPDATE commands SET state = ?, updated_ms = ?, deadline_ms = ?, result = coalesce(?, result) WHERE id = ?"
_INSERT_STATES = "INSERT INTO command_states (command_id, state, ts_ms, detail)"
_STATES_PER_STATEMENT = 200
"""History rows per statement: 800 parameters, under the 999 of the oldest SQLite builds."""
_SELECT = (
    "SELECT c.id, c.device_id, coalesce(d.name, ''), c.name, c.args, c.state, c.sender, c.created_ms, "
    "c.expires_ms, c.timeout_ms, c.deadline_ms, c.updated_ms, c.result "
    "FROM commands c LEFT JOIN devices d ON d.id = c.device_id"
)


def write_changes(conn: sqlite3.Connection, changes: Iterable[Change]) -> None:
    """Store ``changes`` in order, in one transaction: all of them or, on an error, none.

    Call on the ledger's writer (``LedgerWriter.write``), outside a transaction.

    Few statements, because each one hands the interpreter lock back and forth with a busy event
    loop (docs/performance.md, "Stalls, the collector, commands and checkpoints"): a command
    inserted and updated in the same batch (queued, then sent at once) is inserted as it ends up,
    and every history row goes in one multi-row statement, in order. What is stored is what the
    changes one by one would store.
    """
    inserts: list[list[Any]] = []
    inserted: dict[str, list[Any]] = {}  # command id -> its row, as the batch leaves it
    updates: list[tuple[Any, ...]] = []
    history: list[Any] = []
    for change in changes:
        if type(change) is Insert:
            row = [change.id, change.device_id, change.name, change.args, change.state, change.sender,
                                  change.created_ms, change.deadline_ms, change.expires_ms, change.updated_ms,
                                  change.timeout_ms, None]  # fmt: skip
            inserts.append(row)  # a duplicate id stays a second row: the insert fails, as it should
            inserted[change.id] = row
            history += (change.id, change.state, change.created_ms, change.detail)
        else:
            assert type(change) is Update
            found = inserted.get(change.id)
            if found is not None:  # inserted in this batch: insert it as updated
                found[4], found[9], found[7] = change.state, change.ts_ms, change.deadline_ms
                if change.result is not None:
                    found[11] = change.result
            else:
                updates.append((change.state, change.ts_ms, change.deadline_ms, change.result, change.id))
            history += (change.id, change.state, change.ts_ms, change.detail)
    with transaction(conn):
        if inserts:
            conn.executemany(_INSERT_COMMAND, inserts)
        if updates:
            conn.executemany(_UPDATE_COMMAND, updates)
        for start in range(0, len(history), _STATES_PER_STATEMENT * 4):
            chunk = history[start : start + _STATES_PER_STATEMENT * 4]
            conn.execute(f"{_INSERT_STATES} VALUES {','.join(['(?, ?, ?, ?)'] * (len(chunk) // 4))}", chunk)


def load_open(conn: sqlite3.Connection) -> list[CommandRecord]:
    """Commands not final (queued or sent), oldest first, with their histories."""
    rows = conn.execute(
        f"{_SELECT} WHERE c.state IN ('queued', 'sent') ORDER BY c.created_ms, c.id"
    ).fetchall()
    return _with_history(conn, [_row_record(row) for row in rows])


def load_command(conn: sqlite3.Connection, command_id: str) -> CommandRecord | None:
    """One command from the ledger, with its state history; None if unknown."""
    row = conn.execute(f"{_SELECT} WHERE c.id = ?", (command_id,)).fetchone()
    return None if row is None else _with_history(conn, [_row_record(row)])[0]


def list_commands(
    conn: sqlite3.Connection, device_id: int, *, limit: int = 50, state: str | None = None
) -> list[CommandRecord]:
    """A device's most recent commands, newest first, with their state histories."""
    where = "WHERE c.device_id = ?" + (" AND c.state = ?" if state else "")
    params: tuple[Any, ...] = (device_id, state, limit) if state else (device_id, limit)
    rows = conn.execute(f"{_SELECT} {where} ORDER BY c.created_ms DESC, c.id DESC LIMIT ?", params).fetchall()
    return _with_history(conn, [_row_record(row) for row in rows])


def delete_device_commands(conn: sqlite3.Connection, device_id: int) -> int:
    """Delete every command of ``device_id`` and its history; the number of commands deleted.

    For ``device remove --purge``: call inside the caller's transaction, which also deletes
    the device. That transaction spans the store file and the ledger file, and is all or
    nothing in each file but not across them: a crash at its commit may leave the device
    removed with its commands still logged (they show no device name; retention prunes them).
    """
    conn.execute(
        "DELETE FROM command_states WHERE command_id IN (SELECT id FROM commands WHERE device_id = ?)",
        (device_id,),
    )
    return conn.execute("DELETE FROM commands WHERE device_id = ?", (device_id,)).rowcount


PRUNE_BATCH = 1000
"""Commands deleted per statement by :func:`prune_final` (keeps each writer call short)."""


def prune_final(conn: sqlite3.Connection, before_ms: int, *, batch: int = PRUNE_BATCH) -> int:
    """Delete up to ``batch`` final commands (succeeded, failed, expired) last changed before
    ``before_ms``, with their state histories; returns how many commands went.

    Open commands (queued, sent) are never touched, however old. One short transaction: call it
    on the ledger's writer (``LedgerWriter.call``) until it returns less than ``batch``.
    """
    # immediate: it reads before it writes, and another connection may write the ledger file
    # between (the CLI's purge): a deferred transaction would then fail instead of waiting
    with transaction(conn, immediate=True):
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM commands WHERE state IN ('succeeded', 'failed', 'expired') AND updated_ms < ? "
                "LIMIT ?",
                (before_ms, batch),
            )
        ]
        if not ids:
            return 0
        marks = ", ".join("?" * len(ids))
        conn.execute(f"DELETE FROM command_states WHERE command_id IN ({marks})", ids)
        deleted: int = conn.execute(f"DELETE FROM commands WHERE id IN ({marks})", ids).rowcount
    return deleted


def _row_record(row: tuple[Any, ...]) -> CommandRecord:
    result = msgspec.json.decode(row[12]) if row[12] else {}
    return CommandRecord(
        id=row[0],
        device_id=row[1],
        device=row[2],
        name=row[3],
        args=msgspec.json.decode(row[4]),
        state=row[5],
        sender=row[6],
        created_ms=row[7],
        expires_ms=row[8],
        timeout_ms=row[9],
        deadline_ms=row[10],
        updated_ms=row[11],
        value=result.get("value"),
        error=result.get("error"),
    )


def _with_history(conn: sqlite3.Connection, records: list[CommandRecord]) -> list[CommandRecord]:
    for record in records:
        record.history = [
            StateChange(state, ts, detail)
            for state, ts, detail in conn.execute(
                "SELECT state, ts_ms, detail FROM command_states WHERE command_id = ? ORDER BY id",
                (record.id,),
            )
        ]
    return records


__all__ = [
    "FINAL_STATES",
    "PRUNE_BATCH",
    "TRANSITIONS",
    "Change",
    "CommandRecord",
    "CommandState",
    "Insert",
    "InvalidTransition",
    "StateChange",
    "Update",
    "delete_device_commands",
    "finish",
    "list_commands",
    "load_command",
    "load_open",
    "new_command",
    "new_command_id",
    "prune_final",
    "shorten",
    "transition",
]
