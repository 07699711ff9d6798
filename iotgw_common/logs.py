"""Logging set-up: plain lines with levels, or JSON lines; shared by ``iotgw`` and ``iotgw-agent``.

Call :func:`setup_logging` once, at the start of a command, before anything logs; library
code only calls ``logging.getLogger(__name__)``. Under systemd (``JOURNAL_STREAM`` set) the
plain format omits timestamps, since journald adds its own. Standard library only.

A server passes ``background=True``: records are handed to a queue and formatted and written
by one thread, so a log line never blocks the event loop on a slow pipe or a file write
waiting behind the store's fsync (docs/performance.md, "Event-loop stalls"). The thread
writes what is queued before the process exits normally; a SIGKILL loses at most the lines of
the last milliseconds.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import sys
from logging.handlers import QueueHandler, QueueListener


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


class _ToWriterThread(QueueHandler):
    """Renders the message where it is logged (its arguments may change later); the time,
    level, format and any traceback are rendered on the writer thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg = record.getMessage()
        record.args = None
        return record


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
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        listener = QueueListener(records, handler)
        listener.start()
        atexit.register(listener.stop)
        handler = _ToWriterThread(records)
    root.handlers[:] = [handler]
    root.setLevel(level)
    # websockets logs every refused handshake at INFO; ours are logged with reasons.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
