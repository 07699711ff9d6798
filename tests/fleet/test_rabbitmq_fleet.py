"""A fleet of two gateways on a real two-node RabbitMQ cluster (docs/scale-out.md).

Gateway A speaks MQTT to node ``fleet1@localhost``, gateway B to ``fleet2@localhost`` (the
``rabbitmq_mqtt`` plugin, MQTT 3.1.1), both real ``iotgw serve`` processes with their own
stores. A real agent (subprocess, gpiozero mock pins) holds its device on B or on A:

* a device added on A connects to B with the same token (the registry is replicated);
* A's devices list shows what it declared to B (commands, sensors, agent, ``info.outputs``)
  though it never connected to A (the holder shares its hello);
* a command sent to A's API runs on the agent connected to B (the mock LED pin flips) and
  the result reaches A's caller; both ledgers record it; the devices list shows the holder;
* a command queued on A while the device is offline is delivered when it connects to B;
  commands queued on B and on A while it is offline are delivered when it moves to A;
* rotating the token on A closes the live session on B (4005), the new token works there;
  removing the device on A closes it on B (4003).
* a SIGKILLed B is forgotten at once; when it returns it catches up with a device added on A
  meanwhile and with what that device declared to A (A answers B's sync request).

The cluster starts once for the module. Figures (command round trips across the gateways,
presence convergence) are printed and written to ``test-artifacts/fleet-figures.json``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from gateway.store import registry
from tests.integration.test_agent_commands import CommandAgent
from tests.support.device import ScriptedDevice
from tests.support.gateway import REPO, GatewayProcess, repo_env
from tests.support.rabbitmq import RabbitCluster
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

AGENT = "pi-fleet"
FIGURES: dict[str, Any] = {}


class Fleet:
    def __init__(self, cluster: RabbitCluster, a: GatewayProcess, b: GatewayProcess, directory: Path) -> None:
        self.cluster = cluster
        self.a = a
        self.b = b
        self.directory = directory
        self.api_a = httpx.Client(base_url=a.api_url, timeout=60,
                                  headers={"Authorization": f"Bearer {a.add_operator('alice', 'control')}"})  # fmt: skip
        self.api_b = httpx.Client(base_url=b.api_url, timeout=60,
                                  headers={"Authorization": f"Bearer {b.add_operator('bob', 'control')}"})  # fmt: skip
        self.agent: CommandAgent | None = None

    def close(self) -> None:
        if self.agent is not None and self.agent.proc is not None:
            self.agent.stop()
        self.api_a.close()
        self.api_b.close()


def gateway_env(name: str, url: str) -> dict[str, str]:
    return {
        "IOTGW_MQTT_ENABLED": "true",
        "IOTGW_MQTT_URL": url,
        "IOTGW_MQTT_GATEWAY": name,
        "IOTGW_MQTT_PROTOCOL": "3.1.1",  # RabbitMQ 3.10's MQTT plugin
        "IOTGW_MQTT_DISCOVERY": "false",
        "IOTGW_FLEET_ENABLED": "true",
        "IOTGW_FLEET_ANNOUNCE_INTERVAL": "1.0",
        "IOTGW_FLEET_PRESENCE_TIMEOUT": "4.0",
        "IOTGW_FLEET_REGISTRY_INTERVAL": "0.25",
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("fleet")
    with RabbitCluster.start(directory / "rabbit", nodes=2) as cluster:
        assert cluster.running_nodes() == ["fleet1@localhost", "fleet2@localhost"]
        node1, node2 = cluster.nodes
        with GatewayProcess.start(directory / "a", env=gateway_env("gw-a", node1.mqtt_url)) as a, \
                GatewayProcess.start(directory / "b", env=gateway_env("gw-b", node2.mqtt_url)) as b:  # fmt: skip
            f = Fleet(cluster, a, b, directory)
            try:
                yield f
            finally:
                f.close()
                write_figures()


def write_figures() -> None:
    if FIGURES:
        out = REPO / "test-artifacts"
        out.mkdir(exist_ok=True)
        (out / "fleet-figures.json").write_text(json.dumps(FIGURES, indent=2) + "\n")
        print("\nfleet figures:", json.dumps(FIGURES, indent=2))


def device(api: httpx.Client, name: str) -> dict[str, Any] | None:
    r = api.get(f"/api/v1/devices/{name}")
    return r.json() if r.status_code == 200 else None


def holder(api: httpx.Client, name: str) -> str | None:
    d = device(api, name)
    return None if d is None else d.get("gateway")


def declared(api: httpx.Client, name: str) -> list[str]:
    d = device(api, name)
    return [] if d is None else [c["name"] for c in d["commands"]]


def command(api: httpx.Client, command_id: str) -> dict[str, Any]:
    r = api.get(f"/api/v1/commands/{command_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def send(api: httpx.Client, name: str, args: dict[str, Any] | None = None, *, wait: bool = True,
         device: str = AGENT, ttl: float = 60) -> dict[str, Any]:  # fmt: skip
    r = api.post(f"/api/v1/devices/{device}/commands",
                 json={"name": name, "args": args or {}, "wait": wait, "timeout": 20, "ttl": ttl})  # fmt: skip
    assert r.status_code in (200, 202), r.text
    body: dict[str, Any] = r.json()
    return body


def final(api: httpx.Client, command_id: str, what: str) -> dict[str, Any]:
    return wait_until(lambda: (c := command(api, command_id))["state"] not in ("queued", "sent") and c,
                      60, what)  # fmt: skip


def start_agent(f: Fleet, gw: GatewayProcess, token: str) -> CommandAgent:
    """Start the agent (or restart it pointed at another gateway, same buffer and stream)."""
    if f.agent is None:
        f.agent = CommandAgent(f.directory, AGENT, gw.device_url, token)
    else:
        text = f.agent.config_path.read_text()
        old = text.split('url = "', 1)[1].split('"', 1)[0]
        f.agent.config_path.write_text(text.replace(old, gw.device_url))
    f.agent.start()
    return f.agent


def stop_agent(f: Fleet) -> None:
    assert f.agent is not None
    f.agent.stop()
    wait_until(lambda: holder(f.api_a, AGENT) is None and holder(f.api_b, AGENT) is None, 30,
               "both gateways to see the agent gone")  # fmt: skip


def test_a_device_added_on_a_is_commanded_from_a_while_it_is_connected_to_b(fleet: Fleet) -> None:
    f = fleet
    token = f.a.add_device(AGENT, {"site": "north"})
    added = time.monotonic()
    replicated = wait_until(lambda: device(f.api_b, AGENT), 30, "the device replicated to B")
    FIGURES["registry_add_replicated_s"] = round(time.monotonic() - added, 3)
    assert replicated["labels"] == {"site": "north"} and replicated["online"] is False
    conn = f.b.connect()
    try:  # the same hash, never the token
        assert registry.find_by_token(conn, token) is not None
    finally:
        conn.close()

    start_agent(f, f.b, token)
    wait_until(lambda: (device(f.api_b, AGENT) or {}).get("online"), 60, "the agent online on B")
    seen_on_b = time.monotonic()
    wait_until(lambda: holder(f.api_a, AGENT) == "gw-b", 30, "A to see the agent held by gw-b")
    FIGURES["presence_convergence_s"] = round(time.monotonic() - seen_on_b, 3)
    assert holder(f.api_b, AGENT) == "gw-b"
    status = f.api_a.get("/api/v1/status").json()["fleet"]
    assert status["gateway"] == "gw-a" and status["peers"] == ["gw-b"] and status["devices_elsewhere"] == 1
    on_a = device(f.api_a, AGENT)
    assert on_a is not None and on_a["online"] is True and on_a["peer"] is None
    # what the agent declared to B, on A (it never connected to A): commands, outputs, sensors
    on_a = wait_until(lambda: (d := device(f.api_a, AGENT)) and d["info"].get("outputs") and d, 30,
                      "A to show the agent's declarations")  # fmt: skip
    FIGURES["declarations_on_a_s"] = round(time.monotonic() - seen_on_b, 3)
    own = device(f.api_b, AGENT)
    assert on_a and own is not None
    assert on_a["commands"] == own["commands"] and {"set", "ping"} <= set(declared(f.api_a, AGENT))
    assert on_a["sensors"] == own["sensors"] and on_a["agent"] == own["agent"] != ""
    assert "led:" in on_a["info"]["outputs"] and on_a["info"]["outputs"] == own["info"]["outputs"]
    assert on_a["last_seen_ms"] is None  # seen by B, not here

    off = send(f.api_a, "set", {"target": "led", "value": "off"})
    assert off["state"] == "succeeded", off
    assert off["value"]["pin_state"] is False
    result = send(f.api_a, "set", {"target": "led", "value": "on"})
    assert result["state"] == "succeeded", result
    assert result["sender"] == "alice"
    # the agent read the mock pin back after driving it: the command really ran on B's agent
    assert result["value"] == {"target": "led", "type": "led", "value": True, "pin": 22, "pin_state": True}
    assert send(f.api_a, "ping")["value"]["actuators"]["led"] is True

    # A's ledger: sent to gateway gw-b; B's ledger: its own record, sent to the agent, sender fleet:gw-a
    history = command(f.api_a, result["id"])["history"]
    assert any(h["state"] == "sent" and "gateway gw-b" in (h.get("detail") or "") for h in history), history
    on_b = f.api_b.get(f"/api/v1/devices/{AGENT}/commands").json()["commands"]
    mine = [c for c in on_b if c["sender"] == "fleet:gw-a" and c["name"] == "set"]
    assert len(mine) == 2 and all(c["state"] == "succeeded" for c in mine), on_b
    assert f.api_a.get("/api/v1/status").json()["fleet"]["commands_forwarded"] >= 3
    assert f.api_b.get("/api/v1/status").json()["fleet"]["commands_served"] >= 3

    # a failure on the device comes back as a failure
    broken = send(f.api_a, "broken")
    assert broken["state"] == "failed" and broken["error"], broken

    # round trips across the gateways (API on A -> broker node 1 -> node 2 -> B -> agent and back)
    times = []
    for i in range(20):
        started = time.monotonic()
        r = send(f.api_a, "set", {"target": "led", "value": "on" if i % 2 else "off"})
        times.append(time.monotonic() - started)
        assert r["state"] == "succeeded", r
    local = []
    for i in range(20):
        started = time.monotonic()
        r = send(f.api_b, "set", {"target": "led", "value": "on" if i % 2 else "off"})
        local.append(time.monotonic() - started)
        assert r["state"] == "succeeded", r
    FIGURES["command_round_trip_via_a_ms"] = _summary(times)
    FIGURES["command_round_trip_on_b_ms"] = _summary(local)

    # the CLI on A shows the whole fleet with the holding gateway
    listing = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "devices", "--api", f.a.api_url],
        env=repo_env({"IOTGW_TOKEN": f.api_a.headers["Authorization"].split()[1]}),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert "GATEWAY" in listing.stdout.splitlines()[0]
    row = next(line for line in listing.stdout.splitlines() if line.startswith(AGENT))
    assert row.split()[1:3] == ["online", "gw-b"], listing.stdout
    # and `iotgw send` on A (the CLI goes through A's API)
    sent = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "send", AGENT, "set", "target=led", "value=on", "--api", f.a.api_url],
        env=repo_env({"IOTGW_TOKEN": f.api_a.headers["Authorization"].split()[1]}),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert sent.returncode == 0 and '"pin_state": true' in sent.stdout, sent.stdout + sent.stderr


def _summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"n": len(ms), "median": round(statistics.median(ms), 1), "max": round(ms[-1], 1),
            "p90": round(ms[int(0.9 * (len(ms) - 1))], 1)}  # fmt: skip


def test_a_command_queued_on_a_while_offline_is_delivered_when_the_device_connects_to_b(
    fleet: Fleet,
) -> None:
    f = fleet
    assert f.agent is not None, "runs after the first test"
    token = _agent_token(f)
    stop_agent(f)
    queued = send(f.api_a, "set", {"target": "led", "value": "off"}, wait=False)
    assert queued["state"] == "queued", queued
    start_agent(f, f.b, token)
    done = final(f.api_a, queued["id"], "the queued command to be delivered through B")
    assert done["state"] == "succeeded", done
    assert done["value"]["pin_state"] is False
    history = done["history"]
    assert any(h["state"] == "sent" and "gateway gw-b" in (h.get("detail") or "") for h in history), history


def test_a_device_moving_from_b_to_a_keeps_receiving_queued_commands(fleet: Fleet) -> None:
    f = fleet
    token = _agent_token(f)
    stop_agent(f)
    on_b = send(f.api_b, "set", {"target": "led", "value": "on"}, wait=False)
    on_a = send(f.api_a, "ping", wait=False)
    assert on_b["state"] == on_a["state"] == "queued"
    start_agent(f, f.a, token)
    done_b = final(f.api_b, on_b["id"], "B's queued command to follow the device to A")
    done_a = final(f.api_a, on_a["id"], "A's queued command to reach the device on A")
    assert done_b["state"] == "succeeded" and done_b["value"]["pin_state"] is True, done_b
    assert done_a["state"] == "succeeded" and done_a["value"]["pong"] is True, (
        done_a
    )  # (order across two queues: none)
    assert send(f.api_a, "ping")["value"]["actuators"]["led"] is True
    assert holder(f.api_a, AGENT) == "gw-a"
    wait_until(lambda: holder(f.api_b, AGENT) == "gw-a", 30, "B to see the device held by gw-a")
    # and commands sent to B now travel to A
    result = send(f.api_b, "set", {"target": "led", "value": "off"})
    assert result["state"] == "succeeded" and result["value"]["pin_state"] is False, result


def _agent_token(f: Fleet) -> str:
    assert f.agent is not None
    return f.agent.config_path.read_text().split('token = "', 1)[1].split('"', 1)[0]


def test_rotating_and_removing_on_a_closes_the_live_session_on_b(fleet: Fleet) -> None:
    f = fleet
    name = "pi-revoke"
    token = f.a.add_device(name)
    wait_until(lambda: device(f.api_b, name), 30, "the device replicated to B")

    async def scenario() -> None:
        async with ScriptedDevice(f.b.device_url, token) as dev:
            await dev.hello(device=name)
            conn = f.a.connect()
            try:
                new_token = registry.rotate_token(conn, name)
            finally:
                conn.close()
            rotated = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                await dev.next(timeout=30)
                await dev.next(timeout=30)
            FIGURES["revocation_on_a_closes_session_on_b_s"] = round(time.monotonic() - rotated, 3)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4005
        async with ScriptedDevice(f.b.device_url, new_token) as dev:
            await dev.hello(device=name)  # the new token works on B
            conn = f.a.connect()
            try:
                registry.remove_device(conn, name)
            finally:
                conn.close()
            with pytest.raises(ConnectionClosed) as closed:
                await dev.next(timeout=30)
                await dev.next(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003

    asyncio.run(scenario())
    wait_until(lambda: device(f.api_b, name) is None, 30, "the removal replicated to B")


def test_a_killed_gateway_is_forgotten_at_once_and_catches_up_when_it_returns(fleet: Fleet) -> None:
    f = fleet
    token = _agent_token(f)
    stop_agent(f)
    start_agent(f, f.b, token)
    wait_until(lambda: holder(f.api_a, AGENT) == "gw-b", 60, "A to see the agent held by gw-b")

    f.b.kill()  # SIGKILL: the broker sends B's last will (not retained) on the fleet status topic
    killed = time.monotonic()
    wait_until(lambda: holder(f.api_a, AGENT) is None, 30, "A to forget the devices B held")
    FIGURES["dead_gateway_forgotten_s"] = round(time.monotonic() - killed, 3)
    queued = send(f.api_a, "set", {"target": "led", "value": "on"}, wait=False)
    assert queued["state"] == "queued", queued  # nobody holds the device: it waits on A
    late = f.a.add_device("pi-late")  # B is down: it learns this when it rejoins (anti-entropy)
    # and pi-late connects to A meanwhile: B missed A's declarations, A answers B's sync with them
    held = threading.Event()
    release = threading.Event()
    holding = threading.Thread(target=asyncio.run, args=(_hold(f.a.device_url, late, held, release),))
    holding.start()
    try:
        assert held.wait(30), "pi-late connected to A"

        f.b.launch()  # the agent reconnects to B by itself
        restarted = time.monotonic()
        done = final(f.api_a, queued["id"], "A's queued command to reach the agent back on B")
        assert done["state"] == "succeeded" and done["value"]["pin_state"] is True, done
        FIGURES["queued_command_delivered_after_restart_s"] = round(time.monotonic() - restarted, 3)
        conn = f.b.connect()
        try:
            wait_until(lambda: registry.find_by_token(conn, late), 30, "B to catch up with pi-late")
        finally:
            conn.close()
        wait_until(
            lambda: declared(f.api_b, "pi-late") == ["beep"], 30, "B to learn what pi-late declared to A"
        )
        on_b = device(f.api_b, "pi-late")
        assert on_b is not None and on_b["gateway"] == "gw-a" and on_b["info"] == {"outputs": "buzzer:output"}
    finally:
        release.set()
        holding.join(30)


async def _hold(url: str, token: str, held: threading.Event, release: threading.Event) -> None:
    """A scripted device connected to ``url`` until ``release`` is set."""
    async with ScriptedDevice(url, token, stream="late") as dev:
        await dev.hello(commands=[{"name": "beep"}], info={"outputs": "buzzer:output"})
        held.set()
        await asyncio.to_thread(release.wait, 120)
