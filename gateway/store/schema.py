"""The local store: two SQLite files in WAL mode, always on.

The store file (``X.db``) holds the device registry (hashed tokens and metadata), every
reading and event and the forwarding cursors; the ledger file beside it (``X-ledger.db``,
:func:`ledger_path`) holds the command log (``commands``, ``command_states``), so that a
command's writes never queue behind a group commit of readings. Every connection
:func:`connect` opens attaches the ledger file as schema ``ledger``: SQL naming those tables
unqualified works on any store connection.

One writer thread (``writer.GroupCommitter``) owns the store file's writes in a running
gateway, another (``ledger_writer.LedgerWriter``) the ledger file's; the CLI may write the
registry from another process (WAL plus a busy timeout makes that safe). Readers open their
own connections.

Schema changes are numbered migrations keyed on the store file's ``PRAGMA user_version``;
they cover both files.
"""

from __future__ import annotations

import logging
import sqlite3
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from gateway.store.db import transaction

log = logging.getLogger(__name__)

MEMORY = ":memory:"

_LEDGER_TABLES = """
    CREATE TABLE IF NOT EXISTS ledger.commands (
        id          TEXT PRIMARY KEY,
        device_id   INTEGER NOT NULL,
        name        TEXT NOT NULL,
        args        TEXT NOT NULL,
        state       TEXT NOT NULL,
        sender      TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        deadline_ms INTEGER NOT NULL,
        expires_ms  INTEGER NOT NULL,
        updated_ms  INTEGER NOT NULL,
        result      TEXT,
        timeout_ms  INTEGER NOT NULL DEFAULT 10000
    );
    CREATE INDEX IF NOT EXISTS ledger.commands_device ON commands (device_id, created_ms);
    CREATE INDEX IF NOT EXISTS ledger.commands_open ON commands (state) WHERE state IN ('queued', 'sent');
    CREATE TABLE IF NOT EXISTS ledger.command_states (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        command_id  TEXT NOT NULL,
        state       TEXT NOT NULL,
        ts_ms       INTEGER NOT NULL,
        detail      TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX IF NOT EXISTS ledger.command_states_command ON command_states (command_id, id);
"""
"""The ledger file's tables: those migrations 1 and 3 made in the store file, column for column."""

