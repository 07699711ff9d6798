"""Point lookups on the event loop's own thread: an operator by token, a device by name.

The operator API's reads go through :class:`gateway.store.readings.ReadPool`, a worker thread
each: right for a history query, but a command's two lookups (its operator's token, its device)
each cost a hand-off to a thread and back, and when the loop is busy every hand-off waits its
turn twice (docs/performance.md, "Stalls, the collector, commands and checkpoints"). A lookup of one row by a unique key
reads a few pages the store keeps hot and takes tens of microseconds, less than the hand-off.

Use :class:`Lookups` only for such statements; anything that scans goes through the pool.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gateway.store.schema import connect

T = TypeVar("T")


class Lookups:
    """``run(fn)`` calls ``fn(conn)`` at once on a query-only connection of its own; call it
    from the event loop only, and ``close()`` at shutdown."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            conn = connect(self.path, create=False)
            conn.execute("PRAGMA query_only=ON")
            self._conn = conn
        return fn(self._conn)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None


__all__ = ["Lookups"]
