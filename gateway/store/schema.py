"""The local store: one SQLite file in WAL mode, always on.

It holds the device registry (hashed tokens and metadata), every reading and
event, the forwarding cursors and the command log. One writer thread (see
``writer.GroupCommitter``) owns all writes made by a running gateway; the CLI
may write the registry from another process (WAL plus a busy timeout makes
that safe). Readers open their own connections.

Schema changes are numbered migrations keyed on ``PRAGMA user_version``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.store.db import transaction

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
]


SCHEMA_VERSION = len(_MIGRATIONS)
"""Migrations are numbered from 1 by their place in the list; append, never reorder or edit one."""


def connect(path: str | Path, *, synchronous: str = "FULL", create: bool = True) -> sqlite3.Connection:
    """Open the store, creating and migrating it as needed.

    The caller owns the connection (close it). ``synchronous=FULL`` makes every
    commit durable through power loss; NORMAL in WAL mode keeps the database
    consistent but may lose the last commits on power loss (docs/operations.md).
    Autocommit is off only inside explicit ``BEGIN`` blocks (isolation_level None): make
    several statements atomic with ``gateway.store.db.transaction``.
    """
    path = Path(path)
    if not create and not path.exists():
        raise FileNotFoundError(f"no store at {path} (run `iotgw serve` once, or pass --store)")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={_checked_synchronous(synchronous)}")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=OFF")
    _migrate(conn)
    return conn


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
        with transaction(conn, immediate=True):
            for statement in _statements(_MIGRATIONS[number - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")


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
