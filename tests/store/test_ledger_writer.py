"""The command ledger's writer (gateway/store/ledger_writer.py) on a real ledger file: writes on
the loop's thread while the writer is idle, the writer thread's inline wait and late report,
the way back from a slow disk, errors, stop."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from gateway.store import ledger, registry
from gateway.store.ledger_writer import FAST_WRITES, INLINE_WAIT_S, LedgerWriter
from iotgw_common.urgency import URGENCY, UrgentFirstLoop
from tests.support.waiting import async_wait_until

T0 = 1_764_000_000_000


@pytest.fixture
def store_path(path: Path, conn: sqlite3.Connection) -> Path:
    """A migrated store with one device (id 1)."""
    registry.add_device(conn, "dev")
    return path


def insert(n: int) -> tuple[str, ledger.Change]:
    record, change = ledger.new_command(device_id=1, device="dev", name=f"c{n}", args={"n": n}, sender="alice",
                                        now_ms=T0 + n, ttl_ms=60_000, timeout_ms=1000)  # fmt: skip
    return record.id, change


def run(main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=UrgentFirstLoop) as runner:
        runner.run(asyncio.wait_for(main, 30))


async def loop_turn() -> None:
    """Return after every callback queued so far (what a stopped writer's thread had posted) ran."""
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


def test_a_fast_write_is_reported_before_write_returns(store_path: Path, conn: sqlite3.Connection) -> None:
    async def main() -> None:
        writer = LedgerWriter(store_path, synchronous="NORMAL", inline_wait_s=5.0, direct=False)  # never late
        writer.start()
        try:
            command_id, change = insert(1)
            told: list[BaseException | None] = []
            writer.write(lambda c: ledger.write_changes(c, [change]), told.append)
            assert told == [None]
            assert ledger.load_command(conn, command_id) is not None
            assert (writer.inline, writer.late) == (1, 0)
        finally:
            await writer.stop()

    run(main())


def test_a_write_with_the_writer_idle_runs_on_the_loops_own_thread(
    store_path: Path, conn: sqlite3.Connection
) -> None:
    async def main() -> None:
        writer = LedgerWriter(store_path, synchronous="NORMAL", inline_wait_s=5.0)
        writer.start()
        try:
            command_id, change = insert(1)
            ran_on: list[int] = []
            told: list[BaseException | None] = []

            def write(c: sqlite3.Connection) -> None:
                ran_on.append(threading.get_ident())
                ledger.write_changes(c, [change])

            writer.write(write, told.append)
            assert told == [None] and ran_on == [threading.get_ident()]
            assert ledger.load_command(conn, command_id) is not None
            assert (writer.direct_writes, writer.inline, writer.late) == (1, 1, 0)
        finally:
            await writer.stop()

    run(main())


def test_a_write_behind_queued_work_waits_its_turn_on_the_writer_thread(store_path: Path) -> None:
    async def main() -> None:
        writer = LedgerWriter(store_path, synchronous="NORMAL", inline_wait_s=0.001)
        writer.start()
        order: list[tuple[str, int]] = []
        release = threading.Event()
        told: list[BaseException | None] = []
        try:

            def pruning(c: sqlite3.Connection) -> None:
                release.wait(10)
                order.append(("call", threading.get_ident()))

            called = writer.call(pruning)
            writer.write(lambda c: order.append(("write", threading.get_ident())), told.append)
            assert order == [] and told == []  # not run here, ahead of the call
            release.set()
            await called
            await async_wait_until(lambda: told, what="the write's report")
        finally:
            await writer.stop()
        assert [what for what, _ in order] == ["call", "write"]
        assert threading.get_ident() not in {thread for _, thread in order}
        assert writer.direct_writes == 0

    run(main())


def test_after_a_slow_write_writes_go_to_the_thread_until_they_are_quick_again(store_path: Path) -> None:
    async def main() -> None:
        writer = LedgerWriter(store_path, synchronous="NORMAL", inline_wait_s=0.05)
        writer.start()
        here = threading.get_ident()
        ran_on: list[int] = []
        told: list[BaseException | None] = []
        try:
            writer.write(lambda c: (ran_on.append(threading.get_ident()), time.sleep(0.1)), told.append)
            assert ran_on == [here] and told == [None]  # slow, but it ran here: the disk looked quick
            for issued in range(2, 50 * FAST_WRITES):  # quick ones, unless the machine is very busy
                writer.write(lambda c: ran_on.append(threading.get_ident()), told.append)
                await async_wait_until(lambda n=issued: len(told) == n, what="the write's report")
                if ran_on[-1] == here:
                    break
        finally:
            await writer.stop()
        assert ran_on[-1] == here, "quick writes on the thread did not bring the direct writes back"
        on_the_thread = ran_on[1:-1]
        assert here not in on_the_thread and len(on_the_thread) >= FAST_WRITES
        assert told == [None] * len(ran_on)

    run(main())


def test_a_slow_write_is_reported_once_later_on_the_loop_and_urgently(store_path: Path) -> None:
    async def main() -> None:
        writer = LedgerWriter(store_path, synchronous="NORMAL", inline_wait_s=0.001, direct=False)
        writer.start()
        loop_thread = threading.get_ident()
        told: list[tuple[BaseException | None, int, bool]] = []
        release = threading.Event()
        try:

            def slow(c: sqlite3.Connection) -> None:
                release.wait(10)  # longer than the inline wait, for sure

            def on_done(error: BaseException | None) -> None:
                urgency = URGENCY.get()
                told.append((error, threading.get_ident(), urgency is not None and urgency.on))

            writer.write(slow, on_done)
            assert told == []  # write() gave up waiting and returned
            release.set()
            await async_wait_until(lambda: told, what="the late report")
        finally:
            await writer.stop()
        await loop_turn()
        assert told == [(None, loop_thread, True)]
        assert (writer.inline, writer.late) == (0, 1)

    run(main())


def test_each_write_is_reported_exactly_once_when_the_wait_ends_as_the_write_does(store_path: Path) -> None:
    """Writes as long as the inline wait: the race between giving up and finishing, many times."""

    async def main() -> None:
        writer = LedgerWriter(store_path, synchronous="NORMAL", inline_wait_s=0.0005, direct=False)
        writer.start()
        told: Counter[int] = Counter()
        writes = 300
        try:
            for n in range(writes):
                writer.write(lambda c: time.sleep(0.0005), lambda error, n=n: told.update([n]))
            await async_wait_until(lambda: len(told) == writes, what="every write reported")
        finally:
            await writer.stop()
        await loop_turn()
        assert set(told.values()) == {1} and len(told) == writes
        assert writer.inline + writer.late == writes

    run(main())


def test_an_error_in_the_write_is_reported_and_the_writer_goes_on(
    store_path: Path, conn: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        writer = LedgerWriter(store_path, synchronous="NORMAL")
        writer.start()
        told: list[BaseException | None] = []
        try:
            command_id, change = insert(1)
            writer.write(lambda c: ledger.write_changes(c, [change, change]), told.append)  # duplicate id
            await async_wait_until(lambda: told, what="the failed write's report")
            assert isinstance(told[0], sqlite3.IntegrityError)
            assert ledger.load_command(conn, command_id) is None  # all or nothing
            writer.write(lambda c: ledger.write_changes(c, [change]), told.append)
            await async_wait_until(lambda: len(told) == 2, what="the next write's report")
            assert told[1] is None and ledger.load_command(conn, command_id) is not None
        finally:
            await writer.stop()

    with caplog.at_level(logging.ERROR):
        run(main())
    assert any("ledger write failed" in r.getMessage() for r in caplog.records)


def test_stop_finishes_what_is_queued_then_writes_are_refused(
    store_path: Path, conn: sqlite3.Connection
) -> None:
    async def main() -> None:
        writer = LedgerWriter(store_path, synchronous="NORMAL", inline_wait_s=0, direct=False)
        with pytest.raises(RuntimeError):
            writer.write(lambda c: None, lambda error: None)  # not started
        writer.start()
        told: list[BaseException | None] = []
        ids = []
        for n in range(20):
            command_id, change = insert(n)
            ids.append(command_id)
            writer.write(lambda c, change=change: ledger.write_changes(c, [change]), told.append)
        await writer.stop()
        await async_wait_until(lambda: len(told) == 20, what="every queued write reported")
        assert told == [None] * 20
        assert all(ledger.load_command(conn, i) is not None for i in ids)
        with pytest.raises(RuntimeError, match="not running"):
            writer.write(lambda c: None, lambda error: None)
        with pytest.raises(RuntimeError, match="not running"):
            writer.call(lambda c: None)
        await writer.stop()  # twice is fine

    run(main())


def test_call_returns_the_result_or_raises(store_path: Path) -> None:
    async def main() -> None:
        writer = LedgerWriter(store_path, synchronous="NORMAL")
        writer.start()
        try:
            assert await writer.call(lambda c: c.execute("SELECT count(*) FROM commands").fetchone()[0]) == 0
            with pytest.raises(sqlite3.OperationalError):
                await writer.call(lambda c: c.execute("SELECT * FROM devices"))  # the ledger file only
        finally:
            await writer.stop()

    run(main())


def test_the_writer_uses_the_store_synchronous_level(store_path: Path) -> None:
    async def main() -> None:
        writer = LedgerWriter(store_path, synchronous="EXTRA")
        writer.start()
        try:
            assert await writer.call(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 3
            assert await writer.call(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
        finally:
            await writer.stop()

    run(main())


def test_the_default_inline_wait_is_a_few_milliseconds() -> None:
    assert 0 < INLINE_WAIT_S <= 0.005
