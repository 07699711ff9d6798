"""A device connection reads ahead of the others while a command sent on it awaits its result.

A command's result is the one device frame an operator is waiting for. While one is due, the
connection's socket reads and its session task's wake-ups go to the event loop's urgent lane
(``iotgw_common.urgency``), ahead of the frames of every other device; when the last command
sent on it is answered, or its deadline passes, the connection is ordinary again. A device
that never answers is urgent until the deadline (the command's ``timeout``) at the latest, and
its readings stay under their rate quota either way.
"""

from __future__ import annotations

import asyncio

from iotgw_common.urgency import Urgency, mark_urgent, set_transport_urgent


class CommandUrgency:
    """The urgent lane of one connection. Call ``enter()`` from the session's task first."""

    __slots__ = ("_expiry", "_in_flight", "_loop", "_transport", "urgency")

    def __init__(self, transport: asyncio.BaseTransport | None) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._in_flight = 0
        self._expiry: asyncio.TimerHandle | None = None
        self.urgency = Urgency(False)
        """Held by the session task's context: its wake-ups are urgent while it is on."""

    def enter(self) -> None:
        """Make the calling task's wake-ups follow this connection's urgency."""
        mark_urgent(self.urgency)

    def sent(self, timeout_s: float) -> None:
        """A command went out on the connection; its result is due within ``timeout_s``."""
        self._in_flight += 1
        self._set(True)
        expires_at = self._loop.time() + max(0.0, timeout_s)
        if self._expiry is None or self._expiry.when() < expires_at:
            if self._expiry is not None:
                self._expiry.cancel()
            self._expiry = self._loop.call_at(expires_at, self.clear)

    def answered(self) -> None:
        """A result arrived on the connection (answering one command, or none)."""
        self._in_flight = max(0, self._in_flight - 1)
        if not self._in_flight:
            self.clear()

    def clear(self) -> None:
        """Nothing is due any more (every command answered or past its deadline, or closed)."""
        self._in_flight = 0
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._set(False)

    @property
    def on(self) -> bool:
        """Whether the connection is in the urgent lane now."""
        return self.urgency.on

    def _set(self, on: bool) -> None:
        if self.urgency.on is not on:
            self.urgency.on = on
            set_transport_urgent(self._transport, on)


__all__ = ["CommandUrgency"]
