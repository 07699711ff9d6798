"""Revocation takes effect (docs/protocol.md, section 11; gateway/device/revocation.py).

Against a real gateway process, with the real CLI writing the store from another process:
``iotgw device remove`` ends the device's session with 4003, ``rotate-token`` with 4005, and
nothing sent after the command returned is stored; the removed device's commands fail;
``iotgw token remove`` ends the operator's live-feed subscriptions (4401) and the API refuses
the token. In-process: frames already queued in the group committer when the device is
removed are refused in the commit (gateway/store/batches.py); ids are never reused, also
across the migration of an older store; the agent waits long after 4005 as after 4003.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from device_agent.buffer import FrameBuffer
from device_agent.commands import CommandRegistry
from device_agent.link import Link, LinkSettings, SessionOutcome
from gateway import store
from gateway.store import registry, schema
from gateway.store.writer import DeviceRevoked, GroupCommitter
from iotgw_common.protocol import Hello
from iotgw_common.protocol.messages import Readings, Sample
from tests.support.device import ScriptedDevice
from tests.support.gateway import GatewayProcess, repo_env
from tests.support.waiting import async_wait_until

TIMEOUT = 15.0


async def iotgw(gw: GatewayProcess, *args: str) -> str:
    """Run the ``iotgw`` CLI on the gateway's store in another process; its stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, "--store", str(gw.store_path),
        env=repo_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


