"""The firmware's encoders (proto.py, hello.py, command.py, outbox.py) and ring under MicroPython, checked by the gateway's codec.

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

FRAME = """
import outbox, ring
def frame(seq, items):
    # Render one frame the way the board does: records in a ring, built by the outbox.
    ob = outbox.Outbox(140000, 1, 65536, 500, outbox.Clock())
    ob.next_seq = seq
    for ts, text, is_event in items:
        assert ob.put(ring.WALL | (ring.EVENT if is_event else 0), ts, text)
    return str(bytes(ob.build_next()[1]), "utf-8")
"""

ENCODE_ALL = (
    FRAME
    + """
import json
import command
import hello
import proto
with open(sys.argv[1]) as f:
    messages = json.load(f)
for m in messages:
    t = m["type"]
    if t == "hello":
        text = hello.hello(m["stream"], m["agent"], m.get("last_acked", 0), m.get("sensors", []),
                           m.get("commands", []), m.get("buffered", 0), m.get("dropped", 0),
                           m.get("info"), m.get("device"), m.get("protocol", 1))
    elif t == "readings":
        samples = []
        for s in m["samples"]:
            vj, skipped = proto.values_json(s["values"])
            assert skipped == 0, s
            samples.append((s["ts"], vj, False))
        text = frame(m["seq"], samples)
    elif t == "event":
        dj, skipped = proto.values_json(m.get("data", {}), allow_empty=True)
        assert skipped == 0
        text = frame(m["seq"], [(m["ts"], '"%s","data":%s' % (m["name"], dj), True)])
    elif t == "status":
        text = proto.status(m.get("buffered", 0), m.get("dropped", 0), m.get("info"))
    elif t == "result":
        text = command.result(m["id"], m["ok"], m.get("value"), m.get("error"))
    else:
        raise ValueError(t)
    print(text)
"""
)


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
    script = (
        FRAME
        + """
import json, proto
vals = {"ok": 1.5, "nan": float("nan"), "inf": float("inf"), "neg_inf": -float("inf"), "none": None,
        "list": [1], "long": "x" * 257, "fine": "x" * 256, "9bad": 1, "bad name": 2, "flag": False}
vj, skipped = proto.values_json(vals)
print(frame(1, [(1767225600000, vj, False)]))
print(skipped)
many = {"m%d" % i: i for i in range(70)}
vj, skipped = proto.values_json(many)
print(frame(2, [(1767225600000, vj, False)]))
print(skipped)
print(proto.values_json({"nan": float("nan")})[0])
import command
print(command.result("c1", True, {"x": float("nan"), "l": [1, float("inf")]}))
print(frame(3, [(1767225600000, '"button","data":' + proto.values_json({}, allow_empty=True)[0], True)]))
"""
    )
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


def test_ring_in_bytes_drops_the_oldest_unpinned_and_counts(tmp_path: Path) -> None:
    script = """
from ring import Ring, HDR
def texts(r):
    out, p = [], r.head
    while p < r.tail:
        nxt, flags, ts, a, b = r.record(p)
        out.append(str(bytes(r.mv[a:b]), "utf-8"))
        p = nxt
    return out
r = Ring(256)                      # 256 bytes: 8 records of HDR + 21 bytes
for i in range(10):
    r.put(0, i, "%021d" % i)
print(len(r), r.dropped, texts(r)[0][-1], texts(r)[-1][-1])
r.pin(2 * (HDR + 21), 2)           # the two oldest are in a frame in flight
for i in range(10, 14):
    r.put(0, i, "%021d" % i)
print(len(r), r.dropped, [t[-2:] for t in texts(r)])
r.release(2 * (HDR + 21), 2)       # acked
print(len(r), r.npinned, r.pinned, r.dropped)
r.put(0, 14, "%021d" % 14)
r.put(0, 15, "%021d" % 15)         # full again, without a drop
r.pin(len(r) * (HDR + 21), len(r)) # everything in flight: a new record is the one lost
print(r.put(0, 99, "%021d" % 99), r.dropped, len(r), texts(r)[-1][-2:])
print(r.put(0, 1, "x" * 100))      # larger than a quarter of the ring: refused, counted
print(r.dropped)
"""
    rc, out, err = asyncio.run(run_script(tmp_path, script))
    assert rc == 0, out + err
    assert out.splitlines() == [
        "8 2 2 9",
        "8 6 ['02', '03', '08', '09', '10', '11', '12', '13']",
        "6 0 0 6",
        "False 7 8 15",
        "False",
        "8",
    ]


def test_clock_conversion_survives_tick_wraparound(tmp_path: Path) -> None:
    # Boards wrap ticks_ms at 2**30; every conversion goes through ticks_diff.
    script = """
import time
from outbox import Clock
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
