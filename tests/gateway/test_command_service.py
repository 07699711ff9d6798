"""The command service (gateway/operator/commands.py) in-process: no sockets, a real store.

Each test drives a :class:`CommandService` through a real ``GroupCommitter`` and
``LedgerWriter`` on a temporary SQLite store, with a fake device session that records the frames it is asked to send, and a
clock the test moves by hand (the sweeper's own timer is set too long to fire; tests call
``sweep()``). After each step the store must hold what the service holds in memory.
End to end, through the API and a device's connection: tests/gateway/test_commands.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway import store
from gateway.operator.commands import MAX_ARGS_BYTES, CommandError, CommandService, UnknownCommand
from gateway.store import ledger, registry
from gateway.store.ledger import CommandRecord
from gateway.store.ledger_writer import LedgerWriter
from gateway.store.registry import DeviceRecord
from gateway.store.writer import GroupCommitter
from iotgw_common.protocol import Command, Hello, Result
from iotgw_common.protocol.messages import CommandInfo

T = TypeVar("T")
T0 = 1_764_000_000_000


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> int:
        return self.ms


@dataclass(eq=False)
class FakeSession:
    """A device's connection as the service sees it; ``fail`` makes ``send_command`` raise."""

    record: DeviceRecord
    peer: str = "192.0.2.7:40000"
    sent: list[Command] = field(default_factory=list)
    fail: Exception | None = None

    async def send_command(self, command: Command) -> None:
        await asyncio.sleep(0)  # a real send may yield to the loop
        if self.fail is not None:
            raise self.fail
        self.sent.append(command)


def hello(*names: str) -> Hello:
    return Hello(stream="s-1", agent="fake/1", commands=[CommandInfo(name=n) for n in names])


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


@dataclass
class Rig:
    path: Path
    service: CommandService
    clock: Clock
    device: DeviceRecord
    reader: sqlite3.Connection
    seen: list[tuple[str, str]] = field(default_factory=list)  # (id, state) from state_observers
    round_trips: list[float] = field(default_factory=list)
    phases: list[tuple[str, float]] = field(default_factory=list)  # from phase_observers

    def session(self) -> FakeSession:
        return FakeSession(self.device)

    def stored(self, command_id: str) -> CommandRecord | None:
        return ledger.load_command(self.reader, command_id)

    async def settled(self, record: CommandRecord) -> CommandRecord:
        """Wait until the store holds ``record``'s state; check store and memory agree."""
        await until(lambda: (s := self.stored(record.id)) is not None and s.state == record.state, "store")
        stored = self.stored(record.id)
        assert stored is not None
        assert (stored.state, stored.history, stored.value, stored.error, stored.deadline_ms) == (
            record.state,
            record.history,
            record.value,
            record.error,
            record.deadline_ms,
        )
        return stored


@asynccontextmanager
async def rig(path: Path, clock: Clock | None = None) -> AsyncIterator[Rig]:
    conn = store.connect(path / "store.db", synchronous="NORMAL")
    if registry.find_by_name(conn, "dev") is None:
        registry.add_device(conn, "dev")
    device = registry.find_by_name(conn, "dev")
    assert device is not None
    reader = store.connect(path / "store.db", synchronous="NORMAL")
    # as the gateway opens it: the ledger file read-only on the group committer's connection
    committer_conn = store.connect(path / "store.db", synchronous="NORMAL", ledger_writable=False)
    committer = GroupCommitter(committer_conn, min_commit_interval=0)
    committer.start()
    ledger_writer = LedgerWriter(path / "store.db", synchronous="NORMAL")
    ledger_writer.start()
    clock = clock or Clock()
    service = CommandService(committer, ledger_writer, sweep_interval=3600, clock=clock)
    r = Rig(path, service, clock, device, reader)
    service.state_observers.append(lambda rec: r.seen.append((rec.id, rec.state)))
    service.round_trip_observers.append(r.round_trips.append)
    service.phase_observers.append(lambda phase, seconds: r.phases.append((phase, seconds)))
    try:
        await service.start()
        yield r
    finally:
        await service.stop()
        await ledger_writer.stop()
        await committer.stop()
        committer_conn.close()
        reader.close()
        conn.close()


def scenario(fn: Callable[[Rig], Awaitable[None]]) -> Callable[[Path], None]:
    def test(tmp_path: Path) -> None:
        async def main() -> None:
            async with rig(tmp_path) as r:
                await fn(r)

        run(main())

    test.__name__ = fn.__name__
    test.__doc__ = fn.__doc__
    return test


# -- the life of a command ---------------------------------------------------------------------


