"""The InfluxDB forwarder: from the local store to InfluxDB, behind persisted cursors.

The store is the queue. The forwarder reads readings (and events) whose id is
above its cursor, encodes them as line protocol (``lineprotocol``), hands the
body to a writer (``influx``), and advances the cursor only once InfluxDB has
accepted the batch. Ingest never waits for it: devices are acknowledged when
their frames are on disk, whatever InfluxDB does.

Threads. Reads and encoding run in a worker thread on the forwarder's own
read-only SQLite connection; HTTP runs in a worker thread too. Every *write*
(cursor, dead letters, state) goes through ``GroupCommitter.call`` so the
gateway keeps exactly one writer: no second connection competes with group
commit for SQLite's write lock (no SQLITE_BUSY waits in the ingest path, no
busy-timeout tuning), and cursor updates are ordered with retention deletes,
which run on the same thread. The price, one queued call per batch, is small
next to an HTTP round trip.

Outcomes of a write:

- accepted: cursor moves past the batch; state and counters are persisted.
- unreachable, 5xx, 429, 401/403 (credentials), 404 (database/bucket): the
  same batch is retried with exponential backoff and jitter (honouring
  ``Retry-After``), forever; the backlog waits in the store.
- another 4xx: InfluxDB refuses some points (a field type conflict, say).
  The batch is split in halves until the refused points stand alone; each is
  moved to ``dead_letters`` with InfluxDB's message, the rest is written.
  Points the encoder cannot write at all go there too (status 0).

A crash between InfluxDB's answer and the cursor update replays the batch on
restart; each point is keyed by series and millisecond timestamp, so the
replay overwrites identical points and creates no duplicates.

``iotgw status`` and ``iotgw deadletters`` read ``forwarder_state``,
``cursors`` and ``dead_letters`` from the store while the gateway runs.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from gateway import store
from gateway.config import InfluxSettings
from gateway.integrations.influx.lineprotocol import (
    LineError,
    encode_event,
    encode_reading,
    join_lines,
    series_prefix,
)
from gateway.integrations.influx.writers import WriteError, Writer, make_writer
from gateway.store.writer import GroupCommitter

log = logging.getLogger(__name__)
T = TypeVar("T")

NAME = "influx"
READINGS_CURSOR = "influx.readings"
EVENTS_CURSOR = "influx.events"
BACKOFF_FIRST_S = 0.5
DEAD_LETTER_CHECK_S = 2.0
LABEL_CACHE_S = 30.0


class ForwarderStartError(RuntimeError):
    """``influx.required`` is set and InfluxDB is unreachable or refuses the credentials at start."""


@dataclass(slots=True)
class Item:
    """One stored row on its way: a reading or an event, and its line (or why it has none)."""

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


@dataclass(slots=True)
class State:
    """What ``forwarder_state`` holds (one row per forwarder)."""

    name: str
    target: str
    state: str = "starting"
    started_ms: int | None = None
    last_success_ms: int | None = None
    last_attempt_ms: int | None = None
    last_error: str = ""
    last_error_ms: int | None = None
    retries: int = 0
    total_retries: int = 0
    sent_readings: int = 0
    sent_events: int = 0
    batches: int = 0
    updated_ms: int = 0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Forwarder:
    """Create, ``await start()``, ``await stop()``. One per gateway."""

    def __init__(self, settings: InfluxSettings, store_path: str | Path, committer: GroupCommitter,
                 writer: Writer | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.store_path = Path(store_path)
        self.committer = committer
        self.writer = writer if writer is not None else make_writer(settings)
        mode = settings.string_newlines
        self.literal_newlines = mode == "literal" or (mode == "auto" and settings.api == "v1")
        self.state = State(NAME, self.writer.target)
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_thread: set[asyncio.Future[Any]] = set()
        self._reading_cursor = 0
        self._event_cursor = 0
        self._pending_since: float | None = None
        self._prefetch: asyncio.Future[Batch] | None = None
        self._committing: asyncio.Future[None] | None = None
        self._next_dead_check = 0.0
        self._prefixes: dict[tuple[int, str | None], str] = {}
        self._prefixes_at = 0.0
        self._poll_s = min(0.2, settings.max_delay)

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, check the target, start forwarding.

        Raises ForwarderStartError if ``influx.required`` and the target does not
        answer or refuses the credentials; otherwise such a failure is logged
        and the forwarder keeps retrying in the background.
        """
        self._conn = store.connect(self.store_path, create=False)
        self._reading_cursor, self._event_cursor = await self._thread(self._read_cursors)
        self.state.started_ms = now_ms()
        try:
            await self._thread(self.writer.check)
        except WriteError as exc:
            message = f"InfluxDB {self.writer.target}: {exc.summary}"
            if self.settings.required:
                await self.aclose()
                raise ForwarderStartError(f"{message} (influx.required is true: not starting)") from None
            log.error("%s; readings wait in the store and the forwarder keeps retrying", message)
            self.state.state = "retrying"
            self.state.last_error, self.state.last_error_ms = exc.summary, now_ms()
        else:
            log.info("forwarding to InfluxDB %s from reading id %d", self.writer.target, self._reading_cursor)
            self.state.state = "ok"
        await self._save_state()
        self._task = asyncio.create_task(self._run(), name="influx-forwarder")

    async def stop(self) -> None:
        """Stop forwarding; what was not confirmed stays in the store. Safe to call twice."""
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
        if self._in_thread:  # a read or an HTTP request still running: let it end (bounded)
            await asyncio.wait(self._in_thread, timeout=self.settings.timeout + 1)
        self.writer.close()
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
                log.exception("forwarder step failed; retrying in %.0f s", self.settings.retry_max)
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
        dead_rows = [_dead_row(item, exc.message, exc.status or 0) for item, exc in dead]
        dead_rows += [_dead_row(item, item.error, 0) for item in batch.refused]
        for row in dead_rows:
            log.error("dead letter: %s %d of device id %d: %s", row[1], row[2], row[3], row[6])
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
                _commit_batch,
                readings_to=batch.last_reading,
                events_to=batch.last_event,
                dead_rows=dead_rows,
                state=self._state_row(),
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

    async def _deliver(self, items: list[Item]) -> list[tuple[Item, WriteError]]:
        """Write ``items``; retry while InfluxDB is away; return the points it refuses."""
        dead: list[tuple[Item, WriteError]] = []
        todo = [items] if items else []
        while todo:
            chunk = todo.pop()
            body = join_lines(item.line for item in chunk)
            while True:
                self.state.last_attempt_ms = now_ms()
                try:
                    await self._thread(self.writer.write, body)
                except WriteError as exc:
                    if exc.retryable:
                        await self._wait_after(exc)
                        continue
                    if len(chunk) == 1:
                        dead.append((chunk[0], exc))
                    else:  # find the refused points: halves, left first
                        middle = len(chunk) // 2
                        todo.append(chunk[middle:])
                        todo.append(chunk[:middle])
                    break
                else:
                    if self.state.retries:
                        self._recovered()
                    break
        return dead

    async def _wait_after(self, exc: WriteError) -> None:
        state = self.state
        state.retries += 1
        state.total_retries += 1
        state.state = "retrying"
        changed = exc.summary != state.last_error
        state.last_error, state.last_error_ms = exc.summary, now_ms()
        delay = min(self.settings.retry_max, BACKOFF_FIRST_S * 2 ** min(state.retries - 1, 20))
        delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: many gateways, one InfluxDB
        if exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, 10 * self.settings.retry_max))
        if changed or state.retries in (1, 10) or state.retries % 100 == 0:
            level = logging.ERROR if exc.status in (401, 403, 404) else logging.WARNING
            log.log(level, "InfluxDB %s: %s; retry %d in %.1f s (readings wait in the store)",
                    self.writer.target, exc.summary, state.retries, delay)  # fmt: skip
        await self._save_state()
        await asyncio.sleep(delay)

    def _recovered(self) -> None:
        state = self.state
        outage = (now_ms() - (state.last_success_ms or state.started_ms or now_ms())) / 1000
        log.warning("InfluxDB %s accepts writes again after %d retries (%.0f s since the last success)",
                    self.writer.target, state.retries, outage)  # fmt: skip
        state.retries = 0
        state.state = "ok"

    # -- reading and encoding (worker thread) --------------------------------------------

    def _read_cursors(self) -> tuple[int, int]:
        assert self._conn is not None
        cursors = dict(
            self._conn.execute(
                "SELECT name, last_id FROM cursors WHERE name IN (?, ?)", (READINGS_CURSOR, EVENTS_CURSOR)
            ).fetchall()
        )
        return cursors.get(READINGS_CURSOR, 0), cursors.get(EVENTS_CURSOR, 0)

    def _read_batch(self, reading_cursor: int, event_cursor: int) -> Batch:
        conn = self._conn
        assert conn is not None
        limit = self.settings.batch_size
        batch = Batch()
        readings = conn.execute(
            "SELECT id, device_id, ts, data FROM readings WHERE id > ? ORDER BY id LIMIT ?",
            (reading_cursor, limit),
        ).fetchall()
        events = []
        if self.settings.events:
            events = conn.execute(
                "SELECT id, device_id, ts, seq, name, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (event_cursor, limit),
            ).fetchall()
        if not readings and not events:
            return batch
        self._refresh_prefixes()
        literal = self.literal_newlines
        items, refused = batch.items, batch.refused
        for row_id, device_id, ts, data in readings:
            try:
                line = encode_reading(self._prefix(device_id, None), data, ts, literal_newlines=literal)
            except LineError as exc:
                refused.append(Item("reading", row_id, device_id, ts, "", str(exc)))
            else:
                items.append(Item("reading", row_id, device_id, ts, line))
        for row_id, device_id, ts, seq, name, data in events:
            try:
                line = encode_event(self._prefix(device_id, name), seq, data, ts, literal_newlines=literal)
            except LineError as exc:
                refused.append(Item("event", row_id, device_id, ts, "", str(exc)))
            else:
                items.append(Item("event", row_id, device_id, ts, line))
        batch.readings, batch.events = len(readings), len(events)
        batch.last_reading = readings[-1][0] if readings else None
        batch.last_event = events[-1][0] if events else None
        batch.full = len(readings) == limit or len(events) == limit
        return batch

    def _refresh_prefixes(self) -> None:
        if time.monotonic() - self._prefixes_at > LABEL_CACHE_S:
            self._prefixes.clear()
            self._prefixes_at = time.monotonic()

    def _prefix(self, device_id: int, event: str | None) -> str:
        """``measurement,device=..,labels.. `` for a device (and an event name); cached."""
        key = (device_id, event)
        prefix = self._prefixes.get(key)
        if prefix is None:
            assert self._conn is not None
            row = self._conn.execute("SELECT name, labels FROM devices WHERE id = ?", (device_id,)).fetchone()
            if row is None:  # removed without --purge: its stored readings still go out
                name, labels = f"removed-{device_id}", {}
            else:
                name, labels = row[0], msgspec.json.decode(row[1])
            tags = {**labels, "device": name}
            measurement = self.settings.measurement
            if event is not None:
                tags["event"] = event
                measurement += "_events"
            prefix = series_prefix(measurement, tags)  # raises LineError for a bad label
            self._prefixes[key] = prefix
        return prefix

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
        await self.committer.call(functools.partial(_settle_retries, resent=resent, failed=failed))

    def _read_retries(self) -> list[Item]:
        conn = self._conn
        assert conn is not None
        rows = conn.execute(
            "SELECT id, kind, row_id, device_id, ts, line FROM dead_letters "
            "WHERE forwarder = ? AND state = 'retry' ORDER BY id LIMIT ?",
            (NAME, self.settings.batch_size),
        ).fetchall()
        if rows:
            self._prefixes.clear()  # labels may have been fixed since
        items = []
        literal = self.literal_newlines
        for dead_id, kind, row_id, device_id, ts, line in rows:
            item = Item(kind, row_id, device_id, ts, line, dead_id=dead_id)
            try:  # encode again from the stored row if it is still there (config may be fixed)
                if kind == "reading":
                    source = conn.execute("SELECT data FROM readings WHERE id = ?", (row_id,)).fetchone()
                    if source is not None:
                        item.line = encode_reading(self._prefix(device_id, None), source[0], ts,
                                                   literal_newlines=literal)  # fmt: skip
                else:
                    source = conn.execute(
                        "SELECT seq, name, data FROM events WHERE id = ?", (row_id,)
                    ).fetchone()
                    if source is not None:
                        item.line = encode_event(self._prefix(device_id, source[1]), source[0], source[2], ts,
                                                 literal_newlines=literal)  # fmt: skip
            except LineError as exc:
                item.error = str(exc)
            if not item.line and not item.error:
                item.error = "the stored row is gone and no line was kept"
            items.append(item)
        return items

    # -- state -------------------------------------------------------------------------------

    def _state_row(self) -> dict[str, Any]:
        self.state.updated_ms = now_ms()
        return asdict(self.state)

    async def _save_state(self) -> None:
        await self._commit_done()
        await self.committer.call(functools.partial(_write_state, state=self._state_row()))


