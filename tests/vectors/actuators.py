"""The runner of actuators.json, the actuator vocabulary's shared vectors.

One runner for both devices, so that the agent and the firmware are held to the same
checks: tests/agent/test_actuator_vectors.py and tests/firmware/test_actuator_vectors.py
each give it a device that sends a ``command`` through the device protocol (a real
WebSocket, the real device behind it) and reports how each output's pin changed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.server import Server, ServerConnection, serve

from iotgw_common.protocol import Ack, Command, Welcome, decode_device_message, encode_text

VECTORS = json.loads(Path(__file__).with_name("actuators.json").read_text(encoding="utf-8"))
OUTPUTS: list[dict[str, Any]] = VECTORS["outputs"]
DEADLINE_S = 10.0
"""Longest wait for a result or for a change an output is expected to make."""


class Device(Protocol):
    async def command(self, cid: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Send ``command`` (id ``cid``), return its ``result`` message as plain JSON."""
        ...

    def changes(self, output: str) -> list[Any]:
        """The logical values ``output`` has changed to so far (its pin read back), in order."""
        ...


def same(a: Any, b: Any) -> bool:
    """Equal, types included (JSON-wise): True is not 1 nor 1.0, 1.0 is 1 (a JSON number)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def check_hello(commands: dict[str, list[str]], info: dict[str, Any]) -> None:
    """The device declares its outputs and the actuator commands' arguments as the vectors say."""
    check_outputs(info)
    for name, args in VECTORS["hello"]["commands"].items():
        assert sorted(commands.get(name, ["(not declared)"])) == sorted(args), (name, commands.get(name))


def check_outputs(info: dict[str, Any]) -> None:
    """``info.outputs`` is the vectors'. Also for a status's info: the gateway's registry keeps
    the info of the last hello or status, so a status repeats the outputs."""
    assert info.get("outputs") == VECTORS["hello"]["outputs"], info


async def run_vectors(device: Device) -> list[str]:
    """Run every vector in order; returns their names (an AssertionError names the failing one)."""
    ids = itertools.count(1)
    names = [o["name"] for o in OUTPUTS]
    done = []
    for vector in VECTORS["vectors"]:
        where = f"vector {vector['name']}"
        before = {n: len(device.changes(n)) for n in names}
        result = await device.command(f"v{next(ids)}", vector["command"], dict(vector["args"]))
        expect = vector["result"]
        assert result["ok"] is expect["ok"], (where, result)
        if not expect["ok"]:
            assert result.get("error") == expect["error"], (where, result.get("error"), expect["error"])
        elif "value_has" in expect:
            has = {k: result["value"].get(k) for k in expect["value_has"]}
            assert same(has, expect["value_has"]), (where, has, expect["value_has"])
        else:
            assert same(result.get("value"), expect["value"]), (where, result.get("value"), expect["value"])
        changes = vector.get("changes")
        if changes is not None:
            deadline = time.monotonic() + DEADLINE_S
            for n, values in changes.items():
                while len(device.changes(n)) - before[n] < len(values) and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                seen = device.changes(n)[before[n] :]
                assert same(seen[: len(values)], values), (where, n, seen, values)
        quiet = vector.get("quiet_ms")
        if quiet:
            marks = {n: len(device.changes(n)) for n in names}
            end = time.monotonic() + quiet / 1000
            while time.monotonic() < end:  # a window in which nothing may happen: watched, not slept
                moved = {
                    n: device.changes(n)[marks[n] :] for n in names if len(device.changes(n)) != marks[n]
                }
                assert not moved, (where, "changed after it should have rested", moved)
                await asyncio.sleep(0.01)
        pong = await device.command(f"v{next(ids)}", "ping", {})
        assert pong["ok"] is True and pong["value"]["pong"] is True, (where, pong)
        state = vector.get("state") or {}
        got_state = {n: pong["value"]["actuators"].get(n) for n in state}
        assert same(got_state, state), (where, "ping's actuators", got_state, state)
        if changes is not None and (quiet or vector["command"] != "blink"):
            for n in names:  # nothing else changed, and a named output no more than said
                seen = device.changes(n)[before[n] :]
                assert same(seen, changes.get(n, [])), (where, n, "changed to", seen, changes.get(n, []))
        done.append(vector["name"])
    return done


class HandGateway:
    """A real WebSocket server playing the gateway for one device: it welcomes the device, acks
    its readings and events, sends it commands and hands back their results.

    ``async with HandGateway() as gw``; start the device on ``gw.url``, ``await gw.connected()``,
    then ``await gw.command(...)``. Every frame the device sends must decode with the codec.
    """

    def __init__(self) -> None:
        self.url = ""
        self.hello: dict[str, Any] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.statuses: list[dict[str, Any]] = []
        self._ws: ServerConnection | None = None
        self._server: Server | None = None

    async def __aenter__(self) -> HandGateway:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/v1/device"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        text = await ws.recv()
        assert isinstance(text, str)
        decode_device_message(text)
        self.hello = json.loads(text)
        assert self.hello["type"] == "hello", self.hello
        await ws.send(
            encode_text(Welcome(device="vectors", server_time=time.time_ns() // 1_000_000, last_seq=0))
        )
        self._ws = ws
        async for text in ws:
            assert isinstance(text, str)
            decode_device_message(text)
            message = json.loads(text)
            if "seq" in message:
                await ws.send(encode_text(Ack(seq=message["seq"])))
            elif message["type"] == "result":
                self.results[message["id"]] = message
            elif message["type"] == "status":
                self.statuses.append(message)

    async def connected(self) -> dict[str, Any]:
        """The device's hello, once it has been welcomed."""
        await _until(lambda: self._ws is not None, "the device's hello")
        return self.hello

    async def status(self) -> dict[str, Any]:
        """The first ``status`` the device sent (waited for)."""
        await _until(lambda: self.statuses, "a status")
        return self.statuses[0]

    async def command(self, cid: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
        assert self._ws is not None
        await self._ws.send(encode_text(Command(id=cid, name=name, args=args)))
        await _until(lambda: cid in self.results, f"the result of {name} {args} ({cid})")
        return self.results[cid]


async def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE_S} s"
        await asyncio.sleep(0.01)


def declared_args(hello: dict[str, Any]) -> dict[str, list[str]]:
    """{command name: its argument names} from a hello."""
    return {c["name"]: list(c.get("args") or {}) for c in hello.get("commands", [])}


def logical(output: dict[str, Any], pin_state: Any) -> Any:
    """The logical value of an output whose pin reads ``pin_state`` (active low inverts on/off)."""
    if output["kind"] == "pwm_led":
        return float(pin_state)
    return bool(pin_state) is bool(output["active_high"])
