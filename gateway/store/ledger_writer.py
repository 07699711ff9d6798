"""The command ledger's own writer: one thread, one connection to the ledger file.

The ledger (``commands``, ``command_states``) is in a file of its own (``schema.ledger_path``)
so that a command's durable writes (``sent`` before the frame leaves, the result before the
HTTP answer) neither wait for a group commit of readings in progress nor share its writer
thread. A ledger transaction on a quiet disk takes well under a millisecond, and the event loop
waits for it inline either way, so :meth:`LedgerWriter.write` runs it **on the loop's own
thread** when the writer thread is idle and nothing is queued: no hand-off to the thread and
back, each of which waits for a core on a busy machine (docs/performance.md, "Commands: a fast
path"). Otherwise, and on a slow disk (a direct write that took longer than
:data:`INLINE_WAIT_S` sends the writes to the thread until it has seen :data:`FAST_WRITES`
quick ones in a row), it queues the write and waits for it inline, up to
:data:`INLINE_WAIT_S`; a write that takes longer is reported later, by a callback the writer
thread puts on the loop with an urgent context (``iotgw_common.urgency``). So the loop waits
for a slow disk at most once, then at most ``INLINE_WAIT_S`` a write.

What is durable when is the store's ``synchronous`` level, the same for both files
(docs/commands.md, "What is durable when"). The ledger file's WAL is checkpointed by the
store's ``Checkpointer`` (a passive checkpoint covers every attached file), with SQLite's own
automatic checkpoint on this connection as the fallback.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway.store.schema import connect_ledger
from iotgw_common.urgency import urgent_context

log = logging.getLogger(__name__)
T = TypeVar("T")

INLINE_WAIT_S = 0.003
"""Seconds :meth:`LedgerWriter.write` blocks the event loop waiting for its write.

On a quiet disk a ledger transaction takes ~0.1-0.5 ms (fsync included), so the loop usually
continues with the write done and tells its waiters in the same turn: no hand-off to a thread
and back, each of which waits behind the loop's queued callbacks (docs/performance.md). On a
slow SD card's fsync the wait gives up quickly: the loop is blocked at most this long, and the
writer thread reports the write on the loop when it is done."""


FAST_WRITES = 8
"""Quick writes in a row (under a third of :data:`INLINE_WAIT_S`) on the writer thread after
which writes run on the loop's thread again."""


class _Job:
    """One queued write; ``lock`` decides which side reports it (see ``LedgerWriter.write``)."""

    __slots__ = ("deliver", "done", "error", "finished", "fn", "lock", "result", "urgent", "waiting")

    def __init__(
        self, fn: Callable[[sqlite3.Connection], Any], deliver: Callable[..., None], *, urgent: bool
    ) -> None:
        self.fn = fn
        self.deliver = deliver  # deliver(result, error), on the loop
        self.urgent = urgent
        self.waiting = urgent  # the loop thread waits inline and delivers itself if it finished
        self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.done = threading.Event()


