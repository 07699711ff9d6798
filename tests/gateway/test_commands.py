"""Commands through the HTTP API to scripted devices, against a real gateway (docs/commands.md)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.commands import AnsweringDevice, api, wait_online, wait_state
from tests.support.device import ScriptedDevice
from tests.support.gateway import GatewayProcess


@pytest.fixture(scope="module")
def gw(gw: GatewayProcess) -> GatewayProcess:
    """The module's gateway (tests/gateway/conftest.py) with a control operator, ``gw.control``."""
    gw.control = gw.add_operator("alice", "control")  # type: ignore[attr-defined]
    return gw


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def states(command: dict[str, Any]) -> list[str]:
    return [change["state"] for change in command["history"]]


def test_round_trip_returns_the_answer_and_records_sender_and_every_state(gw: GatewayProcess) -> None:
    token = gw.add_device("rt-1")

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        async with (
            AnsweringDevice(gw.device_url, token, ["ping", "set"]) as dev,
            api(gw.api_url, gw.control) as c,
        ):
            before = time.time() * 1000
            r = await c.post(
                "/api/v1/devices/rt-1/commands", json={"name": "set", "args": {"x": 1}, "timeout": 5}
            )
            assert r.status_code == 200, r.text
            assert r.headers["location"] == f"/api/v1/commands/{r.json()['id']}"
            frame = dev.received[0]
            log = (await c.get("/api/v1/devices/rt-1/commands")).json()
            assert before <= r.json()["created_ms"]
            return r.json(), frame, log["commands"]

    command, frame, log = run(scenario())
    assert command["state"] == "succeeded"
    assert command["value"] == {"name": "set", "args": {"x": 1}}
    assert command["error"] is None
    assert command["sender"] == "alice"
    assert states(command) == ["queued", "sent", "succeeded"]
    assert frame == {"type": "command", "id": command["id"], "name": "set", "args": {"x": 1},
                     "deadline": command["deadline_ms"]}  # fmt: skip
    sent_at = command["history"][1]["ts"]
    assert command["deadline_ms"] == sent_at + 5000  # deadline = sent + timeout
    assert log[0]["id"] == command["id"] and log[0]["sender"] == "alice" and states(log[0]) == states(command)
    # The command log is in the store, with every state change.
    conn = gw.connect()
    try:
        row = conn.execute(
            "SELECT state, sender, result FROM commands WHERE id = ?", (command["id"],)
        ).fetchone()
        history = conn.execute(
            "SELECT state FROM command_states WHERE command_id = ? ORDER BY id", (command["id"],)
        ).fetchall()
    finally:
        conn.close()
    assert row[0] == "succeeded" and row[1] == "alice"
    assert json.loads(row[2]) == {"value": {"name": "set", "args": {"x": 1}}, "error": None}
    assert [h[0] for h in history] == ["queued", "sent", "succeeded"]


def test_undeclared_command_is_refused_with_the_declared_list_and_not_sent(gw: GatewayProcess) -> None:
    token = gw.add_device("undeclared-1")

    async def scenario() -> None:
        async with (
            AnsweringDevice(gw.device_url, token, ["ping", "set"]) as dev,
            api(gw.api_url, gw.control) as c,
        ):
            r = await c.post("/api/v1/devices/undeclared-1/commands", json={"name": "reboot"})
            assert r.status_code == 422
            assert r.json()["declared"] == ["ping", "set"]
            assert "does not accept command 'reboot'" in r.json()["detail"]
            assert (await c.get("/api/v1/devices/undeclared-1/commands")).json()["commands"] == []
            ok = await c.post("/api/v1/devices/undeclared-1/commands", json={"name": "ping"})
            assert ok.json()["state"] == "succeeded"  # the device stays connected and usable
            assert [m["name"] for m in dev.received] == ["ping"]

    run(scenario())


def test_device_side_failure_ends_failed_with_its_error_and_the_device_stays(gw: GatewayProcess) -> None:
    token = gw.add_device("fails-1")

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        if command["name"] == "explode":
            return {"ok": False, "error": "explode failed: RuntimeError: boom"}
        return {"ok": True, "value": "pong"}

    async def scenario() -> None:
        async with (
            AnsweringDevice(gw.device_url, token, ["explode", "ping"], answer),
            api(gw.api_url, gw.control) as c,
        ):
            r = await c.post("/api/v1/devices/fails-1/commands", json={"name": "explode"})
            assert r.status_code == 200
            body = r.json()
            assert body["state"] == "failed" and body["error"] == "explode failed: RuntimeError: boom"
            assert states(body) == ["queued", "sent", "failed"]
            again = await c.post("/api/v1/devices/fails-1/commands", json={"name": "ping"})
            assert again.json()["state"] == "succeeded" and again.json()["value"] == "pong"
            assert (await c.get("/api/v1/devices/fails-1")).json()["online"] is True

    run(scenario())


