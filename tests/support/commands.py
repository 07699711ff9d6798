"""Helpers for command and API tests: a device that answers commands, an API client per role."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed

from tests.support.device import ScriptedDevice

Answer = Callable[[dict[str, Any]], dict[str, Any] | None]


def echo(command: dict[str, Any]) -> dict[str, Any] | None:
    """Succeed with the command's name and args."""
    return {"ok": True, "value": {"name": command["name"], "args": command.get("args", {})}}


class AnsweringDevice:
    """A scripted device that declares ``commands`` in hello and answers each command with ``answer``.

    ``answer(command) -> {"ok", "value"?, "error"?}`` or None (no answer). Commands received
    are kept in ``received`` (the raw frames, ``deadline`` included).
    """

    def __init__(self, url: str, token: str, commands: list[str], answer: Answer = echo, *,
                 stream: str = "answering") -> None:  # fmt: skip
        self.device = ScriptedDevice(url, token, stream=stream)
        self.commands = commands
        self.answer = answer
        self.received: list[dict[str, Any]] = []
        self.other: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AnsweringDevice:
        await self.device.__aenter__()
        await self.device.hello(
            commands=[{"name": name, "description": f"test {name}"} for name in self.commands]
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await self._reader
        with contextlib.suppress(Exception):
            await self.device.__aexit__()

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = await self.device.next(timeout=3600)
                if message["type"] != "command":
                    self.other.append(message)
                    continue
                self.received.append(message)
                reply = self.answer(message)
                if reply is not None:
                    await self.device.send(json.dumps({"type": "result", "id": message["id"], **reply}))

    async def wait_received(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"only {len(self.received)} commands received"
            await asyncio.sleep(0.01)


def api(url: str, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=30)


async def wait_state(
    client: httpx.AsyncClient, command_id: str, state: str, timeout: float = 10.0
) -> dict[str, Any]:
    """Poll GET /api/v1/commands/ID until its state is ``state``; the command."""
    deadline = time.monotonic() + timeout
    while True:
        body = (await client.get(f"/api/v1/commands/{command_id}")).json()
        if body["state"] == state:
            return body
        assert time.monotonic() < deadline, f"command {command_id} is {body['state']}, not {state}: {body}"
        await asyncio.sleep(0.05)


async def wait_online(
    client: httpx.AsyncClient, name: str, online: bool = True, timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while (await client.get(f"/api/v1/devices/{name}")).json()["online"] is not online:
        assert time.monotonic() < deadline, f"{name} online is not {online}"
        await asyncio.sleep(0.05)
