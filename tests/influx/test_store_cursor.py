"""The store's side of forwarding: retention keeps what was not sent, ids never go back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway import store
from gateway.integrations.influx.sink import EVENTS_CURSOR, NAME, READINGS_CURSOR
from gateway.store import registry
from gateway.store.delivery import read_status
from gateway.store.retention import delete_older_than


def _store(tmp_path: Path, readings: int) -> tuple[sqlite3.Connection, int]:
    conn = store.connect(tmp_path / "s.sqlite3")
    registry.add_device(conn, "pi-1")
    (device_id,) = conn.execute("SELECT id FROM devices").fetchone()
    conn.executemany(
        "INSERT INTO readings (device_id, ts, seq, data) VALUES (?, ?, ?, ?)",
        [(device_id, 1_000_000_000_000 + i, i + 1, '{"t":1.0}') for i in range(readings)],
    )
    conn.executemany(
        "INSERT INTO events (device_id, ts, seq, name, data) VALUES (?, ?, ?, ?, ?)",
        [(device_id, 1_000_000_000_000 + i, i + 1, "e", "{}") for i in range(readings)],
    )
    return conn, device_id


def test_retention_never_deletes_rows_the_forwarder_has_not_sent(tmp_path: Path) -> None:
    conn, _ = _store(tmp_path, 10)
    conn.execute(
        "INSERT INTO cursors (name, last_id) VALUES (?, 4), (?, 7)", (READINGS_CURSOR, EVENTS_CURSOR)
    )
    cutoff = 2_000_000_000_000  # every row is older than this
    deleted = delete_older_than(conn, cutoff, readings_cursor=READINGS_CURSOR, events_cursor=EVENTS_CURSOR)
    assert deleted == 4
    assert [r[0] for r in conn.execute("SELECT id FROM readings ORDER BY id")] == [5, 6, 7, 8, 9, 10]
    assert [r[0] for r in conn.execute("SELECT id FROM events ORDER BY id")] == [8, 9, 10]
    # no cursor yet (forwarding on, nothing confirmed): nothing old may go
    conn.execute("DELETE FROM cursors")
    assert delete_older_than(conn, cutoff, readings_cursor=READINGS_CURSOR) == 0
    # forwarding off: retention as before
    assert delete_older_than(conn, cutoff) == 6


def test_ids_never_go_back_behind_the_cursor(tmp_path: Path) -> None:
    conn, device_id = _store(tmp_path, 10)
    conn.execute("INSERT INTO cursors (name, last_id) VALUES (?, 10)", (READINGS_CURSOR,))
    conn.execute(
        "DELETE FROM readings WHERE id > 5"
    )  # the newest rows go (a purge, a late backlog's retention)
    conn.execute("INSERT INTO readings (device_id, ts, seq, data) VALUES (?, 1, 1, '{}')", (device_id,))
    (new_id,) = conn.execute("SELECT max(id) FROM readings").fetchone()
    assert new_id == 11  # above the cursor: it will be forwarded


def test_status_of_a_store_that_never_forwarded(tmp_path: Path) -> None:
    conn, _ = _store(tmp_path, 3)
    assert read_status(conn, NAME).configured is False
