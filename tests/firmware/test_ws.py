"""firmware_micropython/ws.py under the real MicroPython against a real `websockets` server.

Grouped like RFC 6455: opening handshake (section 4), data frames and masking
(5.2-5.3), fragmentation (5.4), control frames (5.5), closing (7), limits.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.firmware.mp import HEAP, json_lines, run_script

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CLIENT_PRELUDE = """
import asyncio, json
import ws
URL = sys.argv[1]
def out(**kw):
    print(json.dumps(kw))
"""


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def with_server(
    tmp_path: Path,
    handler: Callable[[ServerConnection], Awaitable[None]],
    client: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    scheme: str = "ws",
    host: str = "127.0.0.1",
    heap: str = HEAP,
) -> tuple[list[Any], str]:
    """Serve ``handler`` on a free port, run ``client`` under MicroPython, return its JSON lines."""
    async with serve(handler, "127.0.0.1", 0, compression=None, ssl=ssl_context, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        rc, out, err = await run_script(
            tmp_path, CLIENT_PRELUDE + client, f"{scheme}://{host}:{port}/v1/device", heap=heap
        )
    assert rc == 0, f"micropython failed ({rc}):\n{out}\n{err}"
    return json_lines(out), out


# -- opening handshake (section 4) ---------------------------------------------------------


def test_echo_text_and_binary_with_bearer_token(tmp_path: Path) -> None:
    seen: list[Any] = []

    async def echo(conn: ServerConnection) -> None:
        seen.append(conn.request.headers)
        async for message in conn:
            await conn.send(message)

    client = """
async def main():
    for round in range(2):
        c = await ws.connect(URL, token="secret-token", max_size=200000)
        cases = ["h\u00e9llo \u2713 \U0001f321", "", bytes(range(256)) * 4, "x" * 20000, bytes(70000), "y" * 125, "z" * 126]
        for m in cases:
            await c.send(m)
            r = await c.recv()
            out(kind=type(r).__name__, same=(r == m), n=len(m))
        await c.close()
        out(closed=c.closed, code=c.close_code)
asyncio.run(main())
"""
    # 70000-byte messages need a 2 MB heap on a 64-bit build; boards never get such messages.
    results, _ = run(with_server(tmp_path, echo, client, heap="2m"))
    echoes = [r for r in results if "same" in r]
    assert len(echoes) == 14 and all(r["same"] for r in echoes), echoes
    assert [r["kind"] for r in echoes[:7]] == ["str", "str", "bytes", "str", "bytes", "str", "str"]
    assert results[-1] == {"closed": True, "code": 1000}
    assert len(seen) == 2
    for headers in seen:
        assert headers["Authorization"] == "Bearer secret-token"
        assert headers["Upgrade"].lower() == "websocket"
        assert headers["Sec-WebSocket-Version"] == "13"
        assert len(base64.b64decode(headers["Sec-WebSocket-Key"])) == 16
    assert seen[0]["Sec-WebSocket-Key"] != seen[1]["Sec-WebSocket-Key"]  # random per connection


async def raw_http_server(response: Callable[[str], bytes]) -> tuple[asyncio.Server, int]:
    """A plain TCP server answering the upgrade request with ``response(key)``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await reader.readuntil(b"\r\n\r\n")).decode()
        key = next(
            line.split(":", 1)[1].strip()
            for line in request.split("\r\n")
            if line.lower().startswith("sec-websocket-key:")
        )
        writer.write(response(key))
        await writer.drain()
        await asyncio.sleep(0.5)  # the scripted peer holds the connection a moment, then drops it
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


HANDSHAKE_CLIENT = """
async def main():
    try:
        c = await ws.connect(URL, token="t", timeout_ms=3000)
        out(result="connected")
        c.abort()
    except ws.HandshakeError as exc:
        out(result="refused", detail=exc.args[0], status=exc.status)
asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        pytest.param(
            lambda key: (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept_for(key)}\r\n\r\n"
            ).encode(),
            {"result": "connected"},
            id="right-accept",
        ),
        pytest.param(
            lambda key: (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept_for(key + 'x')}\r\n\r\n"
            ).encode(),
            {"result": "refused", "detail": "wrong Sec-WebSocket-Accept", "status": 101},
            id="wrong-accept",
        ),
        pytest.param(
            lambda key: (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            ),
            {"result": "refused", "detail": "wrong Sec-WebSocket-Accept", "status": 101},
            id="missing-accept",
        ),
        pytest.param(
            lambda key: b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 14\r\n\r\nunknown token\n",
            {"result": "refused", "detail": "server answered HTTP 401", "status": 401},
            id="http-401",
        ),
    ],
)
def test_handshake_checks_the_server_answer(tmp_path: Path, response, expected) -> None:
    async def scenario() -> list[Any]:
        server, port = await raw_http_server(response)
        async with server:
            rc, out, err = await run_script(
                tmp_path, CLIENT_PRELUDE + HANDSHAKE_CLIENT, f"ws://127.0.0.1:{port}/v1/device"
            )
        assert rc == 0, out + err
        return json_lines(out)

    assert run(scenario()) == [expected]


def test_connection_refused_is_an_oserror(tmp_path: Path) -> None:
    async def scenario() -> list[Any]:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        client = """
async def main():
    try:
        await ws.connect(URL, timeout_ms=3000)
    except OSError as exc:
        out(result=type(exc).__name__)