def test_offline_device_gets_the_command_when_it_reconnects_within_the_ttl(gw: GatewayProcess) -> None:
    token = gw.add_device("offline-1")

    async def scenario() -> None:
        async with api(gw.api_url, gw.control) as c:
            async with AnsweringDevice(gw.device_url, token, ["ping"]):  # declares, then goes away
                pass
            await wait_online(c, "offline-1", False)
            r = await c.post(
                "/api/v1/devices/offline-1/commands", json={"name": "ping", "ttl": 30, "wait": False}
            )
            assert r.status_code == 202 and r.json()["state"] == "queued"
            command_id = r.json()["id"]
            await asyncio.sleep(0.5)  # a window for what must not happen: nothing to poll for
            assert (await c.get(f"/api/v1/commands/{command_id}")).json()["state"] == "queued"
            async with AnsweringDevice(gw.device_url, token, ["ping"]) as dev:
                done = (await c.get(f"/api/v1/commands/{command_id}", params={"wait": 10})).json()
                assert done["state"] == "succeeded", done
                assert [m["id"] for m in dev.received] == [command_id]
                assert states(done) == ["queued", "sent", "succeeded"]

    run(scenario())


def test_offline_device_that_does_not_return_within_the_ttl_gets_expired(gw: GatewayProcess) -> None:
    token = gw.add_device("offline-2")

    async def scenario() -> None:
        async with api(gw.api_url, gw.control) as c:
            async with AnsweringDevice(gw.device_url, token, ["ping"]):
                pass
            await wait_online(c, "offline-2", False)
            r = await c.post(
                "/api/v1/devices/offline-2/commands", json={"name": "ping", "ttl": 0.5, "timeout": 5}
            )
            body = r.json()
            assert r.status_code == 200 and body["state"] == "expired", body  # waited: expiry is final
            assert states(body) == ["queued", "expired"] and "ttl" in body["error"]
            async with AnsweringDevice(gw.device_url, token, ["ping"]) as dev:
                # a barrier, not a pause: a queue is delivered in order, so a command sent now and answered
                # proves that nothing queued before it is on its way
                barrier = (await c.post("/api/v1/devices/offline-2/commands", json={"name": "ping"})).json()
                assert barrier["state"] == "succeeded", barrier
                assert [m["id"] for m in dev.received] == [barrier["id"]]  # the expired one never came
            # offline as the gateway sees it, not only as the device does: until its session ends a
            # ttl-0 command goes to delivery and expires there ("not delivered within its ttl")
            await wait_online(c, "offline-2", False)
            zero = await c.post("/api/v1/devices/offline-2/commands", json={"name": "ping", "ttl": 0})
            assert zero.json()["state"] == "expired" and "ttl is 0" in zero.json()["error"]

    run(scenario())


def test_never_seen_device_queues_and_an_undeclared_command_fails_at_delivery(gw: GatewayProcess) -> None:
    token = gw.add_device("new-1")

    async def scenario() -> None:
        async with api(gw.api_url, gw.control) as c:
            r = await c.post("/api/v1/devices/new-1/commands", json={"name": "reboot", "wait": False})
            assert r.status_code == 202  # nothing is known about the device yet: queued
            async with AnsweringDevice(gw.device_url, token, ["ping"]) as dev:
                done = await wait_state(c, r.json()["id"], "failed")
                assert "does not accept command 'reboot'; it declares: ping" in done["error"]
                assert dev.received == []

    run(scenario())


def test_no_answer_within_the_timeout_and_a_lost_connection_end_failed(gw: GatewayProcess) -> None:
    token = gw.add_device("silent-1")

    async def scenario() -> None:
        async with api(gw.api_url, gw.control) as c:
            async with AnsweringDevice(gw.device_url, token, ["slow"], lambda cmd: None):
                r = await c.post("/api/v1/devices/silent-1/commands", json={"name": "slow", "timeout": 0.5})
                body = r.json()
                assert body["state"] == "failed" and "no result within the timeout of 0.5 s" in body["error"]
                r = await c.post(
                    "/api/v1/devices/silent-1/commands", json={"name": "slow", "timeout": 30, "wait": False}
                )
                command_id = r.json()["id"]
                await wait_state(c, command_id, "sent")
            lost = await wait_state(c, command_id, "failed")
            assert "connection to the device closed before its result arrived" in lost["error"]

    run(scenario())


