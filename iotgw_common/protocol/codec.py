"""Sans-I/O codec of device protocol v1: text in, typed message or coded error out.

The gateway and the Python agent share this module; it never touches a socket
or a clock (callers pass ``now_ms``). Decoding is one msgspec call on the hot
path; only a refused frame pays for working out which error code fits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import msgspec

from iotgw_common.protocol.bounds import check_int_range, may_hold_large_int, nesting_too_deep
from iotgw_common.protocol.errors import ErrorCode, ProtocolError
from iotgw_common.protocol.messages import (
    LABEL_PATTERN,
    MAX_FRAME_BYTES,
    MAX_NESTING_DEPTH,
    MAX_SAFE_INT,
    MAX_SEQ,
    METRIC_NAME_PATTERN,
    MIN_TIMESTAMP_MS,
    DeviceMessage,
    Event,
    GatewayMessage,
    Readings,
    Result,
    Sample,
)

_device_decoder = msgspec.json.Decoder(DeviceMessage)
_gateway_decoder = msgspec.json.Decoder(GatewayMessage)
_encoder = msgspec.json.Encoder()


class _SeqProbe(msgspec.Struct):
    seq: int | None = None


_seq_probe = msgspec.json.Decoder(_SeqProbe)


def decode_device_message(
    frame: str | bytes, max_frame_bytes: int = MAX_FRAME_BYTES, *, check_names: bool = True
) -> DeviceMessage:
    """Decode one frame sent by a device.

    Raises ProtocolError with the code of docs/protocol.md when the frame is
    refused, and no other exception, whatever ``frame`` holds. Timestamps against
    the clock and seq order are checked by the caller (``check_clock``, the
    session), which holds the clock and the state.

    ``check_names=False`` leaves the metric names of a ``readings`` or ``event``
    frame (the keys of its values or data; their length is checked) unchecked:
    the caller must then refuse the frame with ``bad_metric_name`` itself, before
    anything else about it is acted on, through :func:`check_sample_names` /
    :func:`check_names_of` unless every name is one it already knows to be valid
    (the session machine does, with the device's own names).
    """
    size = len(frame)
    if type(frame) is str and size * 4 > max_frame_bytes:  # up to 4 UTF-8 bytes a character
        size = len(frame.encode("utf-8", "surrogatepass"))
    if size > max_frame_bytes:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"frame is {size} bytes, the limit is {max_frame_bytes}",
            _probe_seq(frame),
        )
    if nesting_too_deep(frame, MAX_NESTING_DEPTH):
        raise _too_deep()
    try:
        message: DeviceMessage = _device_decoder.decode(frame)
    except msgspec.ValidationError as exc:
        raise _classify_validation_error(str(exc), _probe_seq(frame), frame) from None
    except msgspec.DecodeError as exc:
        raise _classify_decode_error(frame, str(exc)) from None
    kind = type(message)
    if kind is Readings:
        if check_names:
            check_sample_names(message.samples, message.seq)  # type: ignore[union-attr]
    elif kind is Event:
        if check_names:
            check_names_of(message.data, message.seq)  # type: ignore[union-attr]
    elif kind is Result and may_hold_large_int(frame):
        check_int_range(message.value, "$.value")  # type: ignore[union-attr]
    return message


_METRIC_NAME = re.compile(METRIC_NAME_PATTERN)
_known_names: set[str] = set()
_MAX_KNOWN_NAMES = 65_536


def check_sample_names(samples: Iterable[Sample], seq: int | None = None) -> None:
    """Refuse (``bad_metric_name``) the first metric name among ``samples``' values, in
    order, that does not match the protocol's pattern.

    A sample whose names were all seen valid before costs one C-level superset test.
    """
    known = _known_names
    for sample in samples:
        if not known.issuperset(sample.values):
            check_names_of(sample.values, seq)


def check_names_of(names: Iterable[str], seq: int | None = None) -> None:
    """Refuse (``bad_metric_name``) the first of ``names`` that does not match the pattern."""
    known = _known_names
    for name in names:
        if name not in known:
            check_name(name, seq)


def check_name(name: str, seq: int | None = None) -> None:
    """Refuse a metric name that does not match the protocol's pattern (``bad_metric_name``).

    Valid names are remembered (up to a bound), so a stream of the usual few
    names costs one set lookup each instead of a regex match.
    """
    if _METRIC_NAME.match(name) is None:
        raise ProtocolError(
            ErrorCode.BAD_METRIC_NAME,
            f"metric name {name[:80]!r} does not match {METRIC_NAME_PATTERN}",
            seq,
        )
    if len(_known_names) < _MAX_KNOWN_NAMES:
        _known_names.add(name)


def decode_gateway_message(frame: str | bytes) -> GatewayMessage:
    """Decode one frame sent by the gateway (used by agents and tests).

    Raises ProtocolError (``invalid_json``, ``nesting_too_deep``, ``unknown_type``
    or ``invalid_message``) for a frame that is not a gateway message, and no
    other exception.
    """
    if nesting_too_deep(frame, MAX_NESTING_DEPTH):
        raise _too_deep()
    try:
        message: GatewayMessage = _gateway_decoder.decode(frame)
        return message
    except msgspec.ValidationError as exc:
        raise _classify_validation_error(str(exc), None, frame) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, str(exc)) from None


def encode(message: msgspec.Struct) -> bytes:
    """Encode a message as the UTF-8 bytes of one JSON text frame."""
    return _encoder.encode(message)


def encode_text(message: msgspec.Struct) -> str:
    """Encode a message as a str, for clients whose send() wants text."""
    return _encoder.encode(message).decode()


def check_clock(
    samples: Iterable[Sample | Event], now_ms: int, max_skew_ms: int, seq: int | None = None
) -> None:
    """Refuse samples stamped too far in the future (``clock_skew``).

    Call it for every readings frame before storing it; ``now_ms`` is the
    gateway's clock. Timestamps before 2000 are refused by the decoder.
    """
    limit = now_ms + max_skew_ms
    for sample in samples:
        if sample.ts > limit:
            raise ProtocolError(
                ErrorCode.CLOCK_SKEW,
                f"timestamp {sample.ts} is {sample.ts - now_ms} ms ahead of the gateway's clock "
                f"(limit {max_skew_ms} ms); resynchronise from welcome.server_time",
                seq,
            )


def _probe_seq(frame: str | bytes) -> int | None:
    """Best-effort ``seq`` of a refused frame, so that the error can name it."""
    if len(frame) > 4 * MAX_FRAME_BYTES:
        return None
    try:
        seq = _seq_probe.decode(frame).seq
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return seq if seq is not None and 1 <= seq <= MAX_SEQ else None


def _classify_decode_error(frame: str | bytes, message: str) -> ProtocolError:
    # JSON has no NaN or Infinity, but many encoders (Python's json) write them.
    # The stdlib parser accepts them and reports each through parse_constant: if
    # it parses the frame and met one, they were the problem.
    constants: list[str] = []
    try:
        json.loads(frame, parse_constant=constants.append)
    except (ValueError, RecursionError):
        return ProtocolError(ErrorCode.INVALID_JSON, message)
    if frame[:1] in ("\ufeff", b"\xef"):  # the lenient parser skips a byte order mark
        return ProtocolError(
            ErrorCode.INVALID_JSON, f"{message}: a byte order mark; send none (RFC 8259, 8.1)"
        )
    if not constants:  # valid to the lenient parser for another reason (a lone surrogate)
        return ProtocolError(ErrorCode.INVALID_JSON, f"{message} (text that is not valid UTF-8)")
    return ProtocolError(
        ErrorCode.BAD_VALUE,
        f"{constants[0]} is not a valid value; send only finite numbers",
        _seq_from_lenient(frame),
    )


def _seq_from_lenient(frame: str | bytes) -> int | None:
    try:
        seq = json.loads(frame).get("seq")
    except (ValueError, AttributeError, RecursionError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and 1 <= seq <= MAX_SEQ else None


_LENGTH = re.compile(r"Expected `(array|object|str)` of length <= (\d+) - at `\$(.*)`")
_VALUE_PATH = re.compile(r"- at `\$\.(samples\[\d+\]\.values|data)\[")
_INT_BOUND = re.compile(rf"^Expected `int` (<= {MAX_SAFE_INT}|>= -{MAX_SAFE_INT}) - at `(?P<path>.*)`$")
_INT_TOO_BIG = re.compile(r"^Integer value out of range - at `(?P<path>.*)`$")
_LABEL = f"Expected `str` matching regex {LABEL_PATTERN!r} - at `"


def _classify_validation_error(message: str, seq: int | None, frame: str | bytes) -> ProtocolError:
    """Map a msgspec validation message to a protocol error code.

    msgspec's messages are stable text (``Expected ... - at `$.path```); the
    vector tests pin every mapping below, so a change in msgspec shows up there.
    """
    if message.startswith("Invalid value") and message.endswith("- at `$.type`"):
        if _type_is_repeated(frame):
            return ProtocolError(
                ErrorCode.INVALID_MESSAGE, "the `type` key appears more than once with different values", seq
            )
        return ProtocolError(ErrorCode.UNKNOWN_TYPE, message, seq)
    if "`key` in" in message or ("matching regex" in message and message.endswith(".name`")):
        return ProtocolError(ErrorCode.BAD_METRIC_NAME, message, seq)
    if message.startswith(_LABEL):
        where = message[len(_LABEL) - 1 :]
        return ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"a control character (U+0000-U+001F, U+007F-U+009F) or a line separator (U+2028, U+2029) "
            f"in the string at {where}: such strings are one-line labels",
            seq,
        )
    length = _LENGTH.search(message)
    if length:
        kind, _, path = length.groups()
        if kind == "array" and path == ".samples":
            return ProtocolError(ErrorCode.TOO_MANY_SAMPLES, message, seq)
        if kind == "object" and (path.endswith(".values") or path == ".data"):
            return ProtocolError(ErrorCode.TOO_MANY_VALUES, message, seq)
        if kind == "str" and _VALUE_PATH.search(message):
            return ProtocolError(ErrorCode.STRING_TOO_LONG, message, seq)
    if _VALUE_PATH.search(message):
        return ProtocolError(ErrorCode.BAD_VALUE, message, seq)
    if message.endswith("`$.ts`") or message.endswith(".ts`"):
        return ProtocolError(ErrorCode.BAD_TIMESTAMP, message, seq)
    bound = _INT_BOUND.match(message) or _INT_TOO_BIG.match(message)
    if bound and bound["path"] != "$.seq":  # seq keeps invalid_message (docs/protocol.md, section 9)
        return ProtocolError(
            ErrorCode.OUT_OF_RANGE, f"{message}: integers must lie within ±{MAX_SAFE_INT} (2^53 - 1)", seq
        )
    return ProtocolError(ErrorCode.INVALID_MESSAGE, message, seq)


def _too_deep() -> ProtocolError:
    return ProtocolError(
        ErrorCode.NESTING_TOO_DEEP,
        f"arrays and objects nest deeper than {MAX_NESTING_DEPTH} levels (the frame was not decoded)",
    )


def _type_is_repeated(frame: str | bytes) -> bool:
    """True if the frame's top object has more than one ``type`` key (msgspec reads the first)."""
    counts: list[int] = []

    def count(pairs: list[tuple[str, Any]]) -> None:
        counts.append(sum(1 for key, _ in pairs if key == "type"))

    try:  # the nesting was bounded before decoding, so this cannot recurse deeply
        json.loads(frame, object_pairs_hook=count)
    except ValueError:
        return False
    return bool(counts) and counts[-1] > 1  # the top object is the last one closed


__all__ = [
    "MIN_TIMESTAMP_MS",
    "check_clock",
    "check_name",
    "check_names_of",
    "check_sample_names",
    "decode_device_message",
    "decode_gateway_message",
    "encode",
    "encode_text",
]
