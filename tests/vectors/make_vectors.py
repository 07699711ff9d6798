"""Write messages.json and sessions.json, the shared vectors of device protocol v1.

The JSON files are what every suite reads (gateway, agent, firmware); this script
is how they are made, so that a 501-sample frame or a 65-character name is
never typed by hand. Edit the lists below, then run from the repository root:

    python tests/vectors/make_vectors.py

``tests/protocol/test_codec_vectors.py`` fails if the files and this script
disagree. Standard library only: the expectations here are written by hand
from docs/protocol.md, never computed by the codec under test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

MIN_TS = 946_684_800_000  # 2000-01-01T00:00:00Z
RAW = "\u00a7RAW\u00a7"  # marks text to splice into a frame verbatim (1e999, NaN)


def raw(text: str) -> str:
    return f"{RAW}{text}{RAW}"


def frame(obj: Any) -> str:
    """Compact JSON text of ``obj``; "$NOW..." strings and raw() markers become bare."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    text = re.sub(r'"(\$NOW(?:[+-]\d+)?)"', r"\1", text)
    return re.sub(f'"{RAW}(.*?){RAW}"', r"\1", text)


def readings(seq: Any, values: Any, ts: Any = "$NOW") -> dict[str, Any]:
    return {"type": "readings", "seq": seq, "samples": [{"ts": ts, "values": values}]}


def event(seq: Any, name: Any, data: Any = None, ts: Any = "$NOW") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "event", "seq": seq, "ts": ts, "name": name}
    if data is not None:
        out["data"] = data
    return out


def accept(name: str, direction: str, sent: Any, message: Any) -> dict[str, Any]:
    return {
        "name": name,
        "direction": direction,
        "frame": sent if isinstance(sent, str) else frame(sent),
        "expect": "accept",
        "message": message,
    }


def refuse(name: str, sent: Any, code: str, seq: int | None, direction: str = "device") -> dict[str, Any]:
    return {
        "name": name,
        "direction": direction,
        "frame": sent if isinstance(sent, str) else frame(sent),
        "expect": "error",
        "code": code,
        "seq": seq,
    }


# -- accepted device messages -------------------------------------------------------

LIMITS = {
    "max_frame_bytes": 65536,
    "max_samples": 500,
    "max_values": 64,
    "max_string_length": 256,
    "max_clock_skew_ms": 300000,
    "max_nesting_depth": 32,
}

HELLO_FULL = {
    "type": "hello",
    "stream": "b2c4e6a8-0f1e-4d2c",
    "agent": "iotgw-agent/0.1.0 (CPython 3.11.2; linux)",
    "protocol": 1,
    "device": "greenhouse-pi",
    "last_acked": 1041,
    "sensors": [
        {"metric": "temp", "unit": "degC", "kind": "ds18b20"},
        {"metric": "humidity", "unit": "%", "kind": "dht22"},
        {"metric": "door.open"},
    ],
    "commands": [
        {
            "name": "set_output",
            "description": "set an LED, relay or PWM output",
            "args": {"output": "output name", "value": "bool, or 0..1 for PWM"},
        },
        {"name": "read_now", "description": "sample every sensor now"},
        {"name": "set_interval", "args": {"interval_s": "seconds, >= 1"}},
        {"name": "ping"},
    ],
    "buffered": 12,
    "dropped": 0,
    "info": {"platform": "linux", "python": "3.11.2", "mem_free": 123456, "on_battery": False},
}
# as msgspec.to_builtins gives it: fields at their default value are omitted
HELLO_FULL_MESSAGE = {k: v for k, v in HELLO_FULL.items() if k not in ("protocol", "dropped")}

MANY_SAMPLES = {
    "type": "readings",
    "seq": 2,
    "samples": [
        {"ts": "$NOW-2000", "values": {"temp": 21.5, "humidity": 40.25}},
        {"ts": "$NOW-1000", "values": {"temp": 21.625, "humidity": 40.5}},
        {"ts": "$NOW", "values": {"temp": 21.75, "humidity": 41.0, "door.open": False}},
    ],
}

