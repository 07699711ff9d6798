"""The delivery engine (gateway/integrations/engine.py) in-process, with a small sink of our own.

A real store in a temp dir and a real GroupCommitter; the sink keeps what it was given in
memory and can be told to be away (retryable errors), to refuse some items (halving,
dead letters) or to refuse to encode a row. No sleeps before assertions: each test polls.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from gateway import store
from gateway.integrations import engine
from gateway.integrations.engine import DeliveryEngine
from gateway.integrations.sink import DeliveryError, DeliveryStartError, EncodeError
from gateway.store import delivery, registry
from gateway.store.writer import GroupCommitter

T = TypeVar("T")
T0 = 1_764_000_000_000
TIMEOUT = 20.0


@dataclass
class Settings:
    batch_size: int = 100
    max_delay: float = 0.01
    timeout: float = 5.0
    retry_max: float = 0.05
    events: bool = True
    required: bool = False


class MemorySink:
    """Items go to ``delivered``. ``away`` > 0: that many writes fail, retryably; ``refuse``:
    items containing one of these strings are refused; data with ``"bad"`` cannot be encoded."""

    name = "mem"
    title = "Memory"
    target = "this process"

    def __init__(
        self, *, away: int = 0, refuse: tuple[str, ...] = (), retry_after: float | None = None
    ) -> None:
        self.away = away
        self.refuse = refuse
        self.retry_after = retry_after
        self.down_at_check = False
        self.delivered: list[str] = []
        self.attempts: list[float] = []  # monotonic time of each write
        self.writes: list[int] = []  # size of each write attempt
        self.prepared: list[bool] = []
        self.closed = 0
        self._lock = threading.Lock()

    def prepare(self, conn: sqlite3.Connection, *, resend: bool = False) -> None:
        self.prepared.append(resend)

    def encode_reading(self, conn: sqlite3.Connection, device_id: int, ts: int, data: str) -> str:
        if '"bad"' in data:
            raise EncodeError(f"cannot encode {data}")
        return f"r {device_id} {ts} {data}"

    def encode_event(self, conn: sqlite3.Connection, device_id: int, ts: int, seq: int, name: str,
                     data: str) -> str:  # fmt: skip
        return f"e {device_id} {ts} {seq} {name} {data}"

    def write(self, items: list[str]) -> None:
        with self._lock:
            self.attempts.append(time.monotonic())
            self.writes.append(len(items))
            if self.away > 0:
                self.away -= 1
                raise DeliveryError(
                    "away", retryable=True, retry_after=self.retry_after, summary="target away"
                )
            refused = [item for item in items if any(word in item for word in self.refuse)]
            if refused:
                raise DeliveryError(f"refused {refused[0]}", retryable=False, status=400)
            self.delivered.extend(items)

    def check(self) -> None:
        if self.down_at_check:
            raise DeliveryError("away at start", retryable=True, summary="unreachable: away at start")

    def close(self) -> None:
        self.closed += 1


# -- helpers ---------------------------------------------------------------------------------------


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro(), 60))


async def until(what: str, probe: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll ``probe`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
def device(conn: sqlite3.Connection) -> int:
    registry.add_device(conn, "pi-1")
    found = registry.find_by_name(conn, "pi-1")
    assert found is not None
    return found.id


@pytest.fixture(autouse=True)
def quick_dead_letter_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "DEAD_LETTER_CHECK_S", 0.05)


def readings(conn: sqlite3.Connection, device_id: int, values: list[object]) -> list[int]:
    """Store one reading per value (``{"t": value}``); returns their ids."""
    ids: list[int] = []
    for value in values:
        cursor = conn.execute(
            "INSERT INTO readings (device_id, ts, seq, data) VALUES (?, ?, 0, ?)",
            (device_id, T0 + len(ids), json.dumps({"t": value}, separators=(",", ":"))),
        )
        assert cursor.lastrowid is not None
        ids.append(cursor.lastrowid)
    return ids


def events(conn: sqlite3.Connection, device_id: int, count: int) -> list[int]:
    ids: list[int] = []
    for i in range(count):
        cursor = conn.execute(
            "INSERT INTO events (device_id, ts, seq, name, data) VALUES (?, ?, ?, 'door', '{}')",
            (device_id, T0 + i, i + 1),
        )
        assert cursor.lastrowid is not None
        ids.append(cursor.lastrowid)
    return ids


class Running:
    """A committer and an engine on the store at ``path``; ``async with`` starts and stops both."""

    def __init__(self, path: Path, sink: MemorySink, settings: Settings | None = None) -> None:
        self.path = path
        self.sink = sink
        self.settings = settings or Settings()

    async def __aenter__(self) -> DeliveryEngine:
        self.committer = GroupCommitter(store.connect(self.path, synchronous="NORMAL"))
        self.committer.start()
        self.engine = DeliveryEngine(self.sink, self.settings, self.path, self.committer)
        try:
            await self.engine.start()
        except BaseException:
            await self._stop_committer()
            raise
        return self.engine

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.stop()
        await self._stop_committer()

    async def _stop_committer(self) -> None:
        await self.committer.stop()
        self.committer._conn.close()


def cursor(conn: sqlite3.Connection, table: str = "readings") -> int:
    return delivery.cursor_position(conn, f"mem.{table}")


# -- tests -----------------------------------------------------------------------------------------


def test_rows_are_delivered_in_order_and_the_cursors_move_after_them(
    path: Path, conn: sqlite3.Connection, device: int
) -> None:
    reading_ids = readings(conn, device, [1.0, 2.0, 3.0])
    event_ids = events(conn, device, 2)

    async def main() -> None:
        sink = MemorySink()
        async with Running(path, sink):
            await until(
                "the cursors",
                lambda: cursor(conn) == reading_ids[-1] and cursor(conn, "events") == event_ids[-1],
            )
            assert sink.delivered == [
                f"r {device} {T0} " + '{"t":1.0}',
                f"r {device} {T0 + 1} " + '{"t":2.0}',
                f"r {device} {T0 + 2} " + '{"t":3.0}',
                f"e {device} {T0} 1 door {{}}",
                f"e {device} {T0 + 1} 2 door {{}}",
            ]
            status = delivery.read_status(conn, "mem")
            assert (status.state, status.target, status.sent_readings, status.sent_events) == (
                "ok",
                "this process",
                3,
                2,
            )
            assert (status.pending_readings, status.pending_events, status.batches) == (0, 0, 1)
            assert status.started_ms is not None and status.last_success_ms is not None
        assert sink.closed == 1
        assert delivery.read_status(conn, "mem").state == "stopped"

    run(main)


def test_events_stay_behind_when_the_sink_takes_only_readings(
    path: Path, conn: sqlite3.Connection, device: int
) -> None:
    (last,) = readings(conn, device, [1.0])
    events(conn, device, 2)

    async def main() -> None:
        sink = MemorySink()
        async with Running(path, sink, Settings(events=False)):
            await until("the readings", lambda: cursor(conn) == last)
        assert [item[0] for item in sink.delivered] == ["r"]
        assert cursor(conn, "events") == 0

    run(main)


def test_the_cursor_waits_while_the_target_is_away_then_catches_up(
    path: Path, conn: sqlite3.Connection, device: int
) -> None:
    ids = readings(conn, device, [1.0, 2.0])

    async def main() -> None:
        sink = MemorySink(away=1_000_000)
        async with Running(path, sink):
            await until(
                "retries", lambda: len(sink.attempts) >= 4 and delivery.read_status(conn, "mem").retries >= 3
            )
            status = delivery.read_status(conn, "mem")
            assert status.state == "retrying" and status.last_error == "target away"
            assert status.cursor_readings == 0 and status.pending_readings == 2
            assert status.oldest_pending_ts == T0 and sink.delivered == []
            assert set(sink.writes) == {2}  # the same batch each time, never split
            more = readings(conn, device, [3.0])
            sink.away = 0
            await until("the backlog", lambda: cursor(conn) == more[-1])
            status = delivery.read_status(conn, "mem")
            assert (status.state, status.retries, status.pending_readings) == ("ok", 0, 0)
            assert status.total_retries >= 3 and status.last_error == "target away"  # kept for people
        assert [item.split()[3] for item in sink.delivered] == ['{"t":1.0}', '{"t":2.0}', '{"t":3.0}']
        assert ids[0] < ids[1] < more[0]

    run(main)


def test_backoff_grows_and_honours_retry_after(
    path: Path, conn: sqlite3.Connection, device: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "BACKOFF_FIRST_S", 0.02)
    readings(conn, device, [1.0])

    async def main() -> None:
        sink = MemorySink(away=5)
        async with Running(path, sink, Settings(retry_max=10.0)):
            await until("delivery", lambda: len(sink.delivered) == 1)
        gaps = [b - a for a, b in zip(sink.attempts, sink.attempts[1:], strict=False)]
        # retry n waits at least half of 0.02 * 2**(n-1) (jitter takes off up to half)
        for n, gap in enumerate(gaps, start=1):
            assert gap >= 0.01 * 2 ** (n - 1), (n, gaps)

        sink = MemorySink(away=1, retry_after=0.3)
        ids = readings(conn, device, [2.0])
        async with Running(path, sink, Settings(retry_max=10.0)):
            await until("delivery", lambda: cursor(conn) == ids[-1])
        assert sink.attempts[1] - sink.attempts[0] >= 0.3

    run(main)


def test_halving_files_exactly_the_refused_items_as_dead_letters(
    path: Path, conn: sqlite3.Connection, device: int
) -> None:
    values: list[object] = [float(i) for i in range(13)]
    values[3], values[4], values[11] = "no-3", "no-4", "no-11"
    values[7] = "bad"  # cannot be encoded at all
    ids = readings(conn, device, values)

    async def main() -> None:
        sink = MemorySink(refuse=("no-",))
        async with Running(path, sink):
            await until("the cursor", lambda: cursor(conn) == ids[-1])
        delivered = {item.split()[3] for item in sink.delivered}
        assert delivered == {
            json.dumps({"t": v}, separators=(",", ":"))
            for i, v in enumerate(values)
            if i not in (3, 4, 7, 11)
        }
        assert len(sink.delivered) == 9  # each written once
        letters = delivery.list_dead_letters(conn, "mem")
        assert [(d.row_id, d.status) for d in letters] == [
            (ids[3], 400),
            (ids[4], 400),
            (ids[11], 400),
            (ids[7], 0),
        ]
        assert letters[0].error == f'refused r {device} {T0 + 3} {{"t":"no-3"}}' and letters[0].line.endswith(
            '"no-3"}'
        )
        assert letters[3].line == "" and "cannot encode" in letters[3].error
        status = delivery.read_status(conn, "mem")
        assert (status.dead_letters, status.pending_readings, status.sent_readings) == (4, 0, 13)

    run(main)


def test_dead_letters_marked_for_retry_are_encoded_again_and_resent(
    path: Path, conn: sqlite3.Connection, device: int
) -> None:
    ids = readings(conn, device, [1.0, "no-1", "no-2", "bad"])

    async def main() -> None:
        sink = MemorySink(refuse=("no-",))
        async with Running(path, sink):
            await until("three dead letters", lambda: len(delivery.list_dead_letters(conn, "mem")) == 3)
            sink.refuse = ("no-2",)  # the operator fixed what made no-1 fail
            assert delivery.mark_for_retry(conn, "mem", None) == 3
            await until(
                "the resend settled",
                lambda: (
                    {d.state for d in delivery.list_dead_letters(conn, "mem", include_resent=True)}
                    == {"resent", "dead"}
                    and delivery.read_status(conn, "mem").dead_letters_retrying == 0
                ),
            )
            assert True in sink.prepared  # caches dropped before encoding again
        by_row = {d.row_id: d for d in delivery.list_dead_letters(conn, "mem", include_resent=True)}
        assert (by_row[ids[1]].state, by_row[ids[1]].attempts) == ("resent", 1)
        assert (by_row[ids[2]].state, by_row[ids[2]].attempts, by_row[ids[2]].status) == ("dead", 2, 400)
        assert (by_row[ids[3]].state, by_row[ids[3]].attempts, by_row[ids[3]].status) == ("dead", 2, 0)
        assert [item.split()[3] for item in sink.delivered] == ['{"t":1.0}', '{"t":"no-1"}']

    run(main)


def test_a_dead_letter_whose_row_is_gone_is_resent_from_its_kept_line(
    path: Path, conn: sqlite3.Connection, device: int
) -> None:
    (row,) = readings(conn, device, ["no-1"])

    async def main() -> None:
        sink = MemorySink(refuse=("no-",))
        async with Running(path, sink):
            await until("a dead letter", lambda: len(delivery.list_dead_letters(conn, "mem")) == 1)
            conn.execute("DELETE FROM readings WHERE id = ?", (row,))  # retention, a purge
            sink.refuse = ()
            delivery.mark_for_retry(conn, "mem", None)
            await until("the resend", lambda: delivery.list_dead_letters(conn, "mem") == [])
        assert sink.delivered == [f'r {device} {T0} {{"t":"no-1"}}']

    run(main)


def test_a_backlog_goes_out_in_full_batches_in_order(
    path: Path, conn: sqlite3.Connection, device: int
) -> None:
    ids = readings(conn, device, [float(i) for i in range(25)])

    async def main() -> None:
        sink = MemorySink()
        async with Running(path, sink, Settings(batch_size=4, max_delay=0.5)):
            await until("the backlog", lambda: cursor(conn) == ids[-1])
        # full batches go at once (prefetched during the backlog); the last, short one waits for max_delay
        assert sink.writes == [4, 4, 4, 4, 4, 4, 1]
        assert [item.split()[3] for item in sink.delivered] == [f'{{"t":{float(i)}}}' for i in range(25)]

    run(main)


def test_a_short_batch_waits_for_max_delay(path: Path, conn: sqlite3.Connection, device: int) -> None:
    async def main() -> None:
        sink = MemorySink()
        async with Running(path, sink, Settings(max_delay=0.3)):
            stored = time.monotonic()
            (last,) = readings(conn, device, [1.0])
            await until("delivery", lambda: cursor(conn) == last)
        assert sink.attempts[0] - stored >= 0.3

    run(main)


def test_a_restart_resumes_from_the_cursor(path: Path, conn: sqlite3.Connection, device: int) -> None:
    first = readings(conn, device, [1.0, 2.0])

    async def main() -> None:
        sink = MemorySink()
        async with Running(path, sink):
            await until("the first rows", lambda: cursor(conn) == first[-1])
        later = readings(conn, device, [3.0])
        again = MemorySink()
        async with Running(path, again):
            await until("the new row", lambda: cursor(conn) == later[-1])
        assert len(sink.delivered) == 2
        assert [item.split()[3] for item in again.delivered] == ['{"t":3.0}']  # nothing twice

    run(main)


def test_a_required_sink_that_is_away_refuses_to_start(
    path: Path, conn: sqlite3.Connection, device: int
) -> None:
    async def main() -> None:
        sink = MemorySink()
        sink.down_at_check = True
        with pytest.raises(DeliveryStartError) as caught:
            async with Running(path, sink, Settings(required=True)):
                raise AssertionError("started")
        assert str(caught.value) == (
            "Memory this process: unreachable: away at start (mem.required is true: not starting)"
        )
        assert sink.closed == 1

    run(main)


def test_a_sink_away_at_start_is_retried_when_not_required(
    path: Path, conn: sqlite3.Connection, device: int
) -> None:
    (last,) = readings(conn, device, [1.0])

    async def main() -> None:
        sink = MemorySink()
        sink.down_at_check = True
        async with Running(path, sink):
            status = delivery.read_status(conn, "mem")
            assert status.state == "retrying" and status.last_error == "unreachable: away at start"
            await until("delivery", lambda: cursor(conn) == last)
            assert delivery.read_status(conn, "mem").state == "ok"

    run(main)
