"""The rules of one device session, as a sans-I/O state machine (docs/protocol.md, sections 3-11).

``SessionMachine`` is to the device server what ``websockets.protocol.Protocol``
is to a websockets connection: frames go in, decisions come out, and it never
touches a socket, the event loop, the store or the wall clock (a ``clock``
returning ms is passed in). One machine per connection, after the handshake
authenticated the device::

                 receive_frame(hello)              welcome(stream)
    AWAIT_HELLO ─────────────────────> OPENING ─────────────────────> OPEN
         │  -> HelloAccepted           (the I/O layer gets the          │  readings, event -> the message
         │                             device's StreamState)            │  status -> MetaUpdate
         │  any other frame -> Refusal                                  │  result -> the Result
         │  (hello_required, or the codec's code; stays here)           │  bad frame, second hello -> Refusal
         │                                                              │  (all stay in OPEN)
         │  hello for another device      -> Close 4001                 │
         │  hello of another protocol     -> Close 4004                 │  refusal number max_refused_in_row
         │  hello_timed_out()             -> Close 4002                 │    -> Refusal with Close 1008
         │  refusal number max_refused_in_row                           │  commit_failed() -> Close 1011
         │    -> Refusal with Close 1008                                │
         ▼                                                              ▼
    CLOSED: receive_frame() -> None (frames still arriving while the connection closes are dropped)

What the I/O layer must do with each output of ``receive_frame``:

========================  ==================================================================
output                    the I/O layer must
========================  ==================================================================
``Readings``, ``Event``   (the decoded frame itself, already accepted by the stream) submit
                          it to the group committer with the ``StreamState`` as its sink:
                          ``committer.submit(stream, device_id, stream.stream, message)``;
                          the ack comes later from the stream, after the commit.
``MetaUpdate``            ``committer.submit_meta(device_id, **update.fields)``.
``Result``                hand it to the command service (observers' ``result_received``).
``NewNames``              a data frame that brings metric or event names the device never
                          sent (within its quotas, gateway/device/quotas.py): store the
                          names (``gateway.store.names.add`` through ``committer.call``)
                          and wait for that, then submit ``new_names.message`` as above;
                          if the names cannot be stored, ``quotas.names.forget`` them and
                          fail the frame (``stream.on_commit_failed``).
``Refusal``               send ``refusal.frame`` (an encoded ``error``) as a text frame;
                          then, if ``refusal.close`` is set, close with it, stop reading.
``Close``                 close the connection with ``code`` and ``reason``; stop reading.
``HelloAccepted``         wait until every frame of the device's previous connection
                          settled, take the ``StreamState`` of ``hello.stream`` (fresh if
                          the stream is new or the old one failed), call
                          ``welcome(stream)``, submit ``greeting.meta``, send
                          ``greeting.frame``. Only then may it send commands and read on.
``None``                  nothing: a close was decided, the connection is on its way down.
========================  ==================================================================

The I/O layer also owns the hello timer: it reads frames with a deadline of
``hello_timeout`` seconds from the handshake while the machine is in
``AWAIT_HELLO`` and, when it passes, calls ``hello_timed_out()`` and closes with
what it returns. When the group committer fails a frame of the stream, it calls
``commit_failed()`` and closes likewise.

Quotas (gateway/device/quotas.py): every frame in OPEN is charged to the
device's ``RateBucket`` (a readings frame its samples, any other frame 1); the
I/O layer must not read the next frame while ``quotas.rate.pause()`` is above 0.
A data frame that would take the device past a name quota is refused with
``too_many_metrics`` or ``too_many_event_names``; those refusals neither count
toward nor reset ``max_refused_in_row`` (the frame is valid, and the device's
frames with known names keep being stored).

A valid ``readings`` frame with names the device sent before costs one decode,
the rate charge, the clock-skew check, one set test per sample (the device's
names are both the name quota and the cache of names known valid), ``accept``
and no allocation of the machine's own; the caller adds one ``submit``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from gateway.device.quotas import QUOTA_CODES, DeviceQuotas, QuotaSettings, fresh_quotas
from gateway.device.streams import StreamState
from iotgw_common.protocol import (
    PROTOCOL_VERSION,
    CloseCode,
    DeviceMessage,
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
from iotgw_common.protocol.codec import check_names_of, check_sample_names
from iotgw_common.protocol.messages import (
    MAX_FRAME_BYTES,
    MAX_NESTING_DEPTH,
    MAX_SAMPLES,
    MAX_STRING_LENGTH,
    MAX_VALUES,
)


class SessionState(enum.Enum):
    """Where a session stands; see the module docstring for the transitions."""

    AWAIT_HELLO = "await_hello"
    """Connected and authenticated; only ``hello`` is accepted."""
    OPENING = "opening"
    """``hello`` accepted; the I/O layer is getting the stream for ``welcome``."""
    OPEN = "open"
    """``welcome`` built: data frames, ``status`` and ``result`` are accepted."""
    CLOSED = "closed"
    """A close was decided; frames are ignored."""


# module constants: reading an enum member off its class costs ~0.4 us on Python 3.11
_AWAIT_HELLO = SessionState.AWAIT_HELLO
_OPENING = SessionState.OPENING
_OPEN = SessionState.OPEN
_CLOSED = SessionState.CLOSED


@dataclass(frozen=True, slots=True)
class Close:
    """End the connection with this close code and reason (docs/protocol.md, section 11)."""

    code: CloseCode
    reason: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """A frame was refused: send ``frame`` (an encoded ``error``), then close if ``close`` is set."""

    error: ProtocolError
    frame: bytes
    close: Close | None = None


@dataclass(frozen=True, slots=True)
class HelloAccepted:
    """``hello`` passed the identity and version checks: get the stream, then call ``welcome``."""

    hello: Hello


@dataclass(frozen=True, slots=True)
class NewNames:
    """An accepted data frame with names new to the device: store them, then submit ``message``."""

    message: Readings | Event
    metrics: set[str] | None
    event: str | None


@dataclass(frozen=True, slots=True)
class MetaUpdate:
    """Device metadata to store: ``committer.submit_meta(device_id, **fields)``."""

    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Greeting:
    """What ``welcome()`` decided: store ``meta`` (the hello's metadata), then send ``frame``."""

    meta: dict[str, Any]
    frame: bytes


class SessionSettings(QuotaSettings, Protocol):
    """The settings the rules read; ``gateway.config.DeviceSettings`` is one (not imported: no I/O here)."""

    @property
    def max_clock_skew_ms(self) -> int:
        """Samples stamped further ahead of ``clock()`` are refused (``clock_skew``)."""

    @property
    def max_refused_in_row(self) -> int:
        """Refused frames in a row that close the connection with 1008."""

    @property
    def sample_interval(self) -> float | None:
        """Sent as ``welcome.settings.interval_s`` when set."""


Output = Readings | Event | NewNames | Result | MetaUpdate | Refusal | Close | HelloAccepted
"""What ``receive_frame`` returns (or None); the module docstring says what to do with each."""


def welcome_limits(settings: SessionSettings) -> dict[str, int]:
    """The limits a ``welcome`` announces (docs/protocol.md, section 9)."""
    return {
        "max_frame_bytes": MAX_FRAME_BYTES,
        "max_samples": MAX_SAMPLES,
        "max_values": MAX_VALUES,
        "max_string_length": MAX_STRING_LENGTH,
        "max_clock_skew_ms": settings.max_clock_skew_ms,
        "max_nesting_depth": MAX_NESTING_DEPTH,
    }


class SessionMachine:
    """The session rules of one connection of the device named ``device``.

    Feed it every frame the connection receives, in order, with
    ``receive_frame`` and act on what it returns (module docstring). It is
    not thread-safe and never blocks; ``clock()`` returns the wall clock in ms.
    ``quotas`` are the device's (shared by its connections, names loaded from
    the store); by default fresh ones on ``time.monotonic``.
    """

    __slots__ = (
        "_clock", "_max_refused", "_max_skew", "_names", "_rate", "_settings", "_stream", "device",
        "frames", "hello", "quotas", "refused_in_row", "state",
    )  # fmt: skip

    _stream: StreamState  # set by welcome(); read only in OPEN

    def __init__(
        self,
        settings: SessionSettings,
        device: str,
        *,
        clock: Callable[[], int],
        quotas: DeviceQuotas | None = None,
    ) -> None:
        self.quotas = quotas or fresh_quotas(settings, time.monotonic)
        """The device's rate bucket and name sets (gateway/device/quotas.py)."""
        if self.quotas.names is None:
            raise ValueError("the device's names must be loaded before its session starts")
        self._names = self.quotas.names
        self._rate = self.quotas.rate
        self._settings = settings
        self._clock = clock
        self._max_skew = settings.max_clock_skew_ms
        self._max_refused = settings.max_refused_in_row
        self.device = device
        """The device name the connection's token belongs to."""
        self.state = _AWAIT_HELLO
        self.hello: Hello | None = None
        """The accepted ``hello`` (from OPENING on)."""
        self.refused_in_row = 0
        """Frames refused since the last accepted one (hello or not); closes 1008 at the limit."""
        self.frames = 0
        """Frames received after ``welcome``."""

    @property
    def stream(self) -> StreamState | None:
        """The stream ``welcome`` was given (None before)."""
        stream: StreamState | None = getattr(self, "_stream", None)
        return stream

    # -- input ----------------------------------------------------------------------

    def receive_frame(self, frame: bytes | str) -> Output | None:
        """Apply the session rules to one received frame; say what to do (module docstring).

        Must not be called in OPENING (between ``HelloAccepted`` and ``welcome``).
        """
        if self.state is not _OPEN:
            return self._receive_before_open(frame)
        self.frames += 1
        message: DeviceMessage | None = None  # stays None while the frame is refused as undecodable
        try:
            # Metric names: the device's own (every one checked when it first came) cost one
            # superset test per sample; a frame with any other name is checked name by name,
            # before anything else, as the codec would (a hostile name after valid ones too).
            decoded = decode_device_message(frame, check_names=False)
            if type(decoded) is Readings:
                samples = decoded.samples
                known = self._names.metrics.issuperset
                unknown = False
                for sample in samples:
                    if not known(sample.values):
                        check_sample_names(samples, decoded.seq)
                        unknown = True
                        break
                message = decoded
                self._rate.charge(len(samples), decoded.seq)
                check_clock(samples, self._clock(), self._max_skew, decoded.seq)
                new = self._names.new_metrics(samples, decoded.seq) if unknown else None
                event = None
            elif type(decoded) is Event:
                if not self._names.metrics.issuperset(decoded.data):
                    check_names_of(decoded.data, decoded.seq)
                message = decoded
                self._rate.charge(1, decoded.seq)
                check_clock((decoded,), self._clock(), self._max_skew, decoded.seq)
                new, event = self._names.new_event(decoded.name, decoded.data, decoded.seq)
            else:
                message = decoded
                self._rate.charge(1)
                return self._receive_other(decoded)
            stream = self._stream
            if not stream.accept(message.seq):
                raise ProtocolError(
                    ErrorCode.SEQ_NOT_INCREASING,
                    f"seq {message.seq} is not above {stream.high}, the highest already received "
                    "on this stream; it is not stored again",
                    message.seq,
                )
        except ProtocolError as exc:
            if message is None:
                self._rate.charge(1)  # an undecodable frame costs what one sample does
            return self._refuse(exc)
        self.refused_in_row = 0
        if new is None and event is None:
            return message
        self._names.learn(new, event)
        return NewNames(message, new, event)

    def hello_timed_out(self) -> Close:
        """The I/O layer's hello timer ran out before ``hello`` was accepted: close 4002."""
        self.state = _CLOSED
        return Close(CloseCode.HELLO_TIMEOUT, "no hello within the hello timeout")

    def welcome(self, stream: StreamState) -> Greeting:
        """After ``HelloAccepted``: the ``welcome`` for ``stream`` and the hello's metadata.

        ``stream`` must be the device's ``StreamState`` for ``hello.stream``
        with every earlier frame settled, so that ``last_seq`` is exact.
        """
        if self.state is not _OPENING or self.hello is None:
            raise RuntimeError(f"welcome() needs an accepted hello; the session is {self.state.value}")
        hello = self.hello
        self._stream = stream
        self.state = _OPEN
        now = self._clock()
        meta: dict[str, Any] = {
            "agent": hello.agent,
            "sensors": msgspec.to_builtins(hello.sensors),
            "commands": msgspec.to_builtins(hello.commands),
            "info": hello.info,
            "buffered": hello.buffered,
            "dropped": hello.dropped,
            "last_seen_ms": now,
        }
        settings: dict[str, Any] = {}
        if self._settings.sample_interval is not None:
            settings["interval_s"] = self._settings.sample_interval
        welcome = Welcome(
            device=self.device,
            server_time=now,
            last_seq=stream.committed,
            settings=settings,
            limits=welcome_limits(self._settings),
        )
        return Greeting(meta=meta, frame=encode(welcome))

    def commit_failed(self) -> Close:
        """The group committer could not store a frame of this stream: close 1011."""
        self.state = _CLOSED
        return Close(CloseCode.INTERNAL_ERROR, "the gateway could not store data; resend unacked frames")

    # -- rules --------------------------------------------------------------------------

    def _receive_before_open(self, frame: bytes | str) -> Refusal | Close | HelloAccepted | None:
        if self.state is _CLOSED:
            return None
        if self.state is _OPENING:
            raise RuntimeError("receive_frame() between HelloAccepted and welcome()")
        try:
            message = decode_device_message(frame)
        except ProtocolError as exc:
            return self._refuse(exc)
        if type(message) is not Hello:
            seq = getattr(message, "seq", None)
            return self._refuse(
                ProtocolError(ErrorCode.HELLO_REQUIRED, "send hello before any other message", seq)
            )
        if message.device is not None and message.device != self.device:
            return self._close(
                CloseCode.DEVICE_MISMATCH, f"this token belongs to {self.device!r}, not {message.device!r}"
            )
        if message.protocol != PROTOCOL_VERSION:
            return self._close(
                CloseCode.UNSUPPORTED_PROTOCOL, f"this gateway speaks protocol {PROTOCOL_VERSION}"
            )
        self.hello = message
        self.state = _OPENING
        return HelloAccepted(message)

    def _receive_other(self, message: DeviceMessage) -> Output:
        """A frame in OPEN that is not data: status, result, or a second hello (refused)."""
        if type(message) is Status:
            self.refused_in_row = 0
            return MetaUpdate(
                {
                    "buffered": message.buffered,
                    "dropped": message.dropped,
                    "info": message.info,
                    "last_seen_ms": self._clock(),
                }
            )
        if type(message) is Result:
            self.refused_in_row = 0
            return message
        return self._refuse(ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "hello was already received"))

    def _refuse(self, exc: ProtocolError) -> Refusal:
        frame = encode(Error(code=exc.code.value, detail=exc.detail, seq=exc.seq))
        if exc.code in QUOTA_CODES:
            return Refusal(exc, frame)  # a valid frame over a name quota: not a misbehaving device
        self.refused_in_row += 1
        if self.refused_in_row < self._max_refused:
            return Refusal(exc, frame)
        return Refusal(
            exc,
            frame,
            self._close(CloseCode.POLICY_VIOLATION, f"{self.refused_in_row} refused frames in a row"),
        )

    def _close(self, code: CloseCode, reason: str) -> Close:
        self.state = _CLOSED
        return Close(code, reason)


__all__ = [
    "Close",
    "Greeting",
    "HelloAccepted",
    "MetaUpdate",
    "NewNames",
    "Output",
    "Refusal",
    "SessionMachine",
    "SessionSettings",
    "SessionState",
    "welcome_limits",
]