ACCEPTED_DEVICE = [
    accept(
        "hello_minimal",
        "device",
        {"type": "hello", "stream": "s-7f3a9c", "agent": "iotgw-fw/0.1.0"},
        {"type": "hello", "stream": "s-7f3a9c", "agent": "iotgw-fw/0.1.0"},
    ),
    accept("hello_full", "device", HELLO_FULL, HELLO_FULL_MESSAGE),
    accept(
        "hello_protocol_2_decodes",  # the codec decodes it; the session closes 4004
        "device",
        {"type": "hello", "stream": "s1", "agent": "future/9", "protocol": 2},
        {"type": "hello", "stream": "s1", "agent": "future/9", "protocol": 2},
    ),
    accept(
        "hello_unknown_fields_ignored",
        "device",
        {
            "type": "hello",
            "stream": "s1",
            "agent": "a",
            "colour": "blue",
            "sensors": [{"metric": "t", "x": 1}],
        },
        {"type": "hello", "stream": "s1", "agent": "a", "sensors": [{"metric": "t"}]},
    ),
    accept("readings_one_sample", "device", readings(1, {"temp": 21.5}), readings(1, {"temp": 21.5})),
    accept("readings_many_samples", "device", MANY_SAMPLES, MANY_SAMPLES),
    accept(
        "readings_value_types",
        "device",
        readings(3, {"temp": -4.5, "on": True, "off": False, "state": "heating", "tiny": 1.5e-3}),
        readings(3, {"temp": -4.5, "on": True, "off": False, "state": "heating", "tiny": 0.0015}),
    ),
    accept(
        "readings_int_values_decode_to_float",
        "device",
        readings(4, {"count": 3, "zero": 0, "neg": -40, "big": 9007199254740993}),
        readings(4, {"count": 3.0, "zero": 0.0, "neg": -40.0, "big": 9007199254740992.0}),
    ),
    accept(
        "readings_largest_finite_float",
        "device",
        readings(5, {"big": 1.7976931348623157e308, "small": -1.7976931348623157e308}),
        readings(5, {"big": 1.7976931348623157e308, "small": -1.7976931348623157e308}),
    ),
    accept(
        "readings_hostile_string_value",  # allowed as a value; line protocol must escape it
        "device",
        readings(6, {"note": 'a,b=c "d" \\e\nf g\ttab'}),
        readings(6, {"note": 'a,b=c "d" \\e\nf g\ttab'}),
    ),
    accept(
        "readings_unicode_string_value",
        "device",
        readings(6, {"note": "Grüße, 温度 ✓ 🌡"}),
        readings(6, {"note": "Grüße, 温度 ✓ 🌡"}),
    ),
    accept(
        "readings_string_256_chars",
        "device",
        readings(7, {"note": "x" * 256}),
        readings(7, {"note": "x" * 256}),
    ),
    accept(
        "readings_string_256_multibyte_chars",  # the limit counts characters, not bytes
        "device",
        readings(7, {"note": "€" * 256}),
        readings(7, {"note": "€" * 256}),
    ),
    accept(
        "readings_metric_name_64_chars",
        "device",
        readings(7, {"a" * 64: 1.0}),
        readings(7, {"a" * 64: 1.0}),
    ),
    accept(
        "readings_metric_name_all_allowed_chars",
        "device",
        readings(7, {"Zone_2.air-temp:avg": 1.0, "x": 2.0}),
        readings(7, {"Zone_2.air-temp:avg": 1.0, "x": 2.0}),
    ),
    accept(
        "readings_64_values",
        "device",
        readings(7, {f"m{i}": i for i in range(64)}),
        readings(7, {f"m{i}": float(i) for i in range(64)}),
    ),
    accept(
        "readings_500_samples",
        "device",
        {
            "type": "readings",
            "seq": 7,
            "samples": [{"ts": f"$NOW-{i}", "values": {"t": 1}} for i in range(500)],
        },
        {
            "type": "readings",
            "seq": 7,
            "samples": [{"ts": f"$NOW-{i}", "values": {"t": 1.0}} for i in range(500)],
        },
    ),
    accept(
        "readings_ts_2000_exactly",
        "device",
        readings(8, {"t": 1.5}, ts=MIN_TS),
        readings(8, {"t": 1.5}, ts=MIN_TS),
    ),
    accept(
        "readings_a_day_old",
        "device",
        readings(8, {"t": 1.5}, ts="$NOW-86400000"),
        readings(8, {"t": 1.5}, ts="$NOW-86400000"),
    ),
    accept(
        "readings_future_within_skew",
        "device",
        readings(8, {"t": 1.5}, ts="$NOW+299000"),
        readings(8, {"t": 1.5}, ts="$NOW+299000"),
    ),
    accept(
        "readings_largest_seq",
        "device",
        readings(9007199254740991, {"t": 1.5}),
        readings(9007199254740991, {"t": 1.5}),
    ),
    accept(
        "readings_unknown_fields_ignored",
        "device",
        {
            "type": "readings",
            "seq": 9,
            "batch": "x",
            "samples": [{"ts": "$NOW", "values": {"t": 1.5}, "quality": [1, 2]}],
        },
        readings(9, {"t": 1.5}),
    ),
    accept(
        "readings_whitespace_around",
        "device",
        ' \n{ "type" : "readings" , "seq" : 9 , "samples" : '
        '[ { "ts" : $NOW , "values" : { "t" : 1.5 } } ] }\r\n ',
        readings(9, {"t": 1.5}),
    ),
    accept(
        "event_minimal",
        "device",
        event(10, "button.pressed"),
        event(10, "button.pressed"),
    ),
    accept(
        "event_with_data",
        "device",
        event(11, "door.opened", {"door": "front", "open": True, "count": 2}),
        event(11, "door.opened", {"door": "front", "open": True, "count": 2.0}),
    ),
    accept("status_minimal", "device", {"type": "status"}, {"type": "status"}),
    accept(
        "status_full",
        "device",
        {
            "type": "status",
            "buffered": 3,
            "dropped": 1,
            "info": {"mem_free": 48000, "rssi": -61.5, "fw": "0.1.0", "wifi": True},
        },
        {
            "type": "status",
            "buffered": 3,
            "dropped": 1,
            "info": {"mem_free": 48000, "rssi": -61.5, "fw": "0.1.0", "wifi": True},
        },
    ),
    accept(
        "result_ok_with_value",
        "device",
        {"type": "result", "id": "c-0001", "ok": True, "value": {"temp": 21.5, "pins": [1, 2]}},
        {"type": "result", "id": "c-0001", "ok": True, "value": {"temp": 21.5, "pins": [1, 2]}},
    ),
    accept(
        "result_ok_without_value",
        "device",
        {"type": "result", "id": "c-0002", "ok": True},
        {"type": "result", "id": "c-0002", "ok": True},
    ),
    accept(
        "result_failed",
        "device",
        {"type": "result", "id": "c-0003", "ok": False, "error": "unknown output 'relay9'"},
        {"type": "result", "id": "c-0003", "ok": False, "error": "unknown output 'relay9'"},
    ),
]

# -- accepted gateway messages ------------------------------------------------------

