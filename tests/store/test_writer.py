"""The group-commit writer (gateway/store/writer.py) in-process, on a real store in a temp dir."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from gateway import store
from gateway.store import readings, registry
from gateway.store.writer import GroupCommitter
from iotgw_common.protocol.messages import Event, Readings, Sample

T = TypeVar("T")
T0 = 1_764_000_000_000
TIMEOUT = 10.0


class Sink:
    """A session as the writer sees it: records what became of each frame, in order."""

    def __init__(self, log: list[str] | None = None) -> None:
        self.committed: list[int] = []
        self.failed: list[BaseException] = []
        self._log = log

    def on_committed(self, seq: int) -> None:
        self.committed.append(seq)
        if self._log is not None:
            self._log.append(f"ack {seq}")

    def on_commit_failed(self, error: BaseException) -> None:
        self.failed.append(error)


class Listener:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.meta: list[tuple[int, dict[str, Any]]] = []

    def committed(self, frames: list[Any]) -> None:
        self.log.append(f"committed {[frame.message.seq for frame in frames]}")

    def device_meta(self, device_id: int, fields: dict[str, Any]) -> None:
        self.meta.append((device_id, fields))


async def until(what: str, probe: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll ``probe`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def with_deadline() -> T:
        return await asyncio.wait_for(main(), 60)

    return asyncio.run(with_deadline())


def add(conn: sqlite3.Connection, name: str) -> int:
    registry.add_device(conn, name)
    found = registry.find_by_name(conn, name)
    assert found is not None
    return found.id


def frame(seq: int, *values: dict[str, bool | float | str]) -> Readings:
    return Readings(seq=seq, samples=[Sample(ts=T0 + seq * 10 + i, values=v) for i, v in enumerate(values)])


def stored_readings(conn: sqlite3.Connection) -> list[tuple[int, int, int, str]]:
    return conn.execute("SELECT device_id, ts, seq, data FROM readings ORDER BY id").fetchall()


def stored_events(conn: sqlite3.Connection) -> list[tuple[int, int, int, str, str]]:
    return conn.execute("SELECT device_id, ts, seq, name, data FROM events ORDER BY id").fetchall()


async def started(path: Path, **kwargs: Any) -> GroupCommitter:
    committer = GroupCommitter(store.connect(path, synchronous="NORMAL"), **kwargs)
    committer.start()
    return committer


async def stopped(committer: GroupCommitter) -> None:
    await committer.stop()
    committer._conn.close()


def test_frames_become_durable_in_order_and_are_stored_exactly(path: Path, conn: sqlite3.Connection) -> None:
    a, b = add(conn, "a"), add(conn, "b")
    log: list[str] = []
    sink_a, sink_b = Sink(log), Sink()

    async def main() -> None:
        committer = await started(path)
        listener = Listener(log)
        committer.listener = listener
        for seq in range(1, 6):
            committer.submit(sink_a, a, "s-a", frame(seq, {"t": 20.0 + seq}, {"t": 21.0 + seq, "ok": True}))
        committer.submit(sink_b, b, "s-b", Event(seq=7, ts=T0, name="door", data={"open": True, "who": "é"}))
        committer.submit(sink_b, b, "s-b", frame(8, {"h": "x"}))
        await until("every ack", lambda: len(sink_a.committed) == 5 and len(sink_b.committed) == 2)
        assert sink_a.committed == [1, 2, 3, 4, 5] and sink_b.committed == [7, 8]
        assert not sink_a.failed and not sink_b.failed
        assert committer.pending_samples == 0
        assert committer.committed_samples == 12 and committer.commits >= 1
        # the listener hears a batch only after its frames' acks
        assert log.index("ack 1") < next(i for i, line in enumerate(log) if line.startswith("committed"))
        await stopped(committer)

    run(main)
    expected = [
        (a, T0 + seq * 10 + i, seq, msgspec.json.encode(values).decode())
        for seq in range(1, 6)
        for i, values in enumerate([{"t": 20.0 + seq}, {"t": 21.0 + seq, "ok": True}])
    ]
    expected.append((b, T0 + 80, 8, '{"h":"x"}'))
    assert stored_readings(conn) == expected
    assert stored_events(conn) == [(b, T0, 7, "door", '{"open":true,"who":"é"}')]
    rec_a, rec_b = registry.find_by_id(conn, a), registry.find_by_id(conn, b)
    assert rec_a is not None and (rec_a.stream, rec_a.last_seq) == ("s-a", 5)
    assert rec_b is not None and (rec_b.stream, rec_b.last_seq) == ("s-b", 8)
    assert rec_a.last_seen_ms is not None and rec_a.last_seen_ms > T0


def test_metadata_updates_are_stored_and_heard(path: Path, conn: sqlite3.Connection) -> None:
    a = add(conn, "a")
    sensors = [{"name": "t", "unit": "°C"}]

    async def main() -> None:
        committer = await started(path)
        listener = Listener([])
        committer.listener = listener
        committer.submit_meta(a, agent="iotgw-agent 1.0", sensors=sensors, info={"os": "pi"}, buffered=3)
        with pytest.raises(ValueError, match="not device metadata"):
            committer.submit_meta(a, token_hash="x")
        assert listener.meta == [
            (a, {"agent": "iotgw-agent 1.0", "sensors": sensors, "info": {"os": "pi"}, "buffered": 3})
        ]
        await committer.call(lambda _: None)  # runs after the commit that carries the update
        await stopped(committer)

    run(main)
    record = registry.find_by_id(conn, a)
    assert record is not None
    assert (record.agent, record.sensors, record.info, record.buffered) == (
        "iotgw-agent 1.0",
        sensors,
        {"os": "pi"},
        3,
    )


def test_call_runs_after_the_commit_and_returns_or_raises(path: Path, conn: sqlite3.Connection) -> None:
    a = add(conn, "a")

    async def main() -> None:
        committer = await started(path)
        sink = Sink()
        for seq in range(1, 4):
            committer.submit(sink, a, "s", frame(seq, {"t": 1.0}))
        count = await committer.call(lambda c: c.execute("SELECT count(*) FROM readings").fetchone()[0])
        assert count == 3  # submitted before the call: committed before it runs

        def boom(_: sqlite3.Connection) -> None:
            raise LookupError("nope")

        with pytest.raises(LookupError, match="nope"):
            await committer.call(boom)
        assert await committer.call(lambda c: "still serving") == "still serving"
        await stopped(committer)

    run(main)


def test_a_failed_commit_refuses_the_devices_later_frames_until_reset(
    path: Path, conn: sqlite3.Connection
) -> None:
    a, b = add(conn, "a"), add(conn, "b")
    # a real SQLite failure, for device a's readings only
    conn.execute(
        f"CREATE TRIGGER fail_a BEFORE INSERT ON readings WHEN NEW.device_id = {a} "
        "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )

    async def main() -> None:
        committer = await started(path)
        sink_a, sink_b = Sink(), Sink()
        committer.submit(sink_a, a, "s-a", frame(1, {"t": 1.0}))
        await until("the failure", lambda: len(sink_a.failed) == 1)
        assert "disk on fire" in str(sink_a.failed[0]) and sink_a.committed == []
        assert committer.failed_commits == 1 and committer.pending_samples == 0
        conn.execute("DROP TRIGGER fail_a")  # the disk is fine again, but frame 1 is lost:
        committer.submit(sink_a, a, "s-a", frame(2, {"t": 2.0}))  # frame 2 must not be acked
        committer.submit(sink_b, b, "s-b", frame(1, {"t": 3.0}))  # another device is unaffected
        await until("b's ack and a's refusal", lambda: sink_b.committed == [1] and len(sink_a.failed) == 2)
        assert "an earlier commit failed" in str(sink_a.failed[1]) and sink_a.committed == []
        committer.reset_device(a)  # the device's next session
        committer.submit(sink_a, a, "s-a", frame(1, {"t": 4.0}))
        await until("a's ack", lambda: sink_a.committed == [1])
        await stopped(committer)

    run(main)
    assert [(row[0], row[3]) for row in stored_readings(conn)] == [(b, '{"t":3.0}'), (a, '{"t":4.0}')]
    record = registry.find_by_id(conn, a)
    assert record is not None and (record.stream, record.last_seq) == ("s-a", 1)


def test_wait_for_room_pushes_back_at_max_pending_samples(path: Path, conn: sqlite3.Connection) -> None:
    a = add(conn, "a")
    entered, release = threading.Event(), threading.Event()

    def hold_the_writer(_: sqlite3.Connection) -> None:
        entered.set()
        release.wait(TIMEOUT)

    async def main() -> None:
        committer = await started(path, max_pending_samples=10)
        held = committer.call(hold_the_writer)
        assert await asyncio.to_thread(entered.wait, TIMEOUT)  # the writer thread is busy now
        sink = Sink()
        nine: list[dict[str, bool | float | str]] = [{"t": 1.0}] * 9
        committer.submit(sink, a, "s", frame(1, *nine))
        await asyncio.wait_for(committer.wait_for_room(), TIMEOUT)  # 9 < 10: room at once
        committer.submit(sink, a, "s", frame(2, {"t": 2.0}))
        assert committer.pending_samples == 10
        waiter = asyncio.ensure_future(committer.wait_for_room())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiter.done()  # full: a session would stop reading its socket here
        release.set()
        await asyncio.wait_for(waiter, TIMEOUT)  # room once the writer takes them into a commit
        await held
        await until("the acks", lambda: sink.committed == [1, 2])
        assert committer.pending_samples == 0
        await stopped(committer)

    run(main)


def test_the_commit_in_progress_leaves_room_for_the_next_batch(path: Path, conn: sqlite3.Connection) -> None:
    """Backpressure counts what waits for a commit: while one commit runs (held here inside the
    writer's transaction), devices may queue up to ``max_pending_samples`` more, then wait."""
    a = add(conn, "a")
    inside, release = threading.Event(), threading.Event()

    async def main() -> None:
        committer = await started(path, max_pending_samples=10)
        commit = committer._batches.commit

        def held_commit(batch: Any) -> Any:
            inside.set()
            assert release.wait(TIMEOUT)
            return commit(batch)

        committer._batches.commit = held_commit  # type: ignore[method-assign]
        sink = Sink()
        ten: list[dict[str, bool | float | str]] = [{"t": 1.0}] * 10
        committer.submit(sink, a, "s", frame(1, *ten))
        assert await asyncio.to_thread(inside.wait, TIMEOUT)  # the writer took the 10 samples
        await asyncio.wait_for(committer.wait_for_room(), TIMEOUT)  # room while they commit
        assert committer.pending_samples == 10 and sink.committed == []
        committer.submit(sink, a, "s", frame(2, *ten))  # the next batch gathers meanwhile
        waiter = asyncio.ensure_future(committer.wait_for_room())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiter.done()  # 10 more waiting: full again
        assert committer.pending_samples == 20  # what the gateway holds: both batches
        release.set()
        await asyncio.wait_for(waiter, TIMEOUT)
        await until("both commits", lambda: sink.committed == [1, 2])
        assert committer.pending_samples == 0
        await stopped(committer)

    run(main)
    assert len(stored_readings(conn)) == 20


def test_stop_commits_what_is_queued(path: Path, conn: sqlite3.Connection) -> None:
    a = add(conn, "a")
    sink = Sink()

    async def main() -> None:
        committer = await started(path)
        for seq in range(1, 101):
            committer.submit(sink, a, "s", frame(seq, {"t": float(seq)}))
        await committer.stop()  # nothing awaited since the submits: all still queued on the loop
        await until("the acks", lambda: len(sink.committed) == 100)
        assert sink.committed == list(range(1, 101))
        await committer.stop()  # twice is fine
        with pytest.raises(RuntimeError, match="stopped"):
            committer.submit(sink, a, "s", frame(101, {"t": 0.0}))
        committer._conn.close()

    run(main)
    assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 100


TRICKY: list[dict[str, bool | float | str]] = [
    {"a": 21.5, "b.c": -0.0, "d": 1e16, "e": 5e-324, "f": True, "g": 'é"\\\n\u2028😀\x01', "h": ""},
    {"x": 1.0, "y": False, "z": -123456.789},
    {"only": "text"},
]


async def write_mixed_batches(path: Path, ids: list[int], *, expect_bulk: bool) -> None:
    """30 frames (readings of 1-3 tricky samples, every fifth an event) over three devices, in several batches."""
    committer = await started(path)
    assert committer._batches._bulk is expect_bulk
    sink = Sink()
    for seq in range(1, 31):
        device = ids[seq % 3]
        if seq % 5 == 0:
            message: Readings | Event = Event(seq=seq, ts=T0 + seq, name="e", data=TRICKY[seq % 3])
        else:
            message = frame(seq, *TRICKY[: 1 + seq % 3])
        committer.submit(sink, device, f"stream-{device}", message)
        if seq % 7 == 0:
            await committer.call(lambda _: None)  # several batches, not one
    await until("every ack", lambda: len(sink.committed) == 30)
    await stopped(committer)


def test_bulk_json_path_and_executemany_fallback_store_identical_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (readings.bulk_insert_works() and registry.bulk_update_works()):
        pytest.skip("this SQLite has no JSON bulk path: only the fallback runs")
    stores: dict[str, list[Any]] = {}
    for mode in ("bulk", "fallback"):
        with monkeypatch.context() as patch:
            if mode == "fallback":
                patch.setattr(readings, "bulk_insert_works", lambda: False)
            path = tmp_path / f"{mode}.sqlite3"
            conn = store.connect(path, synchronous="NORMAL")
            ids = [add(conn, name) for name in ("a", "b", "c")]
            run(functools.partial(write_mixed_batches, path, ids, expect_bulk=mode == "bulk"))
            devices = conn.execute("SELECT id, stream, last_seq FROM devices ORDER BY id").fetchall()
            stores[mode] = [stored_readings(conn), stored_events(conn), devices]
            conn.close()
    assert stores["bulk"] == stores["fallback"]
    rows, events, devices = stores["bulk"]
    assert len(rows) == sum(1 + seq % 3 for seq in range(1, 31) if seq % 5) and len(events) == 6
    assert [msgspec.json.decode(row[3]) for row in rows[:1]] == [TRICKY[0]]
    assert devices == [(1, "stream-1", 30), (2, "stream-2", 28), (3, "stream-3", 29)]


def test_an_urgent_call_runs_before_the_queued_batch_and_its_linger(
    path: Path, conn: sqlite3.Connection
) -> None:
    """The fleet's registry sync (gateway/fleet/registry_sync.py): an urgent call does
    not wait out ``min_commit_interval`` nor the commit of the frames queued before it; urgent
    calls keep their order; the frames are still committed and acknowledged after."""
    a = add(conn, "a")

    async def main() -> None:
        committer = await started(path, min_commit_interval=5.0)
        sink = Sink()
        committer.submit(sink, a, "s", frame(1, {"t": 1.0}))
        await until("the first commit", lambda: sink.committed == [1])  # the next one lingers 5 s
        committer.submit(sink, a, "s", frame(2, {"t": 2.0}))
        order: list[str] = []

        def urgent(name: str, c: sqlite3.Connection) -> int:
            order.append(name)
            return int(c.execute("SELECT count(*) FROM readings").fetchone()[0])

        first = committer.call(functools.partial(urgent, "first"), urgent=True)
        second = committer.call(functools.partial(urgent, "second"), urgent=True)
        assert await first == 1 and await second == 1  # frame 2 is not committed yet
        assert order == ["first", "second"]
        assert sink.committed == [1]
        await stopped(committer)  # stop commits what is queued
        assert sink.committed == [1, 2]

    run(main)
    assert [row[2] for row in stored_readings(conn)] == [1, 2]
