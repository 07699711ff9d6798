"""Sink progress in the store (gateway/store/delivery.py): cursors, state, dead letters, status."""

from __future__ import annotations

import sqlite3

import msgspec
import pytest

from gateway.store import delivery, registry
from gateway.store.delivery import Refused, SinkState

T0 = 1_764_000_000_000


def device(conn: sqlite3.Connection, name: str) -> int:
    registry.add_device(conn, name)
    found = registry.find_by_name(conn, name)
    assert found is not None
    return found.id


def fill(conn: sqlite3.Connection, device_id: int, readings: int, events: int = 0) -> None:
    conn.executemany(
        "INSERT INTO readings (device_id, ts, seq, data) VALUES (?, ?, ?, ?)",
        [(device_id, T0 + i, i + 1, f'{{"t":{i}.0}}') for i in range(readings)],
    )
    conn.executemany(
        "INSERT INTO events (device_id, ts, seq, name, data) VALUES (?, ?, ?, ?, ?)",
        [(device_id, T0 + i, i + 1, "door", "{}") for i in range(events)],
    )


def refused(row_id: int, device_id: int, error: str = "no", status: int = 400) -> Refused:
    return Refused("reading", row_id, device_id, T0 + row_id, f"line {row_id}", error, status)


def state(name: str = "influx", **fields: object) -> SinkState:
    return SinkState(name=name, target="somewhere", state="ok", updated_ms=T0, **fields)  # type: ignore[arg-type]


# -- cursors -----------------------------------------------------------------------------------


def test_cursor_names_keep_the_scheme_stores_in_the_field_have() -> None:
    assert delivery.cursor_name("influx", "readings") == "influx.readings"
    assert delivery.cursor_name("influx", "events") == "influx.events"
    assert delivery.cursor_name("mqtt", "readings") == "mqtt.readings"


def test_a_cursor_that_never_moved_is_at_zero(conn: sqlite3.Connection) -> None:
    assert delivery.cursor_position(conn, "influx.readings") == 0


def test_commit_batch_moves_the_cursors_files_dead_letters_and_saves_state(conn: sqlite3.Connection) -> None:
    d = device(conn, "pi-1")
    fill(conn, d, 10, 4)
    delivery.commit_batch(
        conn, "influx", readings_to=7, events_to=None, refused=[refused(3, d)], state=state(sent_readings=7)
    )
    assert delivery.cursor_position(conn, "influx.readings") == 7
    assert delivery.cursor_position(conn, "influx.events") == 0  # None: this cursor stays
    delivery.commit_batch(conn, "influx", readings_to=None, events_to=4, refused=[], state=state())
    assert delivery.cursor_position(conn, "influx.readings") == 7
    assert delivery.cursor_position(conn, "influx.events") == 4
    (letter,) = delivery.list_dead_letters(conn, "influx")
    assert (letter.kind, letter.row_id, letter.device, letter.ts) == ("reading", 3, "pi-1", T0 + 3)
    assert (letter.line, letter.error, letter.status, letter.state, letter.attempts) == (
        "line 3",
        "no",
        400,
        "dead",
        1,
    )
    assert not conn.in_transaction


def test_commit_batch_is_all_or_nothing(conn: sqlite3.Connection) -> None:
    d = device(conn, "pi-1")
    fill(conn, d, 5)
    broken = SinkState(name="influx", target="x", state="ok")  # updated_ms None: the NOT NULL column refuses
    with pytest.raises(sqlite3.IntegrityError):
        delivery.commit_batch(
            conn, "influx", readings_to=5, events_to=5, refused=[refused(2, d)], state=broken
        )
    assert not conn.in_transaction
    assert delivery.cursor_position(conn, "influx.readings") == 0
    assert delivery.cursor_position(conn, "influx.events") == 0
    assert delivery.list_dead_letters(conn, "influx") == []


# -- the rows waiting for a sink ------------------------------------------------------------------


def test_pending_rows_above_a_cursor_in_id_order(conn: sqlite3.Connection) -> None:
    d = device(conn, "pi-1")
    fill(conn, d, 6, 3)
    rows = delivery.pending_readings(conn, 2, 3)
    assert [r[0] for r in rows] == [3, 4, 5]
    assert rows[0] == (3, d, T0 + 2, '{"t":2.0}')
    assert delivery.pending_events(conn, 1, 10) == [
        (2, d, T0 + 1, 2, "door", "{}"),
        (3, d, T0 + 2, 3, "door", "{}"),
    ]
    assert delivery.stored_reading(conn, 1) == '{"t":0.0}'
    assert delivery.stored_event(conn, 3) == (3, "door", "{}")
    conn.execute("DELETE FROM readings WHERE id = 1")
    conn.execute("DELETE FROM events WHERE id = 3")
    assert delivery.stored_reading(conn, 1) is None
    assert delivery.stored_event(conn, 3) is None


# -- state and status ---------------------------------------------------------------------------


def test_status_of_a_sink_that_never_ran(conn: sqlite3.Connection) -> None:
    status = delivery.read_status(conn, "influx")
    assert status.configured is False and status.name == "influx"
    assert (status.target, status.state, status.updated_ms, status.pending_readings) == ("", "", None, 0)


