"""The transport ceiling: a bare ``websockets`` server that counts frames and acks each.

``python -m bench.bare --port 0`` prints ``ready port N`` and serves until
SIGTERM, then prints ``frames N``. It answers the first frame of a connection
(the device's hello) with a minimal welcome and every later frame with
``{"type":"ack","seq":n}``, n counting frames on that connection, so the load
generator's window works exactly as against the gateway. No decoding, no
validation, no storage: what is left is the library's own cost per frame.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

WELCOME = b'{"type":"welcome","device":"bare","server_time":0,"last_seq":0}'
frames = 0


async def handler(ws: ServerConnection) -> None:
    global frames
    recv, send = ws.recv, ws.send
    try:
        await recv(decode=False)  # hello
        await send(WELCOME, text=True)
        n = 0
        while True:
            await recv(decode=False)
            n += 1
            frames += 1
            await send(b'{"type":"ack","seq":%d}' % n, text=True)
    except ConnectionClosed:
        pass


async def main(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with serve(handler, host, port, compression=None, max_size=1 << 20) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"ready port {bound}", flush=True)
        await stop.wait()
    print(f"frames {frames}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
