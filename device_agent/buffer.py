"""Persistent frame buffer of the agent: SQLite, so readings survive restarts and outages.

Every data frame (``readings`` or ``event``) is encoded once, with its seq, and
stored until the gateway acknowledges it; a resend is therefore byte-identical.
The file also holds the stream id (random, created with the buffer), the next
seq, the highest acked seq and the count of dropped frames.

Cap policy (docs/protocol.md, hello.dropped / status.dropped): at most
``max_frames`` frames are kept. Appending beyond the cap deletes the *oldest*
frames and adds their number to ``dropped``; the counter never decreases and is
reported to the gateway in ``hello`` and ``status``. Frames the gateway refused
with an error other than ``seq_not_increasing`` (:meth:`FrameBuffer.reject`) are
deleted and counted the same way. A dropped frame may already have reached the
gateway (it can be in flight when the cap strikes); ``dropped`` is an upper bound
of lost frames.

Durability: WAL journal, ``synchronous=FULL`` by default (each append is fsync'd
before :meth:`append_readings` returns). All methods are blocking and must be
called from one thread (the agent calls them from its event loop: each is one
short transaction).
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

from iotgw_common.protocol import Event, Readings, Sample, encode
from iotgw_common.protocol.messages import MAX_SEQ, Value

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS frames (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
"""


class BufferStats(NamedTuple):
    """Depth and losses of the buffer, as reported in hello and status."""

    buffered: int
    dropped: int


class FrameBuffer:
    """An open buffer file. Use as a context manager or call :meth:`close`.

    ``path`` is created (with its parent directory) if missing. ``max_frames``
    is the cap described in the module docstring.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_frames: int = 100_000,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        if max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        self.path = Path(path)
        self.max_frames = max_frames
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SCHEMA)
            with self._transaction():
                meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
                if "stream" not in meta:
                    meta = {"stream": secrets.token_urlsafe(12), "next_seq": 1, "dropped": 0, "last_acked": 0}
                    self._db.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
            self._stream = str(meta["stream"])
            self._next_seq = int(meta["next_seq"])
            self._dropped = int(meta["dropped"])
            self._last_acked = int(meta["last_acked"])
            self._buffered = int(self._db.execute("SELECT COUNT(*) FROM frames").fetchone()[0])
        except BaseException:
            self._db.close()
            raise
        self._closed = False

    # -- properties ----------------------------------------------------------------

    @property
    def stream(self) -> str:
        """Id of this buffer's sequence space, sent in ``hello.stream``."""
        return self._stream

    @property
    def next_seq(self) -> int:
        """The seq the next appended frame gets."""
        return self._next_seq

    @property
    def last_acked(self) -> int:
        """Highest seq the gateway acknowledged (or reported stored in welcome)."""
        return self._last_acked

    def stats(self) -> BufferStats:
        """Frames waiting for an ack, and frames dropped since the buffer was created."""
        return BufferStats(self._buffered, self._dropped)

    # -- appending -----------------------------------------------------------------

    def append_readings(self, samples: Sequence[Sample]) -> int:
        """Store one ``readings`` frame holding ``samples``; return its seq."""
        seq = self._next_seq
        return self._append(seq, encode(Readings(seq=seq, samples=list(samples))))

    def append_event(self, name: str, ts: int, data: Mapping[str, Value] | None = None) -> int:
        """Store one ``event`` frame; return its seq."""
        seq = self._next_seq
        return self._append(seq, encode(Event(seq=seq, ts=ts, name=name, data=dict(data or {}))))

    def _append(self, seq: int, body: bytes) -> int:
        if seq > MAX_SEQ:
            raise OverflowError("seq space of this stream exhausted; delete the buffer file")
        with self._transaction():
            self._db.execute("INSERT INTO frames (seq, body) VALUES (?, ?)", (seq, body))
            self._set("next_seq", seq + 1)
            excess = self._buffered + 1 - self.max_frames
            if excess > 0:
                deleted = self._db.execute(
                    "DELETE FROM frames WHERE seq IN (SELECT seq FROM frames ORDER BY seq LIMIT ?)",
                    (excess,),
                ).rowcount
                self._set("dropped", self._dropped + deleted)
            else:
                deleted = 0
        self._next_seq = seq + 1
        self._buffered += 1 - deleted
        self._dropped += deleted
        return seq

    # -- reading and acknowledging -------------------------------------------------

    def pending(self, after_seq: int = 0, limit: int = 64) -> list[tuple[int, bytes]]:
        """Up to ``limit`` stored frames with seq > ``after_seq``, oldest first, as (seq, bytes)."""
        rows = self._db.execute(
            "SELECT seq, body FROM frames WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ).fetchall()
        return [(int(seq), bytes(body)) for seq, body in rows]

    def ack(self, seq: int) -> int:
        """The gateway stored every frame <= ``seq``: delete them; return how many were deleted."""
        with self._transaction():
            deleted = self._db.execute("DELETE FROM frames WHERE seq <= ?", (seq,)).rowcount
            if seq > self._last_acked:
                self._set("last_acked", seq)
        self._buffered -= deleted
        self._last_acked = max(self._last_acked, seq)
        return deleted

    def forget_through(self, last_seq: int) -> int:
        """Apply ``welcome.last_seq``: delete frames <= it and continue numbering above it.

        Returns how many frames were deleted. If the next seq is <= ``last_seq``
        (the gateway has more of this stream than the buffer remembers), the next
        appended frame gets ``last_seq + 1`` (docs/protocol.md, "Session" 2).
        """
        deleted = self.ack(last_seq)
        if self._next_seq <= last_seq:
            with self._transaction():
                self._set("next_seq", last_seq + 1)
            self._next_seq = last_seq + 1
        return deleted

    def reject(self, seq: int) -> bool:
        """The gateway refused frame ``seq`` for good: delete it and count it as dropped."""
        with self._transaction():
            deleted = self._db.execute("DELETE FROM frames WHERE seq = ?", (seq,)).rowcount
            if deleted:
                self._set("dropped", self._dropped + deleted)
        self._buffered -= deleted
        self._dropped += deleted
        return bool(deleted)

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Close the file; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._db.close()

    def __enter__(self) -> FrameBuffer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------------

    def _set(self, key: str, value: int | str) -> None:
        self._db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


__all__ = ["BufferStats", "FrameBuffer"]