class Streamer:
    """Keeps a device sending a readings frame every few ms and records what comes back."""

    def __init__(self, dev: ScriptedDevice) -> None:
        self.dev = dev
        self.sent = 0
        self.acked = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._send()), asyncio.create_task(self._read())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _send(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while self.close_code is None:
                await self.dev.readings(self.sent + 1, {"n": self.sent + 1})
                self.sent += 1
                await asyncio.sleep(0.005)  # paces the traffic

    async def _read(self) -> None:
        assert self.dev.ws is not None
        try:
            while True:
                message = json.loads(await self.dev.ws.recv())
                if message["type"] == "ack":
                    self.acked = max(self.acked, message["seq"])
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            self.close_code, self.close_reason = exc.rcvd.code, exc.rcvd.reason


def device_id(gw: GatewayProcess, name: str) -> int:
    conn = gw.connect()
    try:
        record = registry.find_by_name(conn, name)
        assert record is not None
        return record.id
    finally:
        conn.close()


def stored_seqs(gw: GatewayProcess, device: int) -> list[int]:
    conn = gw.connect()
    try:
        return [
            row[0]
            for row in conn.execute("SELECT seq FROM readings WHERE device_id = ? ORDER BY id", (device,))
        ]
    finally:
        conn.close()


async def stream_then(
    gw: GatewayProcess, token: str, stream: str, *command: str
) -> tuple[Streamer, int, str]:
    """Stream, run the CLI ``command`` meanwhile, wait for the close; (streamer, seq sent when the
    command returned, its output)."""
    async with ScriptedDevice(gw.device_url, token, stream=stream) as dev:
        await dev.hello()
        streamer = Streamer(dev)
        streamer.start()
        try:
            await async_wait_until(lambda: streamer.acked >= 5, TIMEOUT, "the first acks")
            output = await iotgw(gw, *command)
            sent_when_done = streamer.sent
            await async_wait_until(lambda: streamer.close_code is not None, TIMEOUT, "the gateway to close")
        finally:
            await streamer.stop()
    return streamer, sent_when_done, output


def test_device_remove_ends_the_session_with_4003_and_stores_nothing_after(gw: GatewayProcess) -> None:
    token = gw.add_device("rev-removed")
    ident = device_id(gw, "rev-removed")
    streamer, sent_when_removed, _ = asyncio.run(
        stream_then(gw, token, "r", "device", "remove", "rev-removed")
    )
    assert streamer.close_code == 4003 and "removed" in streamer.close_reason
    seqs = stored_seqs(gw, ident)
    assert seqs == sorted(set(seqs)) and seqs[-1] <= sent_when_removed  # nothing sent later is stored
    assert streamer.acked <= seqs[-1]


def test_rotate_token_ends_the_session_with_4005_and_the_new_token_resumes(gw: GatewayProcess) -> None:
    old = gw.add_device("rev-rotated")
    ident = device_id(gw, "rev-rotated")

    async def scenario() -> tuple[Streamer, int, dict[str, Any], int]:
        streamer, sent, output = await stream_then(gw, old, "rot", "device", "rotate-token", "rev-rotated")
        new = next(word for word in output.split() if word.startswith("iotgw_d_"))
        with pytest.raises(InvalidStatus) as refused:
            async with connect(gw.device_url, additional_headers={"Authorization": f"Bearer {old}"}):
                pass
        async with ScriptedDevice(gw.device_url, new, stream="rot") as dev:
            welcome = await dev.hello()
            await dev.readings(welcome["last_seq"] + 1, {"n": -1})
            await dev.wait_ack(welcome["last_seq"] + 1)
        return streamer, sent, welcome, refused.value.response.status_code

    streamer, sent_when_rotated, welcome, old_status = asyncio.run(scenario())
    assert streamer.close_code == 4005 and "rotated" in streamer.close_reason
    assert old_status == 401
    seqs = stored_seqs(gw, ident)
    assert welcome["last_seq"] == seqs[-2] <= sent_when_rotated  # exact, and nothing later stored
    assert seqs == sorted(set(seqs))


def test_commands_of_a_removed_device_fail_with_a_clear_error(gw: GatewayProcess) -> None:
    gw.add_device("rev-commands")
    operator = gw.add_operator("rev-commander", "control")

    async def scenario() -> dict[str, Any]:
        async with httpx.AsyncClient(
            base_url=gw.api_url, headers={"Authorization": f"Bearer {operator}"}
        ) as api:
            queued = await api.post(
                "/api/v1/devices/rev-commands/commands", json={"name": "ping", "ttl": 600, "wait": False}
            )
            assert queued.status_code == 202, queued.text
            command_id = queued.json()["id"]
            await iotgw(gw, "device", "remove", "rev-commands")

            async def failed() -> dict[str, Any] | None:
                body: dict[str, Any] = (await api.get(f"/api/v1/commands/{command_id}")).json()
                return body if body["state"] == "failed" else None

            return await async_wait_until(failed, TIMEOUT, "the command to fail")

    command = asyncio.run(scenario())
    assert "removed" in command["error"]


def test_token_remove_ends_feed_subscriptions_and_the_api_refuses_it(gw: GatewayProcess) -> None:
    token = gw.add_operator("rev-watcher", "read")
    feed_url = f"ws://127.0.0.1:{gw.api_port}/api/v1/feed"

    async def scenario() -> tuple[int, str, int, int]:
        async with httpx.AsyncClient(
            base_url=gw.api_url, headers={"Authorization": f"Bearer {token}"}
        ) as api:
            assert (await api.get("/api/v1/devices")).status_code == 200
            async with connect(feed_url) as ws:
                await ws.send(json.dumps({"type": "subscribe", "token": token}))
                assert json.loads(await ws.recv())["type"] == "subscribed"
                await iotgw(gw, "token", "remove", "rev-watcher")
                with pytest.raises(ConnectionClosed) as closed:
                    async with asyncio.timeout(TIMEOUT):
                        while True:
                            await ws.recv()
            assert closed.value.rcvd is not None
            status = (await api.get("/api/v1/devices")).status_code
            async with connect(feed_url) as again:  # and it cannot subscribe again
                await again.send(json.dumps({"type": "subscribe", "token": token}))
                with pytest.raises(ConnectionClosed) as refused:
                    await asyncio.wait_for(again.recv(), TIMEOUT)
            assert refused.value.rcvd is not None
            return closed.value.rcvd.code, closed.value.rcvd.reason, status, refused.value.rcvd.code

    code, reason, status, again = asyncio.run(scenario())
    assert code == 4401 and "removed" in reason
    assert status == 401 and again == 4401


# -- in-process: the group committer, the registry, the migration, the agent ------------------


class Sink:
    def __init__(self) -> None:
        self.committed: list[int] = []
        self.failed: list[BaseException] = []

    def on_committed(self, seq: int) -> None:
        self.committed.append(seq)

    def on_commit_failed(self, error: BaseException) -> None:
        self.failed.append(error)


def frame(seq: int) -> Readings:
    return Readings(seq=seq, samples=[Sample(ts=1_764_000_000_000 + seq, values={"n": float(seq)})])


def test_frames_queued_in_the_committer_are_refused_once_the_device_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    cli = store.connect(path)  # another writer, as the CLI is
    registry.add_device(cli, "queued")
    registry.add_device(cli, "bystander")
    ident, other = (registry.find_by_name(cli, n).id for n in ("queued", "bystander"))  # type: ignore[union-attr]
    entered, release = threading.Event(), threading.Event()

    def hold(_: sqlite3.Connection) -> None:
        entered.set()
        release.wait(TIMEOUT)

    async def main() -> tuple[Sink, Sink]:
        committer = GroupCommitter(store.connect(path))
        committer.start()
        sink, bystander = Sink(), Sink()
        committer.admit(ident, registry.revocation_watermark(cli))
        committer.admit(other, registry.revocation_watermark(cli))
        committer.submit(sink, ident, "s", frame(1))
        await async_wait_until(lambda: sink.committed == [1], TIMEOUT, "frame 1")
        held = committer.call(hold)
        assert await asyncio.to_thread(entered.wait, TIMEOUT)
        committer.submit(sink, ident, "s", frame(2))  # queued behind the busy writer
        committer.submit(bystander, other, "s", frame(1))
        registry.remove_device(cli, "queued")
        release.set()
        await held
        await async_wait_until(lambda: sink.failed and bystander.committed, TIMEOUT, "the next commit")
        await committer.stop()
        return sink, bystander

    sink, bystander = asyncio.run(main())
    assert (
        sink.committed == [1]
        and isinstance(sink.failed[0], DeviceRevoked)
        and sink.failed[0].kind == "removed"
    )
    assert bystander.committed == [1] and bystander.failed == []
    rows = cli.execute("SELECT device_id, seq FROM readings ORDER BY id").fetchall()
    assert rows == [(ident, 1), (other, 1)]
    cli.close()


def test_device_ids_are_never_reused(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "store.sqlite3")
    for name in ("a", "b", "c"):
        registry.add_device(conn, name)
    registry.remove_device(conn, "c")  # the newest id, which a plain rowid table hands out again
    registry.add_device(conn, "d")
    ids = {r.name: r.id for r in registry.list_devices(conn)}
    assert ids["d"] == 4
    conn.close()


def test_the_migration_starts_ids_past_every_id_any_table_holds(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    for migration in schema._MIGRATIONS[:3]:
        for statement in migration.split(";"):
            if statement.strip():
                old.execute(statement)
    old.execute("PRAGMA user_version=3")
    old.execute("INSERT INTO devices (id, name, token_hash, created_ms) VALUES (2, 'kept', 'h2', 0)")
    old.execute("INSERT INTO readings (device_id, ts, seq, data) VALUES (9, 0, 1, '{}')")  # a removed one
    old.execute(
        "INSERT INTO commands (id, device_id, name, args, state, sender, created_ms, deadline_ms, expires_ms, "
        "updated_ms) VALUES ('c', 12, 'ping', '{}', 'failed', 'x', 0, 0, 0, 0)"
    )
    old.close()
    conn = store.connect(path)
    assert schema.schema_version(conn) >= 4
    kept = registry.find_by_name(conn, "kept")
    assert kept is not None and kept.id == 2
    registry.add_device(conn, "fresh")
    fresh = registry.find_by_name(conn, "fresh")
    assert fresh is not None and fresh.id == 13
    conn.close()


def test_the_agent_waits_the_configuration_delay_after_4005_as_after_4003(tmp_path: Path) -> None:
    with FrameBuffer(tmp_path / "buffer.sqlite3") as buffer:
        settings = LinkSettings(url="ws://127.0.0.1:1/v1/device", token="t", config_error_delay=300.0)
        link = Link(settings, buffer, lambda: Hello(stream=buffer.stream, agent="test"), CommandRegistry())
        for code in (4003, 4005):
            assert link._delay_after(SessionOutcome(welcomed=True, close_code=code)) >= 300.0
