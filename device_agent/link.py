"""The agent's connection to the gateway: one WebSocket session at a time, forever.

One session (docs/protocol.md, "Session"):

1. connect with ``Authorization: Bearer TOKEN``, no permessage-deflate;
2. send ``hello`` (built fresh by the agent: stream, buffer depth, drops);
3. wait for ``welcome``; drop buffered frames <= ``welcome.last_seq``;
4. a sender task streams buffered frames in seq order, at most
   ``max_in_flight`` unacknowledged, and sleeps until :meth:`Link.notify`
   (new frame) or an ack makes room; a receiver task handles ``ack`` (delete
   from the buffer), ``error`` and ``command``.

When the session ends for any reason the link reconnects with exponential
backoff and full jitter (delay uniform in [0, min(max, base * 2**attempt)]),
and resends, in order, everything not acknowledged. Some endings wait longer,
as docs/protocol.md asks, and log loudly: close 4000 (replaced: two devices may
share a token) and 1008 wait ``long_delay`` more; HTTP 401 and closes
4001/4003/4004/4005 (the configuration must change) wait ``config_error_delay``.

``wss://`` verifies the gateway's certificate against the system's CAs or
``ca_file`` and its name against the URL's host (iotgw_common/tls.py); a
failed check is logged as one sentence saying what to change, and retried
with the same backoff. ``tls_verify = False`` turns the check off and warns
at every connect.

The attempt counter resets only after a session that stayed up
``stable_after`` seconds, so a gateway that accepts and drops at once still
sees growing delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from device_agent.buffer import FrameBuffer
from device_agent.commands import CommandRegistry
from iotgw_common import tls
from iotgw_common._version import __version__
from iotgw_common.clock import now_ms
from iotgw_common.protocol import (
    CLOSE_EXPLANATIONS,
    Ack,
    CloseCode,
    Command,
    Error,
    ErrorCode,
    Hello,
    ProtocolError,
    Status,
    Welcome,
    decode_gateway_message,
    encode,
)
from iotgw_common.protocol.messages import HARD_FRAME_BYTES

log = logging.getLogger(__name__)

#: Close codes after which reconnecting cannot help until the configuration changes.
CONFIG_ERROR_CLOSES = frozenset(
    {
        CloseCode.DEVICE_MISMATCH,
        CloseCode.DEVICE_REMOVED,
        CloseCode.UNSUPPORTED_PROTOCOL,
        CloseCode.TOKEN_REVOKED,  # rotated: only a new token in the configuration helps
    }
)
#: Close codes after which the device waits ``long_delay`` on top of the backoff.
LONG_DELAY_CLOSES = frozenset({CloseCode.REPLACED, CloseCode.POLICY_VIOLATION})


class Backoff:
    """Exponential backoff with full jitter: ``rng() * min(cap, base * 2**attempt)``."""

    def __init__(self, base: float, cap: float, rng: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap, self.base * 2.0 ** min(self.attempt, 60))

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more attempt."""
        delay = self._rng() * self.ceiling()
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Back to the first attempt (after a stable session)."""
        self.attempt = 0


@dataclasses.dataclass
class LinkSettings:
    """Connection parameters; ``url``/``token``/``device`` come from ``[gateway]``."""

    url: str
    token: str
    max_in_flight: int = 64
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    open_timeout: float = 10.0
    welcome_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 2.0
    stable_after: float = 10.0
    long_delay: float = 60.0
    config_error_delay: float = 300.0
    ca_file: str | None = None
    """``wss://``: the CA file (PEM) to verify the gateway against; None: the system's CAs."""
    tls_verify: bool = True
    """``wss://``: False skips certificate checks (logged as a warning at every connect)."""


@dataclasses.dataclass
class SessionOutcome:
    """How one connection attempt ended, to choose the delay before the next."""

    welcomed: bool = False
    duration: float = 0.0
    close_code: int | None = None
    http_status: int | None = None


