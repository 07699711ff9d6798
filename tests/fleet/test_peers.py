"""The fleet's presence table (gateway/fleet/peers.py), message in, holder out."""

from __future__ import annotations

from gateway.fleet.peers import PeerTable
from gateway.fleet.wire import DeviceHeld, Presence, decode, encode


def presence(gateway: str, *held: tuple[str, int], leaving: bool = False) -> Presence:
    devices = [DeviceHeld(name=n, since_ms=s, commands=["set"]) for n, s in held]
    return Presence(gateway=gateway, interval_ms=1000, devices=devices, leaving=leaving)


def test_announcements_say_who_holds_what_and_report_what_changed() -> None:
    table = PeerTable(timeout_ms=3000)
    assert table.update(presence("b", ("pi-1", 10), ("pi-2", 10)), 0) == {"pi-1", "pi-2"}
    assert table.update(presence("b", ("pi-1", 10), ("pi-2", 10)), 1000) == set()
    assert table.holder("pi-1") is not None and table.holder("pi-1")[0] == "b"  # type: ignore[index]
    assert table.update(presence("b", ("pi-1", 10)), 2000) == {"pi-2"}
    assert table.holder("pi-2") is None
    assert table.held() == {"pi-1": "b"}


def test_the_newest_session_wins_when_two_gateways_claim_a_device() -> None:
    table = PeerTable(timeout_ms=3000)
    table.update(presence("b", ("pi-1", 10)), 0)
    table.update(presence("c", ("pi-1", 20)), 0)  # it moved to c; b has not said so yet
    assert table.held() == {"pi-1": "c"}


def test_a_peer_is_forgotten_when_it_leaves_goes_silent_or_the_broker_is_lost() -> None:
    table = PeerTable(timeout_ms=3000)
    table.update(presence("b", ("pi-1", 10)), 0)
    table.update(presence("c", ("pi-2", 10)), 2000)
    assert table.expire(3500) == (["b"], {"pi-1"})  # silent for more than 3 s
    assert table.update(presence("c", leaving=True), 3600) == {"pi-2"}
    table.update(presence("d", ("pi-3", 10)), 4000)
    assert table.clear() == {"pi-3"} and table.gateways == []


def test_messages_survive_the_wire() -> None:
    message = presence("b", ("pi-1", 10))
    assert decode(encode(message)) == message
