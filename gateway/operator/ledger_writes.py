"""The command service's write path: ledger changes batched per loop turn, one commit each.

The service records a state change in memory at once and hands the ledger change
(``gateway.store.ledger.Change``) to :class:`LedgerWrites`. Every change added during one
turn of the event loop goes to the ledger file in one ``ledger.write_changes`` transaction by
the ledger's own writer (``gateway.store.ledger_writer.LedgerWriter``), so a burst of
changes (many results arriving together, a sweep expiring many commands) costs one commit, and
``queued`` + ``sent`` of a command sent at once share one. The write usually runs on the loop's
thread (the writer idle) or is waited for a moment inline, and the loop goes on with it done
(docs/commands.md, "What is durable when").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.store import ledger
from iotgw_common.urgency import urgent_context

if TYPE_CHECKING:
    from gateway.store.ledger_writer import LedgerWriter

log = logging.getLogger(__name__)


class LedgerWrites:
    """Batches ledger changes into ledger writes. Use from the ledger writer's event loop only.

    Each hop through the event loop (a ``call_soon``, a future's callback, a task waking up) waits
    for every callback already queued, a millisecond or more when the loop is busy; a command
    crosses this class twice. So a write starts at once when someone waits for it (``flush``),
    the batch of a loop turn is written by an urgent callback, and when it is stored the waiters
    and ``on_stored`` callbacks are told in the same callback (usually inline, within
    ``LedgerWriter.write``), not through a chain of futures.
    """

    def __init__(self, ledger_writer: LedgerWriter) -> None:
        self._ledger_writer = ledger_writer
        self._changes: list[ledger.Change] = []
        self._on_stored: list[Callable[[], None]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._in_flight = 0
        self._scheduled = False

    @property
    def pending(self) -> bool:
        """Whether changes wait to be written or a write is not yet settled."""
        return bool(self._changes) or self._in_flight > 0

    def add(self, change: ledger.Change, on_stored: Callable[[], None] | None = None) -> None:
        """Queue ``change`` for the write at the end of this loop turn (or the next ``flush``).

        ``on_stored`` is called on the loop when that write is committed, and also when it failed
        or the ledger writer had stopped (logged; the service's state stays in memory): nothing
        waits forever on it. It may be called from within a later ``flush`` or write.
        """
        self._changes.append(change)
        if on_stored is not None:
            self._on_stored.append(on_stored)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._write, context=urgent_context())

    async def flush(self) -> None:
        """Write what was added so far now, and wait until it is stored (or its write failed).

        Cancelling the waiter does not cancel the write.
        """
        if not self._changes and not self._in_flight:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._changes:
            self._write()
        await waiter

    def _write(self) -> None:
        self._scheduled = False
        if not self._changes:
            return
        changes, self._changes = self._changes, []
        on_stored, self._on_stored = self._on_stored, []
        waiters, self._waiters = self._waiters, []
        self._in_flight += 1
        settled = False

        def settle(error: BaseException | None) -> None:  # on the loop, once
            nonlocal settled
            if settled:
                return
            settled = True
            if error is not None:
                log.error("writing %d command changes failed: %s", len(changes), error)
            self._settled(waiters, on_stored)  # the state stays in memory; do not hang waiters

        try:
            self._ledger_writer.write(lambda conn: ledger.write_changes(conn, changes), settle)
        except RuntimeError as exc:  # the ledger writer has stopped: nothing more can be stored
            log.error("command changes not stored: %s", exc)
            settle(None)

    def _settled(self, waiters: list[asyncio.Future[None]], on_stored: list[Callable[[], None]]) -> None:
        self._in_flight -= 1
        for callback in on_stored:
            callback()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._in_flight == 0 and self._waiters and not self._changes:
            # waiters that came while this write was in flight, with nothing new of their own
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


__all__ = ["LedgerWrites"]
