"""The command round trip's floor: a relay that passes an HTTP command to a device and back.

``python -m bench.relay`` prints ``ready ws N http M`` and serves until SIGTERM. A device
connects to ``ws://127.0.0.1:N/`` (any path, any token), sends a hello and gets a minimal
welcome; ``POST /api/v1/devices/<name>/commands {"name": ..., "args": ...}`` on port M sends
``{"type":"command", ...}`` to the device that connected last, waits for its ``result`` and
answers 200 ``{"id": ..., "state": "succeeded" | "failed", "value": ...}``. ``GET /metrics``
answers an empty text (the command probe reads it).

The same stack as the gateway's command path (uvicorn with h11 for HTTP, ``websockets`` for the
device, one event loop) and the same client and responder, without what makes a command a
gateway's: no tokens checked, no ledger written (no fsync), no quotas, no state kept. What it
measures is what the machine, the libraries and the bench's own client and responder cost a
round trip at that moment: the peer the gateway's figures are read against.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

WELCOME = '{"type":"welcome","device":"relay","server_time":0,"last_seq":0}'
_JSON = [(b"content-type", b"application/json")]


class Relay:
    """One device connection at a time; commands wait for its result."""

    def __init__(self) -> None:
        self.device: ServerConnection | None = None
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)

    async def device_handler(self, ws: ServerConnection) -> None:
        try:
            await ws.recv()  # hello
            await ws.send(WELCOME)
            self.device = ws
            async for raw in ws:
                message = json.loads(raw)
                future = self.waiting.pop(str(message.get("id")), None)
                if message.get("type") == "result" and future is not None and not future.done():
                    future.set_result(message)
        except ConnectionClosed:
            pass
        finally:
            if self.device is ws:
                self.device = None

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A raw ASGI app: the commands endpoint and an empty /metrics."""
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["method"] == "GET" and scope["path"] == "/metrics":
            await _answer(send, 200, b"", [(b"content-type", b"text/plain")])
            return
        if scope["method"] != "POST" or not scope["path"].endswith("/commands") or self.device is None:
            await _answer(send, 404, b'{"detail":"no device, or not the commands endpoint"}', _JSON)
            return
        request = json.loads(body)
        command_id = str(next(self.ids))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[command_id] = future
        timeout = float(request.get("timeout", 10))
        frame = {"type": "command", "id": command_id, "name": request["name"],
                 "args": request.get("args", {}), "deadline": 0}  # fmt: skip
        try:
            await self.device.send(json.dumps(frame))
            result = await asyncio.wait_for(future, timeout)
        except (ConnectionClosed, TimeoutError):
            self.waiting.pop(command_id, None)
            await _answer(send, 200, json.dumps({"id": command_id, "state": "failed"}).encode(), _JSON)
            return
        state = "succeeded" if result.get("ok") else "failed"
        answer = {"id": command_id, "state": state, "value": result.get("value")}
        await _answer(send, 200, json.dumps(answer).encode(), _JSON)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # SIGTERM is the relay's (main)


async def _answer(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def main(host: str) -> None:
    relay = Relay()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # IPPROTO_TCP as in the gateway (gateway/operator/api/server.py): asyncio turns Nagle off only then
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(1024)
    sock.setblocking(False)
    config = uvicorn.Config(
        relay.app,
        interface="asgi3",
        http="h11",
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )  # as the gateway's
    server = _Server(config)
    api = asyncio.create_task(server.serve(sockets=[sock]))
    async with serve(relay.device_handler, host, 0, compression=None) as ws_server:
        while not server.started:
            await asyncio.sleep(0.01)
        ws_port = ws_server.sockets[0].getsockname()[1]
        print(f"ready ws {ws_port} http {sock.getsockname()[1]}", flush=True)
        await stop.wait()
    server.should_exit = True
    await api


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    asyncio.run(main(args.host))