class LedgerWriter:
    """The ledger file's single writer in a running gateway.

    Create with the *store's* path (the ledger file is ``schema.ledger_path(path)``; open the
    store with ``schema.connect`` first, which creates and migrates it), ``start()`` on the event
    loop, ``write``/``call`` from that loop only, ``await stop()`` at shutdown (it finishes what
    is queued). Writes run one at a time, in the order they were queued.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        inline_wait_s: float = INLINE_WAIT_S,
        direct: bool = True,
    ) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.inline_wait_s = inline_wait_s
        self.direct = direct
        """Whether ``write`` may run a write on the calling thread (off: always the writer thread)."""
        self.direct_writes = 0
        """Writes run on the loop's thread by ``write`` (also counted in ``inline``)."""
        self.inline = 0
        """Writes reported inline by ``write`` (finished within ``inline_wait_s``, or run there)."""
        self.late = 0
        """Writes reported later on the loop by the writer thread."""
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = False  # a write runs now (on either thread); guarded by _cond
        self._slow = False  # the disk was slow: writes go to the thread; guarded by _cond
        self._quick = 0  # quick writes in a row on the thread while _slow

    def start(self) -> None:
        """Open the ledger file and start the writer thread; call on the loop that will write."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._conn = connect_ledger(self.path, synchronous=self.synchronous)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="iotgw-ledger-writer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Run what is queued, then end the thread and close the file. Safe to call twice."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def write(
        self, fn: Callable[[sqlite3.Connection], object], on_done: Callable[[BaseException | None], None]
    ) -> None:
        """Run ``fn(conn)``, in order with every write and call before it; ``on_done(error)`` is
        called once, on the loop.

        ``fn`` manages its own transaction (the connection is in autocommit mode, like
        ``ledger.write_changes``). When the writer thread is idle with nothing queued (and the
        disk has not been slow), ``fn`` runs right here and ``on_done`` is called before
        ``write`` returns. Otherwise ``fn`` goes to the writer thread and this blocks up to
        ``inline_wait_s`` for it: if it finished by then, ``on_done`` is called before ``write``
        returns; if not, the writer thread calls it on the loop when ``fn`` returns, with an
        urgent context. ``error`` is what ``fn`` raised (also logged), or None. Raises
        RuntimeError if the writer is not running.
        """
        if self._claim_direct():
            self._write_here(fn, on_done)
            return

        def deliver(result: object, error: BaseException | None) -> None:
            on_done(error)

        job = _Job(fn, deliver, urgent=True)
        self._put(job)
        job.done.wait(self.inline_wait_s)
        with job.lock:
            if not job.finished:  # the thread sees waiting False when it finishes: it reports
                job.waiting = False
                return
        self.inline += 1
        _tell(on_done, job.error)

    def _claim_direct(self) -> bool:
        """Whether this write may run on the calling thread; if so, the writer is now busy with it."""
        if not self.direct:
            return False
        with self._cond:
            if self._thread is None or self._stopping or self._queue or self._busy or self._slow:
                return False
            self._busy = True
            return True

    def _write_here(
        self, fn: Callable[[sqlite3.Connection], object], on_done: Callable[[BaseException | None], None]
    ) -> None:
        conn = self._conn
        assert conn is not None
        error: BaseException | None = None
        started = time.monotonic()
        try:
            fn(conn)
        except Exception as exc:  # reported to the caller, as the writer thread would
            error = exc
            log.error("ledger write failed: %s", exc)
        took = time.monotonic() - started
        with self._cond:
            self._busy = False
            if took > self.inline_wait_s:
                self._slow, self._quick = True, 0
                log.info(
                    "a ledger write took %.1f ms: writing on the ledger thread until writes are quick",
                    took * 1000,
                )
            self._cond.notify()  # the thread may have work queued behind this write
        self.direct_writes += 1
        self.inline += 1
        _tell(on_done, error)

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Run ``fn(conn)`` on the writer thread; await its result (or its exception). No inline wait.

        For work that is not urgent (retention's pruning): it runs between the command writes.
        Raises RuntimeError if the writer is not running.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def deliver(result: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        self._put(_Job(fn, deliver, urgent=False))
        return future

    def _put(self, job: _Job) -> None:
        with self._cond:
            if self._thread is None or self._stopping:
                raise RuntimeError("the ledger writer is not running")
            self._queue.append(job)
            self._cond.notify()

    # -- the writer thread ------------------------------------------------------------

    def _run(self) -> None:
        conn, loop = self._conn, self._loop
        assert conn is not None and loop is not None
        cond = self._cond
        while True:
            with cond:
                while (not self._queue or self._busy) and not (self._stopping and not self._busy):
                    cond.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
                self._busy = True
            result: Any = None
            error: BaseException | None = None
            started = time.monotonic()
            try:
                result = job.fn(conn)
            except Exception as exc:  # reported to the caller; the writer goes on with the next
                error = exc
                log.error("ledger write failed: %s", exc)
            took = time.monotonic() - started
            with cond:
                self._busy = False
                if self._slow and job.urgent:
                    self._quick = self._quick + 1 if took < self.inline_wait_s / 3 else 0
                    if self._quick >= FAST_WRITES:
                        self._slow = False
            with job.lock:
                job.result, job.error, job.finished = result, error, True
                report = not job.waiting
            job.done.set()
            if report:  # the loop stopped waiting (or never did): it is ours to report
                self.late += 1
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody to tell
                    context = urgent_context() if job.urgent else None
                    loop.call_soon_threadsafe(job.deliver, result, error, context=context)


def _tell(on_done: Callable[[BaseException | None], None], error: BaseException | None) -> None:
    """Report a write inline; a failing callback is logged, as the loop would do with it."""
    try:
        on_done(error)
    except Exception:
        log.exception("a ledger write's callback failed")


__all__ = ["FAST_WRITES", "INLINE_WAIT_S", "LedgerWriter"]
