"""The line-protocol encoder against the spec ("Special characters", data types), no server.

A small reference parser written from the spec (InfluxDB line protocol reference:
measurement escapes comma and space; tag keys/values and field keys escape comma,
equals sign and space; string field values escape double quote and backslash; a
quoted string may span lines in InfluxDB's own parser) reads back what the encoder
writes: hostile names and values must come back exactly, or be refused.
"""

from __future__ import annotations

import json

import pytest

from gateway.integrations.influx.lineprotocol import (
    LineError,
    check_label,
    check_measurement,
    encode_event,
    encode_fields,
    encode_reading,
    escape_key,
    escape_measurement,
    escape_string,
    series_prefix,
)

# -- a reference parser (spec, not the encoder's code) ------------------------------------


def split_lines(body: str) -> list[str]:
    """Split a body into lines as InfluxDB's parser does: a LF inside a quoted field value is data."""
    lines, start, i, quoted, in_fields, spaces = [], 0, 0, False, False, 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            i += 2
            continue
        if c == " " and not quoted:
            spaces += 1
            in_fields = spaces == 1
        elif c == '"' and in_fields:
            quoted = not quoted
        elif c == "\n" and not quoted:
            lines.append(body[start:i])
            start, spaces, in_fields = i + 1, 0, False
        i += 1
    lines.append(body[start:])
    return [line for line in lines if line]


def _unescape_until(text: str, i: int, stops: str, escapable: str) -> tuple[str, int]:
    out = []
    while i < len(text) and text[i] not in stops:
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in escapable:
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out), i


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    measurement, i = _unescape_until(line, 0, ", ", ", ")
    tags: dict[str, str] = {}
    while line[i] == ",":
        key, i = _unescape_until(line, i + 1, "=", ",= ")
        value, i = _unescape_until(line, i + 1, ", ", ",= ")
        tags[key] = value
    assert line[i] == " "
    fields: dict[str, object] = {}
    i += 1
    while True:
        key, i = _unescape_until(line, i, "=", ",= ")
        i += 1
        if line[i] == '"':
            out, i = [], i + 1
            while line[i] != '"':
                if line[i] == "\\" and line[i + 1] in '"\\':
                    i += 1
                out.append(line[i])
                i += 1
            fields[key] = "".join(out)
            i += 1
        else:
            raw, i = _unescape_until(line, i, ", ", "")
            fields[key] = {"true": True, "false": False}.get(raw, raw if raw.endswith("i") else float(raw))
        if line[i] == " ":
            break
        assert line[i] == ","
        i += 1
    return measurement, tags, fields, int(line[i + 1 :])


HOSTILE = [
    "plain",
    "with space",
    "comma,here",
    "equals=sign",
    'double"quote',
    "single'quote",
    "trailing space ",
    " leading",
    "unicode ünï 温度 😀",
    "a=b,c=d e=f",
    "x,device=other",
]
HOSTILE_VALUES = [
    *HOSTILE,
    "back\\slash",
    "trailing backslash\\",
    '\\"',
    "line1\nline2",
    "cr\rlf\r\n",
    'a"\nevil,device=victim temp=99.0 1764000000000\nx s="',
    "tab\there",
    "nul\x00byte",
    "",
]

# -- the escaping table ---------------------------------------------------------------------


def test_escaping_per_element_follows_the_spec() -> None:
    assert escape_measurement("a b,c=d") == "a\\ b\\,c=d"  # '=' is fine in a measurement
    assert escape_key("a b,c=d") == "a\\ b\\,c\\=d"
    assert escape_string('say "hi" \\o/') == '"say \\"hi\\" \\\\o/"'
    assert escape_string("a,b c=d") == '"a,b c=d"'  # nothing else is escaped in a string


def test_newlines_in_string_values_literal_or_escaped() -> None:
    assert escape_string("a\nb\r") == '"a\nb\r"'
    assert escape_string("a\nb\r", literal_newlines=False) == '"a\\nb\\r"'


def test_numbers_are_always_floats_bools_bools_strings_strings() -> None:
    fields = encode_fields(
        {"a": 1.0, "b": 21.5, "c": 1e16, "d": -0.0, "e": 3, "f": True, "g": False, "h": "1"}
    )
    assert fields == 'a=1.0,b=21.5,c=1e+16,d=-0.0,e=3.0,f=true,g=false,h="1"'
    assert "i" not in fields.replace('"1"', "")  # never an integer field