asyncio.run(main())
"""
        rc, out, err = await run_script(tmp_path, CLIENT_PRELUDE + client, f"ws://127.0.0.1:{port}/")
        assert rc == 0, out + err
        return json_lines(out)

    assert run(scenario())[0]["result"] in ("OSError", "HandshakeError")


# -- fragmentation (section 5.4) -------------------------------------------------------------


def test_fragmented_messages_from_the_server_are_reassembled(tmp_path: Path) -> None:
    async def handler(conn: ServerConnection) -> None:
        await conn.recv()
        await conn.send(["frag", "ment", "ed \u2713"])
        await conn.send([b"\x01\x02", b"", b"\x03"])
        await conn.send("after")
        await conn.recv()

    client = """
async def main():
    c = await ws.connect(URL, max_size=64)
    await c.send("go")
    for _ in range(3):
        m = await c.recv()
        out(m=m if isinstance(m, str) else list(m))
    await c.close()
asyncio.run(main())
"""
    results, _ = run(with_server(tmp_path, handler, client))
    assert results == [{"m": "fragmented \u2713"}, {"m": [1, 2, 3]}, {"m": "after"}]


# -- control frames (section 5.5) ----------------------------------------------------------------


def test_server_ping_is_answered_with_pong(tmp_path: Path) -> None:
    latencies: list[float] = []

    async def handler(conn: ServerConnection) -> None:
        assert await conn.recv() == "ready"
        for payload in (b"probe", b""):
            pong_waiter = await conn.ping(payload)
            latencies.append(await asyncio.wait_for(pong_waiter, 5))
        await conn.send("done")
        await conn.recv()

    client = """
async def main():
    c = await ws.connect(URL)
    await c.ping(b"from-client")
    await c.send("ready")
    out(m=await c.recv(), pong=c.last_pong is not None)
    await c.close()
asyncio.run(main())
"""
    results, _ = run(with_server(tmp_path, handler, client))
    assert results == [{"m": "done", "pong": True}]
    assert len(latencies) == 2


# -- closing handshake (section 7) -----------------------------------------------------------------


def test_close_code_from_the_server_is_exposed_and_echoed(tmp_path: Path) -> None:
    server_saw: list[Any] = []

    async def handler(conn: ServerConnection) -> None:
        await conn.recv()
        await conn.close(4003, "device removed")
        server_saw.append(conn.close_code)

    client = """
async def main():
    c = await ws.connect(URL)
    await c.send("close me")
    try:
        await c.recv()
    except ws.ConnectionClosed as exc:
        out(code=exc.code, reason=exc.reason, local=exc.local, close_code=c.close_code, closed=c.closed)
    try:
        await c.send("late")
    except ws.ConnectionClosed:
        out(send_after_close="refused")
asyncio.run(main())
"""
    results, _ = run(with_server(tmp_path, handler, client))
    assert results == [
        {"code": 4003, "reason": "device removed", "local": False, "close_code": 4003, "closed": True},
        {"send_after_close": "refused"},
    ]
    assert server_saw == [4003]  # the client echoed the code


def test_close_code_from_the_client_reaches_the_server(tmp_path: Path) -> None:
    server_saw: list[Any] = []

    async def handler(conn: ServerConnection) -> None:
        try:
            await conn.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            server_saw.append((exc.rcvd.code, exc.rcvd.reason))

    client = """
async def main():
    c = await ws.connect(URL)
    await c.close(4321, "bye now")
    out(close_code=c.close_code, closed=c.closed)
asyncio.run(main())
"""
    results, _ = run(with_server(tmp_path, handler, client))
    assert results == [{"close_code": 4321, "closed": True}]  # the server's echo
    assert server_saw == [(4321, "bye now")]


# -- limits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "oversize",
    [pytest.param("y" * 1001, id="one-frame"), pytest.param(["y" * 400] * 3, id="fragmented")],
)
def test_oversize_message_is_refused_with_1009(tmp_path: Path, oversize) -> None:
    server_saw: list[Any] = []

    async def handler(conn: ServerConnection) -> None:
        await conn.recv()
        await conn.send("y" * 1000)  # exactly max_size: fine
        await conn.send(oversize)
        try:
            await conn.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            server_saw.append(exc.rcvd.code)

    client = """
async def main():
    c = await ws.connect(URL, max_size=1000)
    await c.send("go")
    out(first=len(await c.recv()))
    try:
        await c.recv()
    except ws.ConnectionClosed as exc:
        out(code=exc.code, local=exc.local, closed=c.closed)
asyncio.run(main())
"""
    results, _ = run(with_server(tmp_path, handler, client))
    assert results == [{"first": 1000}, {"code": 1009, "local": True, "closed": True}]
    assert server_saw == [1009]


# -- TLS (wss://) ------------------------------------------------------------------------------------


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize("trusted", [True, False], ids=["right-ca", "wrong-ca"])
def test_wss_verifies_the_server_certificate(tmp_path: Path, trusted: bool) -> None:
    cert, key = make_cert(tmp_path, "server")
    other, _ = make_cert(tmp_path, "other")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def echo(conn: ServerConnection) -> None:
        async for message in conn:
            await conn.send(message)

    ca = cert if trusted else other
    client = f"""
async def main():
    try:
        c = await ws.connect(URL, token="t", ssl=ws.ssl_context({str(ca)!r}))
    except OSError as exc:
        out(refused=type(exc).__name__)
        return
    await c.send("over tls " + "z" * 3000)
    m = await c.recv()
    out(ok=m == "over tls " + "z" * 3000)
    await c.close()
asyncio.run(main())
"""
    results, _ = run(with_server(tmp_path, echo, client, ssl_context=context, scheme="wss", host="localhost"))
    if trusted:
        assert results == [{"ok": True}]
    else:
        assert results == [{"refused": "HandshakeError"}]  # never a session with an unverified server