_MIGRATIONS: list[str] = [
    # 1: devices, readings, events, forwarding cursors, commands
    """
    CREATE TABLE devices (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        token_hash  TEXT NOT NULL UNIQUE,
        created_ms  INTEGER NOT NULL,
        labels      TEXT NOT NULL DEFAULT '{}',
        agent       TEXT NOT NULL DEFAULT '',
        sensors     TEXT NOT NULL DEFAULT '[]',
        commands    TEXT NOT NULL DEFAULT '[]',
        info        TEXT NOT NULL DEFAULT '{}',
        buffered    INTEGER NOT NULL DEFAULT 0,
        dropped     INTEGER NOT NULL DEFAULT 0,
        last_seen_ms INTEGER,
        stream      TEXT NOT NULL DEFAULT '',
        last_seq    INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE readings (
        id          INTEGER PRIMARY KEY,
        device_id   INTEGER NOT NULL,
        ts          INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        data        TEXT NOT NULL
    );
    CREATE INDEX readings_device_ts ON readings (device_id, ts);
    CREATE TABLE events (
        id          INTEGER PRIMARY KEY,
        device_id   INTEGER NOT NULL,
        ts          INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        name        TEXT NOT NULL,
        data        TEXT NOT NULL
    );
    CREATE INDEX events_device_ts ON events (device_id, ts);
    CREATE TABLE cursors (
        name        TEXT PRIMARY KEY,
        last_id     INTEGER NOT NULL
    );
    CREATE TABLE commands (
        id          TEXT PRIMARY KEY,
        device_id   INTEGER NOT NULL,
        name        TEXT NOT NULL,
        args        TEXT NOT NULL,
        state       TEXT NOT NULL,
        sender      TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        deadline_ms INTEGER NOT NULL,
        expires_ms  INTEGER NOT NULL,
        updated_ms  INTEGER NOT NULL,
        result      TEXT
    );
    CREATE INDEX commands_device ON commands (device_id, created_ms);
    """,
    # 2: forwarder state and dead letters. readings and events are rebuilt with
    # AUTOINCREMENT ids: a plain rowid table hands out max(id)+1, so deleting the
    # newest rows (retention of a late backlog, `device remove --purge`) would
    # make new rows reuse ids behind a forwarding cursor, and they would never
    # be forwarded. AUTOINCREMENT ids never go back.
    """
    CREATE TABLE readings_v2 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id   INTEGER NOT NULL,
        ts          INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        data        TEXT NOT NULL
    );
    INSERT INTO readings_v2 (id, device_id, ts, seq, data) SELECT id, device_id, ts, seq, data FROM readings;
    DROP TABLE readings;
    ALTER TABLE readings_v2 RENAME TO readings;
    CREATE INDEX readings_device_ts ON readings (device_id, ts);
    CREATE TABLE events_v2 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id   INTEGER NOT NULL,
        ts          INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        name        TEXT NOT NULL,
        data        TEXT NOT NULL
    );
    INSERT INTO events_v2 (id, device_id, ts, seq, name, data)
        SELECT id, device_id, ts, seq, name, data FROM events;
    DROP TABLE events;
    ALTER TABLE events_v2 RENAME TO events;
    CREATE INDEX events_device_ts ON events (device_id, ts);
    CREATE TABLE forwarder_state (
        name            TEXT PRIMARY KEY,
        target          TEXT NOT NULL,
        state           TEXT NOT NULL,
        started_ms      INTEGER,
        last_success_ms INTEGER,
        last_attempt_ms INTEGER,
        last_error      TEXT NOT NULL DEFAULT '',
        last_error_ms   INTEGER,
        retries         INTEGER NOT NULL DEFAULT 0,
        total_retries   INTEGER NOT NULL DEFAULT 0,
        sent_readings   INTEGER NOT NULL DEFAULT 0,
        sent_events     INTEGER NOT NULL DEFAULT 0,
        batches         INTEGER NOT NULL DEFAULT 0,
        updated_ms      INTEGER NOT NULL
    );
    CREATE TABLE dead_letters (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        forwarder   TEXT NOT NULL,
        kind        TEXT NOT NULL,
        row_id      INTEGER NOT NULL,
        device_id   INTEGER NOT NULL,
        ts          INTEGER NOT NULL,
        line        TEXT NOT NULL,
        error       TEXT NOT NULL,
        status      INTEGER NOT NULL,
        state       TEXT NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 1,
        created_ms  INTEGER NOT NULL,
        updated_ms  INTEGER NOT NULL
    );
    CREATE INDEX dead_letters_state ON dead_letters (forwarder, state);
    """,
    # 3: operator tokens (gateway/store/operators.py) and the command log's state history
    # (gateway/store/ledger.py). timeout_ms: how long a sent command may take to answer.
    """
    CREATE TABLE operators (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        token_hash  TEXT NOT NULL UNIQUE,
        role        TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        last_used_ms INTEGER
    );
    CREATE TABLE command_states (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        command_id  TEXT NOT NULL,
        state       TEXT NOT NULL,
        ts_ms       INTEGER NOT NULL,
        detail      TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX command_states_command ON command_states (command_id, id);
    ALTER TABLE commands ADD COLUMN timeout_ms INTEGER NOT NULL DEFAULT 10000;
    CREATE INDEX commands_open ON commands (state) WHERE state IN ('queued', 'sent');
    """,
    # 4: device ids are never reused. `devices` is rebuilt with AUTOINCREMENT (every column,
    # the same UNIQUE indexes), and its sequence starts past every device id any table has
    # ever held, so a new device never inherits a removed one's readings, events or commands.
    # device_revocations: one row per removal or token rotation (gateway/store/registry.py),
    # polled by the running gateway to end the device's live session and refuse its queued
    # frames. device_streams: the last stored seq of a device's earlier streams, so a device
    # that goes back to one is not stored twice (docs/protocol.md, section 5).
    """
    CREATE TABLE devices_v4 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        name        TEXT NOT NULL UNIQUE,
        token_hash  TEXT NOT NULL UNIQUE,
        created_ms  INTEGER NOT NULL,
        labels      TEXT NOT NULL DEFAULT '{}',
        agent       TEXT NOT NULL DEFAULT '',
        sensors     TEXT NOT NULL DEFAULT '[]',
        commands    TEXT NOT NULL DEFAULT '[]',
        info        TEXT NOT NULL DEFAULT '{}',
        buffered    INTEGER NOT NULL DEFAULT 0,
        dropped     INTEGER NOT NULL DEFAULT 0,
        last_seen_ms INTEGER,
        stream      TEXT NOT NULL DEFAULT '',
        last_seq    INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO devices_v4 (id, name, token_hash, created_ms, labels, agent, sensors, commands, info,
                            buffered, dropped, last_seen_ms, stream, last_seq)
        SELECT id, name, token_hash, created_ms, labels, agent, sensors, commands, info,
               buffered, dropped, last_seen_ms, stream, last_seq FROM devices;
    DROP TABLE devices;
    ALTER TABLE devices_v4 RENAME TO devices;
    DELETE FROM sqlite_sequence WHERE name = 'devices';
    INSERT INTO sqlite_sequence (name, seq) SELECT 'devices', max(
        (SELECT coalesce(max(id), 0) FROM devices),
        (SELECT coalesce(max(device_id), 0) FROM readings),
        (SELECT coalesce(max(device_id), 0) FROM events),
        (SELECT coalesce(max(device_id), 0) FROM commands),
        (SELECT coalesce(max(device_id), 0) FROM dead_letters));
    CREATE TABLE device_revocations (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id   INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        at_ms       INTEGER NOT NULL
    );
    CREATE TABLE device_streams (
        device_id   INTEGER NOT NULL,
        stream      TEXT NOT NULL,
        last_seq    INTEGER NOT NULL,
        updated_ms  INTEGER NOT NULL,
        PRIMARY KEY (device_id, stream)
    ) WITHOUT ROWID;
    """,
    # 5: each device's known metric and event names (gateway/store/names.py), so the name
    # quotas (gateway/device/quotas.py) survive a restart. Not backfilled from old readings:
    # names are learnt again from the next frames. Removing a device removes its names.
    """
    CREATE TABLE device_names (
        device_id   INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        name        TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        PRIMARY KEY (device_id, kind, name)
    ) WITHOUT ROWID;
    CREATE TRIGGER device_names_of_removed AFTER DELETE ON devices
        BEGIN DELETE FROM device_names WHERE device_id = OLD.id; END;
    """,
    # 6: the fleet's replicated registry (gateway/store/fleet.py): one row per device name the
    # fleet knows, removed ones kept as tombstones, each with its last-writer-wins stamp
    """
    CREATE TABLE fleet_registry (
        name        TEXT PRIMARY KEY,
        token_hash  TEXT NOT NULL,
        labels      TEXT NOT NULL DEFAULT '{}',
        stamp_ms    INTEGER NOT NULL,
        origin      TEXT NOT NULL,
        removed     INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    """,
    # 7: the command ledger moves to its own file (see _move_ledger below)
    "_move_ledger",
]


