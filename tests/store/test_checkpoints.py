"""WAL checkpoints on their own thread (gateway/store/checkpoints.py): the writer's connection
no longer checkpoints inside its commits (until the fallback size), the checkpointer copies the
log back into the database file, and nothing written is lost."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from gateway import store
from gateway.store.checkpoints import Checkpointer

ROW = "x" * 3000  # about one page a row


def _write_pages(conn: sqlite3.Connection, rows: int, start: int = 0) -> None:
    for i in range(start, start + rows, 50):  # many small commits, as the group committer makes
        with conn:
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO filler (n, data) VALUES (?, ?)", [(n, ROW) for n in range(i, i + 50)]
            )


def test_the_writer_leaves_checkpoints_to_the_checkpointer(path: Path) -> None:
    writer = store.connect(path, synchronous="NORMAL")
    writer.execute("CREATE TABLE filler (n INTEGER, data TEXT)")
    checkpointer = Checkpointer(path, every_s=3600, fallback_pages=20_000)  # started, never due
    checkpointer.start(writer)
    try:
        assert writer.execute("PRAGMA wal_autocheckpoint").fetchone() == (20_000,)
        size_before = path.with_name(path.name + "-wal").stat().st_size
        _write_pages(writer, 3000)
        # SQLite's default would have checkpointed at 1,000 pages inside a commit; the log grew on
        wal_size = path.with_name(path.name + "-wal").stat().st_size
        assert wal_size > size_before + 2000 * 4096, (size_before, wal_size)
        reader = store.connect(path, create=False)
        checkpointer.checkpoint(reader)  # what the thread does every second
        reader.close()
        assert checkpointer.checkpoints == 1 and checkpointer.last is not None
        busy, frames, done = checkpointer.last
        assert busy == 0 and frames >= 2000 and done == frames  # all of it copied back
        _write_pages(writer, 100, start=3000)  # the writer starts the log over
        assert path.with_name(path.name + "-wal").stat().st_size <= wal_size
    finally:
        checkpointer.stop()
    assert writer.execute("SELECT count(*), count(DISTINCT n) FROM filler").fetchone() == (3100, 3100)
    writer.close()


def test_the_thread_checkpoints_while_the_writer_writes(path: Path) -> None:
    writer = store.connect(path, synchronous="NORMAL")
    writer.execute("CREATE TABLE filler (n INTEGER, data TEXT)")
    checkpointer = Checkpointer(path, every_s=0.02, busy_pages=1)  # always "busy": every 20 ms
    checkpointer.start(writer)
    try:
        deadline = time.monotonic() + 60
        written = 0
        while checkpointer.checkpoints < 3:
            assert time.monotonic() < deadline, "the checkpointer thread did not checkpoint"
            _write_pages(writer, 100, start=written)
            written += 100
    finally:
        checkpointer.stop()
    assert checkpointer.pages > 0
    assert checkpointer.last is not None
    _, frames, done = checkpointer.last  # the last one, at stop: everything copied back
    assert done == frames
    assert writer.execute("SELECT count(*) FROM filler").fetchone() == (written,)
    writer.close()


def test_a_quiet_log_is_checkpointed_less_often_a_busy_one_every_second(path: Path) -> None:
    checkpointer = Checkpointer(path, every_s=1.0, max_every_s=120.0, busy_pages=1000)
    checkpointer.last = (0, 40, 40)  # a quiet second: 40 pages
    assert [round(checkpointer.next_interval(x), 1) for x in (1.0, 2.0, 64.0, 120.0)] == [
        2.0,
        4.0,
        120.0,
        120.0,
    ]
    checkpointer.last = (0, 2500, 2500)  # busy again: back to every second
    assert checkpointer.next_interval(64.0) == 1.0