def test_status_is_the_saved_state_plus_what_the_store_derives(conn: sqlite3.Connection) -> None:
    d = device(conn, "pi-1")
    fill(conn, d, 10, 5)
    saved = state(retries=2, total_retries=9, sent_readings=4, batches=1, last_error="away", last_error_ms=T0)
    delivery.commit_batch(conn, "influx", readings_to=4, events_to=1, refused=[refused(2, d)], state=saved)
    delivery.file_dead_letters(conn, "influx", [refused(3, d), refused(4, d)])
    assert delivery.mark_for_retry(conn, "influx", [3]) == 1
    delivery.file_dead_letters(conn, "mqtt", [refused(5, d)])  # another sink's: not counted

    status = delivery.read_status(conn, "influx")
    for name in SinkState.__struct_fields__:  # every saved field, as saved
        assert getattr(status, name) == getattr(saved, name), name
    assert status.configured is True
    assert (status.cursor_readings, status.cursor_events) == (4, 1)
    assert (status.pending_readings, status.pending_events) == (6, 4)
    assert status.oldest_pending_ts == T0 + 4  # reading id 5
    assert (status.dead_letters, status.dead_letters_retrying) == (2, 1)

    delivery.commit_batch(conn, "influx", readings_to=10, events_to=5, refused=[], state=state())
    caught_up = delivery.read_status(conn, "influx")
    assert (caught_up.pending_readings, caught_up.pending_events, caught_up.oldest_pending_ts) == (0, 0, None)
    assert delivery.read_status(conn, "mqtt").configured is False  # dead letters alone are no state


def test_status_json_has_the_fields_iotgw_status_always_printed(conn: sqlite3.Connection) -> None:
    delivery.save_state(conn, state())
    out = msgspec.to_builtins(delivery.read_status(conn, "influx"))
    assert set(out) == {
        "configured", "name", "target", "state", "started_ms", "last_success_ms", "last_attempt_ms",
        "last_error", "last_error_ms", "retries", "total_retries", "sent_readings", "sent_events", "batches",
        "updated_ms", "cursor_readings", "cursor_events", "pending_readings", "pending_events",
        "oldest_pending_ts", "dead_letters", "dead_letters_retrying",
    }  # fmt: skip


def test_save_state_replaces_the_row(conn: sqlite3.Connection) -> None:
    delivery.save_state(conn, state(retries=3))
    delivery.save_state(conn, state(retries=0, batches=5))
    (count,) = conn.execute("SELECT count(*) FROM forwarder_state").fetchone()
    status = delivery.read_status(conn, "influx")
    assert count == 1 and (status.retries, status.batches) == (0, 5)


# -- dead letters ---------------------------------------------------------------------------------


def test_mark_for_retry_by_id_or_all_only_dead_ones_of_that_sink(conn: sqlite3.Connection) -> None:
    d = device(conn, "pi-1")
    delivery.file_dead_letters(conn, "influx", [refused(i, d) for i in range(1, 5)])
    delivery.file_dead_letters(conn, "mqtt", [refused(9, d)])
    ids = [letter.id for letter in delivery.list_dead_letters(conn, "influx")]
    mqtt_id = delivery.list_dead_letters(conn, "mqtt")[0].id
    assert delivery.mark_for_retry(conn, "influx", [ids[0], ids[0], mqtt_id, 999]) == 1  # once; not mqtt's
    assert [r.id for r in delivery.letters_to_resend(conn, "influx", 10)] == [ids[0]]
    assert delivery.mark_for_retry(conn, "influx", None) == 3  # the rest of the dead ones
    assert [r.id for r in delivery.letters_to_resend(conn, "influx", 2)] == ids[:2]  # oldest first, limited
    assert delivery.letters_to_resend(conn, "mqtt", 10) == []
    assert not conn.in_transaction


def test_settling_a_resend(conn: sqlite3.Connection) -> None:
    d = device(conn, "pi-1")
    delivery.file_dead_letters(conn, "influx", [refused(1, d), refused(2, d)])
    assert delivery.mark_for_retry(conn, "influx", None) == 2
    first, second = delivery.letters_to_resend(conn, "influx", 10)
    assert first.line == "line 1" and first.kind == "reading" and first.row_id == 1
    delivery.settle_retries(conn, resent=[first.id], failed={second.id: ("still refused", 422)})
    assert [r.id for r in delivery.list_dead_letters(conn, "influx")] == [second.id]  # resent ones hidden
    done, again = delivery.list_dead_letters(conn, "influx", include_resent=True)
    assert (done.state, done.attempts) == ("resent", 1)
    assert (again.state, again.error, again.status, again.attempts) == ("dead", "still refused", 422, 2)


def test_a_removed_device_keeps_its_dead_letters_under_a_placeholder_name(conn: sqlite3.Connection) -> None:
    d = device(conn, "pi-1")
    delivery.file_dead_letters(conn, "influx", [refused(1, d)])
    registry.remove_device(conn, "pi-1")
    assert delivery.list_dead_letters(conn, "influx")[0].device == f"removed-{d}"
