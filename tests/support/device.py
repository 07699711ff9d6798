"""A scripted device for tests: speaks protocol v1 frame by frame and records what it hears."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ScriptedDevice:
    """One device connection; ``async with ScriptedDevice(url, token) as dev``.

    ``hello()`` returns the welcome; ``send()`` sends raw text; ``next()`` waits
    for the next gateway message as a dict; ``wait_ack(seq)`` waits for an ack
    covering ``seq`` and returns the errors received meanwhile.
    """

    def __init__(self, url: str, token: str | None, *, stream: str = "test-stream") -> None:
        self.url = url
        self.token = token
        self.stream = stream
        self.ws: ClientConnection | None = None
        self.acked = 0
        self.errors: list[dict[str, Any]] = []

    async def __aenter__(self) -> ScriptedDevice:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token is not None else {}
        self.ws = await connect(self.url, additional_headers=headers, compression=None, max_size=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.ws is not None
        await self.ws.close()

    async def hello(self, **fields: Any) -> dict[str, Any]:
        message = {"type": "hello", "stream": self.stream, "agent": "scripted/1", **fields}
        await self.send(json.dumps(message))
        welcome = await self.next()
        assert welcome["type"] == "welcome", welcome
        self.acked = max(self.acked, welcome["last_seq"])
        return welcome

    async def send(self, text: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(text if isinstance(text, str) else text.decode())

    async def readings(self, seq: int, values: dict[str, Any], ts: int | None = None) -> None:
        sample = {"ts": now_ms() if ts is None else ts, "values": values}
        await self.send(json.dumps({"type": "readings", "seq": seq, "samples": [sample]}))

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        assert self.ws is not None
        message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        if message["type"] == "ack":
            self.acked = max(self.acked, message["seq"])
        elif message["type"] == "error":
            self.errors.append(message)
        return message

    async def wait_ack(self, seq: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.acked < seq:
            await self.next(max(0.01, deadline - time.monotonic()))

    async def wait_error(self, timeout: float = 5.0) -> dict[str, Any]:
        count = len(self.errors)
        deadline = time.monotonic() + timeout
        while len(self.errors) == count:
            await self.next(max(0.01, deadline - time.monotonic()))
        return self.errors[-1]


class StreamingDevice:
    """A device that streams ``total`` frames through gateway crashes, like a real agent.

    It keeps every unacked frame, pipelines up to ``window`` frames, and on any
    disconnect reconnects, drops frames at or below ``welcome.last_seq`` and
    resends the rest in order. ``acked_before_crash`` records the highest ack
    seen before ``mark()`` is called, which the test does right before a kill.
    """

    def __init__(self, url: str, token: str, name: str, total: int, *, window: int = 16,
                 samples_per_frame: int = 1, interval_s: float = 0.0) -> None:  # fmt: skip
        self.url = url
        self.token = token
        self.name = name
        self.total = total
        self.window = window
        self.samples_per_frame = samples_per_frame
        self.interval_s = interval_s  # > 0: a paced device, one new frame every interval_s
        self.unacked: dict[int, str] = {}
        self.next_seq = 1
        self.acked = 0
        self.marked_ack = 0
        self.connections = 0
        self.done = asyncio.Event()

    def mark(self) -> None:
        self.marked_ack = self.acked

    def _make(self, seq: int) -> str:
        base = now_ms()
        samples = [
            {"ts": base + i, "values": {"seq": seq, "i": i, "temp": 20 + (seq % 50) / 10}}
            for i in range(self.samples_per_frame)
        ]
        return json.dumps({"type": "readings", "seq": seq, "samples": samples})

    async def run(self, deadline_s: float = 60.0) -> None:
        stop_at = time.monotonic() + deadline_s
        while self.acked < self.total:
            if time.monotonic() > stop_at:
                raise TimeoutError(f"{self.name}: acked {self.acked} of {self.total}")
            try:
                await self._session()
            except (TimeoutError, OSError, Exception) as exc:  # reconnect on anything
                if self.acked >= self.total:
                    break
                del exc
                await asyncio.sleep(0.05)
        self.done.set()

    async def _session(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with connect(self.url, additional_headers=headers, compression=None, open_timeout=2) as ws:
            self.connections += 1
            await ws.send(json.dumps({"type": "hello", "stream": "stream-" + self.name, "agent": "streamer/1",
                                      "last_acked": self.acked}))  # fmt: skip
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert welcome["type"] == "welcome", welcome
            self._ack(welcome["last_seq"])
            in_flight: list[int] = sorted(self.unacked)
            for seq in in_flight:
                await ws.send(self.unacked[seq])
            sent = in_flight[-1] if in_flight else self.acked
            while self.acked < self.total:
                while self.next_seq <= self.total and self.next_seq - self.acked <= self.window:
                    seq = self.next_seq
                    self.next_seq += 1
                    self.unacked[seq] = self._make(seq)
                    await ws.send(self.unacked[seq])
                    sent = seq
                    if self.interval_s:
                        await asyncio.sleep(self.interval_s)
                message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if message["type"] == "ack":
                    self._ack(message["seq"])
                elif message["type"] == "error":
                    raise AssertionError(f"{self.name}: unexpected error {message} (sent through {sent})")

    def _ack(self, seq: int) -> None:
        for s in [s for s in self.unacked if s <= seq]:
            del self.unacked[s]
        self.acked = max(self.acked, seq)
        self.next_seq = max(self.next_seq, seq + 1)
