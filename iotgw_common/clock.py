"""The one wall clock of the gateway and the agent, in milliseconds since the epoch."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Wall-clock time in whole milliseconds (what timestamps, ``server_time`` and the store use)."""
    return time.time_ns() // 1_000_000


__all__ = ["now_ms"]
