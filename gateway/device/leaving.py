"""A device connection says goodbye in the event loop's background lane.

When a fleet closes at once, each goodbye costs the loop ~0.3 ms (the close frame's echo, the
half-close, the session's end, ``connection_lost``, the socket's ``close``), and the devices
that stay connected waited for all of them: 1-2.5 s for 10,000 (docs/performance.md,
"Connection storms: leaving"). :class:`LeavesInBackground` hands that work to the background lane of
``iotgw_common/background_lane.py``, a slice per loop turn, from the moment a connection starts
to go away:

* a **close frame** (a masked, final frame of opcode 8: the first bytes read are ``0x88``,
  ``0x80 | length``): the bytes are handed to ``websockets`` in the background lane, and so is
  everything read after them (the end of the stream too), in order;
* the **end of the stream** without a close frame, or the **connection lost**: from then on.

In both cases the connection's handler task (the session's end, its store writes), the
transport's and the connection's own callbacks run in the background until the handler returns
(bytes that began with ``0x88`` in the middle of a frame turn out not to be a close frame: the
connection is ordinary again). Reading itself stays in the ordinary order and costs what it
did: a read, and a callback queued in the background. Nothing is dropped or reordered for the
connection itself; on a loop without a background lane nothing changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from iotgw_common.background_lane import BackgroundLaneLoop

_CLOSE_FIRST_BYTE = 0x88
"""FIN and opcode 8, close (RFC 6455 section 5.2)."""
_MASKED = 0x80
"""The mask bit of a frame's second byte: set on every frame a client sends."""
MAX_HANDED_OVER = 16
"""Chunks a connection may have read and waiting in the background lane; a device that sends
more after its close frame is cut off (``abort``): what it holds stays bounded."""


class LeavesInBackground(ServerConnection):
    """A ``ServerConnection`` whose goodbye runs in the loop's background lane (module docstring)."""

    _handler_task: asyncio.Task[Any] | None = None
    _in_background = False
    _release_scheduled = False
    _handed_over = 0
    """Chunks read and handed to the background lane, not yet given to ``websockets``."""

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        # websockets awaits the handshake in the connection's handler task: remember it
        self._handler_task = asyncio.current_task()
        await super().handshake(*args, **kwargs)

    def data_received(self, data: bytes) -> None:
        if self._handed_over or (
            len(data) >= 2 and data[0] == _CLOSE_FIRST_BYTE and data[1] & _MASKED and self._go_to_background()
        ):
            # behind what was handed over already (the background lane keeps its order)
            if self._handed_over >= MAX_HANDED_OVER:
                self.transport.abort()  # still sending after its goodbye: hold no more of it
                return
            self._handed_over += 1
            self._background_loop().call_in_background(self._received_in_background, data)
            return
        super().data_received(data)

    def eof_received(self) -> None:
        self._go_to_background()
        if self._handed_over:
            # after the chunks handed over; the transport closes now, and its connection_lost
            # (a callback of the transport: background) comes after this too
            self._background_loop().call_in_background(super().eof_received)
            return
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._go_to_background()
        super().connection_lost(exc)

    def _received_in_background(self, data: bytes) -> None:
        self._handed_over -= 1
        super().data_received(data)
        if not self._handed_over and self.protocol.close_rcvd is None and self.protocol.state is State.OPEN:
            # not a close frame after all (the bytes began in the middle of a frame): ordinary again
            self._back_to_ordinary()

    def _background_loop(self) -> BackgroundLaneLoop:
        loop = self.loop
        assert isinstance(loop, BackgroundLaneLoop)
        return loop

    def _go_to_background(self) -> bool:
        """Send the handler task, the transport and this connection's own callbacks to the
        background lane; False if the loop has none."""
        if self._in_background:
            return True
        loop, task = self.loop, self._handler_task
        if not isinstance(loop, BackgroundLaneLoop) or task is None or task.done():
            return False
        self._in_background = True
        loop.send_to_background(task, self.transport, self)
        if not self._release_scheduled:
            self._release_scheduled = True
            task.add_done_callback(lambda _: self._back_to_ordinary())
        return True

    def _back_to_ordinary(self) -> None:
        self._in_background = False
        loop, task = self.loop, self._handler_task
        if isinstance(loop, BackgroundLaneLoop) and task is not None:
            loop.release_from_background(task, self.transport, self)


__all__ = ["LeavesInBackground"]
