# iotgw firmware: the WebSocket's closing handshake and failing a connection (RFC 6455
# sections 5.5.1, 7.1.7), loaded by ws.py when a session ends and unloaded after.
# Each function takes the WebSocket as `self`.
import asyncio
import struct

from compat import ticks_add, ticks_diff, ticks_ms
from micropython import const
from ws import ConnectionClosed, wait_for_ms

_CLOSE_NO_STATUS = const(1005)  # never sent: "the close frame had no code"


async def on_close(self, payload):
    # Section 5.5.1: answer a close with a close (echoing the code), then end.
    if len(payload) >= 2:
        code = struct.unpack_from("!H", payload)[0]
        try:
            reason = str(payload[2:], "utf-8")
        except UnicodeError:
            reason = ""
    else:
        code, reason = _CLOSE_NO_STATUS, ""
    self.close_code = code
    self.close_reason = reason
    local = self.close_sent
    if not self.close_sent:
        try:
            await self._send_close(code if code != _CLOSE_NO_STATUS else None, "")
        except OSError:
            pass
    await self._shutdown()
    raise ConnectionClosed(code, reason, local)


async def fail(self, code, reason):
    """Fail the connection (section 7.1.7): send close(code), wait briefly, drop it."""
    if not self.close_sent:
        try:
            await self._send_close(code, reason)
        except OSError:
            pass
    # Let the peer read our close frame before the socket goes: closing a
    # socket with unread input makes the kernel send a RST, which can
    # discard the close frame on the way. Read and discard until EOF.
    try:
        await wait_for_ms(_discard(self), 1000)
    except (asyncio.TimeoutError, OSError, EOFError):
        pass
    await self._shutdown()
    raise ConnectionClosed(code, reason, True)


async def _discard(self):
    scratch = self._hmv
    try:
        while True:
            await self._read_exact(scratch)  # EOFError at the end
    except (OSError, EOFError):  # gone: nothing left to discard
        pass


async def close(self, code, reason, timeout_ms):
    """Start the closing handshake and wait (up to timeout_ms) for the peer's close."""
    if self.closed:
        return
    try:
        if not self.close_sent:
            await self._send_close(code, reason)
        if self._reading:
            # Another task is in recv(): it will see the peer's close frame (polled every
            # 20 ms: no asyncio.Event, ~1 KB of heap for good on the 64-bit port).
            end = ticks_add(ticks_ms(), timeout_ms)
            while not self.closed and ticks_diff(end, ticks_ms()) > 0:
                await asyncio.sleep_ms(20)
        else:
            await wait_for_ms(_until_closed(self), timeout_ms)
    except (OSError, EOFError, asyncio.TimeoutError):
        pass
    await self._shutdown()


async def _until_closed(self):
    try:
        while True:
            await self._recv()
    except (OSError, EOFError):  # ConnectionClosed, or the peer just went: closed either way
        pass
