"""The delivery engine: from the local store to a sink, behind persisted cursors.

The store is the queue. The engine reads readings (and events) whose id is above the
sink's cursors (``gateway.store.delivery``), has the sink encode each row, hands the
encoded batch to the sink's ``write``, and advances the cursors only once the sink
confirmed the batch. Ingest never waits for it: devices are acknowledged when their
frames are on disk, whatever the sink's target does. The engine knows nothing of any
target: the InfluxDB forwarder is ``DeliveryEngine(InfluxSink(...), ...)``
(``gateway.integrations.influx.sink``); the MQTT bridge is the next :class:`Sink`
(the interface, its errors and the settings the engine reads: ``gateway.integrations.sink``).

Threads. Reads and encoding run in a worker thread on the engine's own read-only
SQLite connection; ``Sink.write`` runs in a worker thread too. Every *write* to the
store (cursors, dead letters, state) goes through ``GroupCommitter.call``, so the
gateway keeps exactly one writer: no second connection competes with group commit
for SQLite's write lock, and cursor updates are ordered with retention deletes,
which run on the same thread. The price, one queued call per batch, is small next
to a network round trip.

Outcomes of a write (``Sink.write`` returns or raises :class:`DeliveryError`):

- accepted: the cursors move past the batch; state and counters are saved with them.
- ``retryable`` error (target away, overloaded, credentials refused, …): the same
  batch is retried with exponential backoff and jitter (honouring ``retry_after``),
  forever; the backlog waits in the store.
- other error: the target refuses some rows. The batch is split in halves until the
  refused rows stand alone; each is filed in ``dead_letters`` with the target's
  message, the rest is written. Rows the sink cannot encode at all
  (:class:`EncodeError`) go there too (status 0).

Dead letters that an operator marks (``iotgw deadletters --retry``) are encoded
again from the stored row, if it is still there, and resent.

A crash between the target's answer and the cursor update replays the batch on
restart: a sink must make a replay harmless (InfluxDB keys each point by series and
timestamp, so it overwrites identical points).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from gateway import store
from gateway.integrations.sink import DeliveryError, DeliverySettings, DeliveryStartError, EncodeError, Sink
from gateway.store import delivery
from gateway.store.delivery import Refused, SinkState
from gateway.store.writer import GroupCommitter
from iotgw_common.clock import now_ms

__all__ = ["DeliveryEngine"]

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKOFF_FIRST_S = 0.5
"""The first wait after a failed write; it doubles with each retry up to ``retry_max``."""
DEAD_LETTER_CHECK_S = 2.0
"""How often the engine looks for dead letters marked for a resend."""


@dataclass(slots=True)
class Item:
    """One stored row on its way: a reading or an event, and its encoded item (or why it has none)."""

    kind: str
    row_id: int
    device_id: int
    ts: int
    line: str
    error: str = ""
    dead_id: int = 0  # set when the item is a dead letter being resent


@dataclass(slots=True)
class Batch:
    items: list[Item] = field(default_factory=list)
    refused: list[Item] = field(default_factory=list)
    last_reading: int | None = None
    last_event: int | None = None
    readings: int = 0
    events: int = 0
    full: bool = False

    @property
    def empty(self) -> bool:
        return self.readings == 0 and self.events == 0


def _refused(item: Item, error: str, status: int) -> Refused:
    return Refused(item.kind, item.row_id, item.device_id, item.ts, item.line, error, status)


class DeliveryEngine:
    """Delivers the store's readings and events to one sink. Create, ``await start()``, ``await stop()``."""

    def __init__(self, sink: Sink, settings: DeliverySettings, store_path: str | Path,
                 committer: GroupCommitter) -> None:  # fmt: skip
        self.sink = sink
        self.settings = settings
        self.store_path = Path(store_path)
        self.committer = committer
        self.readings_cursor = delivery.cursor_name(sink.name, "readings")
        self.events_cursor = delivery.cursor_name(sink.name, "events")
        self.state = SinkState(name=sink.name, target=sink.target, state="starting")
        """What the engine saves to ``forwarder_state``; read the store (``delivery.read_status``) for status."""
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_thread: set[asyncio.Future[Any]] = set()
        self._reading_cursor = 0
        self._event_cursor = 0
        self._pending_since: float | None = None
        self._prefetch: asyncio.Future[Batch] | None = None
        self._committing: asyncio.Future[None] | None = None
        self._next_dead_check = 0.0
        self._poll_s = min(0.2, settings.max_delay)

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, check the target, start delivering.

        Raises DeliveryStartError if the sink is required and its target does not answer
        or refuses the credentials; otherwise such a failure is logged and the engine
        keeps retrying in the background.
        """
        sink = self.sink
        self._conn = store.connect(self.store_path, create=False)
        self._reading_cursor, self._event_cursor = await self._thread(self._read_cursors)
        self.state.started_ms = now_ms()
        try:
            await self._thread(sink.check)
        except DeliveryError as exc:
            message = f"{sink.title} {sink.target}: {exc.summary}"
            if self.settings.required:
                await self.aclose()
                raise DeliveryStartError(f"{message} ({sink.name}.required is true: not starting)") from None
            log.error("%s; readings wait in the store and delivery keeps retrying", message)
            self.state.state = "retrying"
            self.state.last_error, self.state.last_error_ms = exc.summary, now_ms()
        else:
            log.info("forwarding to %s %s from reading id %d", sink.title, sink.target, self._reading_cursor)
            self.state.state = "ok"
        await self._save_state()
        self._task = asyncio.create_task(self._run(), name=f"{sink.name}-delivery")

    async def stop(self) -> None:
        """Stop delivering; what was not confirmed stays in the store. Safe to call twice."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self.state.state = "stopped"
            with contextlib.suppress(Exception):
                await self._commit_done()
            with contextlib.suppress(Exception):
                await self._save_state()
        await self.aclose()

    async def aclose(self) -> None:
        """Close the sink and the read connection (``stop`` calls it)."""
        if self._in_thread:  # a read or a write still running: let it end (bounded)
            await asyncio.wait(self._in_thread, timeout=self.settings.timeout + 1)
        self.sink.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _thread(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn`` in a worker thread; remembered so that stop can wait for it."""
        future = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
        self._in_thread.add(future)
        future.add_done_callback(self._in_thread.discard)
        return future

    # -- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or a store error: log, wait, go on (never a silent stop)
                log.exception(
                    "%s delivery step failed; retrying in %.0f s", self.sink.title, self.settings.retry_max
                )
                if self._prefetch is not None:
                    await asyncio.wait([self._prefetch])
                    self._prefetch = None
                await asyncio.sleep(self.settings.retry_max)

    async def _step(self) -> None:
        prefetched, self._prefetch = self._prefetch, None
        batch = None if prefetched is None else await prefetched
        if time.monotonic() >= self._next_dead_check:  # (no read in flight: one connection, one thread)
            self._next_dead_check = time.monotonic() + DEAD_LETTER_CHECK_S
            await self._resend_dead_letters()
        if batch is None:
            batch = await self._thread(self._read_batch, self._reading_cursor, self._event_cursor)
        if batch.empty:
            self._pending_since = None
            await asyncio.sleep(self._poll_s)
            return
        if not batch.full:
            now = time.monotonic()
            if self._pending_since is None:
                self._pending_since = now
            wait = self._pending_since + self.settings.max_delay - now
            if wait > 0:
                await asyncio.sleep(min(wait, self._poll_s * 5))
                return
        self._pending_since = None
        if batch.full:  # a backlog: read and encode the next batch while this one is on the wire
            self._prefetch = self._thread(
                self._read_batch,
                self._reading_cursor if batch.last_reading is None else batch.last_reading,
                self._event_cursor if batch.last_event is None else batch.last_event,
            )
        dead = await self._deliver(batch.items)
        refused = [_refused(item, exc.message, exc.status or 0) for item, exc in dead]
        refused += [_refused(item, item.error, 0) for item in batch.refused]
        for r in refused:
            log.error("dead letter: %s %d of device id %d: %s", r.kind, r.row_id, r.device_id, r.error)
        state = self.state
        state.sent_readings += batch.readings
        state.sent_events += batch.events
        state.batches += 1
        state.last_success_ms = now_ms()
        # The cursor commit (an fsync in the writer thread) overlaps the next batch's write;
        # at most one is in flight, and the writer thread runs them in order.
        await self._commit_done()
        self._committing = self.committer.call(
            functools.partial(
                delivery.commit_batch,
                sink=self.sink.name,
                readings_to=batch.last_reading,
                events_to=batch.last_event,
                refused=refused,
                state=self._snapshot(),
            )
        )
        if batch.last_reading is not None:
            self._reading_cursor = batch.last_reading
        if batch.last_event is not None:
            self._event_cursor = batch.last_event

    async def _commit_done(self) -> None:
        """Wait for the last cursor commit; if it failed, the rows are sent again after a restart."""
        committing, self._committing = self._committing, None
        if committing is not None:
            await committing

    async def _deliver(self, items: list[Item]) -> list[tuple[Item, DeliveryError]]:
        """Write ``items``; retry while the target is away; return the items it refuses."""
        dead: list[tuple[Item, DeliveryError]] = []
        todo = [items] if items else []
        while todo:
            chunk = todo.pop()
            lines = [item.line for item in chunk]
            while True:
                self.state.last_attempt_ms = now_ms()
                try:
                    await self._thread(self.sink.write, lines)
                except DeliveryError as exc:
                    if exc.retryable:
                        await self._wait_after(exc)
                        continue
                    if len(chunk) == 1:
                        dead.append((chunk[0], exc))
                    else:  # find the refused items: halves, left first
                        middle = len(chunk) // 2
                        todo.append(chunk[middle:])
                        todo.append(chunk[:middle])
                    break
                else:
                    if self.state.state != "ok":  # after retries, or a failed check at start
                        self._recovered()
                    break
        return dead

    async def _wait_after(self, exc: DeliveryError) -> None:
        state = self.state
        state.retries += 1
        state.total_retries += 1
        state.state = "retrying"
        changed = exc.summary != state.last_error
        state.last_error, state.last_error_ms = exc.summary, now_ms()
        retry_max = self.settings.retry_max
        delay = min(retry_max, BACKOFF_FIRST_S * 2 ** min(state.retries - 1, 20))
        delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: many gateways, one target
        if exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, 10 * retry_max))
        if changed or state.retries in (1, 10) or state.retries % 100 == 0:
            level = logging.ERROR if exc.needs_operator else logging.WARNING
            log.log(level, "%s %s: %s; retry %d in %.1f s (readings wait in the store)",
                    self.sink.title, self.sink.target, exc.summary, state.retries, delay)  # fmt: skip
        await self._save_state()
        await asyncio.sleep(delay)

    def _recovered(self) -> None:
        state = self.state
        outage = (now_ms() - (state.last_success_ms or state.started_ms or now_ms())) / 1000
        log.warning("%s %s accepts writes again after %d retries (%.0f s since the last success)",
                    self.sink.title, self.sink.target, state.retries, outage)  # fmt: skip
        state.retries = 0
        state.state = "ok"

    # -- reading and encoding (worker thread) --------------------------------------------

    def _read_cursors(self) -> tuple[int, int]:
        assert self._conn is not None
        return (
            delivery.cursor_position(self._conn, self.readings_cursor),
            delivery.cursor_position(self._conn, self.events_cursor),
        )

    def _read_batch(self, reading_cursor: int, event_cursor: int) -> Batch:
        conn = self._conn
        assert conn is not None
        limit = self.settings.batch_size
        batch = Batch()
        readings = delivery.pending_readings(conn, reading_cursor, limit)
        events = delivery.pending_events(conn, event_cursor, limit) if self.settings.events else []
        if not readings and not events:
            return batch
        sink = self.sink
        sink.prepare(conn)
        items, refused = batch.items, batch.refused
        encode_reading, encode_event = sink.encode_reading, sink.encode_event
        for row_id, device_id, ts, data in readings:
            try:
                line = encode_reading(conn, device_id, ts, data)
            except EncodeError as exc:
                refused.append(Item("reading", row_id, device_id, ts, "", str(exc)))
            else:
                items.append(Item("reading", row_id, device_id, ts, line))
        for row_id, device_id, ts, seq, name, data in events:
            try:
                line = encode_event(conn, device_id, ts, seq, name, data)
            except EncodeError as exc:
                refused.append(Item("event", row_id, device_id, ts, "", str(exc)))
            else:
                items.append(Item("event", row_id, device_id, ts, line))
        batch.readings, batch.events = len(readings), len(events)
        batch.last_reading = readings[-1][0] if readings else None
        batch.last_event = events[-1][0] if events else None
        batch.full = len(readings) == limit or len(events) == limit
        return batch

    # -- dead letters ----------------------------------------------------------------------

    async def _resend_dead_letters(self) -> None:
        """Resend dead letters an operator marked with ``iotgw deadletters --retry``."""
        items = await self._thread(self._read_retries)
        if not items:
            return
        encodable = [item for item in items if not item.error]
        dead = await self._deliver(encodable)
        failed = {item.dead_id: (exc.message, exc.status or 0) for item, exc in dead}
        failed.update({item.dead_id: (item.error, 0) for item in items if item.error})
        resent = [item.dead_id for item in items if item.dead_id not in failed]
        log.warning("dead letters resent: %d written, %d refused again", len(resent), len(failed))
        await self._commit_done()
        await self.committer.call(functools.partial(delivery.settle_retries, resent=resent, failed=failed))

    def _read_retries(self) -> list[Item]:
        conn = self._conn
        assert conn is not None
        letters = delivery.letters_to_resend(conn, self.sink.name, self.settings.batch_size)
        if not letters:
            return []
        sink = self.sink
        sink.prepare(conn, resend=True)
        items = []
        for letter in letters:
            item = Item(
                letter.kind, letter.row_id, letter.device_id, letter.ts, letter.line, dead_id=letter.id
            )
            try:  # encode again from the stored row if it is still there (config may be fixed)
                if letter.kind == "reading":
                    data = delivery.stored_reading(conn, letter.row_id)
                    if data is not None:
                        item.line = sink.encode_reading(conn, letter.device_id, letter.ts, data)
                else:
                    event = delivery.stored_event(conn, letter.row_id)
                    if event is not None:
                        seq, name, data = event
                        item.line = sink.encode_event(conn, letter.device_id, letter.ts, seq, name, data)
            except EncodeError as exc:
                item.error = str(exc)
            if not item.line and not item.error:
                item.error = "the stored row is gone and no line was kept"
            items.append(item)
        return items

    # -- state -------------------------------------------------------------------------------

    def _snapshot(self) -> SinkState:
        """A copy of the state to save (the writer thread saves it later; the loop goes on changing its own)."""
        self.state.updated_ms = now_ms()
        return msgspec.structs.replace(self.state)

    async def _save_state(self) -> None:
        await self._commit_done()
        await self.committer.call(functools.partial(delivery.save_state, state=self._snapshot()))
