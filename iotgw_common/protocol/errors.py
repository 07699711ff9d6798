"""Error codes and close codes of device protocol v1, as data.

Two kinds of refusal exist (docs/protocol.md, "Errors" and "Close codes"):

* an ``error`` message: one frame was refused, the connection stays open and
  every other frame is processed as usual;
* a WebSocket close code: the session ends.

Exception tree::

    ValueError
     └── ProtocolError      one frame refused; carries an ErrorCode, a detail
                            and, when the frame had one, its ``seq``

This module is the only place that lists codes; docs/protocol.md mirrors it and
``tests/protocol/test_protocol_docs.py`` checks that the two agree.
"""

from __future__ import annotations

import enum
import re


class ErrorCode(enum.StrEnum):
    """Code of an ``error`` message, sent by the gateway for one refused frame."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    FRAME_TOO_LARGE = "frame_too_large"
    TOO_MANY_SAMPLES = "too_many_samples"
    TOO_MANY_VALUES = "too_many_values"
    BAD_METRIC_NAME = "bad_metric_name"
    BAD_VALUE = "bad_value"
    STRING_TOO_LONG = "string_too_long"
    BAD_TIMESTAMP = "bad_timestamp"
    CLOCK_SKEW = "clock_skew"
    SEQ_NOT_INCREASING = "seq_not_increasing"
    HELLO_REQUIRED = "hello_required"
    UNEXPECTED_MESSAGE = "unexpected_message"
    NESTING_TOO_DEEP = "nesting_too_deep"
    OUT_OF_RANGE = "out_of_range"
    TOO_MANY_METRICS = "too_many_metrics"
    TOO_MANY_EVENT_NAMES = "too_many_event_names"
    RATE_LIMITED = "rate_limited"


#: What each error code means; shown to people (logs, docs), never parsed.
ERROR_EXPLANATIONS: dict[ErrorCode, str] = {
    ErrorCode.INVALID_JSON: "the frame is not valid UTF-8 JSON",
    ErrorCode.INVALID_MESSAGE: "a field is missing, unknown in a required place, or of the wrong type",
    ErrorCode.UNKNOWN_TYPE: "the `type` field names no device-to-gateway message",
    ErrorCode.FRAME_TOO_LARGE: "the frame is longer than max_frame_bytes",
    ErrorCode.TOO_MANY_SAMPLES: "a readings frame carries more than max_samples samples",
    ErrorCode.TOO_MANY_VALUES: "a sample or event carries more than max_values values",
    ErrorCode.BAD_METRIC_NAME: "a metric or event name does not match the name pattern",
    ErrorCode.BAD_VALUE: "a value is not a finite number, a boolean or a string (NaN, Infinity, null, list, object)",
    ErrorCode.STRING_TOO_LONG: "a string value is longer than max_string_length",
    ErrorCode.BAD_TIMESTAMP: "a timestamp is before 2000-01-01, above 2^53 - 1, or not an integer count of milliseconds",
    ErrorCode.CLOCK_SKEW: "a timestamp lies further in the future than max_clock_skew_ms",
    ErrorCode.SEQ_NOT_INCREASING: "seq is not above the highest seq already received on this stream",
    ErrorCode.HELLO_REQUIRED: "a data message came before hello",
    ErrorCode.UNEXPECTED_MESSAGE: "the message is valid but not expected now (a second hello)",
    ErrorCode.NESTING_TOO_DEEP: "a JSON value is nested deeper than max_nesting_depth",
    ErrorCode.OUT_OF_RANGE: "an integer is outside what the gateway stores (beyond ±(2^53 - 1))",
    ErrorCode.TOO_MANY_METRICS: "the frame adds a metric name beyond the device's quota of distinct metric names",
    ErrorCode.TOO_MANY_EVENT_NAMES: "the event's name is new and the device already has its quota of distinct event names",
    ErrorCode.RATE_LIMITED: "the device sends readings faster than its quota after back-pressure; the frame was not stored",
}


class CloseCode(enum.IntEnum):
    """WebSocket close codes the gateway uses (RFC 6455 section 7.4 plus 4000-range)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    REPLACED = 4000
    DEVICE_MISMATCH = 4001
    HELLO_TIMEOUT = 4002
    DEVICE_REMOVED = 4003
    UNSUPPORTED_PROTOCOL = 4004
    TOKEN_REVOKED = 4005


#: What the gateway means by each close code and what a device should do.
CLOSE_EXPLANATIONS: dict[CloseCode, str] = {
    CloseCode.NORMAL: "closed on request; reconnect with backoff",
    CloseCode.GOING_AWAY: "gateway shutting down; reconnect with backoff",
    CloseCode.POLICY_VIOLATION: "too many refused frames in a row; fix the device, reconnect after a long backoff",
    CloseCode.MESSAGE_TOO_BIG: "a frame exceeded the hard transport limit; reconnect with backoff, send smaller frames",
    CloseCode.INTERNAL_ERROR: "the gateway could not store data; reconnect with backoff, resend unacked frames",
    CloseCode.SERVICE_RESTART: "gateway restarting; reconnect with backoff",
    CloseCode.REPLACED: "a newer connection authenticated as this device; reconnect only after a long delay",
    CloseCode.DEVICE_MISMATCH: "hello named a device other than the token's; fix the configuration",
    CloseCode.HELLO_TIMEOUT: "no hello within hello_timeout; reconnect with backoff",
    CloseCode.DEVICE_REMOVED: "the device was removed from the gateway; its token no longer works",
    CloseCode.UNSUPPORTED_PROTOCOL: "hello asked for a protocol version the gateway does not speak",
    CloseCode.TOKEN_REVOKED: "the device's token was rotated; the old token no longer works: configure the new one",
}


#: Longest ``detail`` sent in an ``error`` (characters); longer ones are cut with "...".
MAX_DETAIL_LENGTH = 300
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str, limit: int = MAX_DETAIL_LENGTH) -> str:
    """``text`` on one line: control characters as ``\\xNN`` / ``\\uNNNN``, cut to ``limit``.

    Use it for any text a device chose (it may hold a newline or a terminal escape)
    before it reaches a log line or a terminal.
    """
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class ProtocolError(ValueError):
    """One frame was refused; answer it with an ``error`` message naming ``code``.

    ``detail`` may quote the frame (msgspec names an unknown ``type`` value): it is
    made printable and short here, so that it can be logged and sent back as it is.
    """

    def __init__(self, code: ErrorCode, detail: str, seq: int | None = None) -> None:
        detail = printable(detail)
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail
        self.seq = seq
