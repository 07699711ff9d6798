"""The device registry (gateway/store/registry.py): every statement on ``devices``."""

from __future__ import annotations

import sqlite3

import msgspec
import pytest

from gateway.store import readings, registry
from gateway.store.db import transaction
from gateway.store.registry import RegistryError
from gateway.tokens import hash_token

T0 = 1_764_000_000_000


def ids(conn: sqlite3.Connection, *names: str) -> list[int]:
    found = [registry.find_by_name(conn, name) for name in names]
    assert all(record is not None for record in found)
    return [record.id for record in found if record is not None]


def test_add_find_rotate_and_count(conn: sqlite3.Connection) -> None:
    token = registry.add_device(conn, "pi-1", {"site": "farm"})
    assert conn.execute("SELECT token_hash FROM devices").fetchone()[0] == hash_token(token)
    record = registry.find_by_token(conn, token)
    assert record is not None and (record.name, record.labels, record.last_seq) == (
        "pi-1",
        {"site": "farm"},
        0,
    )
    assert record.created_ms > T0
    assert registry.find_by_id(conn, record.id) == record == registry.find_by_name(conn, "pi-1")
    with pytest.raises(RegistryError, match="already exists"):
        registry.add_device(conn, "pi-1")
    with pytest.raises(RegistryError, match="invalid device name"):
        registry.add_device(conn, "bad name!")
    new = registry.rotate_token(conn, "pi-1")
    assert registry.find_by_token(conn, token) is None and registry.find_by_token(conn, new) is not None
    with pytest.raises(RegistryError, match="no device named"):
        registry.rotate_token(conn, "ghost")
    assert registry.count_devices(conn) == 1


def test_add_devices_is_all_or_nothing(conn: sqlite3.Connection) -> None:
    tokens = registry.add_devices(conn, ["a", "b"])
    assert [r.name for r in registry.list_devices(conn)] == ["a", "b"]
    assert registry.find_by_token(conn, tokens["b"]) is not None
    with pytest.raises(RegistryError, match="taken"):
        registry.add_devices(conn, ["c", "a", "d"])  # "a" exists: c is not kept either
    assert [r.name for r in registry.list_devices(conn)] == ["a", "b"]
    assert not conn.in_transaction


def test_remove_device_with_and_without_purge(conn: sqlite3.Connection) -> None:
    registry.add_devices(conn, ["a", "b"])
    a, b = ids(conn, "a", "b")
    with transaction(conn):
        readings.insert_readings(conn, [(d, T0 + i, i, "{}") for d in (a, b) for i in range(3)])
        readings.insert_events(conn, [(d, T0, 9, "door", "{}") for d in (a, b)])
    assert readings.reading_counts(conn) == {a: 3, b: 3}
    assert registry.remove_device(conn, "a") == 0  # the data stays without purge
    assert readings.reading_counts(conn) == {a: 3, b: 3}
    assert registry.remove_device(conn, "b", purge=True) == 3
    assert readings.reading_counts(conn) == {a: 3}
    assert conn.execute("SELECT device_id FROM events").fetchall() == [(a,)]
    assert registry.list_devices(conn) == []
    with pytest.raises(RegistryError, match="no device named"):
        registry.remove_device(conn, "a")


def test_labels_read_modify_write(conn: sqlite3.Connection) -> None:
    registry.add_device(conn, "a", {"x": "1"})
    (a,) = ids(conn, "a")
    assert registry.stored_labels(conn, a) == {"x": "1"}
    registry.set_labels(conn, a, {"x": "2", "room": "kitchen"})
    record = registry.find_by_id(conn, a)
    assert record is not None and record.labels == {"x": "2", "room": "kitchen"}
    assert registry.stored_labels(conn, a + 100) is None


def test_metadata_columns_are_stored_as_json(conn: sqlite3.Connection) -> None:
    registry.add_device(conn, "a")
    (a,) = ids(conn, "a")
    sensors = [{"name": "t", "unit": "°C"}]
    with transaction(conn):
        registry.update_metadata(
            conn, a, {"agent": "agent 1.2", "sensors": sensors, "info": {}, "dropped": 4}
        )
    record = registry.find_by_id(conn, a)
    assert record is not None
    assert (record.agent, record.sensors, record.info, record.dropped) == ("agent 1.2", sensors, {}, 4)
    raw = conn.execute("SELECT sensors FROM devices WHERE id = ?", (a,)).fetchone()[0]
    assert raw == msgspec.json.encode(sensors).decode()
    assert {"agent", "sensors", "commands", "info", "buffered", "dropped"} <= registry.META_COLUMNS
    assert "token_hash" not in registry.META_COLUMNS and "name" not in registry.META_COLUMNS


@pytest.mark.parametrize("bulk", [True, False], ids=["json-bulk", "executemany"])
def test_stream_positions(conn: sqlite3.Connection, bulk: bool) -> None:
    if bulk and not registry.bulk_update_works():
        pytest.skip("this SQLite has no UPDATE ... FROM with JSON")
    registry.add_devices(conn, ["a", "b", "c"])
    a, b, c = ids(conn, "a", "b", "c")
    with transaction(conn):
        registry.record_stream_positions(conn, {a: ("s-a", 7), b: ("s-b", 1)}, T0, bulk=bulk)
    with transaction(conn):
        registry.record_stream_positions(conn, {a: ("s-a2", 2)}, T0 + 5, bulk=bulk)
    rows = conn.execute("SELECT id, stream, last_seq, last_seen_ms FROM devices ORDER BY id").fetchall()
    assert rows == [(a, "s-a2", 2, T0 + 5), (b, "s-b", 1, T0), (c, "", 0, None)]
