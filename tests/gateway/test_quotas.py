"""Quotas on what one device can make the gateway store, hold or do (docs/operations.md, "Quotas").

In-process first: the name sets and the rate bucket (gateway/device/quotas.py)
through ``SessionMachine``, with a fake clock; the per-address counter
(gateway/device/admission.py); the ``device_names`` table (gateway/store/names.py).
Then against a real gateway process: 300 metric names from one device, names
surviving a restart, back-pressure and the hard cap, and HTTP 429 per address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway import store
from gateway.config import ConfigError, DeviceSettings, load_config
from gateway.device.admission import AddressLimiter, address_key
from gateway.device.quotas import DeviceQuotas, NameQuota, QuotaBook, RateBucket
from gateway.device.session import NewNames, Output, Refusal, SessionMachine
from gateway.device.streams import StreamState
from gateway.store import names, registry
from iotgw_common.protocol import Event, ProtocolError, Readings
from tests.support.device import ScriptedDevice, now_ms
from tests.support.gateway import GatewayProcess

NOW = 1_760_000_000_000


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def opened(clock: FakeClock | None = None, **settings: Any) -> tuple[SessionMachine, StreamState]:
    s = DeviceSettings(**settings)
    quotas = DeviceQuotas(
        RateBucket(s.readings_rate, s.readings_burst, clock=clock or FakeClock()),
        NameQuota(s.max_metric_names, s.max_event_names),
    )
    m = SessionMachine(s, "quota-pi", clock=lambda: NOW, quotas=quotas)
    m.receive_frame(json.dumps({"type": "hello", "stream": "s1", "agent": "t/1"}))
    stream = StreamState(1, "s1", 0)
    m.welcome(stream)
    return m, stream


def readings(seq: int, *samples: dict[str, Any]) -> str:
    return json.dumps(
        {"type": "readings", "seq": seq, "samples": [{"ts": NOW - 1000, "values": v} for v in samples]}
    )


def event(seq: int, name: str, **data: Any) -> str:
    return json.dumps({"type": "event", "seq": seq, "ts": NOW - 1000, "name": name, "data": data})


def accepted(out: Output | None) -> Readings | Event:
    message = out.message if isinstance(out, NewNames) else out
    assert isinstance(message, Readings | Event), out
    return message


def refused(out: Output | None) -> str:
    assert isinstance(out, Refusal), out
    assert out.close is None
    return out.error.code.value


# -- names per device -----------------------------------------------------------------------


def test_300_metric_names_the_first_256_are_kept_the_rest_refused_and_the_session_stays() -> None:
    m, stream = opened(max_refused_in_row=5)
    seq = 0
    for i in range(300):  # one new name a frame, always beside a name already known
        seq += 1
        out = m.receive_frame(readings(seq, {"base": 1, f"m{i:03d}": i}))
        if i < 255:  # "base" is the 1st name, m000..m254 the 2nd..256th
            expected = {f"m{i:03d}", "base"} if i == 0 else {f"m{i:03d}"}
            assert isinstance(out, NewNames) and out.metrics == expected
        else:
            assert refused(out) == "too_many_metrics", i
    assert len(m.quotas.names.metrics) == 256  # type: ignore[union-attr]
    assert m.refused_in_row == 0  # 45 quota refusals in a row, limit 5: no close
    assert m.state.value == "open"
    # frames with known names are still stored, as the plain decoded frame (nothing to store)
    seq += 1
    out = m.receive_frame(readings(seq, {"base": 2, "m000": 0}, {"m254": 1}))
    assert isinstance(out, Readings) and out.seq == seq
    assert stream.high == seq


def test_a_frame_that_adds_one_name_too_many_is_refused_whole_and_leaves_its_seq_free() -> None:
    m, stream = opened(max_metric_names=3)
    assert isinstance(m.receive_frame(readings(1, {"a": 1, "b": 2})), NewNames)
    out = m.receive_frame(readings(2, {"a": 1}, {"c": 1, "d": 2}))
    assert refused(out) == "too_many_metrics"
    assert "quota of 3" in out.error.detail and out.error.seq == 2  # type: ignore[union-attr]
    assert stream.high == 1  # not accepted: seq 2 may be sent again
    assert isinstance(m.receive_frame(readings(2, {"c": 1})), NewNames)
    assert refused(m.receive_frame(readings(3, {"d": 1}))) == "too_many_metrics"


def test_names_are_learnt_only_from_accepted_frames() -> None:
    m, _ = opened(max_metric_names=2)
    accepted(m.receive_frame(readings(5, {"a": 1})))
    out = m.receive_frame(readings(5, {"b": 1}))  # seq_not_increasing: not stored, "b" not learnt
    assert refused(out) == "seq_not_increasing"
    assert m.quotas.names.metrics == {"a"}  # type: ignore[union-attr]
    out = m.receive_frame(readings(6, {"b": 1}))
    assert isinstance(out, NewNames) and out.metrics == {"b"}


def test_event_names_are_capped_and_event_data_keys_are_metric_names() -> None:
    m, _ = opened(max_event_names=2, max_metric_names=2)
    out = m.receive_frame(event(1, "door", open=True))
    assert isinstance(out, NewNames) and (out.event, out.metrics) == ("door", {"open"})
    assert isinstance(m.receive_frame(event(2, "button")), NewNames)
    assert refused(m.receive_frame(event(3, "window"))) == "too_many_event_names"
    assert isinstance(m.receive_frame(event(3, "door", open=False)), Event)  # known: stored
    assert isinstance(m.receive_frame(readings(4, {"open": 1, "t": 2})), NewNames)
    assert refused(m.receive_frame(event(5, "door", extra=1))) == "too_many_metrics"
    assert m.refused_in_row == 0


def test_quota_refusals_do_not_reset_the_refused_in_a_row_count() -> None:
    m, _ = opened(max_metric_names=1, max_refused_in_row=3)
    accepted(m.receive_frame(readings(1, {"a": 1})))
    assert refused(m.receive_frame("not json")) == "invalid_json"
    assert refused(m.receive_frame(readings(2, {"b": 1}))) == "too_many_metrics"
    assert refused(m.receive_frame("not json")) == "invalid_json"
    out = m.receive_frame("not json")
    assert isinstance(out, Refusal) and out.close is not None and out.close.code == 1008


def test_names_known_from_the_store_are_not_new() -> None:
    book = QuotaBook(DeviceSettings(max_metric_names=3), FakeClock())
    quotas = book.hold(7, lambda: ({"a", "b"}, {"door"}))
    assert book.hold(7, lambda: pytest.fail("loaded once while held")) is quotas
    assert quotas.names is not None and quotas.names.new_metrics([]) is None
    with pytest.raises(ProtocolError) as info:
        quotas.names.new_event("door", {"c": 1, "d": 2})
    assert info.value.code.value == "too_many_metrics"
    book.release(quotas)
    book.release(quotas)
    assert quotas.names is None  # dropped with the last connection; the bucket stays
    again = book.hold(7, lambda: ({"a"}, set()))
    assert again is quotas and again.names is not None and again.names.metrics == {"a"}


# -- readings rate ----------------------------------------------------------------------


def test_bucket_pays_a_burst_then_asks_for_a_pause_as_long_as_the_debt() -> None:
    clock = FakeClock()
    bucket = RateBucket(100.0, 50, clock=clock)
    bucket.charge(50)
    assert bucket.pause() == 0.0  # empty, not in debt
    bucket.charge(30)
    assert bucket.pause() == pytest.approx(0.3)
    clock.t += 0.1
    assert bucket.pause() == pytest.approx(0.2)
    clock.t += 0.2
    assert bucket.pause() == 0.0
    clock.t += 100  # refills to the burst, no further
    bucket.charge(50)
    bucket.charge(1)
    assert bucket.pause() == pytest.approx(0.01)


def test_a_frame_costing_more_than_the_burst_is_refused_rate_limited_and_costs_nothing() -> None:
    clock = FakeClock()
    m, stream = opened(clock, readings_rate=100.0, readings_burst=4)
    out = m.receive_frame(readings(1, *({"x": i} for i in range(5))))
    assert refused(out) == "rate_limited"
    assert "burst of 4" in out.error.detail  # type: ignore[union-attr]
    assert stream.high == 0 and m.quotas.rate.tokens == 4
    accepted(m.receive_frame(readings(1, *({"x": i} for i in range(4)))))


def test_every_frame_is_charged_readings_by_their_samples() -> None:
    clock = FakeClock()
    m, _ = opened(clock, readings_rate=10.0, readings_burst=100)
    accepted(m.receive_frame(readings(1, *({"x": i} for i in range(60)))))
    accepted(m.receive_frame(event(2, "door")))
    refused(m.receive_frame("garbage"))
    m.receive_frame(json.dumps({"type": "status", "buffered": 1}))
    assert m.quotas.rate.tokens == 100 - 60 - 3
    accepted(m.receive_frame(readings(3, *({"x": i} for i in range(50)))))  # in debt: 13 samples
    assert m.quotas.rate.pause() == pytest.approx(1.3)


def test_rate_defaults_leave_room_for_the_bench_and_full_frames() -> None:
    s = DeviceSettings()
    assert s.readings_rate >= 5_000  # bench ingest --quick: ~3,000 samples/s per device
    assert s.readings_burst >= 500  # a full frame (max_samples) is never refused by default
    assert (s.max_metric_names, s.max_event_names, s.max_connections_per_address) == (256, 64, 64)


# -- connections per address ---------------------------------------------------------------


def test_addresses_are_counted_per_ipv4_and_per_ipv6_slash_64() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")


def test_limiter_counts_releases_and_exempts() -> None:
    limiter = AddressLimiter(2, DeviceSettings().exempt_networks())
    keys = [limiter.acquire("192.0.2.1") for _ in range(3)]
    assert [n for _, n in keys] == [1, 2, 3]  # the caller refuses the third
    limiter.release(keys[2][0])
    assert limiter.open_from("192.0.2.1") == 2
    assert limiter.acquire("127.0.0.9") == (None, 0)  # loopback exempt by default
    assert limiter.acquire("::1") == (None, 0)
    assert limiter.acquire("::ffff:127.0.0.1") == (None, 0)
    for key, _ in keys[:2]:
        limiter.release(key)
    assert limiter.open_from("192.0.2.1") == 0
    strict = AddressLimiter(1, ())
    assert strict.acquire("127.0.0.1")[1] == 1


def test_exempt_networks_are_validated_and_may_be_emptied() -> None:
    assert load_config(environ={"IOTGW_DEVICE_CONNECTION_LIMIT_EXEMPT": ""}).device.exempt_networks() == ()
    parsed = load_config(environ={"IOTGW_DEVICE_CONNECTION_LIMIT_EXEMPT": "10.0.0.1, fd00::/8"})
    assert parsed.device.exempt_networks() == (
        ipaddress.ip_network("10.0.0.1"),
        ipaddress.ip_network("fd00::/8"),
    )
    with pytest.raises(ConfigError, match="connection_limit_exempt"):
        load_config(environ={"IOTGW_DEVICE_CONNECTION_LIMIT_EXEMPT": "10.0.0.0/33"})


# -- the device_names table -------------------------------------------------------------


def test_names_table_adds_once_loads_counts_forgets_and_follows_device_removal(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "s.sqlite3")
    try:
        registry.add_device(conn, "n-1")
        device = registry.find_by_name(conn, "n-1")
        assert device is not None
        names.add(conn, device.id, ["t", "h"], ["door"], now_ms=1)
        names.add(conn, device.id, ["t", "p"], [], now_ms=2)
        assert names.load(conn, device.id) == ({"t", "h", "p"}, {"door"})
        assert names.count(conn, device.id) == {"metric": 3, "event": 1}
        assert names.forget(conn, device.id, "event") == 1
        assert names.load(conn, device.id) == ({"t", "h", "p"}, set())
        conn.execute("DELETE FROM devices WHERE id = ?", (device.id,))
        assert names.count(conn, device.id) == {"metric": 0, "event": 0}
    finally:
        conn.close()


# -- against a real gateway -----------------------------------------------------------------


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


def api_get(gw: GatewayProcess, path: str, token: str) -> Any:
    request = urllib.request.Request(gw.api_url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


async def send_all(dev: ScriptedDevice, frames: list[str], *, window: int = 16) -> None:
    """Send frames with seq 1..n keeping ``window`` unacked; wait until every frame is acked or
    refused (a refusal of a later frame can arrive before the ack of an earlier one)."""
    done = 0
    refused: set[int] = set()
    for seq, frame in enumerate(frames, start=1):
        while seq - window > max(dev.acked, done):
            message = await dev.next(30)
            if message["type"] == "error":
                done = max(done, message["seq"])
                refused.add(message["seq"])
        await dev.send(frame)
    while max(dev.acked, done) < len(frames) or dev.acked < max(
        (s for s in range(1, len(frames) + 1) if s not in refused), default=0
    ):
        message = await dev.next(30)
        if message["type"] == "error":
            done = max(done, message["seq"])
            refused.add(message["seq"])


def test_end_to_end_names_survive_a_restart_and_latest_stays_bounded(tmp_path: Path) -> None:
    with GatewayProcess.start(tmp_path) as gw:
        token = gw.add_device("names-pi")
        operator = gw.add_operator("names-reader", role="read")

        def frame(seq: int, name: str) -> str:
            sample = {"ts": now_ms(), "values": {"base": seq, name: seq}}
            return json.dumps({"type": "readings", "seq": seq, "samples": [sample]})

        async def stream_300() -> list[dict[str, Any]]:
            async with ScriptedDevice(gw.device_url, token) as dev:
                await dev.hello()
                await send_all(dev, [frame(i + 1, f"metric_{i:03d}") for i in range(300)])
                assert dev.ws is not None and dev.ws.close_code is None  # the session stayed open
                return dev.errors

        errors = run(stream_300())
        assert sorted(e["seq"] for e in errors) == list(range(256, 301))  # metric_255 is the 257th name
        assert {e["code"] for e in errors} == {"too_many_metrics"}
        stored = gw.readings("names-pi")
        assert [seq for seq, _, _ in stored] == list(range(1, 256))
        latest = api_get(gw, "/api/v1/devices/names-pi/readings/latest", operator)
        assert len(latest["values"]) == 256 and "metric_255" not in latest["values"]

        gw.restart()  # SIGKILL: the names were stored before their frames, so they are there

        async def after_restart() -> list[dict[str, Any]]:
            async with ScriptedDevice(gw.device_url, token) as dev:
                welcome = await dev.hello()
                assert welcome["last_seq"] == 255  # the refused frames were not stored
                await dev.send(frame(301, "metric_000"))  # known: stored
                await dev.wait_ack(301, 30)
                await dev.send(frame(302, "brand_new"))  # the quota is still full
                error = await dev.wait_error(30)
                await dev.send(frame(303, "metric_254"))
                await dev.wait_ack(303, 30)
                return [error]

        (error,) = run(after_restart())
        assert (error["code"], error["seq"]) == ("too_many_metrics", 302)
        assert [seq for seq, _, _ in gw.readings("names-pi")][-2:] == [301, 303]


RATE_ENV = {
    "IOTGW_DEVICE_READINGS_RATE": "2000",
    "IOTGW_DEVICE_READINGS_BURST": "400",
    "IOTGW_DEVICE_MAX_CONNECTIONS_PER_ADDRESS": "3",
    "IOTGW_DEVICE_CONNECTION_LIMIT_EXEMPT": "127.0.0.1",  # the other tests' source; 127.0.0.5 is limited
    "IOTGW_DEVICE_HELLO_TIMEOUT": "120",  # the connections held without hello must stay open
}


def test_end_to_end_rate_back_pressure_hard_cap_and_connections_per_address(tmp_path: Path) -> None:
    with GatewayProcess.start(tmp_path, env=RATE_ENV) as gw:
        token = gw.add_device("fast-pi")
        spare = [gw.add_device(f"addr-{i}") for i in range(4)]
        samples, frames = 100, 60  # 6,000 samples at 2,000/s with a burst of 400: slowed, not refused

        def frame(seq: int, count: int) -> str:
            ts = now_ms()
            body = [{"ts": ts - i, "values": {"v": i}} for i in range(count)]
            return json.dumps({"type": "readings", "seq": seq, "samples": body})

        async def flood() -> tuple[float, list[dict[str, Any]], dict[str, Any]]:
            started = time.monotonic()  # before the handshake: the bucket is younger than this
            async with ScriptedDevice(gw.device_url, token) as dev:
                await dev.hello()
                await send_all(dev, [frame(seq, samples) for seq in range(1, frames + 1)], window=32)
                elapsed = time.monotonic() - started
                errors = list(dev.errors)
                await dev.send(frame(frames + 1, 401))  # one frame beyond the burst: the hard cap
                hard = await dev.wait_error(30)
                return elapsed, errors, hard

        elapsed, errors, hard = run(flood())
        assert errors == []  # back-pressure only: every frame stored, none refused
        stored = len(gw.readings("fast-pi"))
        assert stored == samples * frames
        # one-sided, so a slow machine cannot fail it: the gateway read no faster than its bucket
        assert stored <= 400 + 2000 * elapsed + samples
        assert (hard["code"], hard["seq"]) == ("rate_limited", frames + 1)

        async def connections() -> tuple[Any, str]:
            opened = []
            for spare_token in spare[:3]:
                ws = await connect(gw.device_url, additional_headers={"Authorization": f"Bearer {spare_token}"},
                                   local_addr=("127.0.0.5", 0))  # fmt: skip
                opened.append(ws)
            with pytest.raises(InvalidStatus) as info:
                await connect(gw.device_url, additional_headers={"Authorization": f"Bearer {spare[3]}"},
                              local_addr=("127.0.0.5", 0))  # fmt: skip
            response = info.value.response
            await opened.pop().close()
            # the count drops when the server sees the close: poll until a fourth is let in again
            deadline = time.monotonic() + 30
            while True:
                try:
                    ws = await connect(gw.device_url, additional_headers={"Authorization": f"Bearer {spare[3]}"},
                                       local_addr=("127.0.0.5", 0))  # fmt: skip
                    break
                except InvalidStatus:
                    assert time.monotonic() < deadline, "the closed connection was never released"
                    await asyncio.sleep(0.05)
            opened.append(ws)
            # another address is not affected
            async with ScriptedDevice(gw.device_url, token) as dev:
                await dev.hello()
            for ws in opened:
                await ws.close()
            return response, bytes(response.body).decode()

        response, body = run(connections())
        assert response.status_code == 429
        assert "too many connections from 127.0.0.5" in body and "at most 3" in body
        assert response.headers["Retry-After"] == "30"
