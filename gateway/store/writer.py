"""Group commit: many devices' frames, one SQLite transaction, then the acks.

The event loop hands accepted data frames to ``GroupCommitter.submit``; one
writer thread takes everything queued since its last commit, writes it in a
single transaction and commits (fsync), then tells each frame's sink on the
event loop that the frame is durable. While one commit runs, the next batch
gathers, so batches grow with load and a durable ack costs a fraction of an
fsync. ``wait_for_room`` bounds the queue: a session awaits it before reading
its next frame, which pushes back on the device's TCP connection instead of
growing memory. The bound counts the samples that wait for a commit, not those
of the commit in progress: the next batch gathers while one commits, so the
event loop and the writer work side by side at the ceiling instead of taking
turns (at most twice ``max_pending_samples`` held in all).

The writer owns batching, the thread and the callbacks, not SQL: what one batch's
transaction writes and refuses, and how a failure is kept to the device that caused it,
is ``batches.BatchWriter`` (gateway/store/batches.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from gateway.store import registry
from gateway.store.batches import Admit, BatchWriter, CommitSink, DeviceRevoked, Frame, Meta, Reset
from iotgw_common.protocol.messages import Event, Readings

log = logging.getLogger(__name__)
T = TypeVar("T")


class CommitListener(Protocol):
    """Told, on the event loop, what became durable and what changed (the live feed, gateway/operator/feed.py)."""

    def committed(self, frames: list[Frame]) -> None: ...

    def device_meta(self, device_id: int, fields: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class _Call:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


_Item = Frame | Meta | Reset | Admit | _Call


class GroupCommitter:
    """The store's single writer. Create, ``start()``, submit from the loop, ``await stop()``."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        max_pending_samples: int = 50_000,
        min_commit_interval: float = 0.005,
    ) -> None:
        self._conn = conn
        self._max_pending = max_pending_samples
        self._min_interval = min_commit_interval
        """Seconds from one commit's start to the next; under light load a commit waits out the
        rest, so it carries more frames: at 1,000 devices' frames/s, 40 % less CPU and a third
        fewer bytes written per reading for ~4 ms more ack latency (docs/performance.md)."""
        self._queue: list[_Item] = []  # under _cond: what the writer takes next
        self._urgent: list[_Call] = []  # under _cond: calls that run before the next batch
        self._pending: list[_Item] = []  # event loop only: submitted, not yet handed over
        self._pending_new = 0  # event loop only: samples in _pending
        self._queue_samples = 0  # under _cond: samples in _queue
        self._waiting_samples = 0  # event loop only: submitted, not yet taken by a commit
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._batches = BatchWriter(conn)  # used by the writer thread only
        self.pending_samples = 0
        self.listener: CommitListener | None = None
        """Hears committed frames (after their acks) and metadata updates; must not block."""
        self.commit_ms = CommitTimes()
        """How long each group commit took in the writer thread (logged at stop)."""

    @property
    def commits(self) -> int:
        """Transactions that stored frames."""
        return self._batches.commits

    @property
    def committed_samples(self) -> int:
        return self._batches.committed_samples

    @property
    def failed_commits(self) -> int:
        """Batches whose first transaction failed (frames then retried apart)."""
        return self._batches.failed_commits

    def start(self) -> None:
        """Start the writer thread; call from the event loop that will submit."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="iotgw-group-commit", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Commit what is queued, then end the writer thread. Safe to call twice."""
        self._hand_over()
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            log.info("group commits: %s", self.commit_ms)

    # -- called on the event loop ----------------------------------------------------

    def submit(self, sink: CommitSink, device_id: int, stream: str, message: Readings | Event) -> None:
        """Queue one accepted data frame; ``sink`` hears when it is durable."""
        samples = len(message.samples) if type(message) is Readings else 1
        self.pending_samples += samples
        self._waiting_samples += samples
        if self._waiting_samples >= self._max_pending:
            self._room.clear()
        self._pending_new += samples
        self._put(Frame(sink, device_id, stream, message, samples))

    def submit_meta(self, device_id: int, **fields: Any) -> None:
        """Queue an update of device metadata columns (agent, sensors, info, …)."""
        unknown = set(fields) - registry.META_COLUMNS
        if unknown:
            raise ValueError(f"not device metadata: {sorted(unknown)}")
        self._put(Meta(device_id, fields))
        if self.listener is not None:
            self.listener.device_meta(device_id, fields)

    def call(self, fn: Callable[[sqlite3.Connection], T], *, urgent: bool = False) -> asyncio.Future[T]:
        """Run ``fn(conn)`` in the writer thread after the next commit; await its result.

        ``fn`` manages its own transaction (the connection is in autocommit mode).

        ``urgent``: run it as soon as the writer is free, before the frames queued for the next
        group commit and without waiting out ``min_commit_interval``: its own short transaction
        instead of a place behind thousands of readings (the fleet's registry sync). Only for
        writes that need no frame submitted earlier to be stored first; they are ordered among
        themselves. (The command ledger has a file and a writer of its own,
        ``ledger_writer.LedgerWriter``.)
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if urgent:
            if self._stopping and self._thread is None:
                raise RuntimeError("the committer is stopped")
            with self._cond:
                self._urgent.append(_Call(fn, future))
                self._cond.notify()
        else:
            self._put(_Call(fn, future))
        return future

    def reset_device(self, device_id: int) -> None:
        """Accept frames of a device again after one of its commits failed.

        After a failed commit the writer refuses every later frame of that
        device, so that no frame behind the lost one becomes durable and gets
        acknowledged (a cumulative ack would then cover the lost frame). Call
        this when the device's next session starts, after its frames drained.
        """
        self._put(Reset(device_id))

    def admit(self, device_id: int, watermark: int) -> None:
        """A new session of the device starts; call after its earlier frames drained.

        ``watermark`` is ``registry.revocation_watermark`` read before the session's token was
        checked: a removal or rotation logged after it means the session's token is revoked, and
        its frames are refused with :class:`DeviceRevoked` (checked inside each commit). Also
        accepts the device's frames again after a failed commit (like ``reset_device``).
        """
        self._put(Admit(device_id, watermark))

    async def wait_for_room(self) -> None:
        """Return once fewer than ``max_pending_samples`` samples wait for a commit (those of
        the commit in progress do not count)."""
        if not self._room.is_set():
            await self._room.wait()

    def _put(self, item: _Item) -> None:
        if self._stopping and self._thread is None:
            raise RuntimeError("the committer is stopped")
        pending = self._pending
        pending.append(item)
        if len(pending) == 1:
            if self._loop is None:
                self._hand_over()
            else:  # everything submitted in this loop iteration goes over under one lock
                self._loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        items, self._pending = self._pending, []
        if not items:
            return
        samples, self._pending_new = self._pending_new, 0
        with self._cond:
            was_empty = not self._queue
            self._queue.extend(items)
            self._queue_samples += samples
            if was_empty:
                self._cond.notify()

    def _completed(self, stored: list[Frame], failed: list[tuple[Frame, BaseException]]) -> None:
        for frame, error in failed:
            self.pending_samples -= frame.samples
            frame.sink.on_commit_failed(error)
        for frame in stored:
            self.pending_samples -= frame.samples
            frame.sink.on_committed(frame.message.seq)
        if stored and self.listener is not None:
            self.listener.committed(stored)

    def _taken(self, samples: int) -> None:
        """A commit took ``samples`` off the queue: room for the next batch while it runs."""
        self._waiting_samples -= samples
        if self._waiting_samples < self._max_pending:
            self._room.set()

    # -- the writer thread ------------------------------------------------------------

    def _run(self) -> None:
        assert self._loop is not None
        loop = self._loop
        started = 0.0
        cond = self._cond
        while True:
            urgent: list[_Call] = []
            taken = 0
            with cond:
                while True:
                    if self._urgent:  # before the batch, and without its linger
                        urgent, self._urgent = self._urgent, []
                        break
                    if self._queue:
                        linger = started + self._min_interval - time.monotonic()
                        if linger > 0 and not self._stopping:
                            cond.wait(linger)  # an urgent call or stop() notifies meanwhile
                            continue
                        batch, self._queue = self._queue, []
                        taken, self._queue_samples = self._queue_samples, 0
                        break
                    if self._stopping:
                        return
                    cond.wait()
            if urgent:
                for call in urgent:
                    self._run_call(loop, call)
                continue
            if taken:
                _call_soon(loop, self._taken, taken)
            started = time.monotonic()
            outcome = self._batches.commit(batch)
            self.commit_ms.record(time.monotonic() - started)
            if outcome.stored or outcome.failed:
                _call_soon(loop, self._completed, outcome.stored, outcome.failed)
            for item in batch:
                if type(item) is _Call:
                    self._run_call(loop, item)

    def _run_call(self, loop: asyncio.AbstractEventLoop, call: _Call) -> None:
        try:
            result = call.fn(self._conn)
        except Exception as exc:
            _call_soon(loop, _settle, call.future, None, exc)
        else:
            _call_soon(loop, _settle, call.future, result, None)


class CommitTimes:
    """A small histogram of commit durations (writer thread writes, anyone reads)."""

    BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500)

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BOUNDS_MS) + 1)
        self.longest_ms = 0.0

    def record(self, seconds: float) -> None:
        ms = seconds * 1000
        self.longest_ms = max(self.longest_ms, ms)
        for i, bound in enumerate(self.BOUNDS_MS):
            if ms <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def __str__(self) -> str:
        parts = [f"<={b} ms: {n}" for b, n in zip(self.BOUNDS_MS, self.counts, strict=False) if n]
        if self.counts[-1]:
            parts.append(f">{self.BOUNDS_MS[-1]} ms: {self.counts[-1]}")
        return f"{sum(self.counts)} ({', '.join(parts)}; longest {self.longest_ms:.1f} ms)"


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed during shutdown: nothing to tell
        loop.call_soon_threadsafe(fn, *args)


__all__ = ["CommitListener", "CommitSink", "DeviceRevoked", "GroupCommitter"]
