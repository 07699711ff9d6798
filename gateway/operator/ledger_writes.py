"""The command service's write path: ledger changes batched per loop turn, one commit each.

The service records a state change in memory at once and hands the ledger change
(``gateway.store.ledger.Change``) to :class:`LedgerWrites`. Every change added during one
turn of the event loop goes to the store in one ``ledger.write_changes`` transaction on the
group committer's writer thread, so a burst of changes (many results arriving together, a
sweep expiring many commands) costs one commit, and ``queued`` + ``sent`` of a command sent
at once share one. The call is ``urgent``: its own short transaction as soon as the writer is
free, not a place behind the readings gathering for the next group commit (docs/commands.md,
"What is durable when").
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gateway.store import ledger

if TYPE_CHECKING:
    from gateway.store.writer import GroupCommitter

log = logging.getLogger(__name__)


class LedgerWrites:
    """Batches ledger changes into committer calls. Use from the committer's event loop only."""

    def __init__(self, committer: GroupCommitter) -> None:
        self._committer = committer
        self._changes: list[ledger.Change] = []
        self._future: asyncio.Future[None] | None = None
        self._scheduled = False

    @property
    def pending(self) -> bool:
        """Whether changes wait to be written or a batch is not yet settled."""
        return bool(self._changes) or self._future is not None

    def add(self, change: ledger.Change) -> asyncio.Future[None]:
        """Queue ``change`` for the write at the end of this loop turn; that write's future."""
        self._changes.append(change)
        return self.stored()

    def stored(self) -> asyncio.Future[None]:
        """The future of the write that will carry the changes added so far in this loop turn.

        It resolves when they are committed, and also when the write failed or the committer
        had stopped (logged; the service's state stays in memory): waiters never hang on it.
        Await it through ``asyncio.shield`` (or :meth:`flush`) if the waiter may be cancelled.
        """
        loop = asyncio.get_running_loop()
        if self._future is None:
            self._future = loop.create_future()
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._write)
        return self._future

    async def flush(self) -> None:
        """Wait until everything added so far is written (or its write failed)."""
        await asyncio.shield(self.stored())

    def _write(self) -> None:
        self._scheduled = False
        future, self._future = self._future, None
        changes, self._changes = self._changes, []
        if future is None:
            return
        try:
            written = self._committer.call(lambda conn: ledger.write_changes(conn, changes), urgent=True)
        except RuntimeError as exc:  # the committer has stopped: nothing more can be stored
            log.error("command changes not stored: %s", exc)
            future.set_result(None)
            return

        def relay(done: asyncio.Future[None]) -> None:
            if future.done():
                return
            if done.cancelled():
                future.cancel()
            elif done.exception() is not None:
                log.error("writing %d command changes failed: %s", len(changes), done.exception())
                future.set_result(None)  # the state stays in memory; do not hang waiters
            else:
                future.set_result(None)

        written.add_done_callback(relay)


__all__ = ["LedgerWrites"]
