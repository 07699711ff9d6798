"""The command service: delivers operators' commands to devices and tracks them to the end.

A command's states, their rules and their SQL are the ledger's
(``gateway.store.ledger``, docs/commands.md); this service decides *when* a command
moves: it queues commands per device, sends them on the device's ready session, finishes
them on the device's result, expires and times them out, and tells observers.

Every state change is written to the ledger file by its own writer
(``gateway.store.ledger_writer.LedgerWriter``), all changes made in one loop turn in one
transaction, which the loop usually waits for inline (or runs itself). ``sent`` is durable *before* the frame
leaves, so a gateway crash never makes a command run twice: delivery is at most once, and a
command that was ``sent`` when the gateway stopped is ``failed`` at the next start ("gateway
restarted before the result arrived").

The device plane calls the session hooks (``session_ready`` after ``welcome``,
``result_received``, ``session_closed``); a queued command goes out on the next ready
session of its device, in submission order, one device at a time. ``deadline`` in the frame
is ``sent + timeout``: a device must not start a command after it. A sweeper expires queued
commands past their TTL and fails sent ones past their deadline, only the due ones (a heap:
``gateway.operator.deadlines``). ``submit`` refuses a device's ``max_open_per_device``+1st open one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.operator.command_rules import (
    DEFAULT_MAX_OPEN_PER_DEVICE,
    DEFAULT_TIMEOUT_S,
    DEFAULT_TTL_S,
    MAX_ARGS_BYTES,
    CommandError,
    CommandSession,
    UnknownCommand,
    check_submission,
)
from gateway.operator.deadlines import Deadlines
from gateway.operator.ledger_writes import LedgerWrites
from gateway.store import ledger
from gateway.store.ledger import FINAL_STATES, CommandRecord, CommandState
from iotgw_common.clock import now_ms
from iotgw_common.protocol import Command, Hello, Result, printable

if TYPE_CHECKING:
    from gateway.store.ledger_writer import LedgerWriter
    from gateway.store.registry import DeviceRecord
    from gateway.store.writer import GroupCommitter

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class _Open:
    """A command not yet final, held in memory by the service."""

    record: CommandRecord
    session: CommandSession | None = None  # the session it was sent on
    done: asyncio.Event = field(default_factory=asyncio.Event)
    accepted_at: float = field(default_factory=time.monotonic)
    sent_at: float | None = None
    result_at: float | None = None


class CommandService:
    """Queues, delivers and tracks commands; ``await start()``, later ``await stop()``.

    Call everything from the gateway's event loop. ``clock`` returns ms (tests pass their own).
    ``committer`` reads the open commands at start; ``ledger_writer`` (started before
    ``start()``, stopped after ``stop()``) writes every change.
    """

    def __init__(
        self,
        committer: GroupCommitter,
        ledger_writer: LedgerWriter,
        *,
        sweep_interval: float = 0.1,
        clock: Callable[[], int] = now_ms,
        max_open_per_device: int = DEFAULT_MAX_OPEN_PER_DEVICE,
    ) -> None:
        self._committer = committer
        self.max_open_per_device = max_open_per_device
        self._sweep_interval = sweep_interval
        self._clock = clock
        self._open: dict[str, _Open] = {}
        self._per_device: Counter[int] = Counter()  # device id -> open commands (queued + sent)
        self._by_state = {CommandState.QUEUED.value: 0, CommandState.SENT.value: 0}
        self._deadlines = Deadlines()  # when each queued command expires, each sent one times out
        self._queues: dict[int, deque[str]] = {}  # device id -> queued command ids, oldest first
        self._ready: dict[int, CommandSession] = {}  # device id -> session past welcome
        self._declared: dict[int, frozenset[str]] = {}  # device id -> commands of its live hello
        self._drains: dict[int, asyncio.Task[None]] = {}
        self._writes = LedgerWrites(ledger_writer)
        self._sweeper: asyncio.Task[None] | None = None
        self.finished: dict[str, int] = {state.value: 0 for state in FINAL_STATES}
        """Commands that reached each final state since start (for /metrics)."""
        self.round_trip_observers: list[Callable[[float], None]] = []
        """Called with the seconds from ``sent`` to the result of each answered command."""
        self.phase_observers: list[Callable[[str, float], None]] = []
        """Called with a phase and its seconds, for each command that passes it: ``to_sent``
        (accepted -> its frame handed to the connection; includes any wait in the device's
        queue), ``sent_to_result`` (-> its result read), ``result_to_stored`` (-> the final
        state durable, when waiters are told). Where a command's time goes (/metrics)."""
        self.state_observers: list[Callable[[CommandRecord], None]] = []
        """Called with the record after each state change (the live feed); must not block."""

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Load unfinished commands from the store; fail those that were in flight."""
        now = self._clock()
        rows = await self._committer.call(ledger.load_open)
        for record in rows:
            item = _Open(record)
            self._opened(item)
            if record.state == CommandState.QUEUED:
                self._queues.setdefault(record.device_id, deque()).append(record.id)
            else:
                self._finish(
                    item, CommandState.FAILED, now, error="gateway restarted before the result arrived"
                )
        if rows:
            log.info("commands: %d unfinished from the last run", len(rows))
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="command-sweeper")

    async def stop(self) -> None:
        """Stop delivering; queued commands stay queued in the store for the next start."""
        tasks = [t for t in (self._sweeper, *self._drains.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sweeper = None
        self._drains.clear()
        if self._writes.pending:
            with contextlib.suppress(Exception):
                await self._writes.flush()

    # -- operators' side ---------------------------------------------------------------

    async def submit(
        self,
        device: DeviceRecord,
        name: str,
        args: dict[str, Any],
        *,
        sender: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> CommandRecord:
        """Log a new command (durably, as queued) and start delivering it; returns its record.

        Raises CommandError when the device's declared commands are known and
        ``name`` is not one of them, or ``args`` is too large; TooManyOpenCommands (a
        CommandError) when the device already has ``max_open_per_device`` open.
        """
        check_submission(
            device,
            name,
            args,
            declared=self.declared_commands(device),
            open_now=self._per_device[device.id],
            max_open=self.max_open_per_device,
        )
        now = self._clock()
        record, insert = ledger.new_command(
            device_id=device.id,
            device=device.name,
            name=name,
            args=args,
            sender=sender,
            now_ms=now,
            ttl_ms=round(ttl_s * 1000),
            timeout_ms=max(1, round(timeout_s * 1000)),
        )
        item = _Open(record)
        self._opened(item)
        self._writes.add(insert)
        for observe in self.state_observers:
            observe(record)
        log.info("command %s %s for %s queued by %s", record.id, name, device.name, sender)
        session = self._ready.get(device.id)
        if session is not None and not self._queues.get(device.id):
            # connected, nothing ahead of it: "queued" and "sent" reach the store in one
            # transaction, before the frame leaves (one commit on the way out instead of two)
            await self._deliver(session, item)
            return record
        await self._writes.flush()
        if device.id in self._ready:
            self._enqueue(record)
        elif ttl_s <= 0:
            self._finish(item, CommandState.EXPIRED, now, error="device offline and the ttl is 0")
        else:
            self._enqueue(record)
        return record

    def declared_commands(self, device: DeviceRecord) -> frozenset[str] | None:
        """What ``device`` accepts: from its live hello, else its last one; None if never seen."""
        live = self._declared.get(device.id)
        if live is not None:
            return live
        if device.last_seen_ms is None and not device.agent:
            return None
        return frozenset(str(c.get("name", "")) for c in device.commands)

    def get(self, command_id: str) -> CommandRecord | None:
        """The command if it is still open (queued, sent, or its final state not yet stored)."""
        item = self._open.get(command_id)
        return None if item is None else item.record

    async def wait(self, command_id: str, timeout_s: float) -> CommandRecord | None:
        """Wait up to ``timeout_s`` for an open command to be final (and stored); its record.

        None if the command is not open (already final and stored, or unknown).
        """
        item = self._open.get(command_id)
        if item is None:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await item.done.wait()
        return item.record

    async def cancel(self, command_id: str, sender: str) -> CommandRecord:
        """Cancel a queued command (it becomes failed); raises CommandError if already sent or final."""
        item = self._open.get(command_id)
        if item is None:
            raise UnknownCommand(command_id)
        if item.record.state != CommandState.QUEUED:
            raise CommandError(
                f"command {command_id} is {item.record.state}; only a queued command can be cancelled"
            )
        self._finish(item, CommandState.FAILED, self._clock(), error=f"cancelled by {sender}")
        await item.done.wait()
        return item.record

    @property
    def open_counts(self) -> dict[str, int]:
        """Open commands by state (queued, sent): a copy, safe to take from a scraping thread."""
        return dict(self._by_state)

    def open_for(self, device_id: int) -> int:
        """Commands of the device queued or sent now (what ``max_open_per_device`` bounds)."""
        return self._per_device[device_id]

    # -- the device plane's session hooks ----------------------------------------------

    def session_ready(self, session: CommandSession, hello: Hello) -> None:
        """``welcome`` went out: remember what the device accepts, deliver its queue."""
        device_id = session.record.id
        self._ready[device_id] = session
        self._declared[device_id] = frozenset(command.name for command in hello.commands)
        if self._queues.get(device_id):
            self._kick(device_id)

    def result_received(self, session: CommandSession, result: Result) -> None:
        """A ``result`` arrived: finish the command it answers (unknown or late ones are logged)."""
        item = self._open.get(result.id)
        if item is None or item.record.state != CommandState.SENT or item.session is not session:
            log.info(
                "device %s: result for %s, which is not a command in flight on this connection; ignored",
                session.record.name,
                result.id,
            )
            return
        item.result_at = time.monotonic()
        self._phase("sent_to_result", item.result_at - (item.sent_at or item.result_at))
        now = self._clock()
        sent = item.record.sent_ms
        elapsed = 0 if sent is None else now - sent
        for observe in self.round_trip_observers:
            observe(elapsed / 1000)
        if result.ok:
            self._finish(item, CommandState.SUCCEEDED, now, value=result.value)
        else:
            self._finish(
                item,
                CommandState.FAILED,
                now,
                value=result.value,
                error=result.error or "the device reported failure without a reason",
            )

    def session_closed(self, session: CommandSession) -> None:
        """The connection ended: commands in flight on it cannot be answered any more."""
        device_id = session.record.id
        if self._ready.get(device_id) is session:
            del self._ready[device_id]
            self._declared.pop(device_id, None)
        now = self._clock()
        for item in list(self._open.values()):
            if item.session is session and item.record.state == CommandState.SENT:
                self._finish(
                    item,
                    CommandState.FAILED,
                    now,
                    error="the connection to the device closed before its result arrived (it may have run)",
                )

    def device_removed(self, device_id: int) -> None:
        """The device was removed from the registry (its id is never reused): its open commands fail."""
        now, error = self._clock(), "the device was removed from the gateway"
        for item in [i for i in self._open.values() if i.record.device_id == device_id]:
            if item.record.state in (CommandState.QUEUED, CommandState.SENT):
                self._finish(item, CommandState.FAILED, now, error=error)

    # -- delivery ---------------------------------------------------------------------

    def _enqueue(self, record: CommandRecord) -> None:
        self._queues.setdefault(record.device_id, deque()).append(record.id)
        if record.device_id in self._ready:
            self._kick(record.device_id)

    def _kick(self, device_id: int) -> None:
        task = self._drains.get(device_id)
        if task is None or task.done():
            self._drains[device_id] = asyncio.create_task(
                self._drain(device_id), name=f"commands-{device_id}"
            )

    async def _drain(self, device_id: int) -> None:
        """Send the device's queued commands in order while it has a ready session."""
        queue = self._queues.get(device_id)
        try:
            while queue:
                session = self._ready.get(device_id)
                if session is None:
                    return
                item = self._open.get(queue[0])
                if item is None or item.record.state != CommandState.QUEUED:
                    queue.popleft()
                    continue
                await self._deliver(session, item)
                if queue and queue[0] == item.record.id:
                    queue.popleft()
        finally:
            if self._drains.get(device_id) is asyncio.current_task():
                del self._drains[device_id]
            if queue is not None and not queue:
                self._queues.pop(device_id, None)

    async def _deliver(self, session: CommandSession, item: _Open) -> None:
        record = item.record
        now = self._clock()
        if now >= record.expires_ms:
            self._finish(item, CommandState.EXPIRED, now, error="not delivered within its ttl")
            return
        declared = self._declared.get(record.device_id, frozenset())
        if record.name not in declared:
            self._finish(
                item,
                CommandState.FAILED,
                now,
                error=f"the device does not accept command {record.name!r}; it declares: "
                + (", ".join(sorted(declared)) or "no commands"),
            )
            return
        record.deadline_ms = now + record.timeout_ms
        item.session = session
        self._transition(record, CommandState.SENT, now, f"to {session.peer}")
        await self._writes.flush()  # durable before the frame leaves: at most once
        if record.state != CommandState.SENT:
            return  # finished meanwhile (connection closed, cancelled)
        frame = Command(id=record.id, name=record.name, args=record.args, deadline=record.deadline_ms)
        try:
            await session.send_command(frame)
            item.sent_at = time.monotonic()
            self._phase("to_sent", item.sent_at - item.accepted_at)
        except Exception as exc:  # ConnectionClosed, mostly; the command failed, the service goes on
            if record.state == CommandState.SENT:
                self._finish(
                    item,
                    CommandState.FAILED,
                    self._clock(),
                    error=f"the connection failed while sending: {exc or type(exc).__name__}",
                )

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            self.sweep()

    def sweep(self) -> None:
        """Expire queued commands past their TTL, fail sent ones past their deadline (only due ones)."""
        now = self._clock()
        for due in list(self._deadlines.due(now, self._state_of)):
            item = self._open[due.command_id]
            record = item.record
            if record.state == CommandState.QUEUED:
                if item.session is None:
                    self._finish(item, CommandState.EXPIRED, now, error="not delivered within its ttl")
            elif record.state == CommandState.SENT:
                self._finish(
                    item,
                    CommandState.FAILED,
                    now,
                    error=f"no result within the timeout of {record.timeout_ms / 1000:g} s (it may have run)",
                )
        self._deadlines.compact(self._state_of)

    def _state_of(self, command_id: str) -> str | None:
        item = self._open.get(command_id)
        return None if item is None or item.record.final else item.record.state

    # -- state changes and their writes ---------------------------------------------------

    def _opened(self, item: _Open) -> None:
        """Count a command that is open (new or loaded) and put its next due time in the timetable."""
        record = item.record
        self._open[record.id] = item
        self._per_device[record.device_id] += 1
        self._by_state[record.state] += 1
        if record.state == CommandState.QUEUED:
            self._deadlines.add(record.id, record.state, record.expires_ms)

    def _phase(self, phase: str, seconds: float) -> None:
        for observe in self.phase_observers:
            observe(phase, seconds)

    def _transition(self, record: CommandRecord, state: CommandState, now: int, detail: str = "") -> None:
        was = record.state
        self._writes.add(ledger.transition(record, state, now, detail))
        self._by_state[was] -= 1
        self._by_state[state] += 1
        if state == CommandState.SENT:
            self._deadlines.add(record.id, state, record.deadline_ms)
        for observe in self.state_observers:
            observe(record)

    def _finish(
        self, item: _Open, state: CommandState, now: int, *, value: Any = None, error: str | None = None
    ) -> None:
        record = item.record
        was = record.state
        if record.state == CommandState.QUEUED:
            queue = self._queues.get(record.device_id)
            if queue is not None and record.id in queue and self._drains.get(record.device_id) is None:
                queue.remove(record.id)
                if not queue:
                    del self._queues[record.device_id]
        change = ledger.finish(record, state, now, value=value, error=error)  # sets the record's state
        self._by_state[was] -= 1
        self._per_device[record.device_id] -= 1
        if not self._per_device[record.device_id]:
            del self._per_device[record.device_id]
        for observe in self.state_observers:
            observe(record)
        self.finished[state.value] += 1
        log.info(
            "command %s %s for %s: %s%s",
            record.id,
            record.name,
            record.device,
            state,
            f" ({printable(record.error)})" if record.error else "",
        )

        def stored() -> None:
            self._open.pop(record.id, None)
            if item.result_at is not None:
                self._phase("result_to_stored", time.monotonic() - item.result_at)
            item.done.set()

        self._writes.add(change, on_stored=stored)


__all__ = ["MAX_ARGS_BYTES", "CommandError", "CommandService", "CommandSession", "UnknownCommand"]
