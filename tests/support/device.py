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
