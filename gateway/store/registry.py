"""The device registry: the ``devices`` table (hashed tokens, labels, metadata, stream position).

Every statement on ``devices`` lives here. Plain functions over a store connection
(``store.connect``); the CLI calls them directly, the running gateway calls the read
functions from its event loop (each is one indexed query) and routes writes through the
group committer, whose transaction calls :func:`record_stream_positions` and
:func:`update_metadata`.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.store import ledger, readings
from gateway.store.db import transaction
from gateway.tokens import hash_token, new_token
from iotgw_common.clock import now_ms
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
            (name, hash_token(token), now_ms(), msgspec.json.encode(labels or {}).decode()),
        )
    except sqlite3.IntegrityError:
        raise RegistryError(f"a device named {name!r} already exists") from None
    return token


def add_devices(conn: sqlite3.Connection, names: list[str]) -> dict[str, str]:
    """Register many devices in one transaction (bulk provisioning); name -> token."""
    for name in names:
        _check_name(name)
    now = now_ms()
    tokens = {name: new_token() for name in names}
    try:
        with transaction(conn, immediate=True):
            conn.executemany(
                "INSERT INTO devices (name, token_hash, created_ms) VALUES (?, ?, ?)",
                [(name, hash_token(token), now) for name, token in tokens.items()],
            )
    except sqlite3.IntegrityError as exc:
        raise RegistryError(f"a device name is taken: {exc}") from None
    return tokens


def rotate_token(conn: sqlite3.Connection, name: str) -> str:
    """Give ``name`` a new token (the old one stops working); returns it once.

    A running gateway notices the rotation (:func:`revocations_after`), closes the session
    that authenticated with the old token (4005) and stores nothing more it sent.
    """
    token = new_token()
    with transaction(conn, immediate=True):
        row = conn.execute("SELECT id FROM devices WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise RegistryError(f"no device named {name!r}")
        conn.execute("UPDATE devices SET token_hash = ? WHERE id = ?", (hash_token(token), row[0]))
        _log_revocation(conn, row[0], ROTATED)
    return token


def remove_device(conn: sqlite3.Connection, name: str, *, purge: bool = False) -> int:
    """Remove ``name`` (its token stops working); with ``purge`` also its data.

    Returns the number of readings deleted. Raises RegistryError if unknown. A running
    gateway notices the removal (:func:`revocations_after`), closes the device's session
    (4003) and stores nothing more it sent; the id is never given to another device.
    """
    record = find_by_name(conn, name)
    if record is None:
        raise RegistryError(f"no device named {name!r}")
    deleted = 0
    with transaction(conn, immediate=True):
        delete_device_rows(conn, record.id)
        if purge:
            deleted = readings.delete_device(conn, record.id)
            # in the ledger file (attached): this transaction is atomic in each file, not across the
            # two; the store file commits first, so a crash in between leaves only commands behind
            ledger.delete_device_commands(conn, record.id)
    return deleted


def delete_device_rows(conn: sqlite3.Connection, device_id: int) -> None:
    """Remove a device and log the removal (its session ends, 4003); the caller holds the transaction."""
    conn.execute("DELETE FROM devices WHERE id = ?", (device_id,))
    conn.execute("DELETE FROM device_streams WHERE device_id = ?", (device_id,))
    _log_revocation(conn, device_id, REMOVED)


def import_device(
    conn: sqlite3.Connection, name: str, token_hash: str, labels: dict[str, str], created_ms: int
) -> None:
    """Register ``name`` with a token hash made elsewhere (the fleet's replicated registry,
    gateway/store/fleet.py); the caller holds the transaction. Raises sqlite3.IntegrityError
    when the name or the hash is taken."""
    _check_name(name)
    conn.execute(
        "INSERT INTO devices (name, token_hash, created_ms, labels) VALUES (?, ?, ?, ?)",
        (name, token_hash, created_ms, msgspec.json.encode(labels).decode()),
    )


def replace_token_hash(conn: sqlite3.Connection, device_id: int, token_hash: str) -> None:
    """Give a device a token hash made elsewhere and log a rotation (its session ends, 4005);
    the caller holds the transaction."""
    conn.execute("UPDATE devices SET token_hash = ? WHERE id = ?", (token_hash, device_id))
    _log_revocation(conn, device_id, ROTATED)


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


def token_hash_of(conn: sqlite3.Connection, device_id: int) -> str | None:
    """The hash of the device's current token, or None if the device is gone."""
    row = conn.execute("SELECT token_hash FROM devices WHERE id = ?", (device_id,)).fetchone()
    return None if row is None else str(row[0])


