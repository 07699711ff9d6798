"""The firmware (main.py, unix port, simulated sensors) against a small gateway played by the test.

The test's `websockets` server speaks protocol v1 frame by frame, so that it
can do what a real gateway only does on a bad day: lose unacked frames, close
with 4000-range codes, refuse a frame, send commands with past deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from iotgw_common.protocol import decode_device_message
from tests.firmware.mp import FIRMWARE, Firmware, base_config


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


class Conn:
    """One firmware connection as the scripted gateway sees it."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.hello: dict[str, Any] = {}
        self.received: list[dict[str, Any]] = []
        self.texts: dict[int, str] = {}

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        text = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(text, str)
        decode_device_message(text)  # everything the firmware sends is valid for the gateway
        message = json.loads(text)
        self.received.append(message)
        if "seq" in message:
            self.texts[message["seq"]] = text
        return message

    async def welcome(self, last_seq: int = 0, server_time: int | None = None, **settings: Any) -> None:
        self.hello = await self.next()
        assert self.hello["type"] == "hello"
        await self.send({
            "type": "welcome", "device": "fw-test", "server_time": now_ms() if server_time is None else server_time,
            "last_seq": last_seq, "settings": settings,
            "limits": {"max_frame_bytes": 65536, "max_samples": 500, "max_values": 64,
                       "max_string_length": 256, "max_clock_skew_ms": 300000},
        })  # fmt: skip

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))


async def serve_firmware(
    tmp_path: Path,
    script: Callable[[Conn, int], Awaitable[None]],
    config: dict[str, Any] | None = None,
    *,
    stop_when_done: bool = False,
) -> tuple[Firmware, list[Conn]]:
    """Serve ``script(conn, index)`` for each firmware connection while the firmware runs.

    Returns when the firmware exits (exit_when_drained configs), or with
    stop_when_done, as soon as the script returns for the first connection.
    """
    conns: list[Conn] = []
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        conn = Conn(ws)
        conns.append(conn)
        try:
            await script(conn, len(conns) - 1)
            done.set()
        except ConnectionClosed:
            pass

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        cfg = base_config(f"ws://127.0.0.1:{port}/v1/device")
        cfg.update(config or {})
        fw = Firmware(tmp_path, cfg).start()
        try:
            while fw.proc is not None and fw.proc.poll() is None and not (stop_when_done and done.is_set()):
                await asyncio.sleep(0.05)
        finally:
            fw.stop()
    return fw, conns


# -- commands --------------------------------------------------------------------------------


