"""Where each device's stream stands: what is durable, what is in flight.

A ``StreamState`` lives as long as the gateway process, across the device's
connections, so that a reconnect sees frames the previous connection left in
the group committer. It is the committer's sink for the device's frames
(``on_committed``, ``on_commit_failed``) and forwards acknowledgements to
whichever connection currently holds the device (``target``).

Like the session machine (gateway/device/session.py) it does no I/O and needs
no event loop: the device server waits for a drain by registering a callback
(``when_drained``) that settles a future of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class AckTarget(Protocol):
    """The connection that currently holds the device (``DeviceSession`` in server.py)."""

    def send_ack(self, seq: int) -> None:
        """Every frame of the stream with seq <= ``seq`` is durable: tell the device (may coalesce)."""

    def commit_failed(self, error: BaseException) -> None:
        """A frame of the stream could not be stored: end the connection (the device resends)."""


class StreamState:
    """Sequence bookkeeping of one device's current stream (docs/protocol.md, section 5).

    The session calls ``accept(seq)`` for every data frame before submitting it
    to the group committer with this object as the frame's sink; the committer
    then calls exactly one of ``on_committed``/``on_commit_failed`` per accepted
    frame, on the event loop. After a failure the stream accepts nothing more:
    the next session must start a fresh ``StreamState`` once this one drained.
    """

    __slots__ = (
        "_drain_callbacks", "committed", "device_id", "failed", "high", "inflight", "stream", "target",
    )  # fmt: skip

    def __init__(self, device_id: int, stream: str, committed: int) -> None:
        self.device_id = device_id
        self.stream = stream
        self.committed = committed
        """Highest seq durably stored (what ``welcome.last_seq`` and acks report)."""
        self.high = committed
        """Highest seq accepted: stored or in the committer. A frame must exceed it."""
        self.inflight = 0
        """Frames accepted but not yet committed or failed."""
        self.failed = False
        """A commit of this stream failed; it accepts no more frames."""
        self.target: AckTarget | None = None
        """Where acks and commit failures go; None while no connection holds the device."""
        self._drain_callbacks: list[Callable[[], None]] | None = None

    def accept(self, seq: int) -> bool:
        """Record a frame for the committer; False if ``seq`` does not exceed ``high`` (or failed).

        On True the caller must submit the frame with this object as its sink,
        or the stream never drains.
        """
        if seq <= self.high or self.failed:
            return False
        self.high = seq
        self.inflight += 1
        return True

    @property
    def drained(self) -> bool:
        """True when every accepted frame is committed or has failed."""
        return self.inflight == 0

    def when_drained(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once every accepted frame is committed or has failed.

        At once if the stream is drained already; otherwise from the committer's
        completion of the last frame in flight, so ``callback`` must be quick and
        must not raise (settling a future is the intended use).
        """
        if self.inflight == 0:
            callback()
        elif self._drain_callbacks is None:
            self._drain_callbacks = [callback]
        else:
            self._drain_callbacks.append(callback)

    # -- CommitSink (called on the event loop by the group committer) ----------------

    def on_committed(self, seq: int) -> None:
        self.inflight -= 1
        if seq > self.committed and not self.failed:
            self.committed = seq
            if self.target is not None:
                self.target.send_ack(seq)
        if self.inflight == 0 and self._drain_callbacks is not None:
            self._run_drain_callbacks()

    def on_commit_failed(self, error: BaseException) -> None:
        self.inflight -= 1
        if not self.failed:
            self.failed = True
            # the writer logged why (a store error, or the device was removed or re-tokened)
            log.warning("device %d: a frame was not stored (%s); its session ends", self.device_id, error)
            if self.target is not None:
                self.target.commit_failed(error)
        if self.inflight == 0 and self._drain_callbacks is not None:
            self._run_drain_callbacks()

    def _run_drain_callbacks(self) -> None:
        callbacks, self._drain_callbacks = self._drain_callbacks or [], None
        for callback in callbacks:
            callback()
