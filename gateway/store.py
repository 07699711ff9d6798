"""The local store: one SQLite file in WAL mode, always on.

It holds the device registry (hashed tokens and metadata), every reading and
event, the forwarding cursors and the command log. One writer thread (see
``ingest.GroupCommitter``) owns all writes made by a running gateway; the CLI
may write the registry from another process (WAL plus a busy timeout makes
that safe). Readers open their own connections.

Schema changes are numbered migrations keyed on ``PRAGMA user_version``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1

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
]


def connect(path: str | Path, *, synchronous: str = "FULL", create: bool = True) -> sqlite3.Connection:
    """Open the store, creating and migrating it as needed.

    The caller owns the connection (close it). ``synchronous=FULL`` makes every
    commit durable through power loss; NORMAL in WAL mode keeps the database
    consistent but may lose the last commits on power loss (docs/operations.md).
    Autocommit is off only inside explicit ``BEGIN`` blocks (isolation_level None).
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
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MIGRATIONS[number - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
