"""The command ledger's own file (gateway/store/schema.py): a fresh store, the migration of an
older one, an interrupted migration, a lost ledger file, the read-only attach."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from gateway import store
from gateway.store import ledger, registry, schema
from gateway.store.db import transaction
from gateway.store.ledger import CommandState

T0 = 1_764_000_000_000
LEDGER_TABLES = {"commands", "command_states"}


def tables(conn: sqlite3.Connection, schema_name: str) -> set[str]:
    return {
        row[0] for row in conn.execute(f"SELECT name FROM {schema_name}.sqlite_master WHERE type = 'table'")
    }


def raw_tables(path: Path) -> set[str]:
    raw = sqlite3.connect(path)
    try:
        return {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        raw.close()


def old_store(path: Path, version: int = 6) -> sqlite3.Connection:
    """A store as a gateway before the ledger moved left it: migrations 1..``version``, no ledger file."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for number in range(1, version + 1):
        with transaction(conn, immediate=True):
            for statement in schema._statements(schema._MIGRATIONS[number - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
    return conn


def log_commands(conn: sqlite3.Connection, device_id: int) -> list[str]:
    """Three commands with histories: one succeeded, one failed, one still queued."""
    ids = []
    for n, final in enumerate((CommandState.SUCCEEDED, CommandState.FAILED, None)):
        record, insert = ledger.new_command(device_id=device_id, device="dev", name=f"c{n}", args={"n": n},
                                            sender="alice", now_ms=T0 + n, ttl_ms=60_000, timeout_ms=1000 + n)  # fmt: skip
        changes: list[ledger.Change] = [insert]
        if final is not None:
            record.deadline_ms = T0 + 5000
            changes.append(ledger.transition(record, CommandState.SENT, T0 + 10 + n, "to 192.0.2.1:1"))
            changes.append(
                ledger.finish(record, final, T0 + 20 + n, value={"n": n}, error=None if n == 0 else "no")
            )
        ledger.write_changes(conn, changes)
        ids.append(record.id)
    return ids


def test_a_fresh_store_has_the_ledger_tables_in_the_ledger_file_only(path: Path) -> None:
    conn = store.connect(path, synchronous="NORMAL")
    try:
        assert schema.ledger_path(path) == path.with_name("store-ledger.sqlite3")
        assert tables(conn, "main").isdisjoint(LEDGER_TABLES)
        assert tables(conn, "ledger") >= LEDGER_TABLES
        assert conn.execute("PRAGMA ledger.journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA ledger.synchronous").fetchone() == (1,)  # NORMAL, as main
        registry.add_device(conn, "dev")
        (command_id,) = log_commands(conn, 1)[:1]
        assert ledger.load_command(conn, command_id) is not None
    finally:
        conn.close()
    assert raw_tables(schema.ledger_path(path)) >= LEDGER_TABLES
    assert raw_tables(path).isdisjoint(LEDGER_TABLES)


def test_migrating_an_old_store_moves_commands_and_histories_to_the_ledger_file(path: Path) -> None:
    old = old_store(path)
    old.execute("INSERT INTO devices (name, token_hash, created_ms) VALUES ('dev', 'h', 0)")
    ids = log_commands(old, 1)
    # a pruned newest history row: its id must not be handed out again
    (last,) = old.execute("SELECT max(id) FROM command_states").fetchone()
    old.execute("DELETE FROM command_states WHERE id = ?", (last,))
    before = [ledger.load_command(old, command_id) for command_id in ids]
    assert all(record is not None for record in before)
    old.close()

    conn = store.connect(path, synchronous="NORMAL")
    try:
        assert schema.schema_version(conn) == schema.SCHEMA_VERSION
        assert tables(conn, "main").isdisjoint(LEDGER_TABLES)
        assert [ledger.load_command(conn, command_id) for command_id in ids] == before
        assert [r.id for r in ledger.load_open(conn)] == [ids[2]]
        record, insert = ledger.new_command(device_id=1, device="dev", name="later", args={}, sender="bob",
                                            now_ms=T0 + 100, ttl_ms=1000, timeout_ms=1000)  # fmt: skip
        ledger.write_changes(conn, [insert])
        (new_id,) = conn.execute(
            "SELECT id FROM command_states WHERE command_id = ?", (record.id,)
        ).fetchone()
        assert new_id > last
    finally:
        conn.close()
    raw = sqlite3.connect(schema.ledger_path(path))
    try:
        assert raw.execute("SELECT count(*) FROM commands").fetchone() == (4,)
        columns = [row[1] for row in raw.execute("PRAGMA table_info(commands)")]
        assert columns[-2:] == ["result", "timeout_ms"]
        indexes = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"commands_device", "commands_open", "command_states_command"} <= indexes
    finally:
        raw.close()


def test_an_interrupted_migration_copies_again_from_the_store_file(path: Path) -> None:
    old = old_store(path)
    old.execute("INSERT INTO devices (name, token_hash, created_ms) VALUES ('dev', 'h', 0)")
    ids = log_commands(old, 1)
    old.close()
    # what a first attempt that stopped after copying may leave: the copy, and rows since gone
    leftover = sqlite3.connect(schema.ledger_path(path), isolation_level=None)
    leftover.execute("CREATE TABLE commands (id TEXT PRIMARY KEY)")
    leftover.execute("INSERT INTO commands VALUES ('stale')")
    leftover.close()
    conn = store.connect(path, synchronous="NORMAL")
    try:
        assert sorted(row[0] for row in conn.execute("SELECT id FROM commands")) == sorted(ids)
    finally:
        conn.close()


def test_a_lost_ledger_file_starts_empty_with_a_warning(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    conn = store.connect(path, synchronous="NORMAL")
    registry.add_device(conn, "dev")
    log_commands(conn, 1)
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{schema.ledger_path(path)}{suffix}").unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING):
        conn = store.connect(path, synchronous="NORMAL")
    try:
        assert any("is missing or empty" in r.getMessage() for r in caplog.records)
        assert ledger.list_commands(conn, 1) == []
        assert registry.find_by_name(conn, "dev") is not None
    finally:
        conn.close()


def test_a_read_only_attach_reads_the_ledger_and_never_locks_it(path: Path) -> None:
    conn = store.connect(path, synchronous="NORMAL")
    registry.add_device(conn, "dev")
    ids = log_commands(conn, 1)
    committer_like = store.connect(path, synchronous="NORMAL", ledger_writable=False)
    ledger_only = schema.connect_ledger(path, synchronous="NORMAL")
    ledger_only.execute("PRAGMA busy_timeout=0")
    try:
        assert [r.id for r in ledger.list_commands(committer_like, 1)] == ids[::-1]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            committer_like.execute("DELETE FROM commands")
        with transaction(committer_like, immediate=True):  # as a group commit: the store file only
            committer_like.execute("UPDATE devices SET buffered = 1")
            record, insert = ledger.new_command(device_id=1, device="dev", name="meanwhile", args={},
                                                sender="bob", now_ms=T0, ttl_ms=1000, timeout_ms=1000)  # fmt: skip
            ledger.write_changes(ledger_only, [insert])  # would raise "database is locked"
        assert ledger.load_command(conn, record.id) is not None
    finally:
        for c in (ledger_only, committer_like, conn):
            c.close()


def test_the_ledger_alone_needs_a_migrated_store(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no command ledger"):
        schema.connect_ledger(tmp_path / "never.db")


def test_an_in_memory_store_has_an_in_memory_ledger() -> None:
    conn = store.connect(":memory:")
    try:
        registry.add_device(conn, "dev")
        (command_id,) = log_commands(conn, 1)[:1]
        assert ledger.load_command(conn, command_id) is not None
        assert tables(conn, "ledger") >= LEDGER_TABLES
    finally:
        conn.close()