@pytest.mark.parametrize("value", [float("nan"), float("inf"), None, [1], {"a": 1}, 10**400])
def test_values_that_cannot_be_fields_are_refused(value: object) -> None:
    with pytest.raises(LineError):
        encode_fields({"x": value})


def test_a_point_needs_a_field() -> None:
    with pytest.raises(LineError, match="at least one field"):
        encode_fields({})


def test_field_named_time_is_renamed_because_influxdb_drops_it() -> None:
    assert encode_fields({"time": 1.0}) == "time_=1.0"
    with pytest.raises(LineError, match="'time' and 'time_'"):
        encode_fields({"time": 1.0, "time_": 2.0})


# -- names: escaped, or refused with the documented error ------------------------------------


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_round_trip_exactly(name: str) -> None:
    tags = {"device": "pi-1", name: name, "room": name}
    line = series_prefix(name, tags) + encode_fields({name: name, "t": 1.0}) + " 1764000000000"
    assert split_lines(line) == [line]
    assert parse_line(line) == (name, tags, {name: name, "t": 1.0}, 1764000000000)


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("room", "kitchen\nevil", "control characters"),
        ("room", "a\rb", "control characters"),
        ("room", "a\tb", "control characters"),
        ("room", "back\\slash", "backslashes"),
        ("ro\nom", "x", "control characters"),
        ("room", "", "non-empty"),
        ("device", "x", "reserved"),
        ("event", "x", "reserved"),
        ("time", "x", "reserved"),
        ("_field", "x", "reserved"),
    ],
)
def test_bad_labels_are_refused_with_a_clear_error(key: str, value: str, error: str) -> None:
    with pytest.raises(LineError, match=error):
        check_label(key, value)


def test_hostile_labels_that_are_allowed() -> None:
    for text in HOSTILE:
        check_label(text.strip() or "k", text)


@pytest.mark.parametrize("name", ["", "_internal", "a\nb", "a\\b"])
def test_bad_measurements_are_refused(name: str) -> None:
    with pytest.raises(LineError):
        check_measurement(name)


def test_series_prefix_refuses_a_newline_even_if_the_store_holds_one() -> None:
    with pytest.raises(LineError, match="control characters"):
        series_prefix("iotgw", {"device": "pi", "room": "a\nb"})


def test_empty_tag_values_are_left_out_and_tags_are_sorted() -> None:
    assert series_prefix("m", {"z": "1", "device": "d", "a": "", "b": "2"}) == "m,b=2,device=d,z=1 "


# -- values: never a second line, never another device's tag --------------------------------


@pytest.mark.parametrize("value", HOSTILE_VALUES)
@pytest.mark.parametrize("literal", [True, False])
def test_hostile_string_values_stay_inside_their_point(value: str, literal: bool) -> None:
    prefix = series_prefix("iotgw", {"device": "pi-1", "room": "kitchen"})
    line = encode_reading(prefix, json.dumps({"s": value, "t": 1.0}), 1764000000000, literal_newlines=literal)
    assert split_lines(line) == [line]
    measurement, tags, fields, ts = parse_line(line)
    assert (measurement, tags, ts) == ("iotgw", {"device": "pi-1", "room": "kitchen"}, 1764000000000)
    expected = value if literal else value.replace("\n", "\\n").replace("\r", "\\r")
    assert fields == {"s": expected, "t": 1.0}
    if not literal:
        assert "\n" not in line and "\r" not in line


def test_events_carry_seq_and_their_data() -> None:
    prefix = series_prefix("iotgw_events", {"device": "pi-1", "event": "door.opened"})
    line = encode_event(prefix, 45, '{"door":"front","count":2.0}', 1764000000000)
    assert line == 'iotgw_events,device=pi-1,event=door.opened seq=45.0,door="front",count=2.0 1764000000000'
    assert encode_event(prefix, 7, "{}", 1).endswith(" seq=7.0 1")


def test_a_whole_body_splits_into_one_line_per_point() -> None:
    prefix = series_prefix("iotgw", {"device": "pi-1"})
    lines = [
        encode_reading(prefix, json.dumps({"s": v, "n": float(i)}), 1764000000000 + i)
        for i, v in enumerate(HOSTILE_VALUES)
    ]
    body = "\n".join(lines)
    assert split_lines(body) == lines
