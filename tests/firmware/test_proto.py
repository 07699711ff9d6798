"""The firmware's encoder (proto.py) and ring (ring.py) under MicroPython, checked by the gateway's codec.

The shared vectors (tests/vectors/messages.json) drive the main test: the
firmware builds every accepted device-direction message, and the gateway's
``decode_device_message`` must decode the firmware's text to exactly that message.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec

from iotgw_common.protocol import decode_device_message
from tests.firmware.mp import run_script
from tests.protocol.vectors import load_messages, render_value

ENCODE_ALL = """
import json
import proto
with open(sys.argv[1]) as f:
    messages = json.load(f)
for m in messages:
    t = m["type"]
    if t == "hello":
        text = proto.hello(m["stream"], m["agent"], m.get("last_acked", 0), m.get("sensors", []),
                           m.get("commands", []), m.get("buffered", 0), m.get("dropped", 0),
                           m.get("info"), m.get("device"), m.get("protocol", 1))
    elif t == "readings":
        samples = []
        for s in m["samples"]:
            vj, skipped = proto.values_json(s["values"])
            assert skipped == 0, s
            samples.append((s["ts"], vj))
        text = proto.readings(m["seq"], samples)
    elif t == "event":
        dj, skipped = proto.values_json(m.get("data", {}), allow_empty=True)
        assert skipped == 0
        text = proto.event(m["seq"], m["ts"], m["name"], dj)
    elif t == "status":
        text = proto.status(m.get("buffered", 0), m.get("dropped", 0), m.get("info"))
    elif t == "result":
        text = proto.result(m["id"], m["ok"], m.get("value"), m.get("error"))
    else:
        raise ValueError(t)
    print(text)
"""


def encode_with_firmware(tmp_path: Path, messages: list[dict[str, Any]]) -> list[str]:
    """Run the firmware encoder over ``messages``; one frame of text per message."""
    path = tmp_path / "messages.json"
    # Raw UTF-8, no \\u escapes: MicroPython's json.loads mangles surrogate pairs.
    path.write_text(json.dumps(messages, ensure_ascii=False), encoding="utf-8")
    rc, out, err = asyncio.run(run_script(tmp_path, ENCODE_ALL, str(path), heap="4m"))
    assert rc == 0, out + err
    frames = out.split("\n")
    assert frames[-1] == ""
    return frames[:-1]


def test_every_accepted_device_vector_round_trips_through_the_gateway_codec(tmp_path: Path) -> None:
    now = 1_767_225_600_000
    vectors = [v for v in load_messages() if v["direction"] == "device" and v["expect"] == "accept"]
    assert len(vectors) >= 20
    kinds = {v["message"]["type"] for v in vectors}
    assert kinds == {"hello", "readings", "event", "status", "result"}
    messages = [render_value(v["message"], now) for v in vectors]
    frames = encode_with_firmware(tmp_path, messages)
    assert len(frames) == len(vectors)
    for vector, expected, frame in zip(vectors, messages, frames, strict=True):
        decoded = msgspec.to_builtins(decode_device_message(frame.encode()))
        assert decoded == expected, f"{vector['name']}: firmware sent {frame[:300]}"


def test_values_the_gateway_would_refuse_are_skipped(tmp_path: Path) -> None:
    script = """
import json, proto
vals = {"ok": 1.5, "nan": float("nan"), "inf": float("inf"), "neg_inf": -float("inf"), "none": None,
        "list": [1], "long": "x" * 257, "fine": "x" * 256, "9bad": 1, "bad name": 2, "flag": False}
vj, skipped = proto.values_json(vals)
print(proto.readings(1, [(1767225600000, vj)]))
print(skipped)
many = {"m%d" % i: i for i in range(70)}
vj, skipped = proto.values_json(many)
print(proto.readings(2, [(1767225600000, vj)]))
print(skipped)
print(proto.values_json({"nan": float("nan")})[0])
print(proto.result("c1", True, {"x": float("nan"), "l": [1, float("inf")]}))
print(proto.event(3, 1767225600000, "button", proto.values_json({}, allow_empty=True)[0]))
"""
    rc, out, err = asyncio.run(run_script(tmp_path, script))
    assert rc == 0, out + err
    lines = out.splitlines()
    first = msgspec.to_builtins(decode_device_message(lines[0]))
    assert first["samples"][0]["values"] == {"ok": 1.5, "fine": "x" * 256, "flag": False}
    assert lines[1] == "8"
    second = msgspec.to_builtins(decode_device_message(lines[2]))
    assert len(second["samples"][0]["values"]) == 64
    assert lines[3] == "6"
    assert lines[4] == "None"  # nothing valid left: no sample at all
    assert json.loads(lines[5]) == {
        "type": "result",
        "id": "c1",
        "ok": True,
        "value": {"x": None, "l": [1, None]},
    }
    decode_device_message(lines[5])
    assert msgspec.to_builtins(decode_device_message(lines[6]))["name"] == "button"


def test_ring_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    script = """
from ring import Ring
lost = []
r = Ring(3, on_drop=lost.append)
for i in range(5):
    r.put(i)
print(len(r), r.dropped, lost, [r.peek(i) for i in range(len(r))], r.full())
print(r.get(), r.get(), len(r))
r.put(9)
print([r.peek(i) for i in range(len(r))])
r.clear()
try:
    r.get()
except IndexError:
    print("empty")
"""
    rc, out, err = asyncio.run(run_script(tmp_path, script))
    assert rc == 0, out + err
    assert out.splitlines() == ["3 2 [0, 1] [2, 3, 4] True", "2 3 1", "[4, 9]", "empty"]


def test_clock_conversion_survives_tick_wraparound(tmp_path: Path) -> None:
    # Boards wrap ticks_ms at 2**30; every conversion goes through ticks_diff.
    script = """
import time
from link import Clock
P = time.ticks_add(0, -1) + 1  # the port's tick period
c = Clock()
t_sent = time.ticks_add(0, -300)       # 300 ms before the wrap
t_rcvd = time.ticks_add(t_sent, 100)   # round trip 100 ms
c.sync(1767225600000, t_sent, t_rcvd)
print(c.rtt, c.ms(time.ticks_add(t_sent, 50)), c.ms(time.ticks_add(t_sent, 1050)), c.ms(time.ticks_add(t_sent, -950)))
"""
    rc, out, err = asyncio.run(run_script(tmp_path, script))
    assert rc == 0, out + err
    assert out.split() == ["100", "1767225600000", "1767225601000", "1767225599000"]
