"""WAL checkpoints on a thread of their own, never inside a group commit.

In WAL mode SQLite copies the log back into the database file (a checkpoint) when a COMMIT leaves
more than ``wal_autocheckpoint`` pages in it: that COMMIT, on the group-commit writer, then also
copies ~4 MB and syncs the database file. Every ack and command write of that commit waited for
it (group commits of 50-200 ms a few times a window at half load, docs/performance.md).

:class:`Checkpointer` runs ``PRAGMA wal_checkpoint(PASSIVE)`` every ``every_s`` on its own
connection and thread: a passive checkpoint never blocks the writer or readers, and once it has
copied everything, the writer starts the log over at its next transaction, so the log stays
small. The writer keeps an automatic checkpoint only as a fallback, at ``fallback_pages`` (a log
that large means the checkpointer fell behind). Durability is the commit's (``synchronous``),
not the checkpoint's.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from pathlib import Path

from gateway.store.schema import connect

log = logging.getLogger(__name__)


class Checkpointer:
    """``start(writer_conn)`` after the writer's connection is open, ``stop()`` at shutdown."""

    def __init__(self, path: str | Path, *, every_s: float = 1.0, fallback_pages: int = 20_000) -> None:
        self.path = Path(path)
        self.every_s = every_s
        self.fallback_pages = fallback_pages
        self.checkpoints = 0
        self.pages = 0
        """Log pages copied into the database file, in all."""
        self.longest_s = 0.0
        self.last: tuple[int, int, int] | None = None
        """The last checkpoint's ``(busy, log pages, pages checkpointed)``."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, writer_conn: sqlite3.Connection) -> None:
        writer_conn.execute(f"PRAGMA wal_autocheckpoint={int(self.fallback_pages)}")
        self._thread = threading.Thread(target=self._run, name="iotgw-wal-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self.checkpoints:
            log.info("wal checkpoints: %d, %d pages, longest %.0f ms", self.checkpoints, self.pages,
                     self.longest_s * 1000)  # fmt: skip

    def _run(self) -> None:
        conn = connect(self.path, create=False)
        try:
            while not self._stop.wait(self.every_s):
                self.checkpoint(conn)
            self.checkpoint(conn)  # what the last commits left
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        started = time.monotonic()
        try:
            busy, pages, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # e.g. the disk is full: the writer's fallback still works
            log.warning("wal checkpoint failed: %s", exc)
            return
        took = time.monotonic() - started
        self.last = (int(busy), int(pages), int(done))
        if done > 0:
            self.checkpoints += 1
            self.pages += int(done)
            self.longest_s = max(self.longest_s, took)


__all__ = ["Checkpointer"]
