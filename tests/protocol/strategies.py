"""Hypothesis strategies for device protocol v1, derived from the message types themselves.

``near_valid(Readings)`` walks the struct with ``msgspec.inspect`` and draws, for every
field, mostly valid values and sometimes one just outside its constraint (an int one past
``le``, a string one character longer than ``max_length``, a name that misses its pattern,
an integer beyond int64, a value nested too deep), so that examples sit on both sides of
every limit in ``iotgw_common/protocol/messages.py`` without a list typed by hand here.
``frames()`` encodes such messages as the bytes of one frame, then sometimes damages the
text (a truncation, a byte flipped, text after the object, a repeated key, an ignored field
nested deep), as a device
with a broken encoder would.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import msgspec.inspect as mi
from hypothesis import strategies as st

from iotgw_common.protocol import Event, Hello, Readings, Result, Status
from iotgw_common.protocol.messages import MAX_NESTING_DEPTH, MAX_SAFE_INT

DEVICE_TYPES = (Hello, Readings, Event, Status, Result)
_HUGE = st.sampled_from([2**53, -(2**53), 2**63, 2**64, -(2**63) - 1, 10**30, 10**400])
_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_.:-]{0,8}", fullmatch=True)


@functools.cache
def json_values(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    """Any JSON value, small, including strings full of brackets, quotes and backslashes."""
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=max_leaves,
    )


def nested_value(depth: int) -> Any:
    """A list nested ``depth`` deep."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _int(t: mi.IntType) -> st.SearchStrategy[int]:
    lo = t.ge if t.ge is not None else -MAX_SAFE_INT
    hi = t.le if t.le is not None else MAX_SAFE_INT
    edges = st.sampled_from([lo, hi, lo - 1, hi + 1])
    return st.integers(lo, min(hi, lo + 10**13)) | edges | _HUGE


def _str(t: mi.StrType) -> st.SearchStrategy[str]:
    limit = t.max_length if t.max_length is not None else 64
    if t.pattern is not None and not t.pattern.startswith("^[^"):  # a name-like pattern
        valid = st.from_regex(t.pattern, fullmatch=False).map(lambda s: s.rstrip("\n"))
    else:
        valid = st.text(st.characters(blacklist_categories=["Cc", "Cs"]), max_size=min(limit, 20))
    near = st.text(max_size=4) | st.just("x" * (limit + 1)) | st.sampled_from(["a\nb", "\x1b[31m", "\u2028"])
    return st.one_of(valid, valid, near)


def for_type(t: mi.Type) -> st.SearchStrategy[Any]:
    """Values for the inspected msgspec type ``t``: mostly valid, some just outside it."""
    if isinstance(t, mi.IntType):
        return _int(t)
    if isinstance(t, mi.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0.5, -1e308])
    if isinstance(t, mi.StrType):
        return _str(t)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.UnionType):
        return st.one_of([for_type(member) for member in t.types])
    if isinstance(t, mi.ListType):
        most = t.max_length if t.max_length is not None else 3
        return st.lists(for_type(t.item_type), min_size=t.min_length or 0, max_size=min(most, 3))
    if isinstance(t, mi.DictType):
        keys = _NAMES if isinstance(t.key_type, mi.StrType) else for_type(t.key_type)
        return st.dictionaries(keys, for_type(t.value_type), min_size=t.min_length or 0, max_size=3)
    if isinstance(t, mi.StructType):
        return struct_dicts(t)
    if isinstance(t, mi.AnyType):
        deep = [nested_value(MAX_NESTING_DEPTH - 1), nested_value(MAX_NESTING_DEPTH), nested_value(40)]
        return json_values() | st.sampled_from(deep)
    raise AssertionError(f"no strategy for {t!r}: extend tests/protocol/strategies.py")


def struct_dicts(t: mi.StructType) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object for the struct: its tag, every required field, some optional ones."""
    required = {f.encode_name: for_type(f.type) for f in t.fields if f.required}
    optional = {f.encode_name: for_type(f.type) for f in t.fields if not f.required}
    if t.tag_field is not None:
        required[t.tag_field] = st.just(t.tag)
    return st.fixed_dictionaries(required, optional=optional)


@functools.cache
def near_valid(message_type: type) -> st.SearchStrategy[dict[str, Any]]:
    """A ``message_type`` message as a JSON object, on either side of its limits."""
    info = mi.type_info(message_type)
    assert isinstance(info, mi.StructType)
    return struct_dicts(info)


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    obj = draw(_MESSAGES)
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()), allow_nan=True)
    change = draw(
        st.sampled_from(["none", "none", "truncate", "flip", "trailing", "repeat_key", "drop_key", "deep"])
    )
    if change == "truncate":
        text = text[: draw(st.integers(0, max(len(text) - 1, 0)))]
    elif change == "trailing":
        text += draw(st.sampled_from([" {}", "\x00", ",", "x", "\ufeff", "]"]))
    elif change == "repeat_key" and len(obj) > 0:
        key = draw(st.sampled_from(sorted(obj)))
        text = text[:-1] + ", " + json.dumps(key) + ": " + json.dumps(draw(json_values(3))) + "}"
    elif change == "deep":  # an ignored field nested around the limit, or far beyond msgspec's stack
        levels = draw(st.sampled_from([MAX_NESTING_DEPTH - 1, MAX_NESTING_DEPTH, 1000, 5000]))
        text = text[:-1] + ', "extra": ' + "[" * levels + "]" * levels + "}"
    elif change == "drop_key" and len(obj) > 0:
        key = draw(st.sampled_from(sorted(obj)))
        text = json.dumps({k: v for k, v in obj.items() if k != key}, allow_nan=True)
    data = text.encode("utf-8", "surrogatepass")
    if change == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    return data


_MESSAGES = st.one_of([near_valid(t) for t in DEVICE_TYPES])


def frames() -> st.SearchStrategy[bytes]:
    """One device frame: a near-valid message of any type, sometimes damaged as text."""
    return _frames()


__all__ = ["DEVICE_TYPES", "for_type", "frames", "json_values", "near_valid", "nested_value"]