def test_hello_then_commands_are_run_and_answered(tmp_path: Path) -> None:
    results: dict[str, dict[str, Any]] = {}

    async def script(conn: Conn, index: int) -> None:
        await conn.welcome()
        if index:
            await asyncio.sleep(10)  # a reconnect after the test's close: stay quiet
            return
        now = now_ms()
        commands = [
            ("c1", "ping", {}, 0),
            ("c2", "set", {"target": "led", "value": True}, now + 10_000),
            ("c3", "toggle", {"target": "led"}, 0),
            ("c4", "set", {"output": "fan", "value": 0.25}, 0),  # output: target's deprecated name
            ("c5", "set", {"target": "fan", "value": 2}, 0),
            ("c6", "reboot", {}, 0),
            ("c7", "ping", {}, now - 1000),
            ("c8", "read_now", {}, 0),
            ("c9", "set", {"target": "relay9", "value": True}, 0),
            ("c3", "toggle", {"target": "led"}, 0),  # redelivered: answered, not run again
            ("c10", "set_interval", {"seconds": 0.5}, 0),  # under the 1 s floor (min_interval_s)
            ("c11", "set_interval", {"seconds": 2}, 0),
        ]
        for cid, name, args, deadline in commands:
            await conn.send({"type": "command", "id": cid, "name": name, "args": args, "deadline": deadline})
        answered = 0
        while answered < len(commands):
            message = await conn.next()
            if message["type"] == "result":
                answered += 1
                results.setdefault(message["id"], message)
                results[message["id"] + "#last"] = message
            elif message["type"] == "readings":
                await conn.send({"type": "ack", "seq": message["seq"]})
        await conn.ws.close(1000)

    fw, conns = run(serve_firmware(tmp_path, script, {"interval_s": 1}, stop_when_done=True))
    hello = conns[0].hello
    assert re.fullmatch(r"fw-[0-9a-f]{16}", hello["stream"])
    assert hello["agent"].startswith("iotgw-fw/")
    assert hello["protocol"] == 1
    assert {c["name"] for c in hello["commands"]} == {
        "ping",
        "set",
        "toggle",
        "blink",
        "read_now",
        "set_interval",
        "ota",
    }
    assert {s["metric"] for s in hello["sensors"]} == {"n", "temperature", "humidity"}
    assert isinstance(hello["info"]["mem_free"], int) and hello["info"]["mem_free"] > 0
    assert hello["info"]["outputs"] == "led:output,fan:pwm_led"  # config types digital, pwm

    assert results["c1"]["value"] == {"pong": True, "actuators": {"led": False, "fan": 0.0}}
    assert results["c2"]["ok"] is True and results["c2"]["value"]["value"] is True
    assert results["c3"]["value"]["value"] is False
    assert results["c3#last"] == results["c3"]
    assert results["c4"]["value"] == {"target": "fan", "type": "pwm_led", "value": 0.25, "pin": None,
                                      "pin_state": 0.25}  # fmt: skip
    assert results["c5"]["ok"] is False and "level from 0 to 1" in results["c5"]["error"]
    assert results["c6"] == {"type": "result", "id": "c6", "ok": False, "error": "unknown command: reboot"}
    assert results["c7"] == {
        "type": "result",
        "id": "c7",
        "ok": False,
        "error": "deadline passed before the command ran",
    }
    assert results["c8"]["ok"] is True and {"n", "temperature", "humidity"} <= set(results["c8"]["value"])
    assert results["c9"]["ok"] is False and "relay9" in results["c9"]["error"]
    assert results["c10"] == {  # "NAME failed: Type: message", as the agent says it
        "type": "result", "id": "c10", "ok": False,
        "error": "set_interval failed: ValueError: seconds must be between 1 and 86400",
    }  # fmt: skip
    assert results["c11"] == {"type": "result", "id": "c11", "ok": True, "value": 2}
    # led: set True, toggled once (the redelivered toggle did not run again).
    assert [m.group(1) for m in fw.find(r"^OUTPUT led (\w+)")] == ["True", "False"]


# -- buffering, acks and resend (docs/protocol.md, steps 2-4) -------------------------------------------


def test_unacked_frames_are_resent_in_order_after_a_reconnect(tmp_path: Path) -> None:
    total = 60
    clock_offset = 123_456  # the gateway's clock, not the host's, stamps the samples
    stored: dict[int, dict[str, Any]] = {}

    async def script(conn: Conn, index: int) -> None:
        if index == 0:
            await conn.welcome(server_time=now_ms() + clock_offset)
            while len([m for m in conn.received if m["type"] == "readings"]) < 6:
                await conn.next()
            await conn.send({"type": "ack", "seq": 2})
            # a barrier, not a pause: the firmware answers a ping in the read loop that takes in the ack
            # (link.py _reader), so once the pong is back the ack has been handled
            await asyncio.wait_for(await conn.ws.ping(), 10)
            for seq in (1, 2, 3):  # 3 "stored" but never acked: welcome.last_seq says so
                stored[seq] = json.loads(conn.texts[seq])
            await conn.ws.close(1012, "restart")
            return
        await conn.welcome(last_seq=3, server_time=now_ms() + clock_offset)
        assert conn.hello["last_acked"] == 2
        assert conn.hello["stream"] == conns_seen[0].hello["stream"]  # same boot, same stream
        while True:
            message = await conn.next(timeout=15)
            if message["type"] in ("readings", "event"):
                assert message["seq"] not in stored
                stored[message["seq"]] = message
                await conn.send({"type": "ack", "seq": message["seq"]})

    conns_seen: list[Conn] = []

    async def tracking(conn: Conn, index: int) -> None:
        conns_seen.append(conn)
        await script(conn, index)

    config = {
        "interval_s": 0.02,
        "batch_samples": 2,
        "window": 8,
        "sample_limit": total,
        "exit_when_drained": True,
    }
    fw, conns = run(serve_firmware(tmp_path, tracking, config))
    assert fw.proc is not None and fw.proc.returncode == 0, fw.tail()
    assert len(conns) == 2
    first, second = conns
    resent = [m["seq"] for m in second.received if m["type"] == "readings"]
    assert resent[0] == 4 and resent == sorted(resent), resent
    for seq in range(4, 7):  # frames sent before the drop came again, byte for byte
        assert second.texts[seq] == first.texts[seq]
    # Every sample exactly once, stamped with the gateway's clock.
    taken = fw.samples()
    numbers = [s["values"]["n"] for seq in sorted(stored) for s in stored[seq]["samples"]]
    assert numbers == [float(n) for n in range(1, total + 1)]
    skews = []
    for seq in stored:
        for sample in stored[seq]["samples"]:
            skews.append(sample["ts"] - taken[int(sample["values"]["n"])] - clock_offset)
    assert max(abs(s) for s in skews) < 250, skews
    assert fw.wait_line(r"^DRAINED (\d+) buffered=0 dropped=0").group(1) == str(total)