@scenario
async def test_connected_device_queued_sent_succeeded(r: Rig) -> None:
    session = r.session()
    r.service.session_ready(session, hello("ping"))
    record = await r.service.submit(r.device, "ping", {"n": 1}, sender="alice", timeout_s=2)
    assert record.state == "sent"
    assert session.sent == [Command(id=record.id, name="ping", args={"n": 1}, deadline=T0 + 2000)]
    stored = await r.settled(record)
    assert [c.state for c in stored.history] == ["queued", "sent"]
    assert [c.detail for c in stored.history] == ["by alice", "to 192.0.2.7:40000"]
    assert r.service.open_counts == {"queued": 0, "sent": 1}

    r.clock.ms += 250
    r.service.result_received(session, Result(id=record.id, ok=True, value={"pong": 1}))
    done = await r.service.wait(record.id, 5)
    assert done is record and record.state == "succeeded" and record.value == {"pong": 1}
    assert r.service.get(record.id) is None  # final and stored: no longer held
    await r.settled(record)
    assert r.round_trips == [0.25]
    # where its time went, in order, each phase once (monotonic seconds, not the test's clock)
    assert [phase for phase, _ in r.phases] == ["to_sent", "sent_to_result", "result_to_stored"]
    assert all(0 <= seconds < 60 for _, seconds in r.phases)
    assert [s for i, s in r.seen if i == record.id] == ["queued", "sent", "succeeded"]
    assert r.service.finished["succeeded"] == 1


@scenario
async def test_result_not_ok_fails_with_the_device_error(r: Rig) -> None:
    session = r.session()
    r.service.session_ready(session, hello("set"))
    a = await r.service.submit(r.device, "set", {}, sender="alice")
    b = await r.service.submit(r.device, "set", {}, sender="alice")
    r.service.result_received(session, Result(id=a.id, ok=False, error="pin busy"))
    r.service.result_received(session, Result(id=b.id, ok=False, value=3))
    await r.service.wait(b.id, 5)
    assert (a.state, a.error) == ("failed", "pin busy")
    assert (b.state, b.value, b.error) == ("failed", 3, "the device reported failure without a reason")
    await r.settled(a)
    await r.settled(b)


@scenario
async def test_offline_device_gets_its_queue_in_order_on_session_ready(r: Rig) -> None:
    records = [await r.service.submit(r.device, "ping", {"i": i}, sender="alice") for i in range(3)]
    for record in records:
        assert record.state == "queued"
        await r.settled(record)
    assert r.service.open_counts == {"queued": 3, "sent": 0}

    r.clock.ms += 1000
    session = r.session()
    r.service.session_ready(session, hello("ping"))
    await until(lambda: len(session.sent) == 3, "three frames sent")
    assert [c.id for c in session.sent] == [rec.id for rec in records]
    assert all(c.deadline == T0 + 1000 + 10_000 for c in session.sent)
    for record in records:
        assert record.state == "sent"
        await r.settled(record)


@scenario
async def test_ttl_expiry_by_the_sweep(r: Rig) -> None:
    record = await r.service.submit(r.device, "ping", {}, sender="alice", ttl_s=5)
    r.clock.ms += 4999
    r.service.sweep()
    assert record.state == "queued"
    r.clock.ms += 1
    r.service.sweep()
    assert (await r.service.wait(record.id, 5)) is record
    assert (record.state, record.error) == ("expired", "not delivered within its ttl")
    await r.settled(record)

    now_or_never = await r.service.submit(r.device, "ping", {}, sender="alice", ttl_s=0)
    await r.service.wait(now_or_never.id, 5)
    assert (now_or_never.state, now_or_never.error) == ("expired", "device offline and the ttl is 0")
    await r.settled(now_or_never)


@scenario
async def test_expired_at_delivery_is_not_sent(r: Rig) -> None:
    record = await r.service.submit(r.device, "ping", {}, sender="alice", ttl_s=1)
    r.clock.ms += 1000  # past its ttl, but no sweep ran yet
    session = r.session()
    r.service.session_ready(session, hello("ping"))
    await r.service.wait(record.id, 5)
    assert record.state == "expired" and session.sent == []
    await r.settled(record)


@scenario
async def test_no_result_within_the_timeout_fails_by_the_sweep(r: Rig) -> None:
    session = r.session()
    r.service.session_ready(session, hello("ping"))
    record = await r.service.submit(r.device, "ping", {}, sender="alice", timeout_s=1.5)
    r.clock.ms += 1499
    r.service.sweep()
    assert record.state == "sent"
    r.clock.ms += 1
    r.service.sweep()
    await r.service.wait(record.id, 5)
    assert (record.state, record.error) == (
        "failed",
        "no result within the timeout of 1.5 s (it may have run)",
    )
    await r.settled(record)
    r.service.result_received(session, Result(id=record.id, ok=True))  # too late: ignored
    assert record.state == "failed"


@scenario
async def test_undeclared_command_is_refused_at_submit_and_at_delivery(r: Rig) -> None:
    # never seen: nothing is known of what it accepts, so the command is queued ...
    record = await r.service.submit(r.device, "reboot", {}, sender="alice")
    assert record.state == "queued"
    # ... and fails at delivery when the device's hello does not declare it
    session = r.session()
    r.service.session_ready(session, hello("ping", "set"))
    await r.service.wait(record.id, 5)
    assert record.state == "failed" and session.sent == []
    assert record.error == "the device does not accept command 'reboot'; it declares: ping, set"
    await r.settled(record)
    # with a live hello, submit refuses it outright and logs nothing
    with pytest.raises(CommandError) as refused:
        await r.service.submit(r.device, "reboot", {}, sender="alice")
    assert refused.value.declared == ["ping", "set"]
    assert ledger.list_commands(r.reader, r.device.id) == [r.stored(record.id)]


