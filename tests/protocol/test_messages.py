"""Properties of the decoded messages the gateway's hot path relies on (iotgw_common/protocol)."""

from __future__ import annotations

import gc

import pytest

from iotgw_common.protocol import Event, ProtocolError, Readings, decode_device_message
from iotgw_common.protocol.codec import check_names_of, check_sample_names

T0 = 1_764_000_000_000


def test_decoded_data_messages_are_not_tracked_by_the_cycle_collector() -> None:
    """Sample, Readings and Event are gc=False: a pending batch of samples costs the collector nothing."""
    readings = decode_device_message(
        b'{"type":"readings","seq":1,"samples":[{"ts":%d,"values":{"t":1}}]}' % T0
    )
    event = decode_device_message(b'{"type":"event","seq":2,"ts":%d,"name":"door","data":{"open":true}}' % T0)
    assert isinstance(readings, Readings) and isinstance(event, Event)
    assert not gc.is_tracked(readings) and not gc.is_tracked(readings.samples[0]) and not gc.is_tracked(event)
    assert not gc.is_tracked(readings.samples[0].values)  # a dict of floats and strings: untracked too


def test_names_left_unchecked_on_request_are_refused_by_the_check_functions() -> None:
    frame = b'{"type":"readings","seq":3,"samples":[{"ts":%d,"values":{"ok":1}},{"ts":%d,"values":{"ok":1,"b d":2}}]}'
    with pytest.raises(ProtocolError) as refused:
        decode_device_message(frame % (T0, T0))
    assert (refused.value.code.value, refused.value.seq) == ("bad_metric_name", 3)
    message = decode_device_message(frame % (T0, T0), check_names=False)
    assert isinstance(message, Readings)
    with pytest.raises(ProtocolError) as again:
        check_sample_names(message.samples, message.seq)
    assert (again.value.code.value, again.value.seq, again.value.detail) == (
        "bad_metric_name", 3, refused.value.detail,
    )  # fmt: skip
    with pytest.raises(ProtocolError):
        check_names_of(["fine", "1bad"])
    check_names_of(["fine", "also.fine:1-2_3"])
