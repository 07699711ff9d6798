"""The fleet's replicated registry: ``fleet_registry``, one row per device name the fleet knows.

docs/scale-out.md, "Registry sharing". Each row is what the fleet agreed a device is: its
token's hash (never the token), its labels, or a tombstone (``removed``) once it was removed,
stamped for last-writer-wins: ``(stamp_ms, origin)``, the larger pair wins, the gateway name
breaking ties. ``devices`` (gateway/store/registry.py) stays the table the device plane reads;
this one remembers what was last replicated, so that

* :func:`local_changes` finds what changed in ``devices`` since (``iotgw device add``,
  ``remove``, ``rotate-token`` and label edits, made by any process), stamps it with this
  gateway's name and returns it for publishing;
* :func:`apply` takes a peer's rows, keeps those that win, and makes ``devices`` match them
  in the same transaction: an import, a removal or a token change there is logged as a
  revocation, so the device plane ends the live session it concerns (gateway/device/revocation.py).

Both run in the writer thread (``GroupCommitter.call``) and hold their own transaction.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import msgspec

from gateway.store import registry
from gateway.store.db import transaction

__all__ = ["FleetEntry", "apply", "entries", "local_changes"]

log = logging.getLogger(__name__)


class FleetEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One device as the fleet knows it (also the wire form, gateway/fleet/wire.py)."""

    name: str
    token_hash: str
    labels: dict[str, str] = {}
    stamp_ms: int
    origin: str
    removed: bool = False

    def wins_over(self, other: FleetEntry | None) -> bool:
        """Last writer wins: a later stamp, or the same stamp from a larger gateway name."""
        return other is None or (self.stamp_ms, self.origin) > (other.stamp_ms, other.origin)


def _row(row: tuple[Any, ...]) -> FleetEntry:
    return FleetEntry(
        name=row[0],
        token_hash=row[1],
        labels=msgspec.json.decode(row[2]),
        stamp_ms=row[3],
        origin=row[4],
        removed=bool(row[5]),
    )


def entries(conn: sqlite3.Connection) -> list[FleetEntry]:
    """Every row, tombstones included (what a joining peer is sent)."""
    return [
        _row(r)
        for r in conn.execute(
            "SELECT name, token_hash, labels, stamp_ms, origin, removed FROM fleet_registry ORDER BY name"
        )
    ]


def _put(conn: sqlite3.Connection, e: FleetEntry) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO fleet_registry (name, token_hash, labels, stamp_ms, origin, removed) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (e.name, e.token_hash, msgspec.json.encode(e.labels).decode(), e.stamp_ms, e.origin, int(e.removed)),
    )


def local_changes(conn: sqlite3.Connection, origin: str, now_ms: int) -> list[FleetEntry]:
    """Rows for what ``devices`` holds differently from the fleet's view, stored and returned.

    A device the fleet never saw is stamped with its ``created_ms``; any other change (a new
    token, labels, a removal) with ``now_ms`` (at least one more than the row it replaces).
    """
    with transaction(conn, immediate=True):
        known = {e.name: e for e in entries(conn)}
        changed: list[FleetEntry] = []
        local = conn.execute("SELECT name, token_hash, labels, created_ms FROM devices").fetchall()
        names = set()
        for name, token_hash, labels_text, created_ms in local:
            names.add(name)
            labels = msgspec.json.decode(labels_text)
            old = known.get(name)
            if old is not None and not old.removed and (old.token_hash, old.labels) == (token_hash, labels):
                continue
            stamp = int(created_ms) if old is None else max(now_ms, int(created_ms), old.stamp_ms + 1)
            changed.append(FleetEntry(name=name, token_hash=token_hash, labels=labels, stamp_ms=stamp,
                                      origin=origin))  # fmt: skip
        for name, old in known.items():
            if not old.removed and name not in names:
                changed.append(FleetEntry(name=name, token_hash=old.token_hash, stamp_ms=max(now_ms,
                                          old.stamp_ms + 1), origin=origin, removed=True))  # fmt: skip
        for e in changed:
            _put(conn, e)
    return changed


def apply(conn: sqlite3.Connection, incoming: list[FleetEntry]) -> list[FleetEntry]:
    """Keep the rows that win over what is stored and make ``devices`` match; returns them.

    A row that cannot be applied (its token hash belongs to another device here) is logged
    and skipped, the stored row kept.
    """
    applied: list[FleetEntry] = []
    with transaction(conn, immediate=True):
        for e in incoming:
            row = conn.execute(
                "SELECT name, token_hash, labels, stamp_ms, origin, removed FROM fleet_registry "
                "WHERE name = ?",
                (e.name,),
            ).fetchone()
            if not e.wins_over(None if row is None else _row(row)):
                continue
            device = registry.find_by_name(conn, e.name)
            try:
                conn.execute("SAVEPOINT fleet_entry")
                if e.removed:
                    if device is not None:
                        registry.delete_device_rows(conn, device.id)
                elif device is None:
                    registry.import_device(conn, e.name, e.token_hash, e.labels, e.stamp_ms)
                else:
                    if registry.token_hash_of(conn, device.id) != e.token_hash:
                        registry.replace_token_hash(conn, device.id, e.token_hash)
                    if device.labels != e.labels:
                        registry.set_labels(conn, device.id, e.labels)
                conn.execute("RELEASE fleet_entry")
            except (sqlite3.IntegrityError, registry.RegistryError) as exc:  # a hash taken here, a bad name
                conn.execute("ROLLBACK TO fleet_entry")
                conn.execute("RELEASE fleet_entry")
                log.warning("fleet: cannot apply %s from %s: %s", e.name, e.origin, exc)
                continue
            _put(conn, e)
            applied.append(e)
    return applied
