"""The device plane's I/O: a ``websockets`` server speaking protocol v1.

The opening handshake checks the bearer token (HTTP 401 otherwise); each
connection then gets a ``DeviceSession``, whose receive loop feeds every frame
to its ``SessionMachine`` (gateway/device/session.py, where the session rules
live) and carries out what the machine decides: send a reply, submit to the
group committer, hand a result to the command service, close. Acks come from
the device's ``StreamState`` after each commit and leave through the fast path
of ``AckWriter`` (gateway/device/acks.py).

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
import ssl
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.config import DeviceSettings
from gateway.device.acks import AckWriter
from gateway.device.admission import AddressLimiter, counted_connection, too_many_connections
from gateway.device.command_urgency import CommandUrgency
from gateway.device.quotas import QUOTA_CODES, QuotaBook
from gateway.device.revocation import Admission, RevocationWatch, admit, closing, recheck
from gateway.device.session import (
    Close,
    HelloAccepted,
    MetaUpdate,
    NewNames,
    Output,
    Refusal,
    SessionMachine,
    SessionState,
)  # fmt: skip
from gateway.device.streams import StreamState
from gateway.store import names, registry
from gateway.store.registry import DeviceRecord
from gateway.store.writer import DeviceRevoked, GroupCommitter
from gateway.tokens import bearer_token
from iotgw_common.clock import now_ms
from iotgw_common.protocol import CloseCode, Command, Event, Hello, Readings, Result, encode
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
        # what the handshake found (device, token hash, watermark), handed to the handler
        self._authenticated: weakref.WeakKeyDictionary[ServerConnection, Admission] = (
            weakref.WeakKeyDictionary()
        )
        self._revocations = RevocationWatch(conn, self._revoked)
        self._online: set[int] = set()  # device ids reported online to the presence observers
        self.port: int = settings.port
        self.refused_handshakes = 0
        self.observers: list[SessionObserver] = []
        self.presence_observers: list[PresenceObserver] = []
        self.removal_observers: list[Callable[[int], None]] = []
        """``observer(device_id)``: the device was removed from the registry (its commands fail)."""
        self.quotas = QuotaBook(settings, time.monotonic)
        """Each device's rate bucket and names (gateway/device/quotas.py), across its connections."""
        self.addresses = AddressLimiter(settings.max_connections_per_address, settings.exempt_networks())
        """Open connections per source address (gateway/device/admission.py)."""

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        """Listen on ``settings.host:port``; ``ssl_context`` (iotgw_common.tls) serves ``wss://``.

        The context stays in use for every later handshake, so loading a new certificate
        into it (``tls.reload_server_context``) takes effect for new connections.
        """
        s = self.settings
        self._server = await serve(
            self._handle,
            s.host,
            s.port,
            ssl=ssl_context,
            process_request=self._authenticate,
            create_connection=counted_connection(self.addresses),
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
        self._revocations.start()

    async def stop(self) -> None:
        """Stop accepting, tell every device it is going away (1001), wait for them."""
        await self._revocations.stop()
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
        if getattr(connection, "over_quota", False):  # before the token lookup: no store read
            self.refused_handshakes += 1
            return too_many_connections(connection, self.addresses.limit)
        path = request.path.split("?", 1)[0]
        if path != DEVICE_PATH:
            self.refused_handshakes += 1
            return connection.respond(
                http.HTTPStatus.NOT_FOUND, f"no such endpoint; devices use {DEVICE_PATH}\n"
            )
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            return self._unauthorized(connection, "missing or malformed 'Authorization: Bearer <token>'\n")
        admission = admit(self._conn, token)
        if admission is None:
            return self._unauthorized(connection, "unknown device token\n")
        self._authenticated[connection] = admission
        return None

    def _unauthorized(self, connection: ServerConnection, text: str) -> Response:
        self.refused_handshakes += 1
        response = connection.respond(http.HTTPStatus.UNAUTHORIZED, text)
        response.headers["WWW-Authenticate"] = 'Bearer realm="iotgw devices"'
        return response

    # -- sessions -----------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        admission = self._authenticated.pop(connection)
        record = admission.record
        previous = self.sessions.get(record.id)
        if previous is not None:  # it stops submitting now, before this one waits for the drain
            log.warning("device %s: a new connection replaces the one from %s", record.name, previous.peer)
            previous.end(CloseCode.REPLACED, "replaced by a newer connection")
        quotas = self.quotas.hold(record.id, functools.partial(names.load, self._conn, record.id))
        session = DeviceSession(self, connection, record, admission.token_hash, admission.watermark)
        self.sessions[record.id] = session
        try:
            await session.run()
        finally:
            if self.sessions.get(record.id) is session:
                del self.sessions[record.id]
            self.quotas.release(quotas)

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
        # the stream's stored position, also for a stream the device used before another one
        state = StreamState(record.id, stream, registry.stream_position(self._conn, record.id, stream))
        self._streams[record.id] = state
        return state

    def _revoked(self, log_id: int, device_id: int, kind: str) -> None:
        """The revocation watch found a removal or rotation: end the session it applies to."""
        session = self.sessions.get(device_id)
        if session is not None and session.watermark < log_id:
            code, reason = closing(kind)
            log.warning("device %s: %s; closing its session with %d", session.record.name, reason, code)
            session.end(code, reason)
        if kind == registry.REMOVED:
            self._streams.pop(device_id, None)
            for observer in self.removal_observers:
                observer(device_id)

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

    def __init__(
        self, server: DeviceServer, connection: ServerConnection, record: DeviceRecord, token_hash: str = "",
        watermark: int = 0,
    ) -> None:  # fmt: skip
        self.server = server
        self.connection = connection
        self.record = record
        self.token_hash = token_hash
        self.watermark = watermark
        """Revocation log id the token was last checked at; a later revocation ends the session."""
        self.peer = _peer(connection)
        self.machine = SessionMachine(
            server.settings, record.name, clock=now_ms, quotas=server.quotas.get(record.id)
        )
        self.quota_refusals = 0
        self.stream: StreamState | None = None
        """The device's stream, from ``welcome`` on."""
        self._loop = asyncio.get_running_loop()
        self.acks = AckWriter(connection, self._loop)
        self.urgency = CommandUrgency(connection.transport)
        """Urgent while a command sent on this connection awaits its result."""
        self._closing = False
        self._close_task: asyncio.Future[None] | None = None

    async def run(self) -> None:
        self.urgency.enter()
        log.info("device %s connected from %s", self.record.name, self.peer)
        try:
            if await self._expect_hello():
                await self._receive_data()
        except ConnectionClosed:
            pass
        finally:
            self.acks.cancel()
            self.urgency.clear()
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

    def end(self, code: CloseCode, reason: str) -> None:
        """Stop at once (replaced, revoked): nothing the connection sends from now on is
        submitted or acted on (the machine drops it), then close with ``code``."""
        self.machine.state = SessionState.CLOSED
        self.close(code, reason)

    async def send_command(self, command: Command) -> None:
        """Send a ``command`` frame on this connection; raises ``ConnectionClosed`` if it is gone.

        The command service calls this after the ``sent`` state is durable (at most once).
        Until its result arrives (or its deadline passes) the connection is read urgently.
        """
        self.urgency.sent((command.deadline - now_ms()) / 1000)
        await self.connection.send(encode(command), text=True)

    # -- AckTarget (told by the device's StreamState) ---------------------------------

    def send_ack(self, seq: int) -> None:
        self.acks.send(seq)

    def commit_failed(self, error: BaseException) -> None:
        if isinstance(error, DeviceRevoked):  # the committer saw the revocation first
            self.end(*closing(error.kind))
            return
        decision = self.machine.commit_failed()
        self.close(decision.code, decision.reason)

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
        server = self.server
        stream = await server.open_stream(record, hello.stream)
        if not self._closing:  # the token may have been revoked since the handshake
            self.watermark, revoked = recheck(server._conn, record.id, self.token_hash)
            if revoked is not None:
                log.warning("device %s: %s; closing with %d", record.name, revoked[1], revoked[0])
                self.end(*revoked)
        if self._closing or server.sessions.get(record.id) is not self:
            if self._close_task is not None:  # replaced or revoked while waiting for the drain
                await self._close_task
            return False
        server.committer.admit(record.id, self.watermark)
        greeting = self.machine.welcome(stream)
        stream.target = self
        self.stream = stream
        self.acks.sent = stream.committed
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
        rate = self.machine.quotas.rate
        while True:
            await wait_for_room()
            if rate.tokens < 0:  # over its readings rate: stop reading, TCP slows the device
                await asyncio.sleep(rate.pause())
            decision = receive_frame(await recv(decode=False))
            if type(decision) is Readings or type(decision) is Event:
                submit(stream, device_id, name, decision)
            elif not await self._carry_out(decision):
                return

    async def _carry_out(self, decision: Output | None) -> bool:
        """Do what the machine decided (other than a data frame); False once the connection ends."""
        if isinstance(decision, Refusal):
            exc = decision.error
            level = logging.INFO
            if exc.code in QUOTA_CODES:  # may repeat for every frame: warn once per connection
                self.quota_refusals += 1
                level = logging.WARNING if self.quota_refusals == 1 else logging.DEBUG
            log.log(level, "device %s: refused frame: %s (seq %s)", self.record.name, exc, exc.seq)
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
        if isinstance(decision, NewNames):
            return await self._submit_with_names(decision)
        if isinstance(decision, MetaUpdate):
            self.server.committer.submit_meta(self.record.id, **decision.fields)
        elif isinstance(decision, Result):
            self.urgency.answered()
            for observer in self.server.observers:
                observer.result_received(self, decision)
        return True  # None: a close is under way; keep reading until the connection ends

    async def _submit_with_names(self, decision: NewNames) -> bool:
        """Store the frame's new names, then submit it: the stored names cover every stored frame."""
        stream, known = self.stream, self.machine.quotas.names
        assert stream is not None and known is not None
        metrics, events = decision.metrics or (), () if decision.event is None else (decision.event,)
        store = functools.partial(
            names.add, device_id=self.record.id, metrics=metrics, events=events, now_ms=now_ms()
        )
        try:
            await self.server.committer.call(store)
        except Exception as exc:  # a disk error: the accepted frame fails like a failed commit
            known.forget(decision.metrics, decision.event)
            stream.on_commit_failed(exc)
            return False
        if self.machine.state is SessionState.CLOSED:  # replaced or revoked meanwhile: not stored
            stream.on_commit_failed(RuntimeError("the session ended"))
            return True
        self.server.committer.submit(stream, self.record.id, stream.stream, decision.message)
        return True


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled: the waiting session is gone
        future.set_result(None)


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
