"""Replacement and streams against a real gateway process (docs/protocol.md, sections 3 and 5).

* Atomic replacement: once a newer connection of a device is welcomed, nothing from the
  older one is stored, and ``welcome.last_seq`` is exact. The old connection here is a
  hand-driven client that keeps sending after it was replaced, as a half-open link does
  (it never reads the gateway's close frame).
* Streams: a device that goes back to a stream it used before another one gets that
  stream's last stored seq in ``welcome``, so nothing of it is stored twice.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.support.device import ScriptedDevice, now_ms
from tests.support.gateway import GatewayProcess

TIMEOUT = 15.0


class HandDriven:
    """A device connection driven frame by frame on the sans-I/O ``ClientProtocol``.

    It reads only inside :meth:`read_until`; what the gateway sends otherwise stays unread
    in the socket, so it never sees (or answers) a close: a half-open link.
    """

    def __init__(self, url: str, token: str) -> None:
        self.uri = parse_uri(url)
        self.token = token
        self.protocol = ClientProtocol(self.uri)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.received: list[dict[str, Any]] = []

    async def open(self) -> None:
        request = self.protocol.connect()
        request.headers["Authorization"] = f"Bearer {self.token}"
        self.protocol.send_request(request)
        self.reader, self.writer = await asyncio.open_connection(self.uri.host, self.uri.port)
        await self._flush()
        await self.read_until(lambda: self.protocol.state is State.OPEN)

    async def send(self, message: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(message).encode())
        await self._flush()

    async def close_and_wait_for_eof(self) -> None:
        """Send our own close after everything else; the gateway ends the TCP connection."""
        self.protocol.send_close(1000, "done")
        await self._flush()
        assert self.reader is not None
        async with asyncio.timeout(TIMEOUT):
            while await self.reader.read(65536):
                pass  # the gateway's close and anything before it, unread by the protocol

    async def read_until(self, done: Any) -> None:
        assert self.reader is not None
        async with asyncio.timeout(TIMEOUT):
            while not done():
                data = await self.reader.read(65536)
                assert data, "the gateway closed the connection"
                self.protocol.receive_data(data)
                for event in self.protocol.events_received():
                    if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                        self.received.append(json.loads(event.data))
                    elif isinstance(event, Response):
                        assert event.status_code == 101, event
                await self._flush()

    def acked(self) -> int:
        return max((m["seq"] for m in self.received if m["type"] == "ack"), default=0)

    async def _flush(self) -> None:
        assert self.writer is not None
        for data in self.protocol.data_to_send():
            if data:
                self.writer.write(data)
        await self.writer.drain()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()


def readings(seq: int, source: str) -> dict[str, Any]:
    return {"type": "readings", "seq": seq, "samples": [{"ts": now_ms(), "values": {"src": source}}]}


def stored(gw: GatewayProcess, name: str) -> list[tuple[int, object]]:
    return [(seq, values["src"]) for seq, _, values in gw.readings(name)]


def test_a_replaced_connection_stores_nothing_after_the_new_welcome(gw: GatewayProcess) -> None:
    token = gw.add_device("half-open")

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        old = HandDriven(gw.device_url, token)
        await old.open()
        try:
            await old.send({"type": "hello", "stream": "s1", "agent": "hand/1"})
            await old.read_until(lambda: any(m["type"] == "welcome" for m in old.received))
            for seq in range(1, 11):
                await old.send(readings(seq, "old"))
            await old.read_until(lambda: old.acked() >= 10)
            async with ScriptedDevice(gw.device_url, token, stream="s1") as new:
                welcome = await new.hello()  # the old link is replaced, but keeps sending:
                for seq in range(11, 61):
                    await old.send(readings(seq, "old"))
                await old.close_and_wait_for_eof()  # the gateway has read all of it now
                await new.readings(11, {"src": "new"})
                await new.wait_ack(11)
                return welcome, new.errors
        finally:
            old.abort()

    welcome, errors = asyncio.run(scenario())
    assert welcome["last_seq"] == 10
    assert errors == []  # no seq_not_increasing for the new connection's own frame
    assert stored(gw, "half-open") == [(seq, "old") for seq in range(1, 11)] + [(11, "new")]


def test_going_back_to_an_earlier_stream_stores_nothing_twice(gw: GatewayProcess) -> None:
    token = gw.add_device("stream-hopper")

    async def session(stream: str, seqs: range, expect_last: int) -> list[dict[str, Any]]:
        async with ScriptedDevice(gw.device_url, token, stream=stream) as dev:
            welcome = await dev.hello()
            assert welcome["last_seq"] == expect_last, (stream, welcome)
            for seq in seqs:
                await dev.readings(seq, {"src": f"{stream}-{seq}"})
            if seqs:
                await dev.wait_ack(seqs[-1])
            return dev.errors

    async def scenario() -> None:
        assert await session("stream-a", range(1, 6), 0) == []
        assert await session("stream-b", range(1, 4), 0) == []  # a new buffer: a new stream
        assert await session("stream-a", range(6, 8), 5) == []  # back to a: its position holds
        async with ScriptedDevice(gw.device_url, token, stream="stream-a") as dev:
            await dev.hello()
            await dev.readings(5, {"src": "again"})  # a resend of what is stored: refused
            error = await dev.wait_error()
            assert error["code"] == "seq_not_increasing" and error["seq"] == 5
        assert await session("stream-b", range(4, 5), 3) == []

    asyncio.run(scenario())
    rows = stored(gw, "stream-hopper")
    assert sorted(rows, key=str) == sorted(
        [(s, f"stream-a-{s}") for s in range(1, 8)] + [(s, f"stream-b-{s}") for s in range(1, 5)], key=str
    )
