"""Commands end to end: HTTP API -> real gateway -> real agent (subprocess, gpiozero mock pins).

What the issue asks to see: ``set`` on an LED drives the pin high (the agent reads the
pin back in its answer, and a later ``ping`` reports it); the command log names the
sender; a command for an offline agent is delivered when it reconnects within the
TTL and expires when it does not; an undeclared command, bad arguments and a
handler that raises all end failed with a useful message while the agent stays
connected; a deadline that has passed stops a command from running.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_agent_gateway import AgentProcess
from tests.support.gateway import GatewayProcess, repo_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

ACTUATORS = """
[[actuators]]
type = "led"
name = "led"
pin = 22

[[actuators]]
type = "output"
name = "relay"
pin = 23
active_high = false

[[actuators]]
type = "pwm_led"
name = "dimmer"
pin = 13

[[commands]]
name = "uptime"
argv = ["{python}", "-c", "print('up and running')"]

[[commands]]
name = "broken"
argv = ["/nonexistent/iotgw-test-program"]

[[commands]]
name = "slow"
argv = ["{python}", "-c", "import time; time.sleep(30)"]
timeout = 0.5
"""


class CommandAgent(AgentProcess):
    """An agent with actuators and custom commands (mock pins, simulated sensors)."""

    def __init__(self, directory: Path, name: str, url: str, token: str) -> None:
        super().__init__(directory, name, url, token, interval=0.5)
        self.config_path.write_text(
            self.config_path.read_text() + ACTUATORS.replace("{python}", sys.executable)
        )


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, CommandAgent, httpx.Client]]:
    directory = tmp_path_factory.mktemp("cmd")
    with GatewayProcess.start(directory / "gw") as gw:
        control = gw.add_operator("alice", "control")
        agent = CommandAgent(directory, "pi-cmd", gw.device_url, gw.add_device("pi-cmd"))
        agent.start()
        client = httpx.Client(base_url=gw.api_url, headers={"Authorization": f"Bearer {control}"}, timeout=30)
        try:
            wait_until(
                lambda: online(client, "pi-cmd") and declared(client, "pi-cmd"), 30, "the agent's hello"
            )
            yield gw, agent, client
        finally:
            client.close()
            agent.stop()


def online(client: httpx.Client, name: str) -> bool:
    return bool(client.get(f"/api/v1/devices/{name}").json()["online"])


def declared(client: httpx.Client, name: str) -> list[str]:
    return [c["name"] for c in client.get(f"/api/v1/devices/{name}").json()["commands"]]


def send(client: httpx.Client, name: str, **args: Any) -> dict[str, Any]:
    r = client.post("/api/v1/devices/pi-cmd/commands", json={"name": name, "args": args})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_agent_declares_builtins_actuators_and_custom_commands(setup) -> None:
    _, _, client = setup
    assert declared(client, "pi-cmd") == [
        "ping", "read_now", "set_interval", "set", "toggle", "blink", "uptime", "broken", "slow",
    ]  # fmt: skip


def test_set_on_an_led_drives_the_mock_pin_high_and_the_log_names_the_sender(setup) -> None:
    _, _, client = setup
    assert send(client, "set", target="led", value="off")["value"]["pin_state"] is False
    result = send(client, "set", target="led", value="on")
    assert result["state"] == "succeeded" and result["sender"] == "alice"
    assert result["value"] == {"target": "led", "type": "led", "value": True, "pin": 22, "pin_state": True}
    pong = send(client, "ping")["value"]
    assert pong["pong"] is True and pong["actuators"]["led"] is True
    # an active-low relay: on means the pin reads low
    relay = send(client, "set", target="relay", value=True)["value"]
    assert relay["value"] is True and relay["pin_state"] is False
    toggled = send(client, "toggle", target="relay")["value"]
    assert toggled["value"] is False and toggled["pin_state"] is True
    dim = send(client, "set", target="dimmer", value=0.25)["value"]
    assert dim["value"] == 0.25 and dim["pin_state"] == 0.25
    log = client.get("/api/v1/devices/pi-cmd/commands", params={"limit": 5}).json()["commands"]
    assert log[0]["name"] == "set" and log[0]["args"] == {"target": "dimmer", "value": 0.25}
    assert {c["sender"] for c in log} == {"alice"}
    assert [h["state"] for h in log[0]["history"]] == ["queued", "sent", "succeeded"]


def test_read_now_interval_and_custom_program(setup) -> None:
    gw, _, client = setup
    before = len(gw.readings("pi-cmd"))
    read = send(client, "read_now")
    assert read["state"] == "succeeded" and "soil_moisture" in read["value"]["values"]
    wait_until(
        lambda: any(ts == read["value"]["ts"] for _, ts, _ in gw.readings("pi-cmd")), 10, "read_now's sample"
    )
    assert len(gw.readings("pi-cmd")) > before
    interval = send(client, "set_interval", seconds=2)
    assert interval["value"] == {"interval_s": 2.0, "previous_s": 0.5}
    uptime = send(client, "uptime")
    assert uptime["value"] == {"exit_code": 0, "stdout": "up and running\n", "stderr": ""}


def test_undeclared_bad_arguments_and_raising_handlers_fail_and_the_agent_stays(setup) -> None:
    gw, _, client = setup
    sessions = gw.log().count("device pi-cmd connected")
    r = client.post("/api/v1/devices/pi-cmd/commands", json={"name": "self_destruct"})
    assert r.status_code == 422 and "set" in r.json()["declared"]
    cases = [
        ("set", {"target": "led", "value": "banana"}, "bad arguments: value for led must be on or off"),
        (
            "set",
            {"target": "nosuch", "value": 1},
            "bad arguments: unknown target 'nosuch'; actuators: dimmer, led, relay",
        ),
        ("set", {"target": "led"}, "bad arguments: missing argument 'value'"),
        ("set_interval", {"seconds": -1}, "bad arguments: seconds must be a number from 0.05 to 86400"),
        ("ping", {"extra": 1}, "bad arguments: unknown argument 'extra'; ping accepts: no arguments"),
        ("broken", {}, "broken failed: FileNotFoundError: [Errno 2] No such file or directory"),
        ("slow", {}, "did not finish within 0.5 s; killed"),
    ]
    for name, args, error in cases:
        result = send(client, name, **args)
        assert result["state"] == "failed", result
        assert error in result["error"], (error, result["error"])
    assert online(client, "pi-cmd")
    assert send(client, "ping")["state"] == "succeeded"
    assert gw.log().count("device pi-cmd connected") == sessions  # never reconnected


def test_offline_agent_gets_queued_commands_within_the_ttl_and_not_after(setup) -> None:
    _, agent, client = setup
    agent.stop()
    wait_until(lambda: not online(client, "pi-cmd"), 10, "the agent to go offline")
    queued = client.post(
        "/api/v1/devices/pi-cmd/commands",
        json={"name": "set", "args": {"target": "led", "value": "off"}, "ttl": 60, "wait": False},
    ).json()
    doomed = client.post(
        "/api/v1/devices/pi-cmd/commands", json={"name": "ping", "ttl": 0.5, "wait": False}
    ).json()
    assert queued["state"] == doomed["state"] == "queued"

    def doomed_once_expired() -> dict[str, Any] | None:
        command: dict[str, Any] = client.get(f"/api/v1/commands/{doomed['id']}").json()
        return command if command["state"] == "expired" else None

    expired = wait_until(
        doomed_once_expired, 10, "the command with a 0.5 s ttl to expire while the agent is away"
    )
    assert expired["state"] == "expired" and [h["state"] for h in expired["history"]] == ["queued", "expired"]
    agent.start()
    done = client.get(f"/api/v1/commands/{queued['id']}", params={"wait": 30}).json()
    assert done["state"] == "succeeded", done
    assert done["value"]["value"] is False and done["value"]["pin_state"] is False
    assert client.get(f"/api/v1/commands/{doomed['id']}").json()["state"] == "expired"


def test_cli_send_devices_and_readings(setup) -> None:
    gw, _, client = setup
    token = client.headers["authorization"].split()[1]
    env = repo_env({"IOTGW_API_URL": gw.api_url, "IOTGW_TOKEN": token})

    def iotgw(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "gateway.cli", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)

    sent = iotgw("send", "pi-cmd", "set", "target=led", "value=on")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert (
        "succeeded" in sent.stdout and '"pin_state": true' in sent.stdout and "sent by alice" in sent.stdout
    )
    failed = iotgw("send", "pi-cmd", "set", "target=led", "value=banana")
    assert failed.returncode == 1 and "bad arguments" in failed.stdout
    refused = iotgw("send", "pi-cmd", "reboot")
    assert refused.returncode == 2 and "it declares: blink, broken, ping," in refused.stderr
    later = iotgw("send", "pi-cmd", "ping", "--no-wait")
    assert later.returncode in (0, 3), later.stdout + later.stderr
    devices = iotgw("devices")
    assert devices.returncode == 0 and "pi-cmd" in devices.stdout and "online" in devices.stdout
    readings = iotgw("readings", "pi-cmd", "--metric", "soil_moisture", "--since", "5m")
    assert readings.returncode == 0 and readings.stdout.count("soil_moisture") >= 1
    latest = iotgw("readings", "pi-cmd")
    assert latest.returncode == 0 and "cpu_temp" in latest.stdout
    anonymous = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "devices", "--api", gw.api_url],
        env=repo_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert anonymous.returncode == 2 and "HTTP 401" in anonymous.stderr


def test_a_command_past_its_deadline_is_not_run(setup) -> None:
    """The agent checks ``deadline`` against its clock before running anything."""
    from device_agent.commands import CommandRegistry
    from iotgw_common.protocol import Command

    ran: list[dict[str, Any]] = []

    async def handler(args: dict[str, Any]) -> str:
        ran.append(args)
        return "ran"

    registry = CommandRegistry()
    registry.register("go", handler)
    now = time.time_ns() // 1_000_000
    late = asyncio.run(registry.handle(Command(id="c1", name="go", deadline=now - 1)))
    assert late.ok is False and late.error == "deadline passed before the command ran" and ran == []
    on_time = asyncio.run(registry.handle(Command(id="c2", name="go", deadline=now + 60_000)))
    assert on_time.ok is True and on_time.value == "ran"