def _move_ledger(conn: sqlite3.Connection, number: int) -> None:
    """Migration 7: ``commands`` and ``command_states`` move from the store file to the ledger file.

    Two transactions, because a transaction over two WAL files is atomic per file only: first
    the ledger file gets the tables and a copy of the rows (anything an interrupted earlier
    attempt left there is dropped first: until this migration is done the store file's rows are
    the ledger), then the store file drops its tables and records the version. A crash between
    the two leaves the store at the old version with its rows, and the next start copies again.
    """
    with transaction(conn, immediate=True):
        if schema_version(conn) >= number:  # another process migrated meanwhile
            return
        stale = conn.execute(
            "SELECT count(*) FROM ledger.sqlite_master WHERE name IN ('commands', 'command_states')"
        ).fetchone()[0]
        if stale:
            log.warning("store migration %d: replacing command tables left in %s", number, _ledger_file(conn))
        conn.execute("DROP TABLE IF EXISTS ledger.command_states")
        conn.execute("DROP TABLE IF EXISTS ledger.commands")
        for statement in _statements(_LEDGER_TABLES):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO ledger.commands (id, device_id, name, args, state, sender, created_ms, deadline_ms, "
            "expires_ms, updated_ms, result, timeout_ms) SELECT id, device_id, name, args, state, sender, "
            "created_ms, deadline_ms, expires_ms, updated_ms, result, timeout_ms FROM main.commands"
        )
        conn.execute(
            "INSERT INTO ledger.command_states (id, command_id, state, ts_ms, detail) "
            "SELECT id, command_id, state, ts_ms, detail FROM main.command_states ORDER BY id"
        )
        # AUTOINCREMENT: history ids never go back, even past rows already pruned from the old table
        conn.execute("DELETE FROM ledger.sqlite_sequence WHERE name = 'command_states'")
        conn.execute(
            "INSERT INTO ledger.sqlite_sequence (name, seq) SELECT 'command_states', max("
            "(SELECT coalesce(max(seq), 0) FROM main.sqlite_sequence WHERE name = 'command_states'), "
            "(SELECT coalesce(max(id), 0) FROM ledger.command_states))"
        )
    with transaction(conn, immediate=True):
        conn.execute("DROP TABLE main.command_states")
        conn.execute("DROP TABLE main.commands")
        conn.execute(f"PRAGMA user_version={number}")


