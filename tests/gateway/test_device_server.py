"""Device plane against a real gateway process: handshake, sessions, close codes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.device import ScriptedDevice, now_ms
from tests.support.gateway import GatewayProcess
from tests.support.metrics import scrape
from tests.support.waiting import wait_until

# the module's gateway (fixture gw, tests/gateway/conftest.py): a short hello timeout, few refusals
GATEWAY_ENV = {"IOTGW_DEVICE_HELLO_TIMEOUT": "1.0", "IOTGW_DEVICE_MAX_REFUSED_IN_ROW": "5"}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


# -- handshake (docs/protocol.md, "Transport and handshake") ------------------------------


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, "missing or malformed"),
        ({"Authorization": "Bearer iotgw_d_not-a-real-token"}, "unknown device token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing or malformed"),
        ({"Authorization": "Bearer"}, "missing or malformed"),
    ],
)
def test_bad_or_missing_token_gets_401_and_no_session(gw: GatewayProcess, headers, body) -> None:
    async def attempt():
        with pytest.raises(InvalidStatus) as info:
            async with connect(gw.device_url, additional_headers=headers):
                pass
        return info.value.response

    response = run(attempt())
    assert response.status_code == 401
    assert body in bytes(response.body).decode()
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_path_gets_404(gw: GatewayProcess) -> None:
    token = gw.add_device("path-check")

    async def attempt():
        url = gw.device_url.replace("/v1/device", "/v2/device")
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}):
                pass
        return info.value.response.status_code

    assert run(attempt()) == 404


def test_token_of_one_device_cannot_claim_another(gw: GatewayProcess) -> None:
    token_a = gw.add_device("claim-a")
    gw.add_device("claim-b")

    async def scenario():
        async with ScriptedDevice(gw.device_url, token_a) as dev:
            await dev.send(json.dumps({"type": "hello", "stream": "s", "agent": "t/1", "device": "claim-b"}))
            with pytest.raises(ConnectionClosed) as info:
                await dev.next()
            return info.value.rcvd

    close = run(scenario())
    assert close.code == 4001
    assert "claim-a" in close.reason
    assert gw.readings("claim-b") == []


def test_welcome_names_device_clock_and_limits(gw: GatewayProcess) -> None:
    token = gw.add_device("welcome-check")

    async def scenario():
        async with ScriptedDevice(gw.device_url, token) as dev:
            before = now_ms()
            welcome = await dev.hello(device="welcome-check")
            return before, welcome, now_ms()

    before, welcome, after = run(scenario())
    assert welcome["device"] == "welcome-check"
    assert before - 5 <= welcome["server_time"] <= after + 5
    assert welcome["last_seq"] == 0
    assert welcome["limits"]["max_frame_bytes"] == 65536
    assert welcome["limits"]["max_clock_skew_ms"] == 300000


def test_second_connection_replaces_first_with_4000(gw: GatewayProcess) -> None:
    token = gw.add_device("twin")

    async def scenario():
        async with ScriptedDevice(gw.device_url, token, stream="one") as first:
            await first.hello()
            await first.readings(1, {"x": 1})
            await first.wait_ack(1)
            async with ScriptedDevice(gw.device_url, token, stream="one") as second:
                with pytest.raises(ConnectionClosed) as info:
                    while True:
                        await first.next()
                welcome = await second.hello()
                await second.readings(2, {"x": 2})
                await second.wait_ack(2)
                return info.value.rcvd, welcome

    close, welcome = run(scenario())
    assert close.code == 4000
    assert welcome["last_seq"] == 1
    assert [seq for seq, _, _ in gw.readings("twin")] == [1, 2]


def test_no_hello_in_time_closes_4002(gw: GatewayProcess) -> None:
    token = gw.add_device("silent")

    async def scenario():
        async with ScriptedDevice(gw.device_url, token) as dev:
            with pytest.raises(ConnectionClosed) as info:
                await dev.next(timeout=10)
            return info.value.rcvd

    assert run(scenario()).code == 4002


def test_data_before_hello_is_refused_with_hello_required(gw: GatewayProcess) -> None:
    token = gw.add_device("eager")

    async def scenario():
        async with ScriptedDevice(gw.device_url, token) as dev:
            await dev.readings(1, {"x": 1})
            error = await dev.next()
            await dev.hello()
            await dev.readings(1, {"x": 1})
            await dev.wait_ack(1)
            return error

    error = run(scenario())
    assert error == {"type": "error", "code": "hello_required", "detail": error["detail"], "seq": 1}
    assert [seq for seq, _, _ in gw.readings("eager")] == [1]


def test_unsupported_protocol_closes_4004(gw: GatewayProcess) -> None:
    token = gw.add_device("future")

    async def scenario():
        async with ScriptedDevice(gw.device_url, token) as dev:
            await dev.send(json.dumps({"type": "hello", "stream": "s", "agent": "t/2", "protocol": 2}))
            with pytest.raises(ConnectionClosed) as info:
                await dev.next()
            return info.value.rcvd

    assert run(scenario()).code == 4004


def test_refused_frames_in_a_row_close_1008(gw: GatewayProcess) -> None:
    token = gw.add_device("garbage")

    async def scenario():
        async with ScriptedDevice(gw.device_url, token) as dev:
            await dev.hello()
            codes = []
            with pytest.raises(ConnectionClosed) as info:
                for _ in range(10):
                    await dev.send("not json")
                    codes.append((await dev.next())["code"])
            return codes, info.value.rcvd

    codes, close = run(scenario())
    assert codes == ["invalid_json"] * 5  # IOTGW_DEVICE_MAX_REFUSED_IN_ROW=5 in this module
    assert close.code == 1008


def test_a_valid_frame_resets_the_refusal_count(gw: GatewayProcess) -> None:
    token = gw.add_device("sometimes-wrong")

    async def scenario():
        async with ScriptedDevice(gw.device_url, token) as dev:
            await dev.hello()
            for seq in range(1, 4):
                for _ in range(4):
                    await dev.send("{")
                    await dev.wait_error()
                await dev.readings(seq, {"ok": True})
                await dev.wait_ack(seq)
            return dev.acked

    assert run(scenario()) == 3


def test_frame_over_hard_limit_closes_1009(gw: GatewayProcess) -> None:
    token = gw.add_device("huge")

    async def scenario():
        async with ScriptedDevice(gw.device_url, token) as dev:
            await dev.hello()
            await dev.send(" " * (1_048_576 + 10))
            with pytest.raises(ConnectionClosed) as info:
                await dev.next()
            return info.value.rcvd

    assert run(scenario()).code == 1009


def test_readings_and_events_share_one_acknowledged_sequence(gw: GatewayProcess) -> None:
    token = gw.add_device("mixed")

    async def scenario():
        async with ScriptedDevice(gw.device_url, token) as dev:
            await dev.hello()
            ts = now_ms()
            await dev.readings(1, {"temp": 21.5, "ok": True, "mode": "auto"}, ts=ts)
            await dev.send(
                json.dumps({"type": "event", "seq": 2, "ts": ts + 1, "name": "door", "data": {"open": True}})
            )
            await dev.send(json.dumps({"type": "status", "buffered": 3, "dropped": 1}))
            await dev.readings(3, {"temp": 21}, ts=ts + 2)
            await dev.wait_ack(3)
            return ts

    ts = run(scenario())
    assert gw.readings("mixed") == [
        (1, ts, {"temp": 21.5, "ok": True, "mode": "auto"}),
        (3, ts + 2, {"temp": 21.0}),
    ]
    assert gw.events("mixed") == [(2, ts + 1, "door", {"open": True})]


def test_reconnect_welcome_reports_last_stored_seq_and_new_stream_starts_at_zero(gw: GatewayProcess) -> None:
    token = gw.add_device("resumer")

    async def scenario():
        async with ScriptedDevice(gw.device_url, token, stream="alpha") as dev:
            await dev.hello()
            for seq in range(1, 8):
                await dev.readings(seq, {"n": seq})
            await dev.wait_ack(7)
        async with ScriptedDevice(gw.device_url, token, stream="alpha") as dev:
            same = await dev.hello()
            await dev.readings(7, {"n": 7})  # a resend of a stored frame: refused, not stored twice
            duplicate = await dev.wait_error()
        async with ScriptedDevice(gw.device_url, token, stream="beta") as dev:
            fresh = await dev.hello()
            await dev.readings(1, {"n": 100})
            await dev.wait_ack(1)
        return same, duplicate, fresh

    same, duplicate, fresh = run(scenario())
    assert same["last_seq"] == 7
    assert duplicate["code"] == "seq_not_increasing" and duplicate["seq"] == 7
    assert fresh["last_seq"] == 0
    assert [values["n"] for _, _, values in gw.readings("resumer")] == [1, 2, 3, 4, 5, 6, 7, 100]


def test_removed_device_token_stops_working(gw: GatewayProcess) -> None:
    from gateway.store import registry

    token = gw.add_device("leaver")
    conn = gw.connect()
    registry.remove_device(conn, "leaver")
    conn.close()

    async def attempt():
        with pytest.raises(InvalidStatus) as info:
            async with connect(gw.device_url, additional_headers={"Authorization": f"Bearer {token}"}):
                pass
        return info.value.response.status_code

    assert run(attempt()) == 401


def _metric(gw: GatewayProcess, name: str) -> float:
    """An unlabelled sample of the gateway's /metrics (0 if absent)."""
    return scrape(gw).get((name, ()), 0.0)


