"""WAL checkpoints on a thread of their own, never inside a group commit.

In WAL mode SQLite copies the log back into the database file (a checkpoint) when a COMMIT leaves
more than ``wal_autocheckpoint`` pages in it: that COMMIT, on the group-commit writer, then also
copies ~4 MB and syncs the database file. Every ack and command write of that commit waited for
it (group commits of 50-200 ms a few times a window at half load, docs/performance.md).

:class:`Checkpointer` runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection and thread,
every ``every_s`` while the log grows by ``busy_pages`` or more between checkpoints, and less
often (doubling up to ``max_every_s``) while it grows by less, so that a quiet gateway on an SD
card copies pages back about as rarely as SQLite's own 1,000-page threshold would: a passive checkpoint never blocks the writer or readers, and once it has
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

    def __init__(self, path: str | Path, *, every_s: float = 1.0, max_every_s: float = 120.0,
                 busy_pages: int = 1000, fallback_pages: int = 20_000) -> None:  # fmt: skip
        self.path = Path(path)
        self.every_s = every_s
        self.max_every_s = max_every_s
        self.busy_pages = busy_pages
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
            interval = self.every_s
            while not self._stop.wait(interval):
                self.checkpoint(conn)
                interval = self.next_interval(interval)
            self.checkpoint(conn)  # what the last commits left
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def next_interval(self, interval: float) -> float:
        """After a checkpoint: ``every_s`` again if the log had grown by ``busy_pages`` or more,
        else twice ``interval`` (at most ``max_every_s``)."""
        frames = self.last[1] if self.last is not None else 0
        return self.every_s if frames >= self.busy_pages else min(interval * 2, self.max_every_s)

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
