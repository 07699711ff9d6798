"""Failure isolation: nothing one device sends can fail, delay or close another's session.

A shared group commit that fails on what one device sent (a value SQLite cannot hold, a row
a constraint refuses) is retried apart (gateway/store/batches.py): every other device's
frames in it are stored and acknowledged, and their sessions stay open. Tested in-process:
the group committer with items that fail, and a real ``DeviceServer`` whose store refuses
one device's rows (a trigger), with every device's frame in the same commit.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from websockets.exceptions import ConnectionClosed

from gateway import store
from gateway.config import DeviceSettings
from gateway.device.server import DEVICE_PATH, DeviceServer
from gateway.store import registry
from gateway.store.writer import GroupCommitter
from iotgw_common.protocol.messages import Readings, Sample
from tests.support.device import ScriptedDevice
from tests.support.waiting import async_wait_until

TIMEOUT = 15.0
T0 = 1_764_000_000_000


class Sink:
    def __init__(self) -> None:
        self.committed: list[int] = []
        self.failed: list[BaseException] = []

    def on_committed(self, seq: int) -> None:
        self.committed.append(seq)

    def on_commit_failed(self, error: BaseException) -> None:
        self.failed.append(error)


class HeldWriter:
    """Keeps the writer thread busy until released, so what is submitted meanwhile is one batch."""

    def __init__(self, committer: GroupCommitter) -> None:
        self._entered, self._release = threading.Event(), threading.Event()
        self._done = committer.call(self._hold)

    def _hold(self, _: sqlite3.Connection) -> None:
        self._entered.set()
        self._release.wait(TIMEOUT)

    async def __aenter__(self) -> HeldWriter:
        assert await asyncio.to_thread(self._entered.wait, TIMEOUT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        await self._done


def frame(seq: int, value: float) -> Readings:
    return Readings(seq=seq, samples=[Sample(ts=T0 + seq, values={"v": value})])


def add(conn: sqlite3.Connection, *names: str) -> list[int]:
    registry.add_devices(conn, list(names))
    return [registry.find_by_name(conn, name).id for name in names]  # type: ignore[union-attr]


def test_metadata_sqlite_cannot_hold_is_dropped_alone(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    conn = store.connect(path)
    a, b, c = add(conn, "a", "b", "c")

    async def main() -> dict[int, Sink]:
        committer = GroupCommitter(store.connect(path))
        committer.start()
        sinks = {d: Sink() for d in (a, b, c)}
        async with HeldWriter(committer):
            committer.submit(sinks[a], a, "s", frame(1, 1.0))
            committer.submit_meta(b, buffered=2**70, dropped=3)  # a status frame's counter, too large
            committer.submit(sinks[b], b, "s", frame(1, 2.0))
            committer.submit_meta(c, buffered=5)
            committer.submit(sinks[c], c, "s", frame(1, 3.0))
        await async_wait_until(
            lambda: all(s.committed or s.failed for s in sinks.values()), TIMEOUT, "every frame"
        )
        await committer.stop()
        return sinks

    sinks = asyncio.run(main())
    assert {d: (s.committed, s.failed) for d, s in sinks.items()} == {
        a: ([1], []),
        b: ([1], []),
        c: ([1], []),
    }
    rows = conn.execute("SELECT device_id, seq FROM readings ORDER BY device_id").fetchall()
    assert rows == [(a, 1), (b, 1), (c, 1)]
    buffered = dict(conn.execute("SELECT id, buffered FROM devices").fetchall())
    assert buffered == {a: 0, b: 0, c: 5}  # b's bad metadata is the only thing lost
    conn.close()


def test_a_frame_that_fails_alone_fails_only_its_device(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    conn = store.connect(path)
    ids = add(conn, *(f"d{i}" for i in range(9)))
    poisoned = ids[4]
    conn.execute(
        f"CREATE TRIGGER poison BEFORE INSERT ON readings WHEN NEW.device_id = {poisoned} "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )

    async def main() -> dict[int, Sink]:
        committer = GroupCommitter(store.connect(path))
        committer.start()
        sinks = {d: Sink() for d in ids}
        async with HeldWriter(committer):
            for seq in (1, 2):
                for d in ids:
                    committer.submit(sinks[d], d, "s", frame(seq, float(d)))
        await async_wait_until(
            lambda: all(len(s.committed) + len(s.failed) == 2 for s in sinks.values()), TIMEOUT, "every frame"
        )
        await committer.stop()
        return sinks

    sinks = asyncio.run(main())
    assert [len(sinks[poisoned].failed), sinks[poisoned].committed] == [2, []]
    assert all(sinks[d].committed == [1, 2] and not sinks[d].failed for d in ids if d != poisoned)
    stored = conn.execute("SELECT device_id, count(*) FROM readings GROUP BY device_id").fetchall()
    assert dict(stored) == {d: 2 for d in ids if d != poisoned}
    positions = dict(conn.execute("SELECT id, last_seq FROM devices").fetchall())
    assert positions == {d: 0 if d == poisoned else 2 for d in ids}
    conn.close()


@asynccontextmanager
async def device_plane(
    path: Path, names: list[str]
) -> AsyncIterator[tuple[str, dict[str, str], GroupCommitter]]:
    write_conn, read_conn = store.connect(path), store.connect(path)
    tokens = registry.add_devices(write_conn, names)
    committer = GroupCommitter(write_conn)
    committer.start()
    server = DeviceServer(DeviceSettings(host="127.0.0.1", port=0), read_conn, committer)
    await server.start()
    try:
        yield f"ws://127.0.0.1:{server.port}{DEVICE_PATH}", tokens, committer
    finally:
        await server.stop()
        await committer.stop()
        read_conn.close()
        write_conn.close()


def test_sessions_of_other_devices_stay_open_when_one_devices_rows_fail(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    names = [f"iso-{i}" for i in range(5)]

    async def main() -> tuple[list[int], int | None, list[bool]]:
        async with device_plane(path, names) as (url, tokens, committer):
            devices = [ScriptedDevice(url, tokens[name], stream=name) for name in names]
            for dev in devices:
                await dev.__aenter__()
                await dev.hello()
                await dev.readings(1, {"v": 1.0})
                await dev.wait_ack(1)  # the metric names are known now: frame 2 goes straight in
            poisoned = registry.find_by_name(committer._conn, "iso-2")
            assert poisoned is not None
            committer._conn.execute(
                f"CREATE TRIGGER poison BEFORE INSERT ON readings WHEN NEW.device_id = {poisoned.id} "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
            async with HeldWriter(committer):
                for dev in devices:
                    await dev.readings(2, {"v": 2.0})
                await async_wait_until(lambda: committer.pending_samples == 5, TIMEOUT, "one shared batch")
            for i, dev in enumerate(devices):
                if i != 2:
                    await dev.wait_ack(2)
            with_code: int | None = None
            try:
                await devices[2].next(TIMEOUT)
            except ConnectionClosed as closed:
                with_code = closed.rcvd.code if closed.rcvd is not None else None
            for dev in devices:  # the others still answer: their sessions are open
                if dev is not devices[2]:
                    await dev.readings(3, {"v": 3.0})
                    await dev.wait_ack(3)
            still_open = [dev.ws is not None and dev.ws.close_code is None for dev in devices]
            for dev in devices:
                await dev.__aexit__()
            return [dev.acked for dev in devices], with_code, still_open

    acked, poisoned_close, still_open = asyncio.run(asyncio.wait_for(main(), 60))
    assert acked == [3, 3, 1, 3, 3]
    assert poisoned_close == 1011  # only the device whose rows fail is closed (it resends later)
    assert still_open == [True, True, False, True, True]
