"""The device plane's I/O: a ``websockets`` server speaking protocol v1.

The opening handshake checks the bearer token (HTTP 401 otherwise); each
connection then gets a ``DeviceSession``, whose receive loop feeds every frame
to its ``SessionMachine`` (gateway/device/session.py, where the session rules
live) and carries out what the machine decides: send a reply, submit to the
group committer, hand a result to the command service, close. Acks come from
the device's ``StreamState`` after each commit and leave through the fast path
of ``DeviceSession.send_ack``.

Others hear about sessions through observers registered on the server
(``DeviceServer.observers``, ``DeviceServer.presence_observers``); the
gateway (gateway/app.py) registers the command service and the live feed.
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
import sqlite3
import weakref
from collections.abc import Callable
from typing import Protocol

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from gateway.config import DeviceSettings
from gateway.device.session import Close, HelloAccepted, MetaUpdate, Output, Refusal, SessionMachine
from gateway.device.streams import StreamState
from gateway.store import registry
from gateway.store.registry import DeviceRecord
from gateway.store.writer import GroupCommitter
from gateway.tokens import bearer_token
from iotgw_common.clock import now_ms
from iotgw_common.protocol import Ack, CloseCode, Command, Event, Hello, Readings, Result, encode
from iotgw_common.protocol.messages import HARD_FRAME_BYTES

log = logging.getLogger(__name__)

DEVICE_PATH = "/v1/device"


class SessionObserver(Protocol):
    """Hears what happens on device sessions (the command service); called on the event loop.

    Register with ``DeviceServer.observers.append(observer)``. Methods must not
    block; they are called in registration order.
    """

    def session_ready(self, session: DeviceSession, hello: Hello) -> None:
        """``welcome`` was sent: the device accepts ``hello.commands`` through ``session.send_command``."""

    def result_received(self, session: DeviceSession, result: Result) -> None:
        """The device answered a command on ``session``."""

    def session_closed(self, session: DeviceSession) -> None:
        """The connection ended (whether or not it got past hello)."""


PresenceObserver = Callable[[int, str, bool, str | None], None]
"""``observer(device_id, name, online, peer)``: a device came online (its session is ready,
``peer`` is its address) or went offline (``peer`` None). Register with
``DeviceServer.presence_observers.append``; called on the event loop after the
session observers, must not block. A connection that a newer one replaced
closes without reporting offline: the newer one holds the device."""


class DeviceServer:
    """Accepts device connections; ``await start()``, later ``await stop()``."""

    def __init__(self, settings: DeviceSettings, conn: sqlite3.Connection, committer: GroupCommitter) -> None:
        self.settings = settings
        self._conn = conn  # read-only use on the event loop: auth and hello lookups
        self._committer = committer
        self._server: Server | None = None
        self._streams: dict[int, StreamState] = {}
        self.sessions: dict[int, DeviceSession] = {}
        """Device id -> the connection that holds the device (the newest one)."""
        # device records found by the handshake, handed to the handler by connection id
        self._authenticated: weakref.WeakKeyDictionary[ServerConnection, DeviceRecord] = (
            weakref.WeakKeyDictionary()
        )
        self._online: set[int] = set()  # device ids reported online to the presence observers
        self.port: int = settings.port
        self.refused_handshakes = 0
        self.observers: list[SessionObserver] = []
        self.presence_observers: list[PresenceObserver] = []

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

    @property
    def committer(self) -> GroupCommitter:
        return self._committer

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
            if not state.drained:
                drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                state.when_drained(functools.partial(_settle, drained))
                await drained
            if state.stream == stream and not state.failed:
                return state
            if state.failed:
                self._committer.reset_device(record.id)
        fresh = registry.find_by_id(self._conn, record.id) or record
        committed = fresh.last_seq if fresh.stream == stream else 0
        state = StreamState(record.id, stream, committed)
        self._streams[record.id] = state
        return state

    def _session_ready(self, session: DeviceSession, hello: Hello) -> None:
        for observer in self.observers:
            observer.session_ready(session, hello)
        record = session.record
        self._online.add(record.id)
        for presence in self.presence_observers:
            presence(record.id, record.name, True, session.peer)

    def _session_closed(self, session: DeviceSession) -> None:
        for observer in self.observers:
            observer.session_closed(session)
        record = session.record
        # A connection replaced by a newer one closes while the newer one holds the device.
        if self.sessions.get(record.id) is session and record.id in self._online:
            self._online.discard(record.id)
            for presence in self.presence_observers:
                presence(record.id, record.name, False, None)


class DeviceSession:
    """One authenticated connection: the I/O around its ``SessionMachine``, acks, commands."""

    def __init__(self, server: DeviceServer, connection: ServerConnection, record: DeviceRecord) -> None:
        self.server = server
        self.connection = connection
        self.record = record
        self.peer = _peer(connection)
        self.machine = SessionMachine(server.settings, record.name, clock=now_ms)
        self.stream: StreamState | None = None
        """The device's stream, from ``welcome`` on."""
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
            self.server._session_closed(self)
            if self.stream is not None and self.stream.target is self:
                self.stream.target = None
            code = self.connection.close_code
            log.info(
                "device %s disconnected (code %s, %d frames)", self.record.name, code, self.machine.frames
            )

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
        decision = self.machine.commit_failed()
        self.close(decision.code, decision.reason)

    async def _send_acks(self) -> None:
        """Send the latest cumulative ack through ``send()`` (flow control) until none is newer."""
        while self._ack_seq > self._sent_ack:
            seq = self._sent_ack = self._ack_seq
            try:
                await self.connection.send(encode(Ack(seq=seq)), text=True)
            except ConnectionClosed:
                return

    # -- receive loop -----------------------------------------------------------------

    async def _expect_hello(self) -> bool:
        """Read frames until the machine accepts hello or closes; send welcome. False: closed."""
        machine = self.machine
        deadline = self._loop.time() + self.server.settings.hello_timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    frame = await self.connection.recv(decode=False)
            except TimeoutError:
                return await self._carry_out(machine.hello_timed_out())
            decision = machine.receive_frame(frame)
            if isinstance(decision, HelloAccepted):
                return await self._welcome(decision.hello)
            if not await self._carry_out(decision):
                return False

    async def _welcome(self, hello: Hello) -> bool:
        record = self.record
        stream = await self.server.open_stream(record, hello.stream)
        if self.server.sessions.get(record.id) is not self:
            return False  # replaced while waiting for the previous frames to settle
        greeting = self.machine.welcome(stream)
        stream.target = self
        self.stream = stream
        self._sent_ack = stream.committed
        self.server.committer.submit_meta(record.id, **greeting.meta)
        await self.connection.send(greeting.frame, text=True)
        self.server._session_ready(self, hello)
        log.info(
            "device %s: hello from %s, stream %s, last stored seq %d, %d buffered, %d dropped",
            record.name, hello.agent, hello.stream, stream.committed, hello.buffered, hello.dropped,
        )  # fmt: skip
        return True

    async def _receive_data(self) -> None:
        """The hot loop: a valid data frame costs one decode, one check, one submit."""
        stream = self.stream
        assert stream is not None
        name = stream.stream
        committer = self.server.committer
        submit = committer.submit
        wait_for_room = committer.wait_for_room
        recv = self.connection.recv
        receive_frame = self.machine.receive_frame
        device_id = self.record.id
        while True:
            await wait_for_room()
            decision = receive_frame(await recv(decode=False))
            if type(decision) is Readings or type(decision) is Event:
                submit(stream, device_id, name, decision)
            elif not await self._carry_out(decision):
                return

    async def _carry_out(self, decision: Output | None) -> bool:
        """Do what the machine decided (other than a data frame); False once the connection ends."""
        if isinstance(decision, Refusal):
            exc = decision.error
            log.info("device %s: refused frame: %s (seq %s)", self.record.name, exc, exc.seq)
            await self.connection.send(decision.frame, text=True)
            if decision.close is None:
                return True
            decision = decision.close
        if isinstance(decision, Close):
            level = logging.WARNING if decision.code == CloseCode.DEVICE_MISMATCH else logging.INFO
            log.log(level, "device %s: closing with %d: %s", self.record.name, decision.code, decision.reason)
            if not self._closing:
                self._closing = True
                await self.connection.close(decision.code, decision.reason)
            return False
        if isinstance(decision, MetaUpdate):
            self.server.committer.submit_meta(self.record.id, **decision.fields)
        elif isinstance(decision, Result):
            for observer in self.server.observers:
                observer.result_received(self, decision)
        return True  # None: a close is under way; keep reading until the connection ends


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled: the waiting session is gone
        future.set_result(None)


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