WELCOME_FULL = {
    "type": "welcome",
    "device": "greenhouse-pi",
    "server_time": "$NOW",
    "last_seq": 1041,
    "settings": {"interval_s": 10},
    "limits": LIMITS,
}

ACCEPTED_GATEWAY = [
    accept(
        "welcome_new_stream",
        "gateway",
        {"type": "welcome", "device": "board-17", "server_time": "$NOW", "last_seq": 0},
        {"type": "welcome", "device": "board-17", "server_time": "$NOW", "last_seq": 0},
    ),
    accept("welcome_full", "gateway", WELCOME_FULL, WELCOME_FULL),
    accept(
        "welcome_unknown_fields_ignored",
        "gateway",
        {"type": "welcome", "device": "d", "server_time": "$NOW", "last_seq": 5, "motd": "hi"},
        {"type": "welcome", "device": "d", "server_time": "$NOW", "last_seq": 5},
    ),
    accept("ack", "gateway", {"type": "ack", "seq": 42}, {"type": "ack", "seq": 42}),
    accept(
        "command_full",
        "gateway",
        {
            "type": "command",
            "id": "c-0001",
            "name": "set_output",
            "args": {"output": "led", "value": True},
            "deadline": "$NOW+30000",
        },
        {
            "type": "command",
            "id": "c-0001",
            "name": "set_output",
            "args": {"output": "led", "value": True},
            "deadline": "$NOW+30000",
        },
    ),
    accept(
        "command_minimal",
        "gateway",
        {"type": "command", "id": "c-0002", "name": "ping"},
        {"type": "command", "id": "c-0002", "name": "ping"},
    ),
    accept(
        "error_with_seq",
        "gateway",
        {"type": "error", "code": "bad_value", "detail": "NaN is not a valid value", "seq": 7},
        {"type": "error", "code": "bad_value", "detail": "NaN is not a valid value", "seq": 7},
    ),
    accept(
        "error_without_seq",  # the gateway always writes seq, null when the frame had none
        "gateway",
        {"type": "error", "code": "invalid_json", "detail": "JSON is malformed", "seq": None},
        {"type": "error", "code": "invalid_json", "detail": "JSON is malformed", "seq": None},
    ),
    accept(
        "error_seq_omitted",  # a decoder must also accept it absent
        "gateway",
        {"type": "error", "code": "hello_required", "detail": "send hello first"},
        {"type": "error", "code": "hello_required", "detail": "send hello first", "seq": None},
    ),
]

REFUSED_GATEWAY = [
    refuse("gateway_not_json", "welcome", "invalid_json", None, "gateway"),
    refuse(
        "gateway_unknown_type",
        {"type": "hello", "stream": "s1", "agent": "a"},
        "unknown_type",
        None,
        "gateway",
    ),
    refuse("gateway_ack_seq_as_string", {"type": "ack", "seq": "42"}, "invalid_message", None, "gateway"),
]


# -- refused device frames ----------------------------------------------------------
# Each is a function of the seq to use, so that sessions.json can interleave the
# same classes between valid frames. messages.json uses seq 7.


