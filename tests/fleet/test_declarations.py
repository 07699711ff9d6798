"""Declarations shared with the peers (gateway/fleet/declared.py): metadata in, messages and rows out."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from gateway.fleet import declared as declared_mod
from gateway.fleet.declared import CHUNK_BYTES, INFO_REFRESH_S, DeclaredSync, MetadataTap, chunks
from gateway.fleet.wire import Declarations, DeviceDeclared, FleetTopics, decode, encode
from gateway.store.registry import DeviceRecord

HELLO: dict[str, Any] = {  # the metadata the device plane submits for a hello (session.welcome)
    "agent": "iotgw-agent/1.4 (raspberrypi)",
    "sensors": [
        {"metric": "temp", "unit": "degC"},
        {"metric": "humidity", "unit": "%"},
        {"metric": "cpu_temp", "unit": "degC"},
        {"metric": "load1"},
    ],
    "commands": [
        {"name": "ping", "description": "answer pong with the actuators' states"},
        {
            "name": "set",
            "description": "drive an output",
            "args": {"target": "output name", "value": "on/off"},
        },
        {"name": "toggle", "args": {"target": "output name"}},
        {
            "name": "blink",
            "args": {"target": "output name", "on_s": "seconds", "off_s": "seconds", "n": "times"},
        },
        {"name": "reboot"},
    ],
    "info": {
        "outputs": "led:led,relay:relay",
        "model": "Raspberry Pi 4 Model B",
        "version": "1.4.0",
        "python": "3.11.2",
    },
    "buffered": 0,
    "dropped": 0,
    "last_seen_ms": 1_700_000_000_000,
}


class FakeCommitter:
    def __init__(self) -> None:
        self.listener: Any = None
        self.metas: list[tuple[int, dict[str, Any]]] = []

    def submit_meta(self, device_id: int, **fields: Any) -> None:
        self.metas.append((device_id, fields))
        if self.listener is not None:
            self.listener.device_meta(device_id, fields)


class Harness:
    def __init__(self, gateway: str = "gw-b") -> None:
        self.topics = FleetTopics("iotgw", gateway)
        self.committer = FakeCommitter()
        self.published: list[tuple[str, bytes]] = []
        self.registry: dict[str, DeviceRecord] = {}
        self.now = 1_000_000
        self.sync = DeclaredSync(self.topics, self.committer, self.publish, self.registry.get,  # type: ignore[arg-type]
                                 clock=lambda: self.now)  # fmt: skip
        self.committer.listener = MetadataTap(None, self.sync.meta)

    async def publish(self, topic: str, payload: bytes) -> None:
        self.published.append((topic, payload))

    def messages(self) -> list[Declarations]:
        out = []
        for _, payload in self.published:
            body = decode(payload)
            assert isinstance(body, Declarations)
            out.append(body)
        return out


def test_a_device_held_here_is_shared_at_once_with_its_hello_and_status_info_later() -> None:
    b = Harness("gw-b")
    b.committer.submit_meta(7, **HELLO)  # the device plane stores the hello, then the session is ready
    b.sync.held(7, "pi-1", 1000, None)
    asyncio.run(b.sync.publish_due())
    [(topic, payload)] = b.published
    assert topic == "iotgw/fleet/declared"
    [message] = b.messages()
    [d] = message.devices
    assert message.gateway == "gw-b" and d.name == "pi-1" and d.since_ms == 1000
    assert d.agent == HELLO["agent"] and d.info == HELLO["info"]
    assert msgspec.to_builtins(d.commands) == HELLO["commands"]
    assert msgspec.to_builtins(d.sensors) == HELLO["sensors"]
    print(f"\none agent's declarations: {len(payload)} bytes in a message of their own")
    assert len(payload) < 1500

    # a status frame's info replaces hello's (as in the holder's row), shared after INFO_REFRESH_S
    status = {**HELLO["info"], "mem_free": 1234}
    b.committer.submit_meta(7, buffered=0, dropped=0, info=status, last_seen_ms=2)
    asyncio.run(b.sync.publish_due())
    assert len(b.published) == 1  # not yet: health figures move with every status frame
    b.now += round(INFO_REFRESH_S * 1000)
    asyncio.run(b.sync.publish_due())
    assert b.messages()[-1].devices[0].info == status
    b.committer.submit_meta(7, buffered=0, dropped=0, info=status, last_seen_ms=3)  # unchanged
    b.now += round(INFO_REFRESH_S * 1000)
    asyncio.run(b.sync.publish_due())
    assert len(b.published) == 2
    b.sync.released(7, "pi-1")
    b.committer.submit_meta(7, info={"x": 1})  # no longer held here: nothing to share
    b.now += round(INFO_REFRESH_S * 1000)
    asyncio.run(b.sync.publish_due())
    assert len(b.published) == 2


def test_a_joining_gateway_is_answered_with_every_held_device() -> None:
    b = Harness("gw-b")

    async def scenario() -> None:
        for i in range(3):
            b.committer.submit_meta(i, **HELLO)
            b.sync.held(i, f"pi-{i}", 1000 + i, None)
        b.sync.answer("gw-a")
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(scenario())
    [(topic, _)] = b.published
    assert topic == "iotgw/fleet/gateway/gw-a/declared"
    assert [d.name for d in b.messages()[0].devices] == ["pi-0", "pi-1", "pi-2"]


def test_a_peers_declarations_fill_the_row_of_a_device_it_holds() -> None:
    a = Harness("gw-a")
    declared = msgspec.convert({**HELLO, "name": "pi-1", "since_ms": 1000}, DeviceDeclared)
    a.sync.received(Declarations(gateway="gw-b", devices=[declared]))
    assert a.committer.metas == []  # not in this registry yet: it waits for the row
    a.registry["pi-1"] = DeviceRecord(id=3, name="pi-1")
    a.sync.retry(["pi-1"])
    [(device_id, fields)] = a.committer.metas
    assert device_id == 3
    assert fields == {k: HELLO[k] for k in ("agent", "sensors", "commands", "info")}
    a.registry["pi-1"] = DeviceRecord(id=3, name="pi-1", **fields)
    # an older session's (the device moved on since) never replaces a newer one's
    older = msgspec.structs.replace(declared, since_ms=500, info={"outputs": "old:led"})
    a.sync.received(Declarations(gateway="gw-c", devices=[older]))
    newer = msgspec.structs.replace(declared, since_ms=2000, info={"outputs": "led:led"})
    a.sync.received(Declarations(gateway="gw-c", devices=[newer]))
    assert [f for _, f in a.committer.metas[1:]] == [{"info": {"outputs": "led:led"}}]  # the change only
    # a device held here: its own hello is the truth
    a.committer.submit_meta(3, **HELLO)
    a.sync.held(3, "pi-1", 3000, a.registry["pi-1"])
    metas = len(a.committer.metas)
    a.sync.received(Declarations(gateway="gw-c", devices=[msgspec.structs.replace(declared, since_ms=2500)]))
    assert len(a.committer.metas) == metas


def test_declarations_keep_the_protocols_limits_and_split_into_bounded_messages() -> None:
    too_many = {"type": "declared", "gateway": "gw-b",
                "devices": [{"name": "x", "since_ms": 1, "commands": [{"name": f"c{i}"} for i in range(65)]}]}  # fmt: skip
    with pytest.raises(msgspec.ValidationError):
        decode(msgspec.json.encode(too_many))
    bad_info = {"type": "declared", "gateway": "gw-b",
                "devices": [{"name": "x", "since_ms": 1, "info": {"outputs": "a\nb"}}]}  # fmt: skip
    with pytest.raises(msgspec.ValidationError):
        decode(msgspec.json.encode(bad_info))
    one = msgspec.convert({**HELLO, "name": "pi-0", "since_ms": 1}, DeviceDeclared)
    many = [msgspec.structs.replace(one, name=f"pi-{i}") for i in range(200)]
    messages = chunks("gw-b", many)
    assert len(messages) > 1 and all(len(m) <= CHUNK_BYTES + 200 for m in messages)
    names = [d.name for m in messages for d in decode(m).devices]  # type: ignore[union-attr]
    assert names == [d.name for d in many]
    assert encode(Declarations(gateway="gw-b", devices=[one])) == chunks("gw-b", [one])[0]
    assert INFO_REFRESH_S >= 10 and declared_mod.PENDING_KEPT >= 1000