_SPECIAL: dict[str, Callable[[sqlite3.Connection, int], None]] = {"_move_ledger": _move_ledger}
"""Migrations that are Python, not one SQL script in one transaction: name -> function(conn, number)."""

SCHEMA_VERSION = len(_MIGRATIONS)
"""Migrations are numbered from 1 by their place in the list; append, never reorder or edit one."""


def ledger_path(store_path: str | Path) -> Path:
    """The ledger file of the store at ``store_path``: ``X.db`` -> ``X-ledger.db``, same directory.

    Back it up, move it and delete it together with the store file (and both files' ``-wal``).
    An in-memory store (``:memory:``) has an in-memory ledger.
    """
    path = Path(store_path)
    if str(store_path) == MEMORY:
        return path
    return path.with_name(f"{path.stem}-ledger{path.suffix}")


def connect(
    path: str | Path, *, synchronous: str = "FULL", create: bool = True, ledger_writable: bool = True
) -> sqlite3.Connection:
    """Open the store, its ledger file attached as schema ``ledger``, creating and migrating both as needed.

    The caller owns the connection (close it). ``synchronous=FULL`` makes every
    commit durable through power loss; NORMAL in WAL mode keeps the database
    consistent but may lose the last commits on power loss (docs/operations.md); both files
    get the same level. Autocommit is off only inside explicit ``BEGIN`` blocks (isolation_level
    None): make several statements atomic with ``gateway.store.db.transaction``. A transaction
    that writes both files is atomic in each file, not across them (WAL has no multi-file commit).

    ``ledger_writable=False`` attaches the ledger file read-only: for the group committer's
    connection, whose ``BEGIN IMMEDIATE`` would otherwise take the ledger file's write lock
    with every group commit, and the ledger writer would wait for it.
    """
    memory = str(path) == MEMORY
    path = Path(path)
    if not create and not memory and not path.exists():
        raise FileNotFoundError(f"no store at {path} (run `iotgw serve` once, or pass --store)")
    if not memory:
        path.parent.mkdir(parents=True, exist_ok=True)
    level = _checked_synchronous(synchronous)
    conn = sqlite3.connect(
        MEMORY if memory else path, isolation_level=None, check_same_thread=False, timeout=10.0, uri=True
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={level}")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA foreign_keys=OFF")
        _attach_ledger(conn, path, level, writable=True)  # before migrating: migration 7 fills it
        _migrate(conn)
        if not ledger_writable and not memory:
            conn.execute("DETACH DATABASE ledger")
            _attach_ledger(conn, path, level, writable=False)
    except BaseException:
        conn.close()
        raise
    return conn


