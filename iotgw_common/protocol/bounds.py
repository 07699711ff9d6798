"""Bounds of a frame that msgspec's types cannot state: nesting depth and integers inside ``Any``.

msgspec decodes recursively in C: a value nested a thousand levels deep in a 2 KB frame
raises ``RecursionError`` instead of a validation error, and how deep it gets first depends
on the caller's stack. ``nesting_too_deep`` answers, before msgspec sees the frame, whether
the frame nests deeper than ``max_nesting_depth`` (docs/protocol.md, section 9), with
C-speed bytes operations and no recursion:

1. a small frame with at most ``limit`` opening brackets cannot be too deep: done;
2. drop escaped backslashes and escaped quotes (``\\\\``, ``\\"``), so that every ``"`` left
   delimits a string (exactly so in valid JSON, and in the valid prefix of a malformed frame,
   which is all that msgspec reads of it);
3. keep only ``"``, ``[``, ``]``, ``{`` and ``}``, then drop the strings with what lies inside
   them (their brackets are text, not structure), and map the brackets to ``(`` and ``)``;
4. one regular expression with possessive repeats (no backtracking, linear, no recursion)
   matches the longest prefix of complete groups nested at most ``limit`` deep. For every
   valid frame that is the whole text: a readings frame of 500 samples pays about a tenth
   of its decoding.
5. otherwise the group where the match stopped is either complete and taller than ``limit``
   (too deep), or never closes: closing it at the end of the text changes no depth, and one
   more match of the same expression decides. Worst case, a 64 KiB frame of nothing but
   brackets: two passes of the expression, about as long as msgspec takes to decode it.

A frame not refused here makes msgspec recurse at most ``limit`` deep before it either
decodes it or names it ``invalid_json``.

``check_int_range`` walks a decoded ``Any`` value (``result.value``) for integers outside
±(2^53 - 1): the numbers that JavaScript, InfluxDB and the operator API's clients read
exactly (RFC 7493, I-JSON, section 2.2).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from iotgw_common.protocol.errors import ErrorCode, ProtocolError
from iotgw_common.protocol.messages import MAX_SAFE_INT

_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_PARENS = bytes.maketrans(b"[{]}", b"(())")
_CLOSE = ord(")")
_SMALL = 4096
_LONG_NUMBER = re.compile(rb"\d{16}")
_LONG_NUMBER_TEXT = re.compile(r"\d{16}")


@functools.lru_cache(maxsize=4)
def _complete_groups(limit: int) -> re.Pattern[bytes]:
    """``(...)`` groups, one after another, nested at most ``limit`` deep; possessive throughout."""
    pattern = b""
    for _ in range(limit):
        pattern = rb"(?:\(" + pattern + rb"\))*+"
    return re.compile(pattern)


def nesting_too_deep(frame: str | bytes, limit: int) -> bool:
    """True if ``frame``'s arrays and objects nest deeper than ``limit`` (the top object is 1).

    Call it before decoding; on True refuse the frame with ``nesting_too_deep`` without
    decoding it. Brackets inside strings do not count. Never raises, never recurses.
    """
    if len(frame) <= _SMALL:
        if type(frame) is bytes:
            if frame.count(b"[") + frame.count(b"{") <= limit:
                return False
        elif frame.count("[") + frame.count("{") <= limit:  # type: ignore[arg-type]
            return False
    data = frame if type(frame) is bytes else bytes(frame, "utf-8", "surrogatepass")  # type: ignore[arg-type]
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    data = data.translate(None, _STRUCTURE)
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    quotes = data.count(b'"')
    if quotes:
        if data.count(b'""') * 2 == quotes:  # every string pairs its own quotes: no bracket inside
            data = data.translate(None, b'"')
        else:  # quotes pair by parity; what lies between the odd and the next even one is text
            data = b"".join(data.split(b'"')[::2])
    data = data.translate(_PARENS)
    groups = _complete_groups(limit)
    end = groups.match(data).end()  # type: ignore[union-attr]  # the pattern matches ""
    if end == len(data) or data[end] == _CLOSE:
        return False  # all shallow, or a closing bracket too many: invalid JSON, msgspec says so
    # The group opening at ``end`` either closes and is taller than limit (too deep) or never
    # closes. Closing it at the very end keeps every depth, so one more match decides.
    rest = data[end:]
    unclosed = rest.count(b"(") - rest.count(b")")
    if unclosed > 0:
        rest += b")" * unclosed
    return groups.match(rest).end() == 0  # type: ignore[union-attr]


def may_hold_large_int(frame: str | bytes) -> bool:
    """True if ``frame`` has a run of 16 digits: only then can an integer exceed 2^53 − 1."""
    if type(frame) is bytes:
        return _LONG_NUMBER.search(frame) is not None
    return _LONG_NUMBER_TEXT.search(frame) is not None  # type: ignore[arg-type]


def check_int_range(value: Any, path: str, seq: int | None = None) -> None:
    """Refuse (``out_of_range``) an integer outside ±(2^53 − 1) anywhere in ``value``.

    ``value`` is a decoded JSON value whose nesting ``nesting_too_deep`` already bounded;
    ``path`` names it in the error (``$.value``).
    """
    kind = type(value)
    if kind is int:
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise ProtocolError(
                ErrorCode.OUT_OF_RANGE,
                f"integer {_short_int(value)} at `{path}` is outside ±{MAX_SAFE_INT} (2^53 - 1); "
                "send it as a string or a float",
                seq,
            )
    elif kind is list:
        for index, item in enumerate(value):
            check_int_range(item, f"{path}[{index}]", seq)
    elif kind is dict:
        for key, item in value.items():
            check_int_range(item, f"{path}.{key}", seq)


def _short_int(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:10]}...({len(text)} digits)"


__all__ = ["check_int_range", "may_hold_large_int", "nesting_too_deep"]
