"""The command ledger's write path (gateway/operator/ledger_writes.py) on a real store and
ledger writer: what ``flush`` and ``on_stored`` promise, including a cancelled waiter and a
stopped writer."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from gateway import store
from gateway.operator.ledger_writes import LedgerWrites
from gateway.store import ledger, registry
from gateway.store.ledger_writer import LedgerWriter

T0 = 1_764_000_000_000


def _insert(device_id: int, n: int) -> tuple[str, ledger.Change]:
    record, insert = ledger.new_command(device_id=device_id, device="dev", name=f"c{n}", args={"n": n},
                                        sender="alice", now_ms=T0 + n, ttl_ms=60_000, timeout_ms=1000)  # fmt: skip
    return record.id, insert


def _rig(path: Path, inline_wait_s: float = 0.003) -> tuple[LedgerWriter, int, sqlite3.Connection]:
    conn = store.connect(path / "store.db", synchronous="NORMAL")
    registry.add_device(conn, "dev")
    found = registry.find_by_name(conn, "dev")
    assert found is not None
    device_id = found.id
    conn.close()
    writer = LedgerWriter(path / "store.db", synchronous="NORMAL", inline_wait_s=inline_wait_s)
    reader = store.connect(path / "store.db", synchronous="NORMAL")
    return writer, device_id, reader


def test_flush_stores_what_was_added_and_tells_each_on_stored_once_in_order(tmp_path: Path) -> None:
    writer, device_id, reader = _rig(tmp_path)

    async def main() -> None:
        writer.start()
        writes = LedgerWrites(writer)
        told: list[int] = []
        ids = []
        for n in range(3):
            command_id, change = _insert(device_id, n)
            ids.append(command_id)
            writes.add(change, on_stored=lambda n=n: told.append(n))
        assert writes.pending
        await writes.flush()
        assert told == [0, 1, 2]
        assert all(ledger.load_command(reader, i) is not None for i in ids)
        assert not writes.pending
        await writes.flush()  # nothing pending: returns at once
        await writer.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_cancelled_waiter_does_not_cancel_the_write(tmp_path: Path) -> None:
    writer, device_id, reader = _rig(tmp_path, inline_wait_s=0)  # reported late, on the loop

    async def main() -> None:
        writer.start()
        gate = threading.Event()
        held = writer.call(lambda conn: gate.wait(10))  # the write below waits behind it
        writes = LedgerWrites(writer)
        command_id, change = _insert(device_id, 1)
        told = asyncio.Event()
        writes.add(change, on_stored=told.set)
        impatient = asyncio.create_task(writes.flush())
        await asyncio.sleep(0)
        impatient.cancel()
        patient = asyncio.create_task(writes.flush())  # came while the write is in flight
        await asyncio.sleep(0)
        assert not told.is_set()
        gate.set()
        await held
        await asyncio.wait_for(told.wait(), 10)
        await asyncio.wait_for(patient, 10)
        assert impatient.cancelled()
        assert ledger.load_command(reader, command_id) is not None
        await writer.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_stopped_writer_logs_and_nothing_waits_forever(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer, device_id, _ = _rig(tmp_path)

    async def main() -> None:
        writer.start()
        await writer.stop()
        writes = LedgerWrites(writer)
        told: list[str] = []
        _, change = _insert(device_id, 1)
        writes.add(change, on_stored=lambda: told.append("told"))
        await asyncio.wait_for(writes.flush(), 10)
        assert told == ["told"] and not writes.pending

    with caplog.at_level(logging.ERROR):
        asyncio.run(asyncio.wait_for(main(), 30))
    assert any("command changes not stored" in r.getMessage() for r in caplog.records)
