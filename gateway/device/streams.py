"""Where each device's stream stands: what is durable, what is in flight.

A ``StreamState`` lives as long as the gateway process, across the device's
connections, so that a reconnect sees frames the previous connection left in
the group committer. It is the committer's sink for the device's frames and
forwards acknowledgements to whichever connection currently holds the device.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger(__name__)


class AckTarget(Protocol):
    def send_ack(self, seq: int) -> None: ...

    def commit_failed(self, error: BaseException) -> None: ...


class StreamState:
    """Sequence bookkeeping of one device's current stream (docs/protocol.md, "seq rules")."""

    __slots__ = ("_drained", "committed", "device_id", "failed", "high", "inflight", "stream", "target")

    def __init__(self, device_id: int, stream: str, committed: int) -> None:
        self.device_id = device_id
        self.stream = stream
        self.committed = committed
        """Highest seq durably stored (what ``welcome.last_seq`` and acks report)."""
        self.high = committed
        """Highest seq accepted: stored or in the committer. A frame must exceed it."""
        self.inflight = 0
        self.failed = False
        self.target: AckTarget | None = None
        self._drained = asyncio.Event()
        self._drained.set()

    def accept(self, seq: int) -> bool:
        """Record a frame for the committer; False if ``seq`` does not exceed ``high``."""
        if seq <= self.high or self.failed:
            return False
        self.high = seq
        self.inflight += 1
        self._drained.clear()
        return True

    async def drained(self) -> None:
        """Return once every accepted frame is committed or has failed."""
        await self._drained.wait()

    # -- CommitSink (called on the event loop by the group committer) ----------------

    def on_committed(self, seq: int) -> None:
        self.inflight -= 1
        if seq > self.committed and not self.failed:
            self.committed = seq
            if self.target is not None:
                self.target.send_ack(seq)
        if self.inflight == 0:
            self._drained.set()

    def on_commit_failed(self, error: BaseException) -> None:
        self.inflight -= 1
        if not self.failed:
            self.failed = True
            log.error("device %d: a commit failed (%s); closing its session", self.device_id, error)
            if self.target is not None:
                self.target.commit_failed(error)
        if self.inflight == 0:
            self._drained.set()
