"""A connection's goodbye in the background lane (gateway/device/leaving.py): the close handshake
is whole, nothing read is reordered, and a connection that is not leaving stays ordinary."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from gateway.device.leaving import MAX_HANDED_OVER, LeavesInBackground
from iotgw_common.urgency import UrgentFirstLoop
from tests.support.waiting import async_wait_until


def _masked(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client frame (RFC 6455 section 5.2): masked, payload < 126 bytes."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload))) + mask + body


def _run(scenario: Callable[[UrgentFirstLoop, int, dict[str, Any]], Awaitable[None]],
         loop_factory: type[UrgentFirstLoop] = UrgentFirstLoop) -> dict[str, Any]:  # fmt: skip
    """Run ``scenario(loop, port, seen)`` beside an echo server whose connections leave in the background."""
    seen: dict[str, Any] = {"closed": [], "messages": []}

    async def echo(connection: ServerConnection) -> None:
        try:
            async for message in connection:
                seen["messages"].append(message)
                await connection.send(message)
        except ConnectionClosed:
            pass
        seen["closed"].append(connection.close_code)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, UrgentFirstLoop)
        async with serve(
            echo, "127.0.0.1", 0, create_connection=LeavesInBackground, compression=None
        ) as server:
            port = server.sockets[0].getsockname()[1]
            await scenario(loop, port, seen)
        seen["owners left"] = len(loop._background_owners)
        seen["background"] = loop.background_callbacks

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    return seen


def test_clients_closing_at_once_complete_the_close_handshake_in_the_background() -> None:
    answers: list[tuple[str, int | None]] = []

    async def scenario(loop: UrgentFirstLoop, port: int, seen: dict[str, Any]) -> None:
        clients = [await websockets.connect(f"ws://127.0.0.1:{port}", compression=None) for _ in range(40)]
        for i, client in enumerate(clients):
            await client.send(f"hi {i}")
            answers.append((str(await client.recv()), None))
        await asyncio.gather(*(client.close() for client in clients))
        answers.extend(
            (f"closed {i}", c.protocol.close_rcvd.code if c.protocol.close_rcvd else None)
            for i, c in enumerate(clients)
        )
        await async_wait_until(lambda: len(seen["closed"]) == 40, timeout=30, what="40 handlers to end")

    seen = _run(scenario)
    assert answers[:40] == [(f"hi {i}", None) for i in range(40)]
    assert answers[40:] == [(f"closed {i}", 1000) for i in range(40)]  # every close echoed by the server
    assert seen["closed"] == [1000] * 40  # every handler saw a clean close
    assert seen["background"] > 40  # the goodbyes went through the background lane
    assert seen["owners left"] == 0  # and nothing stays listed once the handlers have returned


def test_bytes_that_begin_like_a_close_frame_in_the_middle_of_a_frame_are_a_message_after_all() -> None:
    # a binary frame whose payload's third byte is 0x88 (mask 0), sent in two pieces: the second
    # read begins 0x88 0x81, as a close frame would
    payload = b"ab\x88\x81"
    frame = bytes((0x82, 0x80 | len(payload))) + b"\x00\x00\x00\x00" + payload
    got: dict[str, Any] = {}

    async def scenario(loop: UrgentFirstLoop, port: int, seen: dict[str, Any]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_UPGRADE)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(frame[:8])
        await writer.drain()
        await asyncio.sleep(0.2)  # the server reads the first piece alone
        before = loop.background_callbacks
        writer.write(frame[8:])
        await writer.drain()
        got["echo"] = await asyncio.wait_for(reader.readexactly(2 + len(payload)), 30)
        got["through the background"] = loop.background_callbacks > before
        await async_wait_until(lambda: not loop._background_owners, timeout=30, what="ordinary again")
        writer.write(_masked(0x1, b"more"))
        got["second"] = await asyncio.wait_for(reader.readexactly(2 + 4), 30)
        writer.write(_masked(0x8, struct.pack("!H", 1000)))
        got["close"] = await asyncio.wait_for(reader.readexactly(4), 30)
        writer.close()
        await async_wait_until(lambda: len(seen["closed"]) == 1, timeout=30, what="the handler to end")

    seen = _run(scenario)
    assert got["through the background"]
    assert seen["messages"] == [payload, "more"]
    assert got["echo"] == b"\x82\x04" + payload
    assert got["second"] == b"\x81\x04more"
    assert got["close"] == b"\x88\x02" + struct.pack("!H", 1000)
    assert seen["closed"] == [1000]


_UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class _HeldBackground(UrgentFirstLoop):
    """A loop whose background lane does not run until ``held`` is cleared (a busy gateway, frozen)."""

    held = True

    def _run_background(self) -> None:
        if self.held:
            self._pump_queued = False
            self.call_later(0.01, self._pump_again)
            return
        super()._run_background()

    def _pump_again(self) -> None:
        if self._background and not self._pump_queued:
            self._pump_queued = True
            self._ready.append(self._pump)  # type: ignore[attr-defined]


def test_a_client_that_keeps_sending_after_its_close_frame_is_cut_off_and_the_others_are_served() -> None:
    got: dict[str, Any] = {}

    async def scenario(loop: UrgentFirstLoop, port: int, seen: dict[str, Any]) -> None:
        assert isinstance(loop, _HeldBackground)
        other = await websockets.connect(f"ws://127.0.0.1:{port}", compression=None)
        raw = socket.create_connection(("127.0.0.1", port))
        raw.sendall(_UPGRADE)
        raw.setblocking(False)
        received = bytearray()
        await async_wait_until(
            lambda: _read(raw, received) is None and b"\r\n\r\n" in received,
            timeout=30,
            what="the 101 answer",
        )
        del received[:]
        raw.sendall(_masked(0x8, struct.pack("!H", 1000)))
        for _ in range(3 * MAX_HANDED_OVER):  # one junk frame a read, more than may wait
            raw.sendall(_masked(0x1, b"junk"))
            await asyncio.sleep(0.005)
        await other.send("still here")  # served while the background lane is held
        got["other"] = await asyncio.wait_for(other.recv(), 30)
        loop.held = False
        got["ended"] = await async_wait_until(lambda: _read(raw, received), timeout=30, what="the cut")
        got["echo"] = bytes(received)
        await other.close()
        raw.close()
        await async_wait_until(lambda: len(seen["closed"]) == 2, timeout=30, what="both handlers to end")

    seen = _run(scenario, _HeldBackground)
    assert got["other"] == "still here"
    assert got["ended"] == "reset"  # cut off: no close handshake for a client that would not stop
    assert not got["echo"].startswith(b"\x88")
    assert 1000 in seen["closed"]  # the other client closed cleanly


def _read(raw: socket.socket, into: bytearray) -> str | None:
    """Read what is there into ``into``: None while the stream is open, "eof" or "reset" at its end."""
    try:
        while chunk := raw.recv(65536):
            into += chunk
        return "eof"
    except BlockingIOError:
        return None
    except OSError:
        return "reset"