# -- revocations: removals and token rotations, as the running gateway learns them ----------

REMOVED = "removed"
ROTATED = "rotated"
Revocation = tuple[int, int, str]
"""(log id, device id, ``REMOVED`` or ``ROTATED``); log ids only grow."""


def _log_revocation(conn: sqlite3.Connection, device_id: int, kind: str) -> None:
    conn.execute(
        "INSERT INTO device_revocations (device_id, kind, at_ms) VALUES (?, ?, ?)",
        (device_id, kind, now_ms()),
    )


def revocation_watermark(conn: sqlite3.Connection) -> int:
    """The newest revocation's log id (0 if none).

    Read it *before* checking a device's token: a revocation with a larger id happened
    after the check, so it applies to the session that passed it.
    """
    (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM device_revocations").fetchone()
    return int(last)


def revocations_after(conn: sqlite3.Connection, after: int) -> list[Revocation]:
    """Revocations logged after log id ``after``, oldest first (one primary-key range read)."""
    return [
        (int(row[0]), int(row[1]), str(row[2]))
        for row in conn.execute(
            "SELECT id, device_id, kind FROM device_revocations WHERE id > ? ORDER BY id", (after,)
        )
    ]


def list_devices(conn: sqlite3.Connection) -> list[DeviceRecord]:
    return [_record(row) for row in conn.execute(f"SELECT {_COLUMNS} FROM devices ORDER BY name")]


def count_devices(conn: sqlite3.Connection) -> int:
    """How many devices are registered."""
    (count,) = conn.execute("SELECT count(*) FROM devices").fetchone()
    return int(count)


def stored_labels(conn: sqlite3.Connection, device_id: int) -> dict[str, str] | None:
    """The labels the store holds for a device now, or None if it is gone (read-modify-write)."""
    row = conn.execute("SELECT labels FROM devices WHERE id = ?", (device_id,)).fetchone()
    return None if row is None else dict(msgspec.json.decode(row[0]))


def set_labels(conn: sqlite3.Connection, device_id: int, labels: dict[str, str]) -> None:
    """Replace a device's labels; the caller checked them (they become InfluxDB tags)."""
    conn.execute(
        "UPDATE devices SET labels = ? WHERE id = ?", (msgspec.json.encode(labels).decode(), device_id)
    )


# -- writes made by the group-commit writer, inside its transaction ---------------------

META_COLUMNS = frozenset(
    {"agent", "sensors", "commands", "info", "buffered", "dropped", "last_seen_ms", "labels"}
)
"""The columns :func:`update_metadata` may set (what a ``hello`` and a session report)."""

_UPDATE_STREAMS = "UPDATE devices SET stream = ?, last_seq = ?, last_seen_ms = ? WHERE id = ?"
_UPDATE_STREAMS_JSON = (  # UPDATE ... FROM: SQLite 3.33
    "UPDATE devices SET stream = json_extract(j.value, '$[1]'), last_seq = json_extract(j.value, '$[2]'), "
    "last_seen_ms = ? FROM json_each(?) AS j WHERE devices.id = json_extract(j.value, '$[0]')"
)
_batch_encoder = msgspec.json.Encoder()


def record_stream_positions(
    conn: sqlite3.Connection, positions: dict[int, tuple[str, int]], seen_ms: int, *, bulk: bool
) -> None:
    """Store each device's stream and last committed seq (device id -> (stream, seq)) and
    stamp it seen at ``seen_ms``.

    With ``bulk`` (only where :func:`bulk_update_works` said yes) it is one statement, not one
    ``executemany`` step per device: each step releases and re-takes the GIL, and while the
    event loop is busy every re-take waits for it. The caller holds the transaction.
    """
    if bulk:
        encoded = _batch_encoder.encode([(d, stream, seq) for d, (stream, seq) in positions.items()])
        conn.execute(_UPDATE_STREAMS_JSON, (seen_ms, encoded))
    else:
        conn.executemany(
            _UPDATE_STREAMS,
            [(stream, seq, seen_ms, device_id) for device_id, (stream, seq) in positions.items()],
        )


KEPT_STREAMS = 32
"""Earlier streams remembered per device besides the current one (docs/protocol.md, section 5)."""

_ARCHIVE_STREAM = (
    "INSERT INTO device_streams (device_id, stream, last_seq, updated_ms) "
    "SELECT id, stream, last_seq, ? FROM devices WHERE id = ? AND stream <> ? AND stream <> '' "
    "ON CONFLICT (device_id, stream) DO UPDATE SET last_seq = excluded.last_seq, updated_ms = excluded.updated_ms"
)
_PRUNE_STREAMS = (
    "DELETE FROM device_streams WHERE device_id = ? AND stream NOT IN "
    "(SELECT stream FROM device_streams WHERE device_id = ? ORDER BY updated_ms DESC, stream LIMIT ?)"
)


def archive_streams(conn: sqlite3.Connection, new_streams: dict[int, str], at_ms: int) -> None:
    """Before :func:`record_stream_positions` moves a device to another stream, keep the
    position of the stream it leaves (device id -> the stream it moves to).

    Cheap to call for a device that stays on its stream (one indexed read, nothing written);
    the writer calls it only for devices whose stream it has not seen this run. Keeps the
    newest :data:`KEPT_STREAMS` per device. The caller holds the transaction.
    """
    for device_id, stream in new_streams.items():
        if conn.execute(_ARCHIVE_STREAM, (at_ms, device_id, stream)).rowcount:
            conn.execute(_PRUNE_STREAMS, (device_id, device_id, KEPT_STREAMS))


def stream_position(conn: sqlite3.Connection, device_id: int, stream: str) -> int:
    """The last stored seq of the device's ``stream``: its current one or a remembered
    earlier one; 0 for a stream the store has never seen (``welcome.last_seq``)."""
    row = conn.execute("SELECT stream, last_seq FROM devices WHERE id = ?", (device_id,)).fetchone()
    if row is None:
        return 0
    if row[0] == stream:
        return int(row[1])
    kept = conn.execute(
        "SELECT last_seq FROM device_streams WHERE device_id = ? AND stream = ?", (device_id, stream)
    ).fetchone()
    return 0 if kept is None else int(kept[0])


def update_metadata(conn: sqlite3.Connection, device_id: int, fields: dict[str, Any]) -> None:
    """Set metadata columns of a device; dicts and lists are stored as JSON text.

    The caller checked ``fields`` against :data:`META_COLUMNS` (the names become SQL).
    """
    assignments = ", ".join(f"{column} = ?" for column in fields)
    values = [_column_value(value) for value in fields.values()]
    conn.execute(f"UPDATE devices SET {assignments} WHERE id = ?", [*values, device_id])


def bulk_update_works() -> bool:
    """Whether this SQLite runs the one-statement form of :func:`record_stream_positions`
    (needs the JSON functions and UPDATE ... FROM, SQLite 3.33) and stores what
    ``executemany`` would."""
    try:
        conn = sqlite3.connect(":memory:")
        try:
            conn.execute("CREATE TABLE devices (id INTEGER PRIMARY KEY, stream, last_seq, last_seen_ms)")
            conn.execute("INSERT INTO devices (id, stream, last_seq) VALUES (7, '', 0), (8, 'x', 5)")
            record_stream_positions(conn, {7: ("s-1", 3)}, 99, bulk=True)
            devices = conn.execute("SELECT * FROM devices ORDER BY id").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return devices == [(7, "s-1", 3, 99), (8, "x", 5, None)]


def _column_value(value: Any) -> Any:
    if isinstance(value, dict | list):
        return msgspec.json.encode(value).decode()
    return value


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise RegistryError(
            f"invalid device name {name!r}: use 1-64 letters, digits, '_', '.', '-', starting with a letter or digit"
        )