def test_cancel_a_queued_command_but_not_a_final_one(gw: GatewayProcess) -> None:
    token = gw.add_device("cancel-1")

    async def scenario() -> None:
        async with api(gw.api_url, gw.control) as c:
            async with AnsweringDevice(gw.device_url, token, ["ping"]):
                pass
            await wait_online(c, "cancel-1", False)
            r = await c.post("/api/v1/devices/cancel-1/commands", json={"name": "ping", "wait": False})
            command_id = r.json()["id"]
            cancelled = await c.delete(f"/api/v1/commands/{command_id}")
            assert cancelled.status_code == 200
            assert cancelled.json()["state"] == "failed" and cancelled.json()["error"] == "cancelled by alice"
            again = await c.delete(f"/api/v1/commands/{command_id}")
            assert again.status_code == 409 and "failed" in again.json()["detail"]
            assert (await c.delete("/api/v1/commands/nosuchcommand")).status_code == 404

    run(scenario())


def test_results_for_unknown_commands_are_ignored_and_the_device_stays(gw: GatewayProcess) -> None:
    token = gw.add_device("stray-1")

    async def scenario() -> None:
        async with ScriptedDevice(gw.device_url, token, stream="s") as dev, api(gw.api_url, gw.control) as c:
            await dev.hello(commands=[{"name": "ping"}])
            await dev.send(json.dumps({"type": "result", "id": "not-a-command", "ok": True, "value": 1}))
            await dev.readings(1, {"t": 1.0})
            await dev.wait_ack(1)
            assert dev.errors == []
            assert (await c.get("/api/v1/devices/stray-1")).json()["online"] is True

    run(scenario())


def test_queued_commands_survive_a_gateway_crash_and_sent_ones_end_failed(tmp_path: Path) -> None:
    with GatewayProcess.start(tmp_path / "gw") as gw:
        token = gw.add_device("crash-1")
        control = gw.add_operator("ops", "control")

        async def before_crash() -> tuple[str, str]:
            async with api(gw.api_url, control) as c:
                async with AnsweringDevice(gw.device_url, token, ["ping"], lambda cmd: None):
                    r = await c.post("/api/v1/devices/crash-1/commands", json={"name": "ping", "wait": False})
                    in_flight = r.json()["id"]
                    await wait_state(c, in_flight, "sent")
                await wait_online(c, "crash-1", False)
                # wait for the lost connection's failure, then queue one for the next connection
                await wait_state(c, in_flight, "failed")
                r = await c.post("/api/v1/devices/crash-1/commands", json={"name": "ping", "wait": False})
                queued = r.json()["id"]
                r = await c.post(
                    "/api/v1/devices/crash-1/commands", json={"name": "ping", "wait": False, "timeout": 60}
                )
                return queued, r.json()["id"]

        queued, second = run(before_crash())

        async def sent_then_crash() -> None:
            # a device that takes both commands and never answers: they are "sent" when the gateway dies
            silent = AnsweringDevice(gw.device_url, token, ["ping"], lambda cmd: None)
            async with api(gw.api_url, control) as c, silent as dev:
                await dev.wait_received(2)
                await wait_state(c, second, "sent")
                gw.kill()

        run(sent_then_crash())
        gw.launch()

        async def after() -> None:
            async with api(gw.api_url, control) as c:
                for command_id in (queued, second):
                    body = (await c.get(f"/api/v1/commands/{command_id}")).json()
                    assert body["state"] == "failed", body
                    assert body["error"] == "gateway restarted before the result arrived"
                r = await c.post(
                    "/api/v1/devices/crash-1/commands", json={"name": "ping", "wait": False, "ttl": 60}
                )
                waiting = r.json()["id"]
            gw.kill()  # the queued command must be in the store before the 202
            gw.launch()
            async with api(gw.api_url, control) as c:
                assert (await c.get(f"/api/v1/commands/{waiting}")).json()["state"] == "queued"
                async with AnsweringDevice(gw.device_url, token, ["ping"]):
                    done = await wait_state(c, waiting, "succeeded")
                    assert done["sender"] == "ops"

        run(after())