def test_a_refused_frame_is_logged_dropped_and_counted(tmp_path: Path) -> None:
    statuses: list[dict[str, Any]] = []

    async def script(conn: Conn, index: int) -> None:
        await conn.welcome()
        if index:
            await asyncio.sleep(10)  # a reconnect after the test's close: stay quiet
            return
        refused = None
        while not statuses or statuses[-1]["dropped"] == 0:
            message = await conn.next()
            if message["type"] == "readings" and refused is None:
                refused = message
                await conn.send({"type": "error", "code": "bad_value", "detail": "test says no",
                                 "seq": message["seq"]})  # fmt: skip
            elif message["type"] == "readings":
                await conn.send({"type": "ack", "seq": message["seq"]})
            elif message["type"] == "status":
                statuses.append(message)
        assert refused is not None
        assert statuses[-1]["dropped"] == len(refused["samples"])
        await conn.ws.close(1000)

    fw, _ = run(serve_firmware(tmp_path, script, {"interval_s": 0.2}, stop_when_done=True))
    assert fw.find(r"LINK gateway error bad_value seq=1: test says no")


# -- close codes (docs/protocol.md, "Device behaviour on close") ------------------------------------


@pytest.mark.parametrize(
    ("code", "low", "high"),
    [
        pytest.param(1012, 0, 500, id="1012-backoff"),  # cap_s 0.5 in the test config
        pytest.param(1001, 0, 500, id="1001-backoff"),
        pytest.param(4000, 1500, 1600, id="4000-replaced"),  # replaced_s 1.5 (+ jitter <= base)
        pytest.param(4001, 3000, 3000, id="4001-long"),  # long_s 3
        pytest.param(4003, 3000, 3000, id="4003-long"),
        pytest.param(4004, 3000, 3000, id="4004-long"),
        pytest.param(1008, 1500, 1500, id="1008-policy"),
    ],
)
def test_close_code_sets_the_reconnect_delay(tmp_path: Path, code: int, low: int, high: int) -> None:
    async def script(conn: Conn, index: int) -> None:
        await conn.welcome()
        await conn.ws.close(code, "scripted")

    async def scenario() -> Firmware:
        async with serve(lambda ws: script(Conn(ws), 0), "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            with Firmware(tmp_path, base_config(f"ws://127.0.0.1:{port}/v1/device", interval_s=1)) as fw:
                await fw.await_line(r"^RECONNECT in \d+ ms")
                return fw

    fw = run(scenario())
    delay = int(fw.wait_line(r"^RECONNECT in (\d+) ms").group(1))
    assert low <= delay <= high, fw.tail()
    if code == 4000:
        assert fw.find(r"two devices may share a token")


async def _sessions_closed_with_1012(
    tmp_path: Path, sessions: int, up_s: float, stable_s: float
) -> list[int]:
    """Welcome ``sessions`` connections, close each after ``up_s`` with 1012 (the backoff path);
    -> the firmware's reconnect delays (ms), base 50 ms, cap 60 s."""
    conns = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal conns
        conns += 1
        index = conns - 1
        with contextlib.suppress(ConnectionClosed):
            await Conn(ws).welcome()
            if index + 1 < sessions:
                await asyncio.sleep(up_s)
                await ws.close(1012, "scripted restart")
            else:
                await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        backoff = {"base_s": 0.05, "cap_s": 60, "replaced_s": 1.5, "long_s": 3, "stable_s": stable_s}
        config = base_config(f"ws://127.0.0.1:{port}/v1/device", interval_s=1, backoff=backoff)
        with Firmware(tmp_path, config) as fw:
            while len(fw.find(r"^LINK welcome ")) < sessions:  # run() bounds the wait at 60 s
                assert fw.proc is not None and fw.proc.poll() is None, fw.tail()
                await asyncio.sleep(0.05)
    delays = [int(m.group(1)) for m in fw.find(r"^RECONNECT in (\d+) ms")]
    assert len(delays) == sessions - 1, fw.tail()
    return delays


def test_a_session_that_stayed_up_starts_the_backoff_over(tmp_path: Path) -> None:
    # Each session is up 0.6 s, longer than stable_s (0.3 s): every reconnect waits at most the
    # base delay (full jitter: 0..50 ms). The supervisor used to miss that a session had worked
    # (its end cleared the flag first), so the delay grew with every session for good, up to
    # 60 s on a board: a minute of buffering on every gateway restart after the first few.
    delays = run(_sessions_closed_with_1012(tmp_path, sessions=6, up_s=0.6, stable_s=0.3))
    assert all(d <= 50 for d in delays), delays


def test_sessions_dropped_right_after_the_welcome_keep_backing_off(tmp_path: Path) -> None:
    # A gateway that accepts and drops at once must not be hammered at the base delay: sessions
    # shorter than stable_s (10 s) count as failed attempts, so the ceiling doubles each time.
    delays = run(_sessions_closed_with_1012(tmp_path, sessions=8, up_s=0, stable_s=10))
    assert all(d <= 50 << attempt for attempt, d in enumerate(delays)), delays
    # Seven draws all under the base delay: chance 2**-21 if the ceiling really doubles.
    assert max(delays) > 50, delays


def test_http_401_waits_the_long_delay(tmp_path: Path) -> None:
    async def scenario() -> Firmware:
        async with serve(
            lambda ws: ws.close(),
            "127.0.0.1",
            0,
            process_request=lambda conn, request: conn.respond(401, "unknown device token\n"),
        ) as server:
            port = server.sockets[0].getsockname()[1]
            with Firmware(tmp_path, base_config(f"ws://127.0.0.1:{port}/v1/device", interval_s=1)) as fw:
                await fw.await_line(r"^RECONNECT in \d+ ms")
                return fw

    fw = run(scenario())
    assert fw.find(r"LINK handshake failed: server answered HTTP 401")
    assert int(fw.wait_line(r"^RECONNECT in (\d+) ms").group(1)) == 3000


def test_the_example_config_runs_on_the_unix_port_with_simulated_drivers(tmp_path: Path) -> None:
    example = json.loads((FIRMWARE / "config.example.json").read_text())
    hellos: list[dict[str, Any]] = []

    async def scenario() -> None:
        async def handler(ws: ServerConnection) -> None:
            conn = Conn(ws)
            await conn.welcome()
            hellos.append(conn.hello)
            await conn.ws.close(1000)

        async with serve(handler, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            example["url"] = f"ws://127.0.0.1:{port}/v1/device"
            with Firmware(tmp_path, example) as fw:
                await fw.await_line(r"^LINK closed 1000")

    run(scenario())
    hello = hellos[0]
    assert hello["device"] == example["device"]
    metrics = {s["metric"] for s in hello["sensors"]}
    assert metrics == {"temperature", "humidity", "soil_temp", "light"}  # an ESP32 example: no rp2_temp
    assert {"set", "toggle", "blink", "ping", "read_now", "set_interval", "ota"} == {
        c["name"] for c in hello["commands"]
    }
    assert hello["info"]["outputs"] == "led:output,fan:pwm_led"  # its types digital, pwm