def test_devices_leaving_at_once_are_answered_while_a_device_that_stays_is_served(gw: GatewayProcess) -> None:
    # their goodbyes run in the loop's background lane (gateway/device/leaving.py): the close
    # handshake still completes for each, and the session of each ends
    leavers = {f"leaver-{i}": gw.add_device(f"leaver-{i}") for i in range(30)}
    stayer_token = gw.add_device("stayer-beside-leavers")
    before = _metric(gw, "iotgw_loop_background_callbacks_total")

    async def scenario():
        devices = [ScriptedDevice(gw.device_url, token, stream="s") for token in leavers.values()]
        for device in devices:
            await device.__aenter__()
            await device.hello()
        async with ScriptedDevice(gw.device_url, stayer_token, stream="s") as stayer:
            await stayer.hello()
            await asyncio.gather(*(device.__aexit__(None, None, None) for device in devices))
            for seq in range(1, 4):
                await stayer.readings(seq, {"x": seq})
            await stayer.wait_ack(3)
            codes = [
                device.ws.protocol.close_rcvd.code
                for device in devices
                if device.ws and device.ws.protocol.close_rcvd
            ]
        return codes

    codes = run(scenario())
    assert codes == [1000] * 30  # every close answered by the gateway
    assert [seq for seq, _, _ in gw.readings("stayer-beside-leavers")] == [1, 2, 3]
    wait_until(lambda: _metric(gw, "iotgw_device_connections") == 0, what="every session ended")
    assert _metric(gw, "iotgw_loop_background_callbacks_total") > before + 30  # through the background lane
    assert _metric(gw, "iotgw_loop_background_queued") == 0
    for name in leavers:
        assert f"device {name} disconnected (code 1000" in gw.log()


def test_graceful_shutdown_tells_devices_going_away(tmp_path: Path) -> None:
    with GatewayProcess.start(tmp_path) as gateway:
        token = gateway.add_device("stayer")

        async def scenario():
            async with ScriptedDevice(gateway.device_url, token) as dev:
                await dev.hello()
                await dev.readings(1, {"x": 1})
                await dev.wait_ack(1)
                waiter = asyncio.create_task(dev.next(timeout=20))
                await asyncio.sleep(0)  # the waiter is reading before the gateway goes away
                await asyncio.to_thread(gateway.terminate)
                with pytest.raises(ConnectionClosed) as info:
                    await waiter
                return info.value.rcvd

        close = run(scenario())
        assert close.code == 1001
        assert gateway.proc is not None and gateway.proc.returncode == 0
        assert "shutting down" in gateway.log()
