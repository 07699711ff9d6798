"""The session machine fed random frame sequences (Hypothesis, bounded; docs/protocol.md, 3-11).

Whatever a device sends, in whatever order, ``SessionMachine.receive_frame`` returns
only what its module docstring documents and never raises: refusals carry a code of
section 10 in an ``error`` frame that decodes, closes are the documented ones (4001,
4004 for a bad hello, 1008 after the refusal limit) and never 1011, nothing is answered
after a close, and the data frames handed on to be stored have strictly increasing seqs
and timestamps within the clock skew. The group committer is played by committing each
accepted frame at once, as in test_session_machine.py.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import DeviceSettings
from gateway.device.session import (
    Close,
    HelloAccepted,
    MetaUpdate,
    Refusal,
    SessionMachine,
    SessionState,
)
from gateway.device.streams import StreamState
from iotgw_common.protocol import CloseCode, Error, ErrorCode, Event, Readings, Result, decode_gateway_message
from iotgw_common.protocol.messages import MAX_SAFE_INT
from tests.protocol.strategies import frames, nested_value

NOW = 1_760_000_000_000
DEVICE = "fuzz-pi"
CODES = {code.value for code in ErrorCode}
HELLO_CLOSES = {CloseCode.DEVICE_MISMATCH, CloseCode.UNSUPPORTED_PROTOCOL}


def _readings(seq: int, offset: int) -> bytes:
    sample = {"ts": NOW + offset, "values": {"t": 1.5, f"m{seq % 7}": seq}}
    return json.dumps({"type": "readings", "seq": seq, "samples": [sample]}).encode()


_valid = st.one_of(
    st.builds(_readings, st.integers(1, 40), st.sampled_from([-1000, 0, 299_000, 600_000])),
    st.builds(
        lambda seq, name: json.dumps({"type": "event", "seq": seq, "ts": NOW, "name": name}).encode(),
        st.integers(1, 40),
        st.sampled_from(["door", "button.pressed", "1bad"]),
    ),
    st.sampled_from(
        [
            b'{"type":"hello","stream":"s1","agent":"fuzz/1"}',
            b'{"type":"hello","stream":"s2","agent":"fuzz/1","device":"fuzz-pi"}',
            b'{"type":"hello","stream":"s1","agent":"fuzz/1","device":"other"}',
            b'{"type":"hello","stream":"s1","agent":"fuzz/1","protocol":2}',
            b'{"type":"status","buffered":1,"info":{"n":9007199254740992}}',
            b'{"type":"status","buffered":3}',
            b'{"type":"status","dropped":18446744073709551616}',
            b'{"type":"hello","stream":"s3","agent":"fuzz/1","info":{"n":-9223372036854775809}}',
            b'{"type":"status","extra":'
            + b"[" * 5000
            + b"]" * 5000
            + b"}",  # Hypothesis raises the recursion limit
            b'{"type":"result","id":"c-1","ok":true,"value":1}',
            json.dumps({"type": "result", "id": "c-2", "ok": True, "value": nested_value(40)}).encode(),
            b"",
            b"\xff\xfe",
        ]
    ),
)
_HELLO = b'{"type":"hello","stream":"s1","agent":"fuzz/1"}'
# most sequences open the session first, so that the frames after hello reach the OPEN rules
SEQUENCES = st.tuples(
    st.sampled_from([[_HELLO], [_HELLO], []]), st.lists(st.one_of(_valid, _valid, frames()), max_size=40)
).map(lambda parts: parts[0] + parts[1])


def _assert_storable(value: Any) -> None:
    """Every integer within what the store and JSON clients hold (docs/protocol.md, section 1)."""
    if isinstance(value, dict):
        for item in value.values():
            _assert_storable(item)
    elif isinstance(value, list):
        for item in value:
            _assert_storable(item)
    elif isinstance(value, int):
        assert -MAX_SAFE_INT <= value <= MAX_SAFE_INT, value


def _check_refusal(out: Refusal, machine: SessionMachine, limit: int) -> None:
    sent = decode_gateway_message(out.frame)
    assert isinstance(sent, Error) and sent.code in CODES and sent.detail
    assert (sent.code, sent.seq) == (out.error.code.value, out.error.seq)
    if out.close is not None:
        assert out.close.code == CloseCode.POLICY_VIOLATION
        assert machine.refused_in_row >= limit
        assert machine.state is SessionState.CLOSED


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(SEQUENCES, st.integers(1, 25), st.booleans())
def test_random_frame_sequences_give_only_documented_outputs(
    sequence: list[bytes], limit: int, as_text: bool
) -> None:
    machine = SessionMachine(DeviceSettings(max_refused_in_row=limit), DEVICE, clock=lambda: NOW)
    stream: StreamState | None = None
    stored: list[int] = []
    closed = False
    for frame in sequence:
        data: Any = frame
        if as_text:
            with contextlib.suppress(UnicodeDecodeError):  # bytes that are not UTF-8 stay bytes
                data = frame.decode("utf-8")
        out = machine.receive_frame(data)
        if closed:
            assert out is None, "nothing is answered after a close"
            continue
        if isinstance(out, HelloAccepted):
            assert machine.state is SessionState.OPENING
            stream = StreamState(1, out.hello.stream, committed=0)
            machine.welcome(stream)
            continue
        if isinstance(out, Refusal):
            _check_refusal(out, machine, limit)
            closed = out.close is not None
            continue
        if isinstance(out, Close):
            assert out.code in HELLO_CLOSES, out  # never 1011: only the committer's failure gives it
            closed = True
            continue
        message = getattr(out, "message", out)  # NewNames carries the frame it lets through
        if isinstance(message, Readings | Event):
            assert stream is not None and machine.state is SessionState.OPEN
            assert not stored or message.seq > stored[-1], "a stored seq never repeats or goes back"
            stamps = [s.ts for s in message.samples] if isinstance(message, Readings) else [message.ts]
            assert all(ts <= NOW + DeviceSettings().max_clock_skew_ms for ts in stamps)
            stored.append(message.seq)
            stream.on_committed(message.seq)
        else:
            assert isinstance(out, MetaUpdate | Result), out
            assert machine.state is SessionState.OPEN
            if isinstance(out, MetaUpdate):
                _assert_storable(out.fields)
    assert closed is (machine.state is SessionState.CLOSED)