def connect_ledger(store_path: str | Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open the ledger file of the store at ``store_path`` alone (for ``ledger_writer.LedgerWriter``).

    Its tables are in the connection's ``main`` schema, so ``gateway.store.ledger``'s write
    functions work on it (its reads that name ``devices`` need a :func:`connect` connection).
    The same pragmas as :func:`connect`. Open the store with :func:`connect` first (it creates
    and migrates the ledger file); raises RuntimeError if the ledger file has no ledger tables.
    """
    path = ledger_path(store_path)
    if str(path) == MEMORY:
        raise ValueError("an in-memory store's ledger is only reachable through its own connection")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={_checked_synchronous(synchronous)}")
        conn.execute("PRAGMA busy_timeout=10000")
        found = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'commands'").fetchone()[0]
        if not found:
            raise RuntimeError(f"{path} holds no command ledger: open the store with schema.connect first")
    except BaseException:
        conn.close()
        raise
    return conn


def _attach_ledger(conn: sqlite3.Connection, store_path: Path, level: str, *, writable: bool) -> None:
    target = ledger_path(store_path)
    if str(target) == MEMORY:
        name = MEMORY
    else:
        name = f"file:{urllib.parse.quote(str(target.absolute()))}" + ("" if writable else "?mode=ro")
    conn.execute("ATTACH DATABASE ? AS ledger", (name,))
    if writable:
        conn.execute("PRAGMA ledger.journal_mode=WAL")
        conn.execute(f"PRAGMA ledger.synchronous={level}")


def _ledger_file(conn: sqlite3.Connection) -> str:
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "ledger":
            return str(file) or MEMORY
    return "?"


def _checked_synchronous(level: str) -> str:
    level = level.upper()
    if level not in ("FULL", "NORMAL", "EXTRA"):
        raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {level!r}")
    return level


def _migrate(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"the store has schema {version}, newer than this gateway's {SCHEMA_VERSION}: upgrade iotgw"
        )
    for number in range(version + 1, SCHEMA_VERSION + 1):
        migration = _MIGRATIONS[number - 1]
        if migration in _SPECIAL:
            _SPECIAL[migration](conn, number)
            continue
        with transaction(conn, immediate=True):
            for statement in _statements(migration):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
    found = conn.execute("SELECT count(*) FROM ledger.sqlite_master WHERE name = 'commands'").fetchone()[0]
    if not found:  # the store came back without its ledger file (a partial restore): the log is lost
        log.warning("the command ledger %s is missing or empty: starting an empty one", _ledger_file(conn))
        with transaction(conn, immediate=True):
            for statement in _statements(_LEDGER_TABLES):
                conn.execute(statement)


def _statements(script: str) -> list[str]:
    """The statements of a migration, split at the semicolons that end one (not inside a trigger)."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.replace(";", " ").strip():
                statements.append(pending)
            pending = ""
    if pending.replace(";", " ").strip():
        statements.append(pending)
    return statements


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema number the store is at (``PRAGMA user_version``)."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)
