"""The device registry: devices, their hashed tokens, labels and metadata.

Plain functions over a store connection (``store.connect``); the CLI calls them
directly, the running gateway calls the read functions from its event loop
(each is one indexed query) and routes writes through the group committer.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.tokens import hash_token, new_token
from iotgw_common.protocol.messages import DEVICE_NAME_PATTERN

_NAME = re.compile(DEVICE_NAME_PATTERN)


class RegistryError(ValueError):
    """A registry request cannot be done (bad name, duplicate, unknown device)."""


@dataclass(slots=True)
class DeviceRecord:
    """One registered device as the store holds it."""

    id: int
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    agent: str = ""
    stream: str = ""
    last_seq: int = 0
    last_seen_ms: int | None = None
    buffered: int = 0
    dropped: int = 0
    created_ms: int = 0
    sensors: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


_COLUMNS = (
    "id, name, labels, agent, stream, last_seq, last_seen_ms, buffered, dropped, created_ms, "
    "sensors, commands, info"
)


def _record(row: tuple[Any, ...]) -> DeviceRecord:
    return DeviceRecord(
        id=row[0],
        name=row[1],
        labels=msgspec.json.decode(row[2]),
        agent=row[3],
        stream=row[4],
        last_seq=row[5],
        last_seen_ms=row[6],
        buffered=row[7],
        dropped=row[8],
        created_ms=row[9],
        sensors=msgspec.json.decode(row[10]),
        commands=msgspec.json.decode(row[11]),
        info=msgspec.json.decode(row[12]),
    )


def add_device(conn: sqlite3.Connection, name: str, labels: dict[str, str] | None = None) -> str:
    """Register ``name`` and return its new token; only the token's hash is kept.

    The caller must show the token to the user now: it cannot be recovered.
    Raises RegistryError for an invalid or taken name.
    """
    _check_name(name)
    token = new_token()
    try:
        conn.execute(
            "INSERT INTO devices (name, token_hash, created_ms, labels) VALUES (?, ?, ?, ?)",
            (name, hash_token(token), int(time.time() * 1000), msgspec.json.encode(labels or {}).decode()),
        )
    except sqlite3.IntegrityError:
        raise RegistryError(f"a device named {name!r} already exists") from None
    return token


def add_devices(conn: sqlite3.Connection, names: list[str]) -> dict[str, str]:
    """Register many devices in one transaction (bulk provisioning); name -> token."""
    for name in names:
        _check_name(name)
    now = int(time.time() * 1000)
    tokens = {name: new_token() for name in names}
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "INSERT INTO devices (name, token_hash, created_ms) VALUES (?, ?, ?)",
            [(name, hash_token(token), now) for name, token in tokens.items()],
        )
    except sqlite3.IntegrityError as exc:
        conn.execute("ROLLBACK")
        raise RegistryError(f"a device name is taken: {exc}") from None
    conn.execute("COMMIT")
    return tokens


def rotate_token(conn: sqlite3.Connection, name: str) -> str:
    """Give ``name`` a new token (the old one stops working); returns it once."""
    token = new_token()
    cur = conn.execute("UPDATE devices SET token_hash = ? WHERE name = ?", (hash_token(token), name))
    if cur.rowcount == 0:
        raise RegistryError(f"no device named {name!r}")
    return token


def remove_device(conn: sqlite3.Connection, name: str, *, purge: bool = False) -> int:
    """Remove ``name`` (its token stops working); with ``purge`` also its data.

    Returns the number of readings deleted. Raises RegistryError if unknown.
    """
    record = find_by_name(conn, name)
    if record is None:
        raise RegistryError(f"no device named {name!r}")
    deleted = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM devices WHERE id = ?", (record.id,))
        if purge:
            deleted = conn.execute("DELETE FROM readings WHERE device_id = ?", (record.id,)).rowcount
            conn.execute("DELETE FROM events WHERE device_id = ?", (record.id,))
            conn.execute("DELETE FROM commands WHERE device_id = ?", (record.id,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return deleted


def find_by_token(conn: sqlite3.Connection, token: str) -> DeviceRecord | None:
    """The device whose token this is, or None."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM devices WHERE token_hash = ?", (hash_token(token),)
    ).fetchone()
    return None if row is None else _record(row)


def find_by_name(conn: sqlite3.Connection, name: str) -> DeviceRecord | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM devices WHERE name = ?", (name,)).fetchone()
    return None if row is None else _record(row)


def find_by_id(conn: sqlite3.Connection, device_id: int) -> DeviceRecord | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM devices WHERE id = ?", (device_id,)).fetchone()
    return None if row is None else _record(row)


def list_devices(conn: sqlite3.Connection) -> list[DeviceRecord]:
    return [_record(row) for row in conn.execute(f"SELECT {_COLUMNS} FROM devices ORDER BY name")]


def reading_counts(conn: sqlite3.Connection) -> dict[int, int]:
    """Readings stored per device id."""
    return dict(conn.execute("SELECT device_id, count(*) FROM readings GROUP BY device_id").fetchall())


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise RegistryError(
            f"invalid device name {name!r}: use 1-64 letters, digits, '_', '.', '-', starting with a letter or digit"
        )