@scenario
async def test_args_too_large_are_refused(r: Rig) -> None:
    with pytest.raises(CommandError, match=f"larger than {MAX_ARGS_BYTES}"):
        await r.service.submit(r.device, "ping", {"x": "a" * MAX_ARGS_BYTES}, sender="alice")
    assert ledger.list_commands(r.reader, r.device.id) == []


@scenario
async def test_cancel(r: Rig) -> None:
    record = await r.service.submit(r.device, "ping", {}, sender="alice")
    cancelled = await r.service.cancel(record.id, "bob")
    assert cancelled is record and (record.state, record.error) == ("failed", "cancelled by bob")
    await r.settled(record)
    with pytest.raises(UnknownCommand):
        await r.service.cancel(record.id, "bob")  # final: no longer open

    session = r.session()
    r.service.session_ready(session, hello("ping"))
    assert session.sent == []  # a cancelled command is never delivered
    sent = await r.service.submit(r.device, "ping", {}, sender="alice")
    with pytest.raises(CommandError, match="only a queued command can be cancelled"):
        await r.service.cancel(sent.id, "bob")
    assert sent.state == "sent"


@scenario
async def test_connection_closed_while_sent_fails_the_command(r: Rig) -> None:
    session = r.session()
    r.service.session_ready(session, hello("ping"))
    record = await r.service.submit(r.device, "ping", {}, sender="alice")
    also = await r.service.submit(r.device, "ping", {}, sender="alice")
    r.service.session_closed(session)
    await r.service.wait(record.id, 5)
    assert record.state == "failed"
    assert record.error == "the connection to the device closed before its result arrived (it may have run)"
    await r.settled(record)
    r.service.result_received(session, Result(id=record.id, ok=True))  # from the dead connection: ignored
    assert record.state == "failed"
    await r.service.wait(also.id, 5)
    assert also.state == "failed"  # every command in flight on the connection
    assert r.service.open_counts == {"queued": 0, "sent": 0}


@scenario
async def test_a_result_on_another_connection_is_ignored(r: Rig) -> None:
    first = r.session()
    r.service.session_ready(first, hello("ping"))
    record = await r.service.submit(r.device, "ping", {}, sender="alice")
    second = r.session()
    r.service.session_ready(second, hello("ping"))  # a new connection replaces the first
    r.service.result_received(second, Result(id=record.id, ok=True))
    assert record.state == "sent"
    r.service.result_received(first, Result(id=record.id, ok=True))
    await r.service.wait(record.id, 5)
    assert record.state == "succeeded"


@scenario
async def test_send_failure_fails_the_command(r: Rig) -> None:
    session = r.session()
    session.fail = ConnectionError("reset by peer")
    r.service.session_ready(session, hello("ping"))
    record = await r.service.submit(r.device, "ping", {}, sender="alice")
    await r.service.wait(record.id, 5)
    assert (record.state, record.error) == ("failed", "the connection failed while sending: reset by peer")
    stored = await r.settled(record)
    assert [c.state for c in stored.history] == ["queued", "sent", "failed"]  # sent was durable first


def test_stop_stores_the_changes_made_just_before_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            session = r.session()
            r.service.session_ready(session, hello("ping"))
            sent = await r.service.submit(r.device, "ping", {}, sender="alice")
            await r.settled(sent)
            r.service.session_closed(session)  # its "failed" is not stored yet when stop() runs
        async with rig(tmp_path) as r:
            stored = r.stored(sent.id)
            assert stored is not None and stored.state == "failed"
            assert r.service.get(sent.id) is None

    run(main())


def test_restart_after_a_crash_with_a_sent_command(tmp_path: Path) -> None:
    """A command stored as ``sent`` (the gateway died before its result) fails at the next start."""

    async def main() -> None:
        async with rig(tmp_path) as r:
            queued = await r.service.submit(r.device, "ping", {"keep": 1}, sender="alice")
            await r.settled(queued)
        # what a gateway killed after "sent" became durable leaves behind
        conn = store.connect(tmp_path / "store.db")
        record, insert = ledger.new_command(
            device_id=r.device.id,
            device="dev",
            name="ping",
            args={},
            sender="alice",
            now_ms=T0,
            ttl_ms=60_000,
            timeout_ms=10_000,
        )
        record.deadline_ms = T0 + 10_000
        ledger.write_changes(conn, [insert, ledger.transition(record, ledger.CommandState.SENT, T0, "to x")])
        conn.close()

        async with rig(tmp_path) as r:
            crashed = r.service.get(record.id)
            assert crashed is not None
            await r.service.wait(record.id, 5)
            assert (crashed.state, crashed.error) == ("failed", "gateway restarted before the result arrived")
            await r.settled(crashed)
            still = r.service.get(queued.id)
            assert still is not None and still.state == "queued"
            session = r.session()
            r.service.session_ready(session, hello("ping"))
            await until(lambda: [c.id for c in session.sent] == [queued.id], "the queued command sent")
            await r.settled(still)

    run(main())