# -- run in the writer thread (GroupCommitter.call) --------------------------------------------


def _dead_row(item: Item, error: str, status: int) -> tuple[Any, ...]:
    now = now_ms()
    return (NAME, item.kind, item.row_id, item.device_id, item.ts, item.line, error, status, "dead", now, now)


def _upsert_state(conn: sqlite3.Connection, state: dict[str, Any]) -> None:
    columns = ", ".join(state)
    marks = ", ".join("?" for _ in state)
    conn.execute(f"INSERT OR REPLACE INTO forwarder_state ({columns}) VALUES ({marks})", list(state.values()))


def _write_state(conn: sqlite3.Connection, *, state: dict[str, Any]) -> None:
    _upsert_state(conn, state)  # one statement: autocommit


def _commit_batch(conn: sqlite3.Connection, *, readings_to: int | None, events_to: int | None,
                  dead_rows: list[tuple[Any, ...]], state: dict[str, Any]) -> None:  # fmt: skip
    """Advance the cursors past a delivered batch, file its dead letters, save the state: one transaction."""
    conn.execute("BEGIN")
    try:
        for name, last_id in ((READINGS_CURSOR, readings_to), (EVENTS_CURSOR, events_to)):
            if last_id is not None:
                conn.execute(
                    "INSERT INTO cursors (name, last_id) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id",
                    (name, last_id),
                )
        if dead_rows:
            conn.executemany(
                "INSERT INTO dead_letters (forwarder, kind, row_id, device_id, ts, line, error, status, state, "
                "created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                dead_rows,
            )
        _upsert_state(conn, state)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _settle_retries(conn: sqlite3.Connection, *, resent: list[int],
                    failed: dict[int, tuple[str, int]]) -> None:  # fmt: skip
    now = now_ms()
    conn.execute("BEGIN")
    try:
        conn.executemany(
            "UPDATE dead_letters SET state = 'resent', updated_ms = ? WHERE id = ?",
            [(now, i) for i in resent],
        )
        conn.executemany(
            "UPDATE dead_letters SET state = 'dead', error = ?, status = ?, attempts = attempts + 1, "
            "updated_ms = ? WHERE id = ?",
            [(error, status, now, i) for i, (error, status) in failed.items()],
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# -- read by the CLI (any process) -------------------------------------------------------------


class Status(msgspec.Struct, kw_only=True):
    """``iotgw status``: the forwarder as the store shows it."""

    configured: bool
    name: str = NAME
    target: str = ""
    state: str = ""
    started_ms: int | None = None
    last_success_ms: int | None = None
    last_attempt_ms: int | None = None
    last_error: str = ""
    last_error_ms: int | None = None
    retries: int = 0
    total_retries: int = 0
    sent_readings: int = 0
    sent_events: int = 0
    batches: int = 0
    updated_ms: int | None = None
    cursor_readings: int = 0
    cursor_events: int = 0
    pending_readings: int = 0
    pending_events: int = 0
    oldest_pending_ts: int | None = None
    dead_letters: int = 0
    dead_letters_retrying: int = 0


def read_status(conn: sqlite3.Connection) -> Status:
    """The forwarder's persisted state plus what waits for it; safe while the gateway runs."""
    row = conn.execute(
        "SELECT target, state, started_ms, last_success_ms, last_attempt_ms, last_error, last_error_ms, "
        "retries, total_retries, sent_readings, sent_events, batches, updated_ms "
        "FROM forwarder_state WHERE name = ?",
        (NAME,),
    ).fetchone()
    if row is None:
        return Status(configured=False)
    cursors = dict(
        conn.execute(
            "SELECT name, last_id FROM cursors WHERE name IN (?, ?)", (READINGS_CURSOR, EVENTS_CURSOR)
        ).fetchall()
    )
    r_cursor, e_cursor = cursors.get(READINGS_CURSOR, 0), cursors.get(EVENTS_CURSOR, 0)
    (pending_r,) = conn.execute("SELECT count(*) FROM readings WHERE id > ?", (r_cursor,)).fetchone()
    (pending_e,) = conn.execute("SELECT count(*) FROM events WHERE id > ?", (e_cursor,)).fetchone()
    oldest = conn.execute("SELECT ts FROM readings WHERE id > ? ORDER BY id LIMIT 1", (r_cursor,)).fetchone()
    dead = dict(
        conn.execute(
            "SELECT state, count(*) FROM dead_letters WHERE forwarder = ? GROUP BY state", (NAME,)
        ).fetchall()
    )
    return Status(
        configured=True,
        target=row[0],
        state=row[1],
        started_ms=row[2],
        last_success_ms=row[3],
        last_attempt_ms=row[4],
        last_error=row[5],
        last_error_ms=row[6],
        retries=row[7],
        total_retries=row[8],
        sent_readings=row[9],
        sent_events=row[10],
        batches=row[11],
        updated_ms=row[12],
        cursor_readings=r_cursor,
        cursor_events=e_cursor,
        pending_readings=pending_r,
        pending_events=pending_e,
        oldest_pending_ts=None if oldest is None else oldest[0],
        dead_letters=dead.get("dead", 0),
        dead_letters_retrying=dead.get("retry", 0),
    )


class DeadLetter(msgspec.Struct):
    id: int
    kind: str
    row_id: int
    device: str
    ts: int
    line: str
    error: str
    status: int
    state: str
    attempts: int
    created_ms: int
    updated_ms: int


def list_dead_letters(conn: sqlite3.Connection, *, include_resent: bool = False) -> list[DeadLetter]:
    where = "" if include_resent else "AND d.state != 'resent'"
    rows = conn.execute(
        "SELECT d.id, d.kind, d.row_id, coalesce(v.name, 'removed-' || d.device_id), d.ts, d.line, d.error, "
        "d.status, d.state, d.attempts, d.created_ms, d.updated_ms "
        f"FROM dead_letters d LEFT JOIN devices v ON v.id = d.device_id WHERE d.forwarder = ? {where} "
        "ORDER BY d.id",
        (NAME,),
    ).fetchall()
    return [DeadLetter(*row) for row in rows]


def mark_for_retry(conn: sqlite3.Connection, ids: list[int] | None) -> int:
    """Mark dead letters (all that are dead if ``ids`` is None) for the running forwarder to resend.

    A short transaction from any process (WAL, busy timeout); returns how many were marked.
    """
    now = now_ms()
    conn.execute("BEGIN IMMEDIATE")
    try:
        if ids is None:
            count = conn.execute(
                "UPDATE dead_letters SET state = 'retry', updated_ms = ? WHERE forwarder = ? AND state = 'dead'",
                (now, NAME),
            ).rowcount
        else:
            count = 0
            for dead_id in ids:
                count += conn.execute(
                    "UPDATE dead_letters SET state = 'retry', updated_ms = ? "
                    "WHERE forwarder = ? AND id = ? AND state = 'dead'",
                    (now, NAME, dead_id),
                ).rowcount
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return count