def bad_frames(seq: int) -> list[dict[str, Any]]:
    """Every class of frame the codec refuses (device direction)."""
    ok = frame(readings(seq, {"temp": 1.5}))
    name = [
        ("leading_digit", "1temp"),
        ("leading_underscore", "_temp"),
        ("space", "air temp"),
        ("comma", "temp,room=kitchen"),
        ("equals", "temp=1"),
        ("quote", 'te"mp'),
        ("backslash", "te\\mp"),
        ("newline", "te\nmp"),
        ("tab", "te\tmp"),
        ("nul", "te\u0000mp"),
        ("slash", "air/temp"),
        ("unicode_letters", "température"),
        ("65_chars", "a" * 65),
        ("empty", ""),
    ]
    out = [
        refuse("not_json", "not json", "invalid_json", None),
        refuse("empty_frame", "", "invalid_json", None),
        refuse("truncated_json", ok[: len(ok) // 2], "invalid_json", None),
        refuse("trailing_garbage", ok + "{}", "invalid_json", None),
        refuse("json_array", "[" + ok + "]", "invalid_message", None),
        refuse("json_string", '"readings"', "invalid_message", None),
        refuse(
            "missing_type",
            {"seq": seq, "samples": [{"ts": "$NOW", "values": {"t": 1}}]},
            "invalid_message",
            seq,
        ),
        refuse("type_not_string", {**readings(seq, {"t": 1}), "type": 1}, "invalid_message", seq),
        refuse("unknown_type", {**readings(seq, {"t": 1}), "type": "reading"}, "unknown_type", seq),
        refuse("type_wrong_case", {**readings(seq, {"t": 1}), "type": "Readings"}, "unknown_type", seq),
        refuse("gateway_type_from_device", {"type": "ack", "seq": seq}, "unknown_type", seq),
        refuse(
            "missing_seq",
            {"type": "readings", "samples": [{"ts": "$NOW", "values": {"t": 1}}]},
            "invalid_message",
            None,
        ),
        refuse("missing_samples", {"type": "readings", "seq": seq}, "invalid_message", seq),
        refuse("seq_as_string", readings(str(seq), {"t": 1}), "invalid_message", None),
        refuse("seq_as_float", readings(raw(f"{seq}.0"), {"t": 1}), "invalid_message", None),
        refuse("seq_as_bool", readings(True, {"t": 1}), "invalid_message", None),
        refuse("seq_zero", readings(0, {"t": 1}), "invalid_message", None),
        refuse("seq_negative", readings(-seq, {"t": 1}), "invalid_message", None),
        refuse("seq_above_2_53", readings(2**53, {"t": 1}), "invalid_message", None),
        refuse(
            "samples_not_list",
            {"type": "readings", "seq": seq, "samples": {"ts": "$NOW"}},
            "invalid_message",
            seq,
        ),
        refuse("empty_samples", {"type": "readings", "seq": seq, "samples": []}, "invalid_message", seq),
        refuse(
            "too_many_samples_501",
            {"type": "readings", "seq": seq, "samples": [{"ts": "$NOW", "values": {"t": 1}}] * 501},
            "too_many_samples",
            seq,
        ),
        refuse(
            "ts_missing",
            {"type": "readings", "seq": seq, "samples": [{"values": {"t": 1}}]},
            "invalid_message",
            seq,
        ),
        refuse("ts_as_float", readings(seq, {"t": 1}, ts=raw("1700000000000.5")), "bad_timestamp", seq),
        refuse("ts_as_string", readings(seq, {"t": 1}, ts="2024-01-01T00:00:00Z"), "bad_timestamp", seq),
        refuse("ts_before_2000", readings(seq, {"t": 1}, ts=MIN_TS - 1), "bad_timestamp", seq),
        refuse("ts_in_seconds", readings(seq, {"t": 1}, ts=1_700_000_000), "bad_timestamp", seq),
        refuse("ts_negative", readings(seq, {"t": 1}, ts=-1), "bad_timestamp", seq),
        refuse(
            "values_missing",
            {"type": "readings", "seq": seq, "samples": [{"ts": "$NOW"}]},
            "invalid_message",
            seq,
        ),
        refuse("values_not_object", readings(seq, [1, 2]), "invalid_message", seq),
        refuse("empty_values", readings(seq, {}), "invalid_message", seq),
        refuse("too_many_values_65", readings(seq, {f"m{i}": i for i in range(65)}), "too_many_values", seq),
        refuse("nan_value", readings(seq, {"t": raw("NaN")}), "bad_value", seq),
        refuse("infinity_value", readings(seq, {"t": raw("Infinity")}), "bad_value", seq),
        refuse("negative_infinity_value", readings(seq, {"t": raw("-Infinity")}), "bad_value", seq),
        refuse("overflow_1e999_value", readings(seq, {"t": raw("1e999")}), "bad_value", seq),
        refuse("overflow_negative_1e999_value", readings(seq, {"t": raw("-1e999")}), "bad_value", seq),
        refuse("null_value", readings(seq, {"t": None}), "bad_value", seq),
        refuse("list_value", readings(seq, {"t": [1, 2]}), "bad_value", seq),
        refuse("object_value", readings(seq, {"t": {"v": 1}}), "bad_value", seq),
        refuse(
            "nan_in_second_sample",
            {
                "type": "readings",
                "seq": seq,
                "samples": [
                    {"ts": "$NOW-1", "values": {"t": 1}},
                    {"ts": "$NOW", "values": {"t": raw("NaN")}},
                ],
            },
            "bad_value",
            seq,
        ),
        *[
            refuse(f"bad_metric_name_{label}", readings(seq, {"ok": 1, bad: 1}), "bad_metric_name", seq)
            for label, bad in name
        ],
        refuse("string_too_long_257", readings(seq, {"note": "x" * 257}), "string_too_long", seq),
        refuse("string_too_long_257_multibyte", readings(seq, {"note": "€" * 257}), "string_too_long", seq),
        refuse("event_bad_name_leading_digit", event(seq, "1door"), "bad_metric_name", seq),
        refuse("event_bad_name_space", event(seq, "door opened"), "bad_metric_name", seq),
        refuse("event_bad_data_key", event(seq, "door", {"which door": "front"}), "bad_metric_name", seq),
        refuse("event_nan_data", event(seq, "door", {"x": raw("NaN")}), "bad_value", seq),
        refuse("event_null_data", event(seq, "door", {"x": None}), "bad_value", seq),
        refuse("event_string_too_long", event(seq, "door", {"x": "y" * 257}), "string_too_long", seq),
        refuse(
            "event_too_many_data_values_65",
            event(seq, "door", {f"m{i}": 1 for i in range(65)}),
            "too_many_values",
            seq,
        ),
        refuse("event_ts_before_2000", event(seq, "door", ts=MIN_TS - 1), "bad_timestamp", seq),
        refuse("event_missing_name", {"type": "event", "seq": seq, "ts": "$NOW"}, "invalid_message", seq),
        {**refuse("oversize_frame", ok, "frame_too_large", seq), "pad_to_bytes": 70000},
    ]
    return out


def hostile_frames(seq: int) -> list[dict[str, Any]]:
    """Refusals the first codec (commit 4047734) missed; see docs/protocol.md, section 8.

    Kept apart so that a failure names the hole: a trailing newline slips
    through a ``$``-anchored pattern, a lone surrogate cannot be written as
    UTF-8, and a frame of multi-byte characters is longer in bytes than in
    characters.
    """
    big = {
        "type": "readings",
        "seq": seq,
        "samples": [
            {"ts": f"$NOW-{i}", "values": {f"v{j}": "€" * 250 for j in range(10)}} for i in range(10)
        ],
    }
    return [
        refuse("bad_metric_name_trailing_newline", readings(seq, {"temp\n": 1}), "bad_metric_name", seq),
        refuse("event_bad_name_trailing_newline", event(seq, "door\n"), "bad_metric_name", seq),
        refuse(
            "lone_surrogate_string",
            frame(readings(seq, {"note": "a"})).replace('"a"', '"\\ud800"'),
            "invalid_json",
            None,
        ),
        refuse("oversize_frame_multibyte", big, "frame_too_large", seq),
    ]


def nested(depth: int, leaf: str = "1") -> str:
    """JSON text of arrays nested ``depth`` deep around ``leaf``."""
    return "[" * depth + leaf + "]" * depth


def bounds_frames(seq: int) -> list[dict[str, Any]]:
    """Refusals of issue 12 (docs/protocol.md, sections 1, 8 and 9).

    Integers beyond what the store holds (±(2^53 - 1)), frames nested deeper than
    max_nesting_depth (32; the top object is level 1), control characters in strings
    shown as one-line labels, a repeated ``type`` key with another value, and text
    around the object.
    """
    ok = frame(readings(seq, {"temp": 1.5}))
    hello = {"type": "hello", "stream": "s1"}
    result = {"type": "result", "id": "c-1", "ok": True}
    # brackets in strings that would hide the depth if strings were not skipped: [")",[")",...
    hiding = "".join('[")",' for _ in range(40)) + "1" + "".join(',"("]' for _ in range(40))
    truncated = frame({"type": "readings", "seq": seq, "samples": [{"ts": "$NOW", "values": {"t": 1}}] * 40})
    return [
        # integers: every integer field within ±(2^53 - 1); seq and ts keep their own codes
        refuse("status_buffered_above_2_53", {"type": "status", "buffered": 2**53}, "out_of_range", None),
        refuse("status_dropped_above_int64", {"type": "status", "dropped": 2**64}, "out_of_range", None),
        refuse("status_info_int_above_2_53", {"type": "status", "info": {"n": 2**53}}, "out_of_range", None),
        refuse(
            "status_info_int_below_minus_2_53",
            {"type": "status", "info": {"n": -(2**53)}},
            "out_of_range",
            None,
        ),
        refuse(
            "status_info_int_5000_digits",
            '{"type":"status","info":{"n":1' + "0" * 5000 + "}}",
            "out_of_range",
            None,
        ),
        refuse(
            "hello_last_acked_above_2_53", {**hello, "agent": "a", "last_acked": 2**53}, "out_of_range", None
        ),
        refuse(
            "hello_protocol_above_int64", {**hello, "agent": "a", "protocol": 2**64}, "out_of_range", None
        ),
        refuse(
            "hello_info_int_above_2_53", {**hello, "agent": "a", "info": {"n": 2**53}}, "out_of_range", None
        ),
        refuse("result_value_int_above_2_53", {**result, "value": {"n": [1, 2**53]}}, "out_of_range", None),
        refuse("result_value_int_below_minus_2_53", {**result, "value": -(2**53)}, "out_of_range", None),
        refuse("ts_above_2_53", readings(seq, {"t": 1}, ts=2**53), "bad_timestamp", seq),
        refuse("event_ts_above_int64", event(seq, "door", ts=2**64), "bad_timestamp", seq),
        refuse("seq_above_int64", readings(2**64, {"t": 1}), "invalid_message", None),
        # nesting: refused before decoding, so the seq is not read (null)
        refuse("nested_1000_in_a_value", readings(seq, {"t": raw(nested(1000))}), "nesting_too_deep", None),
        refuse("nested_33_in_result_value", {**result, "value": raw(nested(32))}, "nesting_too_deep", None),
        refuse(
            "nested_33_in_unknown_field",
            {"type": "status", "extra": raw(nested(32))},
            "nesting_too_deep",
            None,
        ),
        refuse("nested_1000_unclosed", '{"type":"status","extra":' + "[" * 1000, "nesting_too_deep", None),
        refuse(
            "nested_41_behind_brackets_in_strings",
            {**result, "value": raw(hiding)},
            "nesting_too_deep",
            None,
        ),
        refuse("many_brackets_truncated", truncated[: len(truncated) - 30], "invalid_json", None),
        # control characters in one-line labels (section 8); values and result.error may hold them
        refuse("hello_agent_newline", {**hello, "agent": "fw/1\nERROR forged line"}, "invalid_message", None),
        refuse("hello_agent_escape_sequence", {**hello, "agent": "\u001b[31mred"}, "invalid_message", None),
        refuse("hello_agent_c1_csi", {**hello, "agent": "fw\u009b31m"}, "invalid_message", None),
        refuse("hello_agent_line_separator", {**hello, "agent": "fw\u2028x"}, "invalid_message", None),
        refuse("hello_agent_del", {**hello, "agent": "fw\u007f"}, "invalid_message", None),
        refuse(
            "hello_sensor_unit_tab",
            {**hello, "agent": "a", "sensors": [{"metric": "t", "unit": "deg\tC"}]},
            "invalid_message",
            None,
        ),
        refuse(
            "hello_command_description_newline",
            {**hello, "agent": "a", "commands": [{"name": "ping", "description": "a\nb"}]},
            "invalid_message",
            None,
        ),
        refuse(
            "hello_command_arg_nul",
            {**hello, "agent": "a", "commands": [{"name": "set", "args": {"v": "x\u0000"}}]},
            "invalid_message",
            None,
        ),
        refuse(
            "status_info_string_carriage_return",
            {"type": "status", "info": {"fw": "1.0\r"}},
            "invalid_message",
            None,
        ),
        refuse("result_id_newline", {**result, "id": "c-1\n"}, "invalid_message", None),
        # a repeated type key with another value (section 1)
        refuse(
            "repeated_type_other_value",
            frame(readings(seq, {"t": 1}))[:-1] + ',"type":"status"}',
            "invalid_message",
            seq,
        ),
        refuse("repeated_type_unknown_value", '{"type":"status","type":"bogus"}', "invalid_message", None),
        # text around the object (section 1)
        refuse("trailing_second_object_after_space", ok + " " + ok, "invalid_json", None),
        refuse("trailing_nul", ok + "\u0000", "invalid_json", None),
        refuse("trailing_comma", ok + ",", "invalid_json", None),
        refuse("leading_byte_order_mark", "\ufeff" + ok, "invalid_json", None),
    ]


ACCEPTED_BOUNDS = [
    accept(
        "status_counters_at_2_53_minus_1",
        "device",
        {
            "type": "status",
            "buffered": 2**53 - 1,
            "dropped": 2**53 - 1,
            "info": {"a": 2**53 - 1, "b": 1 - 2**53},
        },
        {
            "type": "status",
            "buffered": 2**53 - 1,
            "dropped": 2**53 - 1,
            "info": {"a": 2**53 - 1, "b": 1 - 2**53},
        },
    ),
    accept(
        "status_info_large_float",  # only integers are bounded; a float is a float
        "device",
        {"type": "status", "info": {"energy_j": 1.5e300}},
        {"type": "status", "info": {"energy_j": 1.5e300}},
    ),
    accept(
        "readings_ts_at_2_53_minus_1_decodes",  # the codec takes it; the session's clock check refuses it
        "device",
        readings(7, {"t": 1.5}, ts=2**53 - 1),
        readings(7, {"t": 1.5}, ts=2**53 - 1),
    ),
    accept(
        "result_value_nested_32",  # the top object is level 1, so the value may hold 31 levels
        "device",
        '{"type":"result","id":"c-1","ok":true,"value":' + nested(31) + "}",
        {"type": "result", "id": "c-1", "ok": True, "value": json.loads(nested(31))},
    ),
    accept(
        "result_value_int_2_53_minus_1",
        "device",
        {"type": "result", "id": "c-1", "ok": True, "value": {"n": [2**53 - 1, 1 - 2**53]}},
        {"type": "result", "id": "c-1", "ok": True, "value": {"n": [2**53 - 1, 1 - 2**53]}},
    ),
    accept(
        "readings_brackets_and_quotes_in_strings",  # text, not structure: no nesting counted
        "device",
        readings(7, {"note": "[" * 200 + '"\\', "other": "]}" * 100}),
        readings(7, {"note": "[" * 200 + '"\\', "other": "]}" * 100}),
    ),
    accept(
        "readings_control_characters_in_values",  # values are data: stored, escaped wherever they go
        "device",
        readings(7, {"note": "line 1\nline 2\ttab \u001b[0m \u2028"}),
        readings(7, {"note": "line 1\nline 2\ttab \u001b[0m \u2028"}),
    ),
    accept(
        "result_error_with_newline",  # a program's error text may span lines: data, kept as sent
        "device",
        {"type": "result", "id": "c-1", "ok": False, "error": "exit 2:\nno such file"},
        {"type": "result", "id": "c-1", "ok": False, "error": "exit 2:\nno such file"},
    ),
    accept(
        "hello_agent_non_ascii",  # only control characters are refused in labels
        "device",
        {"type": "hello", "stream": "s1", "agent": "Grüße-fw/1 ✓ (温度)"},
        {"type": "hello", "stream": "s1", "agent": "Grüße-fw/1 ✓ (温度)"},
    ),
    accept(
        "repeated_type_same_value",
        "device",
        '{"type":"status","type":"status","buffered":2}',
        {"type": "status", "buffered": 2},
    ),
    accept(
        "repeated_key_last_wins",
        "device",
        '{"type":"readings","seq":7,"seq":8,"samples":[{"ts":$NOW,"values":{"t":1,"t":2}}]}',
        readings(8, {"t": 2.0}),
    ),
]


BAD_HELLOS = [
    refuse("hello_missing_stream", {"type": "hello", "agent": "a"}, "invalid_message", None),
    refuse("hello_missing_agent", {"type": "hello", "stream": "s1"}, "invalid_message", None),
    refuse("hello_bad_stream", {"type": "hello", "stream": "s 1", "agent": "a"}, "invalid_message", None),
    refuse(
        "hello_stream_65_chars", {"type": "hello", "stream": "s" * 65, "agent": "a"}, "invalid_message", None
    ),
    refuse(
        "hello_stream_trailing_newline",
        {"type": "hello", "stream": "s1\n", "agent": "a"},
        "invalid_message",
        None,
    ),
    refuse(
        "hello_bad_device",
        {"type": "hello", "stream": "s1", "agent": "a", "device": "my pi"},
        "invalid_message",
        None,
    ),
    refuse(
        "hello_device_trailing_newline",
        {"type": "hello", "stream": "s1", "agent": "a", "device": "pi\n"},
        "invalid_message",
        None,
    ),
    refuse(
        "hello_agent_257_chars",
        {"type": "hello", "stream": "s1", "agent": "a" * 257},
        "invalid_message",
        None,
    ),
    refuse(
        "hello_negative_last_acked",
        {"type": "hello", "stream": "s1", "agent": "a", "last_acked": -1},
        "invalid_message",
        None,
    ),
    refuse("status_negative_buffered", {"type": "status", "buffered": -1}, "invalid_message", None),
    refuse("result_missing_ok", {"type": "result", "id": "c-1"}, "invalid_message", None),
]


def messages() -> dict[str, Any]:
    vectors = [
        *ACCEPTED_DEVICE,
        *ACCEPTED_BOUNDS,
        *ACCEPTED_GATEWAY,
        *bad_frames(7),
        *hostile_frames(7),
        *bounds_frames(7),
        *BAD_HELLOS,
        *REFUSED_GATEWAY,
    ]
    names = [v["name"] for v in vectors]
    assert len(names) == len(set(names)), "vector names must be unique"
    return {
        "description": (
            "Codec-level vectors of device protocol v1 (docs/protocol.md). Generated by "
            "tests/vectors/make_vectors.py: edit that, not this file. "
            "frame: the exact text sent; before use replace every $NOW, $NOW+<ms>, $NOW-<ms> "
            "(regex \\$NOW([+-]\\d+)?) with the test's current time in ms (plus or minus ms), and if "
            "pad_to_bytes is present append ASCII spaces until the UTF-8 frame is that many bytes. "
            "direction: 'device' frames are decoded with decode_device_message, 'gateway' frames with "
            "decode_gateway_message. expect 'accept': message is the decoded message as plain JSON, "
            "exactly msgspec.to_builtins(decoded): the 'type' tag included, fields equal to their "
            "default omitted, numbers in reading values and event data as floats (3 becomes 3.0); "
            "a string '$NOW...' in message stands for the same number as in frame. Suites that fill "
            "defaults compare to_builtins(decode(frame)) with to_builtins(decode(json(message))) "
            "through the same decoder; tests/protocol compares exactly, types included. "
            "expect 'error': decoding raises ProtocolError with exactly this code, naming this seq "
            "(null: no seq). The clock (clock_skew) and seq order are session checks: see sessions.json."
        ),
        "vectors": vectors,
    }


# -- sessions -----------------------------------------------------------------------


class Session:
    """Builds one scenario: steps, and what the store must hold afterwards."""

    def __init__(self, name: str, about: str) -> None:
        self.name = name
        self.about = about
        self.steps: list[dict[str, Any]] = []
        self.stored: list[list[Any]] = []
        self.stored_events: list[list[Any]] = []
        self._tick = 0

    def _ts(self) -> str:
        self._tick += 1
        return f"$NOW-{100000 - self._tick * 100}"

    def readings(self, seq: int, n: int = 1) -> None:
        samples = []
        for _ in range(n):
            ts = self._ts()
            values = {"temp": 20 + self._tick / 8, "n": float(self._tick)}
            samples.append({"ts": ts, "values": values})
            self.stored.append([seq, ts, values])
        self.send({"type": "readings", "seq": seq, "samples": samples}, {"ack": seq})

    def event(self, seq: int, name: str = "button.pressed") -> None:
        ts = self._ts()
        data = {"count": float(seq)}
        self.stored_events.append([seq, ts, name, data])
        self.send(event(seq, name, data, ts=ts), {"ack": seq})

    def send(self, sent: Any, expect: dict[str, Any], pad_to_bytes: int | None = None) -> None:
        step: dict[str, Any] = {"send": sent if isinstance(sent, str) else frame(sent), "expect": expect}
        if pad_to_bytes:
            step["pad_to_bytes"] = pad_to_bytes
        self.steps.append(step)

    def refused(self, vector: dict[str, Any]) -> None:
        self.send(
            vector["frame"], {"error": vector["code"], "seq": vector["seq"]}, vector.get("pad_to_bytes")
        )

    def build(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "about": self.about,
            "steps": self.steps,
            "stored": self.stored,
            "stored_events": self.stored_events,
        }


def interleaved(name: str, about: str, classes: list[dict[str, Any]]) -> dict[str, Any]:
    """Valid readings 10, 20, 30 ... with refused frame k (seq 10k+1) between them.

    A refused frame's seq lies above the last valid one and below the next, so
    the scenario holds whether or not the gateway lets refused seqs advance.
    """
    s = Session(name, about)
    s.readings(10)
    for k, vector in enumerate(classes, start=1):
        s.refused(vector)
        s.readings(10 * (k + 1))
    return s.build()


def sessions() -> dict[str, Any]:
    def classes(build: Any, n: int) -> list[dict[str, Any]]:
        return [build(10 * k + 1)[k - 1] for k in range(1, n + 1)]

    n_bad = len(bad_frames(1))
    n_hostile = len(hostile_frames(1))
    n_bounds = len(bounds_frames(1))
    scenarios = [
        interleaved(
            "invalid_between_valid",
            "every class of refused frame, each between two valid readings frames; "
            "every valid reading is stored, nothing of a refused frame is",
            classes(bad_frames, n_bad),
        ),
        interleaved(
            "hostile_names_and_encoding",
            "refusals the first codec missed: trailing newline in names, lone surrogate, "
            "a frame over max_frame_bytes in UTF-8 bytes but not in characters",
            classes(hostile_frames, n_hostile),
        ),
        interleaved(
            "bounds_and_conformance",
            "issue 12: integers beyond 2^53 - 1, nesting deeper than 32, control characters in labels, "
            "a repeated type key, text around the object; no refusal disturbs the session or the store",
            classes(bounds_frames, n_bounds),
        ),
    ]

    s = Session(
        "repeated_keys_last_wins",
        "a repeated key takes its last value (type excepted: see bounds_and_conformance); what is "
        "stored is exactly what was validated",
    )
    s.readings(1)
    s.send(
        '{"type":"readings","seq":2,"seq":3,"samples":[{"ts":$NOW-500,"values":{"t":1,"t":2}}]}', {"ack": 3}
    )
    s.stored.append([3, "$NOW-500", {"t": 2.0}])
    s.send(readings(3, {"t": 9.0}), {"error": "seq_not_increasing", "seq": 3})
    s.readings(4)
    scenarios.append(s.build())

    s = Session("seq_going_backwards", "a seq at or below the highest received is refused and not stored")
    s.readings(1)
    s.readings(5)
    s.send(readings(3, {"temp": 99.0}, ts="$NOW-50"), {"error": "seq_not_increasing", "seq": 3})
    s.send(readings(5, {"temp": 99.0}, ts="$NOW-40"), {"error": "seq_not_increasing", "seq": 5})
    s.readings(6)
    scenarios.append(s.build())

    s = Session("duplicate_seq", "a repeated seq is never stored twice, even with other contents")
    s.readings(1)
    s.readings(2, n=2)
    s.send(readings(2, {"temp": -1.0}, ts="$NOW-30"), {"error": "seq_not_increasing", "seq": 2})
    s.readings(3)
    scenarios.append(s.build())

    s = Session(
        "refused_seq_is_reusable", "a refused frame does not advance the stream: its seq can be sent again"
    )
    s.readings(1)
    s.send(readings(2, {"t": raw("NaN")}), {"error": "bad_value", "seq": 2})
    s.readings(2)
    s.send({**readings(3, {"t": 1}), "type": "Readings"}, {"error": "unknown_type", "seq": 3})
    s.readings(3)
    scenarios.append(s.build())

    s = Session("seq_gaps_allowed", "seq must increase, not by one")
    s.readings(1)
    s.readings(2)
    s.readings(1000)
    s.event(1001)
    s.readings(9007199254740991)
    s.send(readings(9007199254740991, {"t": 1}), {"error": "seq_not_increasing", "seq": 9007199254740991})
    scenarios.append(s.build())

    s = Session(
        "clock_skew", "timestamps more than max_clock_skew_ms (300000) ahead are refused, whole frame"
    )
    s.readings(1)
    s.send(readings(2, {"temp": 1.0}, ts="$NOW+600000"), {"error": "clock_skew", "seq": 2})
    s.send(
        {
            "type": "readings",
            "seq": 3,
            "samples": [
                {"ts": "$NOW-10", "values": {"temp": 1.0}},
                {"ts": "$NOW+600000", "values": {"temp": 2.0}},
            ],
        },
        {"error": "clock_skew", "seq": 3},
    )
    s.send(event(4, "door.opened", ts="$NOW+600000"), {"error": "clock_skew", "seq": 4})
    s.send(readings(5, {"temp": 3.0}, ts="$NOW+60000"), {"ack": 5})
    s.stored.append([5, "$NOW+60000", {"temp": 3.0}])
    s.readings(6)
    scenarios.append(s.build())

    s = Session(
        "second_hello", "hello is accepted once per connection; a second one is refused, the session goes on"
    )
    s.readings(1)
    s.send(
        {"type": "hello", "stream": "other-stream", "agent": "iotgw-fw/0.1.0"},
        {"error": "unexpected_message", "seq": None},
    )
    s.readings(2)
    scenarios.append(s.build())

    s = Session(
        "oversize_frame", "a frame over max_frame_bytes is refused with its seq; frames around it are stored"
    )
    s.readings(1)
    s.readings(2)
    s.send(readings(3, {"temp": 1.0}), {"error": "frame_too_large", "seq": 3}, pad_to_bytes=70000)
    s.readings(4)
    s.send(readings(5, {"temp": 1.0}), {"error": "frame_too_large", "seq": 5}, pad_to_bytes=65537)
    s.readings(6)
    s.send(readings(7, {"temp": 7.5}, ts="$NOW-7"), {"ack": 7}, pad_to_bytes=65536)
    s.stored.append([7, "$NOW-7", {"temp": 7.5}])
    scenarios.append(s.build())

    s = Session("events_share_seq_space", "events and readings draw from one seq space per stream")
    s.readings(1)
    s.event(2)
    s.readings(3, n=3)
    s.send(event(3, "button.pressed"), {"error": "seq_not_increasing", "seq": 3})
    s.send(readings(2, {"temp": 1.0}), {"error": "seq_not_increasing", "seq": 2})
    s.event(4, "door.opened")
    s.readings(5)
    scenarios.append(s.build())

    s = Session(
        "status_is_not_sequenced", "status carries no seq and gets no answer; data frames go on around it"
    )
    s.readings(1)
    # nothing answers a status: {"ack": 1} is already satisfied, and an error would
    # arrive before the next ack and fail the scenario
    s.send({"type": "status", "buffered": 2, "dropped": 1, "info": {"mem_free": 1000}}, {"ack": 1})
    s.readings(2)
    s.send({"type": "status"}, {"ack": 2})
    s.readings(3)
    scenarios.append(s.build())

    return {
        "description": (
            "Session-level scenarios of device protocol v1 (docs/protocol.md). Generated by "
            "tests/vectors/make_vectors.py: edit that, not this file. Each scenario runs on one "
            "connection of a fresh device and a fresh stream, after a successful hello/welcome "
            "(welcome.last_seq 0). Take now_ms once per scenario and render every step and every "
            "stored entry with it ($NOW placeholders and pad_to_bytes as in messages.json). Send the "
            "steps in order; after each, wait for its expectation before sending the next: "
            '{"ack": N} means an ack with seq >= N arrives (acks are cumulative and may be '
            "coalesced; an ack already received that covers N satisfies it at once), "
            '{"error": CODE, "seq": N|null} means an error message with that code and seq '
            "arrives; any other ack or error while waiting (an error when an ack is expected, another "
            "code or seq) fails the scenario. The connection stays open throughout (no scenario "
            "refuses 20 frames in a row). "
            "Afterwards the store holds for this stream exactly: stored, one [seq, ts, values] per "
            "sample (values as floats/bools/strings), and stored_events, one [seq, ts, name, data] "
            "per event; nothing of a refused frame."
        ),
        "scenarios": scenarios,
    }


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    (HERE / "messages.json").write_text(dump(messages()), encoding="utf-8")
    (HERE / "sessions.json").write_text(dump(sessions()), encoding="utf-8")


if __name__ == "__main__":
    main()
