"""The session rules, in-process against ``SessionMachine``: no sockets, no store, a fixed clock.

Grouped like docs/protocol.md: the shared session vectors first (the same
scenarios test_session_vectors.py plays against a real gateway), then the
session steps of section 3, the refusal limit of section 10, and the close
codes of section 11.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from gateway.config import DeviceSettings
from gateway.device.session import (
    Close,
    Greeting,
    HelloAccepted,
    MetaUpdate,
    NewNames,
    Output,
    Refusal,
    SessionMachine,
    SessionState,
)
from gateway.device.streams import StreamState
from iotgw_common.protocol import (
    PROTOCOL_VERSION,
    CloseCode,
    Error,
    Event,
    Readings,
    Result,
    Welcome,
    decode_gateway_message,
)
from iotgw_common.protocol.messages import (
    MAX_FRAME_BYTES,
    MAX_NESTING_DEPTH,
    MAX_SAMPLES,
    MAX_STRING_LENGTH,
    MAX_VALUES,
)
from tests.protocol.vectors import load_sessions, render, render_value

SCENARIOS = load_sessions()
NOW = 1_760_000_000_000
DEVICE = "bench-pi"


class Acks:
    """The connection side of a ``StreamState``: records acks and commit failures."""

    def __init__(self) -> None:
        self.acked = 0
        self.failed: list[BaseException] = []

    def send_ack(self, seq: int) -> None:
        assert seq > self.acked, "acks only move forward"
        self.acked = seq

    def commit_failed(self, error: BaseException) -> None:
        self.failed.append(error)


def machine(**settings: Any) -> SessionMachine:
    return SessionMachine(DeviceSettings(**settings), DEVICE, clock=lambda: NOW)


def hello(**fields: Any) -> bytes:
    return json.dumps({"type": "hello", "stream": "s1", "agent": "test/1", **fields}).encode()


def readings(seq: int, ts: int = NOW - 1000, **values: Any) -> bytes:
    return json.dumps(
        {"type": "readings", "seq": seq, "samples": [{"ts": ts, "values": values or {"x": 1}}]}
    ).encode()


def opened(m: SessionMachine | None = None, *, committed: int = 0) -> tuple[SessionMachine, StreamState]:
    """A machine past welcome, on a fresh stream whose store holds up to ``committed``."""
    m = m or machine()
    assert isinstance(m.receive_frame(hello()), HelloAccepted)
    stream = StreamState(1, "s1", committed)
    m.welcome(stream)
    return m, stream


def data_of(out: Output | None) -> Output | None:
    """An accepted data frame as such, also when it brought new names (``NewNames``, quotas)."""
    return out.message if isinstance(out, NewNames) else out


def error_of(out: Output | None) -> tuple[str, int | None]:
    assert isinstance(out, Refusal), out
    sent = decode_gateway_message(out.frame)
    assert isinstance(sent, Error)
    assert sent.detail, "an error must explain itself"
    assert (sent.code, sent.seq) == (out.error.code.value, out.error.seq)
    return sent.code, sent.seq


# -- the shared session vectors (tests/vectors/sessions.json) -----------------------------


def play(scenario: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """Run one scenario; returns what would be stored: (readings rows, event rows)."""
    m, stream = opened()
    acks = Acks()
    stream.target = acks
    stored: list[Any] = []
    stored_events: list[Any] = []
    for number, step in enumerate(scenario["steps"]):
        frame = render(step["send"], NOW, step.get("pad_to_bytes"))
        out = data_of(m.receive_frame(frame))
        where = f"step {number}: sent {frame[:120]!r}"
        expect = step["expect"]
        if isinstance(out, Readings | Event):
            stream.on_committed(out.seq)  # the group committer, at once
            if isinstance(out, Readings):
                stored += [[out.seq, s.ts, json.loads(msgspec.json.encode(s.values))] for s in out.samples]
            else:
                stored_events.append([out.seq, out.ts, out.name, json.loads(msgspec.json.encode(out.data))])
        if "ack" in expect:
            assert acks.acked >= expect["ack"], f"{where}: expected ack {expect['ack']}, got {out}"
        else:
            assert error_of(out) == (expect["error"], expect["seq"]), where
            assert isinstance(out, Refusal) and out.close is None, where
    assert m.state is SessionState.OPEN
    assert stream.inflight == 0
    return stored, stored_events


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_session_scenario(scenario: dict[str, Any]) -> None:
    stored, stored_events = play(scenario)
    assert stored == render_value(scenario["stored"], NOW)
    assert stored_events == render_value(scenario.get("stored_events", []), NOW)


# -- hello first (docs/protocol.md, section 3) ------------------------------------------


def test_data_before_hello_is_refused_with_hello_required_and_stays_awaiting() -> None:
    m = machine()
    assert error_of(m.receive_frame(readings(7))) == ("hello_required", 7)
    assert error_of(m.receive_frame(b'{"type":"status","buffered":1}')) == ("hello_required", None)
    assert error_of(m.receive_frame(b"not json")) == ("invalid_json", None)
    assert m.state is SessionState.AWAIT_HELLO
    assert m.refused_in_row == 3
    assert isinstance(m.receive_frame(hello()), HelloAccepted)
    assert m.state is SessionState.OPENING


def test_a_refused_hello_may_be_corrected() -> None:
    m = machine()
    assert error_of(m.receive_frame(b'{"type":"hello","agent":"t/1"}'))[0] == "invalid_message"
    out = m.receive_frame(hello())
    assert isinstance(out, HelloAccepted)
    assert out.hello.stream == "s1"
    assert m.hello == out.hello


def test_hello_timeout_closes_4002_and_then_frames_are_ignored() -> None:
    m = machine()
    assert m.hello_timed_out() == Close(CloseCode.HELLO_TIMEOUT, "no hello within the hello timeout")
    assert m.state is SessionState.CLOSED
    assert m.receive_frame(hello()) is None


def test_frames_between_hello_and_welcome_are_a_caller_error() -> None:
    m = machine()
    m.receive_frame(hello())
    with pytest.raises(RuntimeError):
        m.receive_frame(readings(1))


def test_welcome_needs_an_accepted_hello() -> None:
    with pytest.raises(RuntimeError):
        machine().welcome(StreamState(1, "s1", 0))


# -- identity and version (section 11: 4001, 4004) --------------------------------------


def test_hello_naming_another_device_closes_4001() -> None:
    m = machine()
    out = m.receive_frame(hello(device="someone-else"))
    assert isinstance(out, Close)
    assert out.code == CloseCode.DEVICE_MISMATCH
    assert DEVICE in out.reason and "someone-else" in out.reason
    assert m.state is SessionState.CLOSED
    assert m.receive_frame(readings(1)) is None


def test_hello_naming_its_own_device_or_none_is_accepted() -> None:
    assert isinstance(machine().receive_frame(hello(device=DEVICE)), HelloAccepted)
    assert isinstance(machine().receive_frame(hello()), HelloAccepted)


def test_other_protocol_version_closes_4004() -> None:
    m = machine()
    out = m.receive_frame(hello(protocol=PROTOCOL_VERSION + 1))
    assert isinstance(out, Close)
    assert out.code == CloseCode.UNSUPPORTED_PROTOCOL
    assert str(PROTOCOL_VERSION) in out.reason


# -- welcome (section 4.2) ----------------------------------------------------------------


def test_welcome_carries_device_clock_last_seq_limits_and_settings() -> None:
    m = machine(max_clock_skew_ms=1234, sample_interval=2.5)
    out = m.receive_frame(
        hello(sensors=[{"metric": "temp", "unit": "C"}], buffered=3, dropped=1, info={"fw": "1"})
    )
    assert isinstance(out, HelloAccepted), out
    greeting = m.welcome(StreamState(1, "s1", 41))
    assert isinstance(greeting, Greeting)
    welcome = decode_gateway_message(greeting.frame)
    assert welcome == Welcome(
        device=DEVICE,
        server_time=NOW,
        last_seq=41,
        settings={"interval_s": 2.5},
        limits={
            "max_frame_bytes": MAX_FRAME_BYTES,
            "max_samples": MAX_SAMPLES,
            "max_values": MAX_VALUES,
            "max_string_length": MAX_STRING_LENGTH,
            "max_clock_skew_ms": 1234,
            "max_nesting_depth": MAX_NESTING_DEPTH,
        },
    )
    assert greeting.meta["agent"] == "test/1"
    assert greeting.meta["sensors"] == [{"metric": "temp", "unit": "C"}]
    assert (greeting.meta["buffered"], greeting.meta["dropped"]) == (3, 1)
    assert greeting.meta["info"] == {"fw": "1"}
    assert greeting.meta["last_seen_ms"] == NOW
    assert m.state is SessionState.OPEN


def test_welcome_without_sample_interval_leaves_settings_empty() -> None:
    m = machine()
    m.receive_frame(hello())
    welcome = decode_gateway_message(m.welcome(StreamState(1, "s1", 0)).frame)
    assert isinstance(welcome, Welcome)
    assert welcome.settings == {}


# -- after welcome (sections 3, 5, 7) -----------------------------------------------------


def test_valid_readings_come_back_as_the_decoded_frame_and_count() -> None:
    m, stream = opened()
    out = data_of(m.receive_frame(readings(5, temp=20.5)))
    assert isinstance(out, Readings)
    assert out.seq == 5
    assert (stream.high, stream.inflight, stream.committed) == (5, 1, 0)
    assert m.frames == 1


def test_seq_at_or_below_last_stored_is_refused_after_a_reconnect() -> None:
    m, stream = opened(committed=9)
    assert error_of(m.receive_frame(readings(9))) == ("seq_not_increasing", 9)
    assert isinstance(data_of(m.receive_frame(readings(10))), Readings)
    assert stream.high == 10


def test_clock_skew_is_checked_with_the_given_clock() -> None:
    m, stream = opened()
    assert error_of(m.receive_frame(readings(1, ts=NOW + 300_001))) == ("clock_skew", 1)
    assert stream.high == 0  # refused: the seq may be used again
    assert isinstance(data_of(m.receive_frame(readings(1, ts=NOW + 300_000))), Readings)


def test_status_becomes_a_metadata_update_stamped_by_the_clock() -> None:
    m, _ = opened()
    out = m.receive_frame(b'{"type":"status","buffered":4,"dropped":2,"info":{"rssi":-60}}')
    assert out == MetaUpdate({"buffered": 4, "dropped": 2, "info": {"rssi": -60}, "last_seen_ms": NOW})


def test_result_is_handed_on() -> None:
    m, _ = opened()
    out = m.receive_frame(b'{"type":"result","id":"c1","ok":true,"value":3}')
    assert out == Result(id="c1", ok=True, value=3)


def test_second_hello_is_unexpected_and_changes_nothing() -> None:
    m, stream = opened()
    assert error_of(m.receive_frame(hello(stream="other"))) == ("unexpected_message", None)
    assert m.state is SessionState.OPEN
    assert m.stream is stream


# -- metric names (section 8): the device's names are the cache of names known valid -------


def frame_of(seq: int, *samples: dict[str, Any], ts: int = NOW - 1000) -> bytes:
    return json.dumps(
        {
            "type": "readings",
            "seq": seq,
            "samples": [{"ts": ts + i, "values": v} for i, v in enumerate(samples)],
        }
    ).encode()


@pytest.mark.parametrize(
    "hostile",
    ["1abc", "a b", "é", "a\u2028b", 'a"b', "", "a" * 65, "x/y", "a\nb", "x'--"],
)
def test_a_bad_name_after_known_ones_is_refused_and_the_valid_frames_around_it_are_kept(hostile: str) -> None:
    m, stream = opened()
    first = m.receive_frame(frame_of(1, {"temp": 1.0, "hum": 2.0}))
    assert isinstance(first, NewNames) and first.metrics == {"temp", "hum"}
    assert isinstance(m.receive_frame(frame_of(2, {"temp": 1.0}, {"hum": 2.0})), Readings)  # all known
    # known names first, in the same sample and in an earlier one: the bad one is still refused
    bad = frame_of(3, {"temp": 1.0, "hum": 2.0}, {"temp": 1.5, hostile: 3.0, "hum": 2.5})
    assert error_of(m.receive_frame(bad)) == ("bad_metric_name", 3)
    assert hostile not in m.quotas.names.metrics  # type: ignore[union-attr]
    assert stream.high == 2  # not accepted: the seq may be used again
    assert isinstance(m.receive_frame(frame_of(3, {"temp": 1.0})), Readings)
    assert error_of(m.receive_frame(frame_of(4, {hostile: 1.0}))) == ("bad_metric_name", 4)  # alone too
    event = {"type": "event", "seq": 4, "ts": NOW - 1000, "name": "door", "data": {"temp": 1, hostile: 2}}
    assert error_of(m.receive_frame(json.dumps(event).encode())) == ("bad_metric_name", 4)
    assert isinstance(data_of(m.receive_frame(frame_of(4, {"temp": 1.0, "new.name": 2.0}))), Readings)
    assert m.quotas.names.metrics == {"temp", "hum", "new.name"}  # type: ignore[union-attr]


def test_a_bad_name_is_refused_before_the_clock_and_costs_one_sample_like_an_undecodable_frame() -> None:
    m, _ = opened()
    m.receive_frame(frame_of(1, {"temp": 1.0}))
    tokens = m.quotas.rate.tokens
    both = frame_of(2, {"temp": 1.0}, {"temp": 2.0}, {"9lives": 1.0}, ts=NOW + 10**9)  # skewed too
    assert error_of(m.receive_frame(both)) == ("bad_metric_name", 2)
    assert m.quotas.rate.tokens == tokens - 1
    assert error_of(m.receive_frame(frame_of(2, {"temp": 1.0}, ts=NOW + 10**9))) == ("clock_skew", 2)
    assert m.quotas.rate.tokens == tokens - 2


def test_names_valid_for_another_device_still_count_against_this_ones_quota() -> None:
    other, _ = opened()
    assert isinstance(other.receive_frame(frame_of(1, {"a": 1.0, "b": 1.0, "c": 1.0})), NewNames)
    m, _ = opened(machine(max_metric_names=2))
    assert error_of(m.receive_frame(frame_of(1, {"a": 1.0, "b": 1.0, "c": 1.0})))[0] == "too_many_metrics"
    out = m.receive_frame(frame_of(1, {"a": 1.0}, {"b": 1.0}))
    assert isinstance(out, NewNames) and out.metrics == {"a", "b"}


# -- refusals in a row (section 10: 1008) -------------------------------------------------


def test_refusal_limit_closes_1008_with_the_last_error_sent_first() -> None:
    m, _ = opened(machine(max_refused_in_row=3))
    for _ in range(2):
        out = m.receive_frame(b"{")
        assert isinstance(out, Refusal) and out.close is None
    out = m.receive_frame(b"{")
    assert error_of(out) == ("invalid_json", None)
    assert isinstance(out, Refusal)
    assert out.close == Close(CloseCode.POLICY_VIOLATION, "3 refused frames in a row")
    assert m.state is SessionState.CLOSED
    assert m.receive_frame(readings(1)) is None


def test_refusals_before_hello_count_towards_the_limit() -> None:
    m = machine(max_refused_in_row=2)
    assert isinstance(m.receive_frame(b"x"), Refusal)
    out = m.receive_frame(readings(1))
    assert isinstance(out, Refusal)
    assert out.close is not None and out.close.code == CloseCode.POLICY_VIOLATION


@pytest.mark.parametrize(
    "accepted",
    [readings(1), b'{"type":"status"}', b'{"type":"result","id":"c1","ok":false}'],
    ids=["readings", "status", "result"],
)
def test_any_accepted_frame_resets_the_refusal_count(accepted: bytes) -> None:
    m, _ = opened(machine(max_refused_in_row=3))
    m.receive_frame(b"{")
    m.receive_frame(b"{")
    assert m.refused_in_row == 2
    assert not isinstance(m.receive_frame(accepted), Refusal)
    assert m.refused_in_row == 0


# -- commit failure (section 11: 1011) ----------------------------------------------------


def test_commit_failure_closes_1011_and_later_frames_are_ignored() -> None:
    m, _ = opened()
    out = m.commit_failed()
    assert out.code == CloseCode.INTERNAL_ERROR
    assert "resend" in out.reason
    assert m.receive_frame(readings(1)) is None
