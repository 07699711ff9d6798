"""Logging set-up: plain lines with levels, or JSON lines; shared by ``iotgw`` and ``iotgw-agent``.

Call :func:`setup_logging` once, at the start of a command, before anything logs; library
code only calls ``logging.getLogger(__name__)``. Under systemd (``JOURNAL_STREAM`` set) the
plain format omits timestamps, since journald adds its own. Standard library only.

A server passes ``background=True``: records are handed to a queue and formatted and written
by one thread, so a log line never blocks the event loop on a slow pipe or a file write
waiting behind the store's fsync (docs/performance.md, "Event-loop stalls"). That thread
wakes for the first record of a burst, then gathers for :data:`BATCH_S` before it writes, not
once per record: each wake-up takes the interpreter lock from the event loop for a moment, and
a command's two log lines cost its round trip ~0.3 ms that way (docs/performance.md, "Commands:
a fast path"). A WARNING or worse is written at once. The thread writes what is queued before
the process exits normally; a SIGKILL loses at most the lines of the last :data:`BATCH_S`.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import sys
import threading

BATCH_S = 0.05
"""How long the log thread gathers records after the first of a burst before writing them."""


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _WriterThread:
    """Writes records handed over by :class:`_ToWriterThread` with ``handler``, from its own thread."""

    def __init__(self, handler: logging.Handler, batch_s: float = BATCH_S) -> None:
        self.handler = handler
        self.batch_s = batch_s
        self._records: collections.deque[logging.LogRecord] = collections.deque()
        self._pending = threading.Event()  # a record is queued
        self._urgent = threading.Event()  # a WARNING or worse is queued, or stopping
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="iotgw-log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, record: logging.LogRecord) -> None:
        """Queue ``record``; from any thread. Wakes the writer only if it is not awake already."""
        self._records.append(record)
        if record.levelno >= logging.WARNING:
            self._urgent.set()
        if not self._pending.is_set():
            self._pending.set()

    def stop(self) -> None:
        """Write everything queued, then end the thread."""
        self._stopping = True
        self._urgent.set()
        self._pending.set()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            self._pending.wait()
            self._urgent.wait(self.batch_s)  # gather the rest of the burst
            self._pending.clear()
            self._urgent.clear()
            while self._records:
                self.handler.handle(self._records.popleft())
            if self._stopping:
                return


class _ToWriterThread(logging.Handler):
    """Renders the message where it is logged (its arguments may change later); the time,
    level, format and any traceback are rendered on the writer thread."""

    def __init__(self, writer: _WriterThread) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg = record.getMessage()
            record.args = None
            self.writer.put(record)
        except Exception:
            self.handleError(record)


def setup_logging(level: str = "INFO", fmt: str = "plain", *, background: bool = False) -> None:
    """Configure the root logger once, writing to stdout (from a writer thread if ``background``)."""
    handler: logging.Handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    if background:
        writer = _WriterThread(handler)
        writer.start()
        atexit.register(writer.stop)
        handler = _ToWriterThread(writer)
    root.handlers[:] = [handler]
    root.setLevel(level)
    # websockets logs every refused handshake at INFO; ours are logged with reasons.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
