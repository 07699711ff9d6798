"""The live feed hub (gateway/operator/feed.py) without sockets: order, filters, slow subscribers, resume."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.operator.feed import Feed, FeedFilter, SubscriberTooSlow, SubscriptionClosed
from iotgw_common.protocol.messages import Event, Readings, Sample

TS = 1_764_000_000_000


@dataclass
class Frame:
    device_id: int
    message: Readings | Event


def readings(device_id: int, seq: int, **values: Any) -> Frame:
    return Frame(device_id, Readings(seq=seq, samples=[Sample(ts=TS + seq, values=values)]))


NAMES = {1: "pi-1", 2: "pi-2"}


def feed(**kw: Any) -> Feed:
    return Feed(resolve_name=NAMES.get, **kw)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test body in a fresh event loop (no pytest plugin needed)."""
    return functools.wraps(test)(lambda: asyncio.run(test()))


async def drain(sub: Any) -> list[dict[str, Any]]:
    out = []
    while sub.pending:
        raw = sub.encode(await sub.get())
        if raw is not None:
            out.append(json.loads(raw))
    return out


@run
async def test_messages_arrive_in_commit_order_with_consecutive_ids() -> None:
    hub = feed()
    sub, resumed = hub.subscribe()
    assert resumed
    hub.committed([readings(1, 1, temp=20.0), readings(2, 1, temp=30.0)])
    hub.committed([readings(1, 2, temp=21.0), Frame(1, Event(seq=3, ts=TS, name="door.pressed"))])
    got = await drain(sub)
    assert [m["id"] for m in got] == [1, 2, 3, 4]
    assert [(m["device"], m["seq"]) for m in got] == [("pi-1", 1), ("pi-2", 1), ("pi-1", 2), ("pi-1", 3)]
    assert got[0]["type"] == "readings" and got[0]["samples"] == [{"ts": TS + 1, "values": {"temp": 20.0}}]
    assert got[3]["type"] == "event" and got[3]["name"] == "door.pressed" and got[3]["ts"] == TS
    assert all(isinstance(m["at"], int) for m in got)


@run
async def test_filters_by_device_metric_and_kind() -> None:
    hub = feed()
    by_device, _ = hub.subscribe(FeedFilter(devices=frozenset({"pi-2"})))
    by_metric, _ = hub.subscribe(FeedFilter(metrics=frozenset({"rh"}), kinds=frozenset({"readings"})))
    by_kind, _ = hub.subscribe(FeedFilter(kinds=frozenset({"device"})))
    hub.committed([readings(1, 1, temp=20.0, rh=40.0), readings(2, 1, temp=30.0)])
    hub.device_meta(2, {"buffered": 3, "dropped": 1})
    hub.presence(1, "pi-1", False)
    assert [(m["device"], m["type"]) for m in await drain(by_device)] == [
        ("pi-2", "readings"),
        ("pi-2", "device"),
    ]
    assert [m["samples"] for m in await drain(by_metric)] == [[{"ts": TS + 1, "values": {"rh": 40.0}}]]
    kinds = await drain(by_kind)
    assert kinds == [
        {"id": 3, "type": "device", "device": "pi-2", "at": kinds[0]["at"], "buffered": 3, "dropped": 1},
        {"id": 4, "type": "device", "device": "pi-1", "at": kinds[1]["at"], "online": False},
    ]


@run
async def test_a_slow_subscriber_is_dropped_and_never_holds_up_publishing() -> None:
    hub = feed(queue_size=10)
    slow, _ = hub.subscribe()
    fast, _ = hub.subscribe()
    received: list[int] = []
    for seq in range(1, 101):
        hub.committed([readings(1, seq, temp=float(seq))])  # synchronous: publishing cannot wait
        entry = await fast.get()
        received.append(entry[0])
    assert received == list(range(1, 101))
    assert slow.pending == 0 and hub.subscribers == 1 and hub.dropped_subscribers == 1
    with pytest.raises(SubscriberTooSlow):
        await slow.get()


@run
async def test_resume_after_the_last_id_misses_nothing_within_the_replay_window() -> None:
    hub = feed(replay_samples=50)
    first, _ = hub.subscribe()
    hub.committed([readings(1, seq, temp=1.0) for seq in range(1, 6)])
    for _ in range(2):
        await first.get()
    first.close()
    with pytest.raises(SubscriptionClosed):
        await first.get()
    hub.committed([readings(1, seq, temp=1.0) for seq in range(6, 9)])
    again, resumed = hub.subscribe(after=first.last_id, epoch=hub.epoch)
    assert resumed and [m["seq"] for m in await drain(again)] == [3, 4, 5, 6, 7, 8]
    _, other_run = hub.subscribe(after=2, epoch="another-run")
    assert not other_run
    hub.committed([readings(1, seq, temp=1.0) for seq in range(9, 100)])
    late, resumed = hub.subscribe(after=2, epoch=hub.epoch)
    assert not resumed and late.pending == 0


@run
async def test_get_waits_for_the_next_message() -> None:
    hub = feed()
    sub, _ = hub.subscribe()
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    hub.command(1, "pi-1", {"id": "c1", "state": "sent"})
    entry = await asyncio.wait_for(waiter, 1)
    assert json.loads(sub.encode(entry) or b"")["command"] == {"id": "c1", "state": "sent"}
