"""Pruning by retention (gateway/store/retention.py): events of event-only devices, final commands
with their state histories (gateway/store/ledger.py), dead letters (gateway/store/delivery.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway import store
from gateway.store import delivery, ledger, readings, registry
from gateway.store.db import transaction
from gateway.store.ledger import CommandRecord, CommandState
from gateway.store.ledger_writer import LedgerWriter
from gateway.store.retention import delete_older_than, run_retention
from gateway.store.writer import GroupCommitter
from iotgw_common.clock import now_ms
from tests.support.waiting import async_wait_until

DAY = 86_400_000


def count(conn: sqlite3.Connection, sql: str, *params: object) -> int:
    return int(conn.execute(sql, params).fetchone()[0])


# -- events of devices that only send events -------------------------------------------------


def test_old_events_of_a_device_without_readings_are_deleted(conn: sqlite3.Connection) -> None:
    now = now_ms()
    registry.add_devices(conn, ["button", "sensor"])
    button, sensor = (d.id for d in registry.list_devices(conn))
    with transaction(conn):
        readings.insert_events(
            conn, [(button, now - age * DAY, i, "pressed", "{}") for i, age in enumerate([40, 1])]
        )
        readings.insert_readings(conn, [(sensor, now - 40 * DAY, 0, "{}"), (sensor, now, 1, "{}")])
    assert readings.device_ids(conn) == sorted([button, sensor])
    delete_older_than(conn, now - 30 * DAY)
    assert count(conn, "SELECT count(*) FROM events WHERE device_id = ?", button) == 1
    assert count(conn, "SELECT count(*) FROM readings WHERE device_id = ?", sensor) == 1


def test_device_ids_lists_each_device_once_from_both_tables(conn: sqlite3.Connection) -> None:
    with transaction(conn):
        readings.insert_readings(conn, [(7, 1, i, "{}") for i in range(50)] + [(3, 1, 0, "{}")])
        readings.insert_events(conn, [(9, 1, i, "e", "{}") for i in range(50)] + [(3, 1, 0, "e", "{}")])
    assert readings.device_ids(conn) == [3, 7, 9]


# -- commands ------------------------------------------------------------------------------------


def make_command(
    conn: sqlite3.Connection, device_id: int, at_ms: int, final: CommandState | None
) -> CommandRecord:
    """A command created at ``at_ms`` and, with ``final``, sent and finished one second later."""
    record, insert = ledger.new_command(
        device_id=device_id, device="d", name="ping", args={}, sender="op",
        now_ms=at_ms, ttl_ms=60_000, timeout_ms=10_000,
    )  # fmt: skip
    changes: list[ledger.Change] = [insert]
    if final == CommandState.EXPIRED:
        changes.append(ledger.finish(record, final, at_ms + 1000, error="not delivered"))
    elif final is not None:
        changes.append(ledger.transition(record, CommandState.SENT, at_ms + 500))
        changes.append(ledger.finish(record, final, at_ms + 1000))
    ledger.write_changes(conn, changes)
    return record


def test_final_commands_older_than_the_cutoff_go_with_their_history(conn: sqlite3.Connection) -> None:
    now = now_ms()
    registry.add_devices(conn, ["d"])
    (device,) = (d.id for d in registry.list_devices(conn))
    old = [
        make_command(conn, device, now - 40 * DAY, s)
        for s in (CommandState.SUCCEEDED, CommandState.FAILED, CommandState.EXPIRED)
    ]
    old_open = [make_command(conn, device, now - 40 * DAY, None)]  # queued for 40 days: stays
    recent = [make_command(conn, device, now - DAY, CommandState.SUCCEEDED)]
    assert ledger.prune_final(conn, now - 30 * DAY) == 3
    kept = {r.id for r in old_open + recent}
    assert {row[0] for row in conn.execute("SELECT id FROM commands")} == kept
    assert {row[0] for row in conn.execute("SELECT DISTINCT command_id FROM command_states")} == kept
    assert all(ledger.load_command(conn, r.id) is None for r in old)
    assert ledger.prune_final(conn, now - 30 * DAY) == 0
    assert not conn.in_transaction


def test_pruning_goes_in_batches(conn: sqlite3.Connection) -> None:
    now = now_ms()
    for i in range(25):
        make_command(conn, 1, now - 40 * DAY + i, CommandState.SUCCEEDED)
    assert [ledger.prune_final(conn, now, batch=10) for _ in range(4)] == [10, 10, 5, 0]
    assert count(conn, "SELECT count(*) FROM command_states") == 0


# -- dead letters ------------------------------------------------------------------------------


def file_letters(conn: sqlite3.Connection, states_and_ages: list[tuple[str, int]]) -> list[int]:
    refused = [
        delivery.Refused("reading", i, 1, i, f"line {i}", "type conflict", 400)
        for i in range(len(states_and_ages))
    ]
    with transaction(conn):
        delivery.file_dead_letters(conn, "influx", refused)
    ids = [row[0] for row in conn.execute("SELECT id FROM dead_letters ORDER BY id")]
    with transaction(conn):
        for letter, (state, age_days) in zip(ids, states_and_ages, strict=True):
            conn.execute(
                "UPDATE dead_letters SET state = ?, updated_ms = ? WHERE id = ?",
                (state, now_ms() - age_days * DAY, letter),
            )
    return ids


def test_old_dead_letters_go_those_marked_for_a_resend_stay(conn: sqlite3.Connection) -> None:
    ids = file_letters(conn, [("resent", 40), ("dead", 40), ("retry", 40), ("resent", 1), ("dead", 1)])
    assert delivery.prune_dead_letters(conn, now_ms() - 30 * DAY) == 2
    assert [row[0] for row in conn.execute("SELECT id FROM dead_letters ORDER BY id")] == ids[2:]


# -- the retention task ------------------------------------------------------------------------------


def test_the_task_prunes_commands_and_letters_even_when_readings_are_kept(
    path: Path, conn: sqlite3.Connection
) -> None:
    now = now_ms()
    old = make_command(conn, 1, now - 40 * DAY, CommandState.SUCCEEDED)
    make_command(conn, 1, now - DAY, CommandState.SUCCEEDED)
    file_letters(conn, [("resent", 40), ("dead", 1)])
    with transaction(conn):
        readings.insert_readings(conn, [(1, now - 400 * DAY, 0, "{}")])

    async def main() -> None:
        # as the gateway opens them: the committer's connection has the ledger file read-only,
        # commands are pruned by the ledger's own writer
        committer = GroupCommitter(store.connect(path, synchronous="NORMAL", ledger_writable=False))
        committer.start()
        ledger_writer = LedgerWriter(path, synchronous="NORMAL")
        ledger_writer.start()
        task = asyncio.create_task(
            run_retention(
                committer, 0, command_days=30, ledger_writer=ledger_writer, dead_letter_days=30, every_s=3600
            )
        )
        try:
            await async_wait_until(
                lambda: (
                    count(conn, "SELECT count(*) FROM commands") == 1
                    and count(conn, "SELECT count(*) FROM dead_letters") == 1
                ),
                what="retention to prune the old command and the old dead letter",
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await ledger_writer.stop()
            await committer.stop()
            committer._conn.close()

    asyncio.run(main())
    assert ledger.load_command(conn, old.id) is None
    assert count(conn, "SELECT count(*) FROM readings") == 1  # retention_days 0: readings kept


def test_pruning_commands_needs_the_ledger_writer(path: Path) -> None:
    async def main() -> None:
        committer = GroupCommitter(store.connect(path, synchronous="NORMAL", ledger_writable=False))
        try:
            await run_retention(committer, 0, command_days=30)
        finally:
            committer._conn.close()

    with pytest.raises(ValueError, match="ledger writer"):
        asyncio.run(main())
