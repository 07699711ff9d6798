"""The replicated registry in the store (gateway/store/fleet.py): local changes, last writer wins."""

from __future__ import annotations

from pathlib import Path

from gateway import store
from gateway.store import fleet, registry
from gateway.store.fleet import FleetEntry
from gateway.tokens import hash_token


def test_local_changes_are_found_once_and_applied_on_a_peer_with_revocations(tmp_path: Path) -> None:
    a = store.connect(tmp_path / "a.sqlite3")
    b = store.connect(tmp_path / "b.sqlite3")
    token = registry.add_device(a, "pi-1", {"site": "north"})
    added = fleet.local_changes(a, "gw-a", 10**13)
    assert [(e.name, e.token_hash, e.labels, e.removed) for e in added] == [
        ("pi-1", hash_token(token), {"site": "north"}, False)
    ]
    assert fleet.local_changes(a, "gw-a", 10**13) == []  # nothing new
    assert fleet.apply(b, added) == added
    assert registry.find_by_token(b, token) is not None  # the same token works on b
    assert fleet.apply(b, added) == []  # not newer: ignored
    assert fleet.local_changes(b, "gw-b", 10**13) == []  # b does not echo what it applied

    watermark = registry.revocation_watermark(b)
    new_token = registry.rotate_token(a, "pi-1")
    rotated = fleet.local_changes(a, "gw-a", 10**13 + 5)
    assert fleet.apply(b, rotated) == rotated
    assert registry.find_by_token(b, token) is None and registry.find_by_token(b, new_token) is not None
    assert [kind for _, _, kind in registry.revocations_after(b, watermark)] == [registry.ROTATED]

    registry.remove_device(a, "pi-1")
    removed = fleet.local_changes(a, "gw-a", 10**13 + 9)
    assert [e.removed for e in removed] == [True]
    fleet.apply(b, removed)
    assert registry.find_by_name(b, "pi-1") is None
    assert registry.revocations_after(b, watermark)[-1][2] == registry.REMOVED


def test_last_writer_wins_and_the_gateway_name_breaks_ties(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "s.sqlite3")
    old = FleetEntry(name="pi-1", token_hash="a" * 64, stamp_ms=100, origin="gw-b")
    newer = FleetEntry(name="pi-1", token_hash="b" * 64, stamp_ms=200, origin="gw-a")
    tie = FleetEntry(name="pi-1", token_hash="c" * 64, stamp_ms=200, origin="gw-c")
    assert fleet.apply(conn, [newer]) == [newer]
    assert fleet.apply(conn, [old]) == []  # older: ignored
    assert fleet.apply(conn, [tie]) == [tie]  # same stamp, larger name
    assert registry.token_hash_of(conn, registry.find_by_name(conn, "pi-1").id) == "c" * 64  # type: ignore[union-attr]
    tombstone = FleetEntry(name="pi-1", token_hash="c" * 64, stamp_ms=300, origin="gw-a", removed=True)
    fleet.apply(conn, [tombstone])
    assert fleet.apply(conn, [newer]) == []  # a removed device is not resurrected by an older add
    assert registry.find_by_name(conn, "pi-1") is None