class Link:
    """Keeps a session with the gateway up and streams the buffer through it.

    ``hello`` builds the hello message at each connection (the agent's
    sensors, the buffer's stream and stats). ``on_welcome`` (optional) is
    called with each ``welcome``. Run :meth:`run` as a task and cancel it to
    stop; call :meth:`notify` after appending frames to the buffer.
    """

    def __init__(
        self,
        settings: LinkSettings,
        buffer: FrameBuffer,
        hello: Callable[[], Hello],
        commands: CommandRegistry,
        *,
        on_welcome: Callable[[Welcome], None] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.buffer = buffer
        self._hello = hello
        self._commands = commands
        self._on_welcome = on_welcome
        self.backoff = Backoff(settings.backoff_base, settings.backoff_max, rng)
        self._wake = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._inflight: deque[int] = deque()
        self._command_tasks: set[asyncio.Task[None]] = set()
        self.sessions = 0
        """Number of sessions that reached ``welcome`` (for status and tests)."""
        self.clock_offset_ms: int | None = None
        """gateway clock minus ours at the last welcome, for logging only (the Pi has NTP)."""

    @property
    def connected(self) -> bool:
        """True between ``welcome`` and the end of the session."""
        return self._ws is not None

    def notify(self) -> None:
        """New frames are in the buffer: wake the sender. Call from the event loop."""
        self._wake.set()

    async def send_status(self, status: Status) -> bool:
        """Send ``status`` if a session is up; return whether it was sent (status is not buffered)."""
        ws = self._ws
        if ws is None:
            return False
        try:
            await ws.send(encode(status), text=True)
        except ConnectionClosed:
            return False
        return True

    async def run(self) -> None:
        """Connect, stream, reconnect with backoff; returns only by cancellation."""
        while True:
            outcome = await self._attempt()
            if outcome.welcomed and outcome.duration >= self.settings.stable_after:
                self.backoff.reset()
            delay = self._delay_after(outcome)
            log.info("reconnecting to %s in %.1f s", self.settings.url, delay)
            await asyncio.sleep(delay)

    # -- one attempt -----------------------------------------------------------------

    async def _attempt(self) -> SessionOutcome:
        outcome = SessionOutcome()
        started = time.monotonic()
        settings = self.settings
        try:
            async with connect(
                settings.url,
                ssl=self._tls_context(),
                additional_headers={"Authorization": f"Bearer {settings.token}"},
                compression=None,
                open_timeout=settings.open_timeout,
                ping_interval=settings.ping_interval,
                ping_timeout=settings.ping_timeout,
                close_timeout=settings.close_timeout,
                max_size=HARD_FRAME_BYTES,
                user_agent_header=f"iotgw-agent/{__version__}",
            ) as ws:
                try:
                    await self._session(ws, outcome)
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        await ws.close(CloseCode.GOING_AWAY, "agent stopping")
                    raise
                outcome.close_code = ws.close_code
        except InvalidStatus as exc:
            outcome.http_status = status = exc.response.status_code
            if status == 401:
                log.error(
                    "gateway %s refused the token (HTTP 401): check gateway.token / IOTGW_AGENT_TOKEN",
                    settings.url,
                )
            elif status == 404:
                log.error(
                    "gateway %s answered HTTP 404: the gateway's device endpoint is /v1/device "
                    '(gateway.url = "ws://HOST:8765/v1/device", wss:// with TLS)',
                    settings.url,
                )
            else:
                log.error("gateway %s refused the WebSocket handshake: HTTP %d", settings.url, status)
        except ConnectionClosed as exc:
            outcome.close_code = exc.rcvd.code if exc.rcvd is not None else None
        except (ssl.SSLError, tls.TlsError) as exc:  # before OSError, which SSLError is
            log.error("cannot connect to %s securely: %s", settings.url, tls.explain(exc))
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            log.warning("cannot connect to %s: %s", settings.url, exc or type(exc).__name__)
        finally:
            self._ws = None
            outcome.duration = time.monotonic() - started
            for task in self._command_tasks:
                task.cancel()
        if outcome.welcomed or outcome.close_code is not None:
            self._log_close(outcome.close_code)
        return outcome

    def _tls_context(self) -> ssl.SSLContext | None:
        """For ``wss://``: a fresh client context (a CA file replaced on disk counts at the next try).

        Raises ``tls.TlsError`` when the CA file cannot be read; ``_attempt`` logs it and retries.
        """
        settings = self.settings
        if not settings.url.startswith("wss://"):
            return None
        if not settings.tls_verify:
            log.warning(
                "connecting to %s WITHOUT verifying its certificate (gateway.tls_verify = false): "
                "anyone on the path can pose as the gateway and read this device's token",
                settings.url,
            )
        return tls.client_context(ca_file=settings.ca_file, verify=settings.tls_verify)

    async def _session(self, ws: ClientConnection, outcome: SessionOutcome) -> None:
        await ws.send(encode(self._hello()), text=True)
        try:
            welcome = await asyncio.wait_for(self._receive_welcome(ws), self.settings.welcome_timeout)
        except TimeoutError:
            log.warning("no welcome within %.0f s; closing", self.settings.welcome_timeout)
            return
        if welcome is None:
            return
        dropped = self.buffer.forget_through(welcome.last_seq)
        self.clock_offset_ms = offset = welcome.server_time - now_ms()
        stats = self.buffer.stats()
        log.info(
            "connected to %s as %s: gateway has seq <= %d (%d buffered frames already stored), "
            "%d to send, clock offset %+d ms",
            self.settings.url,
            welcome.device,
            welcome.last_seq,
            dropped,
            stats.buffered,
            offset,
        )
        if abs(offset) > 5_000:
            log.warning("this clock differs from the gateway's by %.1f s: check NTP", offset / 1000)
        if self._on_welcome is not None:
            self._on_welcome(welcome)
        outcome.welcomed = True
        self.sessions += 1
        self._inflight.clear()
        self._ws = ws
        sender = asyncio.create_task(self._send_loop(ws, welcome.last_seq), name="iotgw-agent-sender")
        receiver = asyncio.create_task(self._receive_loop(ws), name="iotgw-agent-receiver")
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._ws = None
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, ConnectionClosed):
                log.error("link task %s failed; reconnecting", task.get_name(), exc_info=exc)
                await ws.close(CloseCode.INTERNAL_ERROR, "agent error")

    async def _receive_welcome(self, ws: ClientConnection) -> Welcome | None:
        async for raw in ws:
            try:
                message = decode_gateway_message(raw)
            except ProtocolError as exc:
                log.error("gateway sent an undecodable frame before welcome (%s); closing", exc)
                await ws.close(CloseCode.POLICY_VIOLATION, "expected welcome")
                return None
            if isinstance(message, Welcome):
                return message
            if isinstance(message, Error):
                log.error("gateway refused hello: %s: %s", message.code, message.detail)
            else:
                log.warning("gateway sent %s before welcome; ignored", type(message).__name__)
        return None

    async def _send_loop(self, ws: ClientConnection, last_seq: int) -> None:
        sent_through = last_seq
        while True:
            self._wake.clear()
            room = self.settings.max_in_flight - len(self._inflight)
            frames = self.buffer.pending(sent_through, room) if room > 0 else []
            if not frames:
                await self._wake.wait()
                continue
            for seq, body in frames:
                await ws.send(body, text=True)
                self._inflight.append(seq)
                sent_through = seq

    async def _receive_loop(self, ws: ClientConnection) -> None:
        async for raw in ws:
            try:
                message = decode_gateway_message(raw)
            except ProtocolError as exc:
                log.warning("ignoring an undecodable frame from the gateway: %s", exc)
                continue
            if isinstance(message, Ack):
                self._acked(message.seq)
            elif isinstance(message, Error):
                self._refused(message)
            elif isinstance(message, Command):
                task = asyncio.create_task(self._run_command(ws, message), name=f"command-{message.id}")
                self._command_tasks.add(task)
                task.add_done_callback(self._command_tasks.discard)
            else:
                log.warning(
                    "unexpected %s from the gateway during a session; ignored", type(message).__name__
                )

    def _acked(self, seq: int) -> None:
        self.buffer.ack(seq)
        while self._inflight and self._inflight[0] <= seq:
            self._inflight.popleft()
        self._wake.set()

    def _refused(self, error: Error) -> None:
        seq = error.seq
        if seq is None:
            log.warning("gateway error %s: %s", error.code, error.detail)
        elif error.code == ErrorCode.SEQ_NOT_INCREASING.value:
            # The gateway already has this seq (stored or being stored): its ack will come.
            log.info("gateway already has seq %d (%s); waiting for its ack", seq, error.detail)
        else:
            dropped = self.buffer.reject(seq)
            with contextlib.suppress(ValueError):
                self._inflight.remove(seq)
            self._wake.set()
            log.error(
                "gateway refused frame seq %d: %s: %s%s",
                seq,
                error.code,
                error.detail,
                " (dropped from the buffer)" if dropped else "",
            )

    async def _run_command(self, ws: ClientConnection, command: Command) -> None:
        result = await self._commands.handle(command)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(encode(result), text=True)

    # -- delays ------------------------------------------------------------------------

    def _delay_after(self, outcome: SessionOutcome) -> float:
        jitter = self.backoff.next_delay()
        code = outcome.close_code
        if outcome.http_status == 401 or code in CONFIG_ERROR_CLOSES:
            return self.settings.config_error_delay + jitter
        if code in LONG_DELAY_CLOSES:
            return self.settings.long_delay + jitter
        return jitter

    def _log_close(self, code: int | None) -> None:
        try:
            known = CloseCode(code) if code is not None else None
        except ValueError:
            known = None
        explanation = CLOSE_EXPLANATIONS.get(known, "") if known is not None else ""
        if known is CloseCode.REPLACED:
            log.error(
                "!!! gateway closed this session with 4000: another connection authenticated with this "
                "device's token. Are two agents sharing one token? Waiting %.0f s before reconnecting.",
                self.settings.long_delay,
            )
        elif known in CONFIG_ERROR_CLOSES:
            log.error(
                "!!! gateway closed this session with %d: %s. Fix the configuration; retrying in %.0f s.",
                code,
                explanation,
                self.settings.config_error_delay,
            )
        elif known is CloseCode.POLICY_VIOLATION:
            log.error("gateway closed this session with 1008: %s", explanation)
        else:
            log.warning("session closed (code %s%s)", code, f": {explanation}" if explanation else "")


__all__ = ["Backoff", "Link", "LinkSettings", "SessionOutcome"]
