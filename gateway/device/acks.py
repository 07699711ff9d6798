"""The ack path of one device connection: cumulative acks, coalesced, written without a task.

A device's ``StreamState`` calls ``AckWriter.send(seq)`` once per committed frame (on the event
loop, from the group committer's callback). All calls of one commit coalesce into one ``ack``
frame, written in the next loop turn, by one callback for every device of the commit. The fast
path writes the frame (header and payload, what websockets would write: no compression) straight
into the transport while the connection is open and its write buffer empty, which is what
``send()`` does minus a task switch, a flow-control wait and the protocol's framing (bench/:
about a tenth of the event loop's time at the ingest ceiling); otherwise one task sends the
newest ack through ``send()`` and stops. An idle connection costs no task.

The caller must set ``sent`` to what ``welcome.last_seq`` announced, and call ``cancel()``
when the connection ends.
"""

from __future__ import annotations

import asyncio
import weakref

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from iotgw_common.protocol import Ack, encode


class _Flusher:
    """The acks of one commit, flushed in one callback of the next loop turn (not one per device)."""

    __slots__ = ("_loop", "_pending", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[AckWriter] = []
        self._scheduled = False

    def add(self, writer: AckWriter) -> None:
        self._pending.append(writer)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for writer in pending:
            writer._flush()


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = weakref.WeakKeyDictionary()


class AckWriter:
    """Acks of one connection; ``send(seq)`` from the event loop, never blocks."""

    __slots__ = ("_connection", "_flusher", "_latest", "_loop", "_scheduled", "_task", "sent")

    def __init__(self, connection: ServerConnection, loop: asyncio.AbstractEventLoop) -> None:
        self._connection = connection
        self._loop = loop
        flusher = _flushers.get(loop)
        if flusher is None:
            flusher = _flushers[loop] = _Flusher(loop)
        self._flusher = flusher
        self._latest = 0
        self._scheduled = False
        self._task: asyncio.Task[None] | None = None  # only while an ack waits for the socket
        self.sent = 0
        """The highest seq acknowledged on this connection (welcome's ``last_seq`` at first)."""

    def send(self, seq: int) -> None:
        """Acknowledge every frame up to ``seq``; written in the next loop turn (acks coalesce)."""
        self._latest = seq
        if not self._scheduled:
            # runs after the committer's callback has handled every frame of this commit,
            # so a device gets one ack per commit
            self._scheduled = True
            self._flusher.add(self)

    def cancel(self) -> None:
        """The connection ended: stop a pending slow-path send."""
        if self._task is not None:
            self._task.cancel()

    def _flush(self) -> None:
        self._scheduled = False
        seq = self._latest
        if seq <= self.sent:
            return
        conn = self._connection
        transport = conn.transport
        if (
            conn.protocol.state is State.OPEN
            and not transport.is_closing()
            and transport.get_write_buffer_size() == 0
            and getattr(conn, "send_in_progress", None) is None  # no fragmented send (never here)
            and not conn.protocol.extensions  # compression=None: a frame is its payload and a header
        ):
            self.sent = seq
            # A server's text frame, unmasked, final (RFC 6455 section 5.2), straight to the socket:
            # what protocol.send_text + send_data write for it, ~1.6 us less per ack. Nothing of the
            # protocol's waits to be written: send_data() writes everything it holds at once.
            payload = encode(Ack(seq=seq))  # < 126 bytes: a 2-byte header
            transport.write(b"\x81" + bytes((len(payload),)) + payload)
        elif self._task is None or self._task.done():
            self._task = asyncio.create_task(self._send_through_flow_control())

    async def _send_through_flow_control(self) -> None:
        """Send the latest ack through ``send()`` (flow control) until none is newer."""
        while self._latest > self.sent:
            seq = self.sent = self._latest
            try:
                await self._connection.send(encode(Ack(seq=seq)), text=True)
            except ConnectionClosed:
                return


__all__ = ["AckWriter"]
