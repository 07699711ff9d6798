"""The device plane: a ``websockets`` server speaking protocol v1.

The opening handshake checks the bearer token (HTTP 401 otherwise); each
session then runs hello -> welcome -> data frames -> acks. Decoding and
validation are the codec's; durability is the group committer's; this module
does the I/O and the session rules of docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import http
import logging
import sqlite3
import time
import weakref
from typing import Any, Protocol

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from gateway.config import DeviceSettings
from gateway.device.streams import StreamState
from gateway.store import registry
from gateway.store.registry import DeviceRecord
from gateway.store.writer import GroupCommitter
from gateway.tokens import bearer_token
from iotgw_common.protocol import (
    PROTOCOL_VERSION,
    Ack,
    CloseCode,
    Command,
    Error,
    ErrorCode,
    Event,
    Hello,
    ProtocolError,
    Readings,
    Result,
    Status,
    Welcome,
    check_clock,
    decode_device_message,
    encode,
)
from iotgw_common.protocol.messages import (
    HARD_FRAME_BYTES,
    MAX_FRAME_BYTES,
    MAX_SAMPLES,
    MAX_STRING_LENGTH,
    MAX_VALUES,
)

log = logging.getLogger(__name__)

DEVICE_PATH = "/v1/device"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class CommandHooks(Protocol):
    """What a session tells the command service (gateway/operator/commands.py); all on the event loop."""

    def session_ready(self, session: DeviceSession, hello: Hello) -> None:
        """``welcome`` was sent: the device accepts ``hello.commands`` on this connection."""

    def result_received(self, session: DeviceSession, result: Result) -> None:
        """The device answered a command."""

    def session_closed(self, session: DeviceSession) -> None:
        """The connection ended (whether or not it got past hello)."""


class DeviceServer:
    """Accepts device connections; ``await start()``, later ``await stop()``."""

    def __init__(self, settings: DeviceSettings, conn: sqlite3.Connection, committer: GroupCommitter) -> None:
        self.settings = settings
        self._conn = conn  # read-only use on the event loop: auth and hello lookups
        self._committer = committer
        self._server: Server | None = None
        self._streams: dict[int, StreamState] = {}
        self.sessions: dict[int, DeviceSession] = {}
        # device records found by the handshake, handed to the handler by connection id
        self._authenticated: weakref.WeakKeyDictionary[ServerConnection, DeviceRecord] = (
            weakref.WeakKeyDictionary()
        )
        self.port: int = settings.port
        self.refused_handshakes = 0
        self.command_hooks: CommandHooks | None = None

    async def start(self) -> None:
        s = self.settings
        self._server = await serve(
            self._handle,
            s.host,
            s.port,
            process_request=self._authenticate,
            compression=None,  # boards cannot inflate; deflate costs ~8 us a frame
            open_timeout=s.open_timeout,
            ping_interval=s.ping_interval,
            ping_timeout=s.ping_timeout,
            close_timeout=5,
            max_size=HARD_FRAME_BYTES,
            max_queue=16,
            server_header=None,
            # asyncio's default of 100 overflows when many devices reconnect at once (a gateway
            # restart): the kernel drops the SYNs and each device waits a 1 s retransmit
            backlog=2048,
        )
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting, tell every device it is going away (1001), wait for them."""
        if self._server is None:
            return
        self._server.close(close_connections=True, code=CloseCode.GOING_AWAY, reason="gateway shutting down")
        await self._server.wait_closed()
        self._server = None

    # -- handshake ----------------------------------------------------------------------

    def _authenticate(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path != DEVICE_PATH:
            self.refused_handshakes += 1
            return connection.respond(
                http.HTTPStatus.NOT_FOUND, f"no such endpoint; devices use {DEVICE_PATH}\n"
            )
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            return self._unauthorized(connection, "missing or malformed 'Authorization: Bearer <token>'\n")
        record = registry.find_by_token(self._conn, token)
        if record is None:
            return self._unauthorized(connection, "unknown device token\n")
        self._authenticated[connection] = record
        return None

    def _unauthorized(self, connection: ServerConnection, text: str) -> Response:
        self.refused_handshakes += 1
        response = connection.respond(http.HTTPStatus.UNAUTHORIZED, text)
        response.headers["WWW-Authenticate"] = 'Bearer realm="iotgw devices"'
        return response

    # -- sessions -----------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        record = self._authenticated.pop(connection)
        previous = self.sessions.get(record.id)
        if previous is not None:
            log.warning("device %s: a new connection replaces the one from %s", record.name, previous.peer)
            previous.close(CloseCode.REPLACED, "replaced by a newer connection")
        session = DeviceSession(self, connection, record)
        self.sessions[record.id] = session
        try:
            await session.run()
        finally:
            if self.sessions.get(record.id) is session:
                del self.sessions[record.id]

    async def open_stream(self, record: DeviceRecord, stream: str) -> StreamState:
        """The device's stream state for ``stream``, once every earlier frame has settled.

        Waiting for the committer to finish the previous connection's frames
        makes ``welcome.last_seq`` exact, so the device resends only what is
        really missing.
        """
        state = self._streams.get(record.id)
        if state is not None:
            await state.drained()
            if state.stream == stream and not state.failed:
                return state
            if state.failed:
                self._committer.reset_device(record.id)
        fresh = registry.find_by_id(self._conn, record.id) or record
        committed = fresh.last_seq if fresh.stream == stream else 0
        state = StreamState(record.id, stream, committed)
        self._streams[record.id] = state
        return state

    def welcome_limits(self) -> dict[str, int]:
        return {
            "max_frame_bytes": MAX_FRAME_BYTES,
            "max_samples": MAX_SAMPLES,
            "max_values": MAX_VALUES,
            "max_string_length": MAX_STRING_LENGTH,
            "max_clock_skew_ms": self.settings.max_clock_skew_ms,
        }

    @property
    def committer(self) -> GroupCommitter:
        return self._committer


class DeviceSession:
    """One authenticated connection: hello, then data frames, acks and errors."""

    def __init__(self, server: DeviceServer, connection: ServerConnection, record: DeviceRecord) -> None:
        self.server = server
        self.connection = connection
        self.record = record
        self.peer = _peer(connection)
        self.state: StreamState | None = None
        self.refused_in_row = 0
        self.frames = 0
        self._ack_seq = 0
        self._sent_ack = 0
        self._ack_scheduled = False
        self._ack_task: asyncio.Task[None] | None = None  # only while an ack waits for the socket
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._close_task: asyncio.Future[None] | None = None

    async def run(self) -> None:
        log.info("device %s connected from %s", self.record.name, self.peer)
        try:
            if await self._expect_hello():
                await self._receive_data()
        except ConnectionClosed:
            pass
        finally:
            if self._ack_task is not None:
                self._ack_task.cancel()
            if self.server.command_hooks is not None:
                self.server.command_hooks.session_closed(self)
            if self.state is not None and self.state.target is self:
                self.state.target = None
            code = self.connection.close_code
            log.info("device %s disconnected (code %s, %d frames)", self.record.name, code, self.frames)

    def close(self, code: CloseCode, reason: str) -> None:
        """Close the connection with ``code`` without waiting (safe to call twice)."""
        if not self._closing:
            self._closing = True
            self._close_task = asyncio.ensure_future(self.connection.close(code, reason))

    async def send_command(self, command: Command) -> None:
        """Send a ``command`` frame on this connection; raises ``ConnectionClosed`` if it is gone.

        The command service calls this after the ``sent`` state is durable (at most once).
        """
        await self.connection.send(encode(command), text=True)

    async def _close(self, code: CloseCode, reason: str) -> bool:
        """Close with ``code`` from inside the session and wait for it; returns False."""
        if not self._closing:
            self._closing = True
            await self.connection.close(code, reason)
        return False

    # -- AckTarget ------------------------------------------------------------------

    def send_ack(self, seq: int) -> None:
        self._ack_seq = seq
        if not self._ack_scheduled:
            # runs after the committer's callback has handled every frame of this commit,
            # so a device gets one ack per commit (acks coalesce)
            self._ack_scheduled = True
            self._loop.call_soon(self._flush_ack)

    def _flush_ack(self) -> None:
        """Write the latest ack at once if the socket takes it; else let ``_send_acks`` send it.

        No task waits for acks while the socket keeps up: an idle connection costs no task.

        The direct path is what ``send()`` does minus its task switch and flow-control wait,
        taken only while the connection is open with nothing left in the write buffer, so
        there is nothing to wait for (bench/: about a tenth of the event loop's time).
        """
        self._ack_scheduled = False
        seq = self._ack_seq
        if seq <= self._sent_ack:
            return
        conn = self.connection
        transport = conn.transport
        if (
            conn.protocol.state is State.OPEN
            and not transport.is_closing()
            and transport.get_write_buffer_size() == 0
            and getattr(conn, "send_in_progress", None) is None  # no fragmented send (never here)
        ):
            self._sent_ack = seq
            conn.protocol.send_text(encode(Ack(seq=seq)))
            conn.send_data()
        elif self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.create_task(self._send_acks())

    def commit_failed(self, error: BaseException) -> None:
        self.close(CloseCode.INTERNAL_ERROR, "the gateway could not store data; resend unacked frames")

    # -- protocol -------------------------------------------------------------------

    async def _expect_hello(self) -> bool:
        """Wait for hello (answering data frames with hello_required); send welcome."""
        deadline = asyncio.get_running_loop().time() + self.server.settings.hello_timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    frame = await self.connection.recv(decode=False)
            except TimeoutError:
                return await self._close(CloseCode.HELLO_TIMEOUT, "no hello within the hello timeout")
            try:
                message = decode_device_message(frame)
            except ProtocolError as exc:
                if not await self._refuse(exc):
                    return False
                continue
            if type(message) is Hello:
                return await self._welcome(message)
            seq = getattr(message, "seq", None)
            refusal = ProtocolError(ErrorCode.HELLO_REQUIRED, "send hello before any other message", seq)
            if not await self._refuse(refusal):
                return False

    async def _welcome(self, hello: Hello) -> bool:
        record = self.record
        if hello.device is not None and hello.device != record.name:
            log.warning("device %s: hello claims to be %r; closing", record.name, hello.device)
            return await self._close(
                CloseCode.DEVICE_MISMATCH, f"this token belongs to {record.name!r}, not {hello.device!r}"
            )
        if hello.protocol != PROTOCOL_VERSION:
            return await self._close(
                CloseCode.UNSUPPORTED_PROTOCOL, f"this gateway speaks protocol {PROTOCOL_VERSION}"
            )
        state = await self.server.open_stream(record, hello.stream)
        if self.server.sessions.get(record.id) is not self:
            return False  # replaced while waiting for the previous frames to settle
        state.target = self
        self.state = state
        self._sent_ack = state.committed
        self.server.committer.submit_meta(
            record.id,
            agent=hello.agent,
            sensors=msgspec.to_builtins(hello.sensors),
            commands=msgspec.to_builtins(hello.commands),
            info=hello.info,
            buffered=hello.buffered,
            dropped=hello.dropped,
            last_seen_ms=now_ms(),
        )
        settings: dict[str, Any] = {}
        if self.server.settings.sample_interval is not None:
            settings["interval_s"] = self.server.settings.sample_interval
        welcome = Welcome(
            device=record.name,
            server_time=now_ms(),
            last_seq=state.committed,
            settings=settings,
            limits=self.server.welcome_limits(),
        )
        await self.connection.send(encode(welcome), text=True)
        if self.server.command_hooks is not None:
            self.server.command_hooks.session_ready(self, hello)
        log.info(
            "device %s: hello from %s, stream %s, last stored seq %d, %d buffered, %d dropped",
            record.name, hello.agent, hello.stream, state.committed, hello.buffered, hello.dropped,
        )  # fmt: skip
        return True

    async def _receive_data(self) -> None:
        assert self.state is not None
        state = self.state
        committer = self.server.committer
        recv = self.connection.recv
        max_skew = self.server.settings.max_clock_skew_ms
        device_id = self.record.id
        while True:
            await committer.wait_for_room()
            frame = await recv(decode=False)
            self.frames += 1
            try:
                message = decode_device_message(frame)
                if isinstance(message, Readings | Event):
                    stamped = message.samples if isinstance(message, Readings) else (message,)
                    check_clock(stamped, now_ms(), max_skew, message.seq)
                    if not state.accept(message.seq):
                        raise ProtocolError(
                            ErrorCode.SEQ_NOT_INCREASING,
                            f"seq {message.seq} is not above {state.high}, the highest already received "
                            "on this stream; it is not stored again",
                            message.seq,
                        )
                    committer.submit(state, device_id, state.stream, message)
                elif isinstance(message, Status):
                    committer.submit_meta(
                        device_id, buffered=message.buffered, dropped=message.dropped, info=message.info,
                        last_seen_ms=now_ms(),
                    )  # fmt: skip
                elif isinstance(message, Result):
                    if self.server.command_hooks is not None:
                        self.server.command_hooks.result_received(self, message)
                else:
                    raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "hello was already received")
            except ProtocolError as exc:
                if not await self._refuse(exc):
                    return
                continue
            self.refused_in_row = 0

    async def _refuse(self, exc: ProtocolError) -> bool:
        """Answer a refused frame with an error; False once the device must be closed."""
        self.refused_in_row += 1
        log.info("device %s: refused frame: %s (seq %s)", self.record.name, exc, exc.seq)
        error = Error(code=exc.code.value, detail=exc.detail, seq=exc.seq)
        await self.connection.send(encode(error), text=True)
        if self.refused_in_row >= self.server.settings.max_refused_in_row:
            return await self._close(
                CloseCode.POLICY_VIOLATION, f"{self.refused_in_row} refused frames in a row"
            )
        return True

    async def _send_acks(self) -> None:
        """Send the latest cumulative ack through ``send()`` (flow control) until none is newer."""
        while self._ack_seq > self._sent_ack:
            seq = self._sent_ack = self._ack_seq
            try:
                await self.connection.send(encode(Ack(seq=seq)), text=True)
            except ConnectionClosed:
                return


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
