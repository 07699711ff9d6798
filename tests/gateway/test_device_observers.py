"""The device plane's observers, against a real ``DeviceServer`` in this process.

A real websockets server on a free port, a real SQLite store and group
committer, real client connections; the observers record what they hear.
Presence rule (docs/protocol.md, section 3): a connection that a newer one
replaced closes without reporting the device offline.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from gateway import store
from gateway.config import DeviceSettings
from gateway.device.server import DEVICE_PATH, DeviceServer, DeviceSession
from gateway.store import registry
from gateway.store.writer import GroupCommitter
from iotgw_common.protocol import Hello, Result
from tests.support.device import ScriptedDevice


class Recorder:
    """A ``SessionObserver`` and a presence observer that log every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def session_ready(self, session: DeviceSession, hello: Hello) -> None:
        self.calls.append(("ready", session.peer, hello.stream))

    def result_received(self, session: DeviceSession, result: Result) -> None:
        self.calls.append(("result", session.peer, result.id, result.ok))

    def session_closed(self, session: DeviceSession) -> None:
        self.calls.append(("closed", session.peer))

    def presence(self, device_id: int, name: str, online: bool, peer: str | None) -> None:
        self.calls.append(("online" if online else "offline", name, peer))


@asynccontextmanager
async def device_plane(tmp_path: Path) -> AsyncIterator[tuple[str, str, Recorder]]:
    """A running device server with one device; yields (url, token, recorder)."""
    path = tmp_path / "store.sqlite3"
    write_conn = store.connect(path)
    read_conn = store.connect(path)
    token = registry.add_device(write_conn, "obs-1")
    committer = GroupCommitter(write_conn)
    committer.start()
    server = DeviceServer(DeviceSettings(host="127.0.0.1", port=0), read_conn, committer)
    recorder = Recorder()
    server.observers.append(recorder)
    server.presence_observers.append(recorder.presence)
    await server.start()
    try:
        yield f"ws://127.0.0.1:{server.port}{DEVICE_PATH}", token, recorder
    finally:
        await server.stop()
        await committer.stop()
        read_conn.close()
        write_conn.close()


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def run(test: Callable[[Path], Any]) -> Callable[[Path], None]:
    def wrapper(tmp_path: Path) -> None:
        asyncio.run(asyncio.wait_for(test(tmp_path), 30))

    wrapper.__name__ = test.__name__
    return wrapper


@run
async def test_ready_result_and_close_reach_the_observers_then_presence(tmp_path: Path) -> None:
    async with device_plane(tmp_path) as (url, token, rec):
        async with ScriptedDevice(url, token, stream="s1") as dev:
            await dev.hello()
            await until(lambda: len(rec.calls) >= 2, "ready and online")
            peer = rec.calls[0][1]
            assert rec.calls == [("ready", peer, "s1"), ("online", "obs-1", peer)]
            await dev.send(json.dumps({"type": "result", "id": "c1", "ok": True}))
            await until(lambda: len(rec.calls) >= 3, "the result")
        await until(lambda: len(rec.calls) >= 5, "closed and offline")
        assert rec.calls[2:] == [("result", peer, "c1", True), ("closed", peer), ("offline", "obs-1", None)]


@run
async def test_a_replaced_connection_closes_without_reporting_offline(tmp_path: Path) -> None:
    async with device_plane(tmp_path) as (url, token, rec), ScriptedDevice(url, token, stream="s1") as first:
        await first.hello()
        async with ScriptedDevice(url, token, stream="s1") as second:
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await first.next()
            assert info.value.rcvd is not None and info.value.rcvd.code == 4000
            await second.hello()
            await until(lambda: len(rec.calls) >= 5, "the second connection's online")
            one, two = rec.calls[0][1], rec.calls[3][1]
            assert rec.calls == [
                ("ready", one, "s1"),
                ("online", "obs-1", one),
                ("closed", one),  # no offline: the second connection holds the device
                ("ready", two, "s1"),
                ("online", "obs-1", two),
            ]
        await until(lambda: len(rec.calls) >= 7, "offline")
        assert rec.calls[5:] == [("closed", two), ("offline", "obs-1", None)]


@run
async def test_a_connection_without_hello_is_closed_but_never_online(tmp_path: Path) -> None:
    async with device_plane(tmp_path) as (url, token, rec):
        async with ScriptedDevice(url, token) as dev:
            await dev.send("not json")
            assert (await dev.next())["code"] == "invalid_json"
        await until(lambda: len(rec.calls) >= 1, "closed")
        await asyncio.sleep(0.05)
        assert [call[0] for call in rec.calls] == ["closed"]
