"""Retention (gateway/store/retention.py) and the transaction helper it uses (gateway/store/db.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from gateway import store
from gateway.store import readings, registry
from gateway.store.db import transaction
from gateway.store.retention import delete_older_than, run_retention
from gateway.store.writer import GroupCommitter
from iotgw_common.clock import now_ms

DAY = 86_400_000
CURSOR_R, CURSOR_E = "sink.readings", "sink.events"


def fill(conn: sqlite3.Connection, now: int) -> tuple[int, int]:
    """Devices a and b; per device, reading and event ids in order of age 40, 35, 1, 0 days."""
    registry.add_devices(conn, ["a", "b"])
    a, b = (r.id for r in registry.list_devices(conn))
    ages = [40, 35, 1, 0]
    with transaction(conn):
        for device in (a, b):
            readings.insert_readings(conn, [(device, now - age * DAY, i, "{}") for i, age in enumerate(ages)])
            readings.insert_events(
                conn, [(device, now - age * DAY, i, "e", "{}") for i, age in enumerate(ages)]
            )
    return a, b


def ids(conn: sqlite3.Connection, table: str) -> list[int]:
    return [row[0] for row in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


def test_old_rows_go_device_by_device(conn: sqlite3.Connection) -> None:
    now = now_ms()
    fill(conn, now)
    assert delete_older_than(conn, now - 30 * DAY) == 4
    assert ids(conn, "readings") == [3, 4, 7, 8] and ids(conn, "events") == [3, 4, 7, 8]
    assert delete_older_than(conn, now - 30 * DAY) == 0
    assert not conn.in_transaction


def test_rows_above_a_cursor_stay_however_old(conn: sqlite3.Connection) -> None:
    now = now_ms()
    fill(conn, now)
    conn.execute("INSERT INTO cursors (name, last_id) VALUES (?, 5), (?, 1)", (CURSOR_R, CURSOR_E))
    deleted = delete_older_than(conn, now - 30 * DAY, readings_cursor=CURSOR_R, events_cursor=CURSOR_E)
    assert deleted == 3  # readings 1, 2 of a and 5 of b; 6 is old but not yet forwarded
    assert ids(conn, "readings") == [3, 4, 6, 7, 8]
    assert ids(conn, "events") == [2, 3, 4, 5, 6, 7, 8]
    # a cursor never stored (the sink is on but has confirmed nothing): nothing goes
    assert delete_older_than(conn, now, readings_cursor="never", events_cursor="never") == 0
    assert ids(conn, "readings") == [3, 4, 6, 7, 8]


def test_the_task_deletes_through_the_committer(path: Path, conn: sqlite3.Connection) -> None:
    now = now_ms()
    fill(conn, now)

    async def main() -> None:
        committer = GroupCommitter(store.connect(path, synchronous="NORMAL"))
        committer.start()
        await asyncio.wait_for(run_retention(committer, 0), 10)  # 0 days: keep everything, return
        assert len(ids(conn, "readings")) == 8
        task = asyncio.create_task(run_retention(committer, 30, readings_cursor=None, every_s=3600))
        deadline = time.monotonic() + 10
        while len(ids(conn, "readings")) != 4:
            assert time.monotonic() < deadline, "retention did not run"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await committer.stop()
        committer._conn.close()

    asyncio.run(main())
    assert ids(conn, "readings") == [3, 4, 7, 8]


def open_transaction(conn: sqlite3.Connection) -> bool:
    return conn.in_transaction


def test_transaction_commits_or_rolls_back_and_reraises(conn: sqlite3.Connection) -> None:
    with transaction(conn, immediate=True) as same:
        assert same is conn and open_transaction(conn)
        registry.add_device(conn, "kept")
    assert not open_transaction(conn)

    class Stop(BaseException):
        pass

    for error in (ValueError("boom"), Stop()):
        with pytest.raises(type(error)), transaction(conn):
            registry.add_device(conn, "lost")
            raise error
        assert not open_transaction(conn)
    with pytest.raises(sqlite3.IntegrityError), transaction(conn):
        registry.set_labels(conn, 1, {"x": "1"})
        conn.execute("INSERT INTO devices (id, name, token_hash, created_ms) VALUES (1, 'dup', 'h', 0)")
    assert [r.name for r in registry.list_devices(conn)] == ["kept"]
    assert registry.stored_labels(conn, 1) == {}
