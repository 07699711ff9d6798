"""The command ledger (gateway/store/ledger.py): its state machine and its two tables."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from gateway import store
from gateway.store import ledger, registry
from gateway.store.ledger import FINAL_STATES, TRANSITIONS, CommandRecord, CommandState, InvalidTransition
from iotgw_common.protocol.messages import MAX_STRING_LENGTH

T0 = 1_764_000_000_000
Q, S, OK, F, X = (
    CommandState.QUEUED,
    CommandState.SENT,
    CommandState.SUCCEEDED,
    CommandState.FAILED,
    CommandState.EXPIRED,
)


def device_id(conn: sqlite3.Connection, name: str) -> int:
    registry.add_device(conn, name)
    found = registry.find_by_name(conn, name)
    assert found is not None
    return found.id


def queued(
    device: int = 1, *, device_name: str = "dev", name: str = "ping", now: int = T0, sender: str = "alice"
) -> tuple[CommandRecord, ledger.Insert]:
    return ledger.new_command(
        device_id=device,
        device=device_name,
        name=name,
        args={"on": True},
        sender=sender,
        now_ms=now,
        ttl_ms=60_000,
        timeout_ms=10_000,
    )


# -- the state machine ------------------------------------------------------------------------


def test_transitions_table_is_the_documented_lifecycle() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == {
        (Q, S),
        (Q, F),
        (Q, X),
        (S, OK),
        (S, F),
    }
    assert {OK, F, X} == FINAL_STATES
    assert all(not TRANSITIONS.get(state) for state in FINAL_STATES)


def test_every_change_outside_the_table_is_refused_and_leaves_the_record_alone() -> None:
    for start, target in itertools.product(CommandState, CommandState):
        record, _ = queued()
        record.state = start
        before = (record.state, record.updated_ms, list(record.history))
        if target in TRANSITIONS.get(start, frozenset()):
            update = ledger.transition(record, target, T0 + 5, "why")
            assert (record.state, record.updated_ms) == (target, T0 + 5)
            assert record.history[-1] == ledger.StateChange(target, T0 + 5, "why")
            assert (update.id, update.state, update.ts_ms, update.detail) == (
                record.id,
                target,
                T0 + 5,
                "why",
            )
            assert (update.result is None) == (target not in FINAL_STATES)
        else:
            with pytest.raises(InvalidTransition):
                ledger.transition(record, target, T0 + 5)
            assert (record.state, record.updated_ms, record.history) == before


def test_every_path_ends_in_a_final_state_within_two_changes() -> None:
    """Walk every sequence of allowed changes from queued: each ends final, none is longer than 2."""
    paths = [[Q]]
    finished = []
    while paths:
        path = paths.pop()
        targets = TRANSITIONS.get(path[-1], frozenset())
        if not targets:
            finished.append(path)
        paths.extend([*path, t] for t in targets)
    assert all(path[-1] in FINAL_STATES and len(path) <= 3 for path in finished)
    assert sorted(tuple(p) for p in finished) == sorted([(Q, S, OK), (Q, S, F), (Q, F), (Q, X)])


def test_new_command_is_queued_with_its_first_history_entry() -> None:
    record, insert = queued(7, now=T0, sender="bob")
    assert record.state == Q and not record.final
    assert (record.created_ms, record.updated_ms, record.expires_ms, record.timeout_ms) == (
        T0,
        T0,
        T0 + 60_000,
        10_000,
    )
    assert record.history == [ledger.StateChange(Q, T0, "by bob")]
    assert (insert.id, insert.device_id, insert.state, insert.args, insert.detail) == (
        record.id,
        7,
        "queued",
        '{"on":true}',
        "by bob",
    )
    assert record.id.startswith(f"{T0:012x}") and len(record.id) == 20
    assert ledger.new_command_id(T0) != ledger.new_command_id(T0)
    assert ledger.new_command_id(T0) < ledger.new_command_id(T0 + 1)


def test_finish_sets_the_result_shortens_the_error_and_needs_a_final_state() -> None:
    record, _ = queued()
    ledger.transition(record, S, T0 + 1)
    with pytest.raises(InvalidTransition):
        ledger.finish(record, S, T0 + 2)
    update = ledger.finish(record, F, T0 + 2, value={"x": 1}, error="e" * (MAX_STRING_LENGTH + 10))
    assert record.error is not None and len(record.error) == MAX_STRING_LENGTH and record.error.endswith("…")
    assert record.final and record.value == {"x": 1}
    assert update.detail == record.error
    assert update.result is not None and '"x":1' in update.result
    assert record.sent_ms == T0 + 1


def test_a_change_is_a_snapshot() -> None:
    record, insert = queued()
    update = ledger.transition(record, S, T0 + 1)
    ledger.finish(record, OK, T0 + 2, value=3)
    assert insert.state == "queued" and update.state == "sent" and update.result is None


# -- the store ----------------------------------------------------------------------------------


def test_insert_update_load_round_trip(conn: sqlite3.Connection) -> None:
    dev = device_id(conn, "lamp")
    record, insert = queued(dev, device_name="lamp")
    record.deadline_ms = T0 + 10_001
    sent = ledger.transition(record, S, T0 + 1, "to 127.0.0.1:5")
    ledger.write_changes(conn, [insert, sent])
    assert not conn.in_transaction

    [open_one] = ledger.load_open(conn)
    assert open_one.state == "sent" and open_one.device == "lamp" and open_one.deadline_ms == T0 + 10_001
    assert open_one.history == record.history and open_one.args == {"on": True}

    done = ledger.finish(record, OK, T0 + 3, value={"pong": 1})
    ledger.write_changes(conn, [done])
    assert ledger.load_open(conn) == []
    loaded = ledger.load_command(conn, record.id)
    assert loaded == record  # every field, the device's result and the whole history
    assert ledger.load_command(conn, "nope") is None


def test_list_commands_newest_first_with_limit_and_state(conn: sqlite3.Connection) -> None:
    dev, other = device_id(conn, "a"), device_id(conn, "b")
    records = []
    for i in range(5):
        record, insert = queued(dev, now=T0 + i)
        changes: list[ledger.Change] = [insert]
        if i % 2:
            changes.append(ledger.finish(record, X, T0 + 100, error="not delivered within its ttl"))
        ledger.write_changes(conn, changes)
        records.append(record)
    ledger.write_changes(conn, [queued(other)[1]])

    assert [r.id for r in ledger.list_commands(conn, dev)] == [r.id for r in reversed(records)]
    assert [r.id for r in ledger.list_commands(conn, dev, limit=2)] == [records[4].id, records[3].id]
    assert [r.id for r in ledger.list_commands(conn, dev, state="expired")] == [records[3].id, records[1].id]
    assert [r.error for r in ledger.list_commands(conn, dev, state="expired")] == [
        "not delivered within its ttl"
    ] * 2
    assert len(ledger.list_commands(conn, other)) == 1


def test_write_changes_is_all_or_nothing(conn: sqlite3.Connection) -> None:
    record, insert = queued(device_id(conn, "a"))
    duplicate = queued()[1]
    with pytest.raises(sqlite3.IntegrityError):
        ledger.write_changes(conn, [insert, ledger.transition(record, S, T0 + 1), insert, duplicate])
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM commands").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM command_states").fetchone() == (0,)


def _ledger_rows(conn: sqlite3.Connection) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    commands = conn.execute("SELECT * FROM commands ORDER BY id").fetchall()
    states = conn.execute(
        "SELECT command_id, state, ts_ms, detail FROM command_states ORDER BY rowid"
    ).fetchall()
    return commands, states


def test_one_batch_stores_what_the_changes_one_by_one_store(tmp_path: Path) -> None:
    """write_changes folds an insert and later updates of the same command into one row and
    writes all history rows in one statement (fewer statements for the writer): the stored rows
    must be exactly those of writing each change in its own batch."""
    batched = store.connect(tmp_path / "a.sqlite3", synchronous="NORMAL")
    one_by_one = store.connect(tmp_path / "b.sqlite3", synchronous="NORMAL")
    changes: list[ledger.Change] = []
    for n, finish in enumerate((OK, F, None, OK)):
        device = device_id(batched, f"d{n}")
        assert device_id(one_by_one, f"d{n}") == device
        record, insert = queued(device, now=T0 + n)
        changes += [insert, ledger.transition(record, S, T0 + 10 + n, "to 192.0.2.1:1")]
        if finish is not None:
            changes.append(
                ledger.finish(
                    record, finish, T0 + 20 + n, value={"n": n}, error=None if finish == OK else "no"
                )
            )
    # an earlier batch's command, finished in this one: an update, not an insert
    record, insert = queued(1, now=T0 - 5)
    ledger.write_changes(batched, [insert])
    ledger.write_changes(one_by_one, [insert])
    changes.append(ledger.finish(record, X, T0 + 30, error="not delivered within its ttl"))
    ledger.write_changes(batched, changes)
    for change in changes:
        ledger.write_changes(one_by_one, [change])
    assert _ledger_rows(batched) == _ledger_rows(one_by_one)
    commands, states = _ledger_rows(batched)
    assert len(commands) == 5 and len(states) == 1 + 4 * 2 + 3 + 1


def test_purge_deletes_the_device_commands_and_their_history_only(conn: sqlite3.Connection) -> None:
    gone, kept = device_id(conn, "gone"), device_id(conn, "kept")
    for dev in (gone, gone, kept):
        record, insert = queued(dev)
        ledger.write_changes(conn, [insert, ledger.finish(record, F, T0 + 1, error="cancelled by x")])

    assert registry.remove_device(conn, "gone", purge=True) == 0
    assert conn.execute("SELECT DISTINCT device_id FROM commands").fetchall() == [(kept,)]
    states = conn.execute(
        "SELECT count(*) FROM command_states WHERE command_id NOT IN (SELECT id FROM commands)"
    ).fetchone()
    assert states == (0,)
    assert len(ledger.list_commands(conn, kept)[0].history) == 2


def test_remove_without_purge_keeps_the_commands(conn: sqlite3.Connection) -> None:
    dev = device_id(conn, "d")
    ledger.write_changes(conn, [queued(dev)[1]])
    registry.remove_device(conn, "d")
    [record] = ledger.list_commands(conn, dev)
    assert record.device == ""  # the device row is gone; the log keeps the command
