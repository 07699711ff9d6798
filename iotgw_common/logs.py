"""Logging set-up: plain lines with levels, or JSON lines; shared by ``iotgw`` and ``iotgw-agent``.

Call :func:`setup_logging` once, at the start of a command, before anything logs; library
code only calls ``logging.getLogger(__name__)``. Under systemd (``JOURNAL_STREAM`` set) the
plain format omits timestamps, since journald adds its own. Standard library only.
"""

from __future__ import annotations

import json
import logging
import os
import sys


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


def setup_logging(level: str = "INFO", fmt: str = "plain") -> None:
    """Configure the root logger once, writing to stdout."""
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # websockets logs every refused handshake at INFO; ours are logged with reasons.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
