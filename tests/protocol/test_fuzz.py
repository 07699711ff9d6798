"""Property tests of the codec (Hypothesis, a bounded number of examples; docs/protocol.md, 1 and 9).

Whatever a device sends, ``decode_device_message`` returns a message or raises
``ProtocolError`` with a code of section 10 that the codec may produce, a printable
detail and a seq in range; a decoded message survives a round trip. The nesting pre-scan
agrees with the depth of the value that was encoded, for any JSON value and any cut of it.
Examples are derandomized and not stored, so that a run is the same on every machine.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotgw_common.protocol import (
    ErrorCode,
    ProtocolError,
    decode_device_message,
    decode_gateway_message,
    encode,
)
from iotgw_common.protocol.bounds import nesting_too_deep
from iotgw_common.protocol.errors import printable
from iotgw_common.protocol.messages import MAX_NESTING_DEPTH, MAX_SEQ

from .strategies import frames, json_values, nested_value
from .test_codec_vectors import QUOTA_CODES, SESSION_ONLY

CODEC_CODES = {code for code in ErrorCode if code.value not in SESSION_ONLY | QUOTA_CODES}
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _check_refusal(exc: ProtocolError) -> None:
    assert exc.code in CODEC_CODES, exc
    assert exc.detail and printable(exc.detail) == exc.detail, exc.detail
    assert exc.seq is None or 1 <= exc.seq <= MAX_SEQ


def _decode_or_refuse(frame: bytes | str) -> None:
    try:
        message = decode_device_message(frame)
    except ProtocolError as exc:
        _check_refusal(exc)
        return
    assert decode_device_message(encode(message)) == message


# -- the codec on any input --------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_documented_errors(frame: bytes) -> None:
    _decode_or_refuse(frame)


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_documented_errors(frame: str) -> None:
    _decode_or_refuse(frame)


@FUZZ
@given(frames())
def test_near_valid_messages_decode_or_raise_only_documented_errors(frame: bytes) -> None:
    _decode_or_refuse(frame)
    try:
        text = frame.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:  # a flipped byte: only bytes can carry it
        return
    _decode_or_refuse(text)  # the same frame as a str, as websockets hands a text frame over


@settings(FUZZ, max_examples=100)
@given(st.binary(max_size=200))
def test_gateway_decoder_raises_only_protocol_errors(frame: bytes) -> None:
    """The agent's side: a broken or hostile gateway cannot crash the decoder either."""
    try:
        decode_gateway_message(frame)
    except ProtocolError as exc:
        assert exc.code in {ErrorCode.INVALID_JSON, ErrorCode.UNKNOWN_TYPE, ErrorCode.INVALID_MESSAGE,
                            ErrorCode.NESTING_TOO_DEEP}  # fmt: skip


# -- the nesting pre-scan against the truth ----------------------------------------------


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


def prefix_depth(text: str) -> int:
    """Deepest nesting a left-to-right JSON tokenizer reaches in ``text`` (a valid text cut anywhere)."""
    deepest = level = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            level += 1
            deepest = max(deepest, level)
        elif char in "]}":
            level -= 1
    return deepest


def _encodings(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":"))


@FUZZ
@given(json_values(max_leaves=30), st.integers(1, 6), st.booleans())
def test_prescan_agrees_with_the_depth_of_any_json_value(value: Any, limit: int, ascii_only: bool) -> None:
    text = _encodings(value, ascii_only)
    assert nesting_too_deep(text, limit) is (depth(value) > limit), text
    assert nesting_too_deep(text.encode("utf-8", "surrogatepass"), limit) is (depth(value) > limit)


@FUZZ
@given(json_values(max_leaves=30), st.integers(1, 6), st.data())
def test_prescan_agrees_on_any_cut_of_a_json_text(value: Any, limit: int, data: st.DataObject) -> None:
    text = _encodings(value, data.draw(st.booleans()))
    cut = text[: data.draw(st.integers(0, len(text)))]
    assert nesting_too_deep(cut, limit) is (prefix_depth(cut) > limit), cut


@settings(FUZZ, max_examples=60)
@given(st.integers(0, 80), st.integers(0, 3), st.text('[]{}"\\, ', max_size=6))
def test_prescan_on_deep_frames(levels: int, wrap: int, noise: str) -> None:
    """Values around the real limit, inside a frame, with bracket-laden strings beside them."""
    value = {"type": "result", "id": "c", "ok": True, "note": noise, "value": nested_value(levels)}
    for _ in range(wrap):
        value["value"] = {"k": value["value"], "s": noise}
    text = json.dumps(value)
    too_deep = depth(value) > MAX_NESTING_DEPTH
    assert nesting_too_deep(text, MAX_NESTING_DEPTH) is too_deep
    if too_deep:
        with pytest.raises(ProtocolError) as info:
            decode_device_message(text)
        assert info.value.code is ErrorCode.NESTING_TOO_DEEP
    else:
        assert msgspec.to_builtins(decode_device_message(text).value) == value["value"]  # type: ignore[union-attr]
