"""A real Home Assistant core finds a real agent through the gateway's MQTT discovery and drives it.

Mosquitto <- real gateway (MQTT bridge, discovery) <- real agent (subprocess, gpiozero mock pins,
simulated sensors); Home Assistant 2024.3.3 (``.venv-ha``, ``make ha-venv``) with its MQTT
integration on the same broker. Everything is checked through Home Assistant's REST API: the
agent's sensors become entities with the unit, device class and state class its ``hello``
declared, and their states follow the stored readings; its button is a binary sensor that goes
on and off; the device carries its model and software version, via the gateway's own device;
``switch.turn_on`` on the LED entity drives the agent's mock pin (the agent reads the pin back in
its result, in the command ledger) and the entity turns ``on`` only from that result (an MQTT
switch with a state topic is not optimistic); the PWM LED's ``number`` and the ``ping`` button
go through the ledger too; stopping the agent makes every entity of the device unavailable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_agent_gateway import SENSORS, AgentProcess
from tests.support.gateway import GatewayProcess
from tests.support.home_assistant import HomeAssistant, entity_slug
from tests.support.services import Mosquitto
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # the first test waits for Home Assistant to start

GW = "gw-ha"
AGENT = "pi-ha"
HARDWARE = """
[[sensors]]
type = "cpu_temperature"

[[sensors]]
type = "mcp3008"
channel = 0
metric = "supply"
unit = "V"
scale = 3.3

[[sensors]]
type = "disk_usage"

[[sensors]]
type = "light"
pin = 18

[[sensors]]
type = "button"
pin = 17
name = "door"

[[actuators]]
type = "led"
name = "led"
pin = 22

[[actuators]]
type = "pwm_led"
name = "dimmer"
pin = 13
"""
# metric -> (unit_of_measurement, device_class, state_class) Home Assistant must show
SENSOR_CLASSES: dict[str, tuple[str | None, str | None, str]] = {
    "cpu_temp": ("°C", "temperature", "measurement"),
    "supply": ("V", "voltage", "measurement"),
    "disk_used_pct": ("%", None, "measurement"),
    "light": (None, None, "measurement"),
}


def entity(component: str, key: str) -> str:
    """The entity id Home Assistant derives from the discovery payload's ``object_id``."""
    return f"{component}.{entity_slug(f'iotgw_{GW}_{AGENT}_{key}')}"


class HardwareAgent(AgentProcess):
    """The agent with the sensors and outputs above (mock pins, simulated values)."""

    def __init__(self, directory: Path, url: str, token: str) -> None:
        super().__init__(directory, AGENT, url, token, interval=0.5)
        config = self.config_path.read_text()
        assert SENSORS in config
        self.config_path.write_text(config.replace(SENSORS, HARDWARE))


class Setup:
    def __init__(
        self, ha: HomeAssistant, gw: GatewayProcess, agent: HardwareAgent, api: httpx.Client
    ) -> None:
        self.ha = ha
        self.gw = gw
        self.agent = agent
        self.api = api

    def declared_sensors(self) -> dict[str, dict[str, Any]]:
        sensors = self.api.get(f"/api/v1/devices/{AGENT}").json()["sensors"]
        return {s["metric"]: s for s in sensors}

    def commands(self, limit: int = 20) -> list[dict[str, Any]]:
        r = self.api.get(f"/api/v1/devices/{AGENT}/commands", params={"limit": limit})
        assert r.status_code == 200, r.text
        commands: list[dict[str, Any]] = r.json()["commands"]
        return commands

    def state(self, entity_id: str) -> str | None:
        found = self.ha.state(entity_id)
        return None if found is None else str(found["state"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("ha")
    env = {"IOTGW_MQTT_ENABLED": "true", "IOTGW_MQTT_GATEWAY": GW}
    with Mosquitto.start(directory / "broker") as broker, \
            HomeAssistant.start(directory / "ha", broker) as ha, \
            GatewayProcess.start(directory / "gw", env={**env, "IOTGW_MQTT_URL": broker.url}) as gw:  # fmt: skip
        agent = HardwareAgent(directory, gw.device_url, gw.add_device(AGENT))
        agent.start()
        api = httpx.Client(
            base_url=gw.api_url,
            headers={"Authorization": f"Bearer {gw.add_operator('ops', 'read')}"},
            timeout=30,
        )
        try:
            yield Setup(ha, gw, agent, api)
        finally:
            api.close()
            agent.stop()
            errors = ha.errors()
            print(f"Home Assistant's errors:\n{errors}" if errors else "Home Assistant logged no errors")


def test_sensors_appear_with_the_declared_units_and_classes(setup: Setup) -> None:
    ids = {metric: entity("sensor", metric) for metric in SENSOR_CLASSES}
    wait_until(
        lambda: all(setup.state(i) not in (None, "unknown", "unavailable") for i in ids.values()),
        120, "the agent's sensor entities with a state in Home Assistant",
    )  # fmt: skip
    declared = setup.declared_sensors()
    for metric, (unit, device_class, state_class) in SENSOR_CLASSES.items():
        assert (declared[metric].get("unit") or None) == unit, declared[metric]  # what hello said
        state = setup.ha.state(ids[metric])
        assert state is not None
        attributes = state["attributes"]
        assert attributes.get("unit_of_measurement") == unit, (metric, attributes)
        assert attributes.get("device_class") == device_class, (metric, attributes)
        assert attributes.get("state_class") == state_class, (metric, attributes)
        assert attributes["friendly_name"] == f"{AGENT} {metric}"
    # one Home Assistant device for the agent, its model and version from hello, via the gateway
    cpu = ids["cpu_temp"]
    device = json.loads(setup.ha.template(
        "{{ {'name': device_attr('%s', 'name'), 'model': device_attr('%s', 'model'),"
        " 'sw': device_attr('%s', 'sw_version'), 'via': device_attr('%s', 'via_device_id'),"
        " 'entities': device_entities(device_id('%s')) | sort} | tojson }}" % ((cpu,) * 5)
    ))  # fmt: skip
    hello = setup.api.get(f"/api/v1/devices/{AGENT}").json()
    assert (
        device["name"] == AGENT and device["sw"] == hello["agent"] and device["sw"].startswith("iotgw-agent/")
    )
    assert device["model"] == hello["info"]["machine"]
    gateway_status = f"binary_sensor.{entity_slug(f'iotgw_{GW}_status')}"
    assert device["via"] == setup.ha.template("{{ device_id('" + gateway_status + "') }}")
    assert setup.state(gateway_status) == "on"  # the gateway's connectivity sensor
    assert set(device["entities"]) == {
        *ids.values(), entity("binary_sensor", "door"), entity("switch", "output_led"),
        entity("number", "output_dimmer"), entity("button", "command_ping"), entity("button", "command_read_now"),
    }  # fmt: skip
    # an invalid or deprecated discovery payload is logged by the MQTT integration, never raised
    assert setup.ha.complaints("homeassistant.components.mqtt") == []


def test_sensor_states_follow_the_readings(setup: Setup) -> None:
    shown: dict[str, set[float]] = {"cpu_temp": set(), "supply": set()}

    def stored(metric: str) -> list[float]:
        return [float(str(values[metric])) for _, _, values in setup.gw.readings(AGENT) if metric in values]

    def several_values_each_a_reading() -> bool:
        for metric, seen in shown.items():
            state = setup.state(entity("sensor", metric))
            assert state is not None
            seen.add(float(state))
        readings = {metric: stored(metric) for metric in shown}
        for metric, seen in shown.items():
            for value in seen:  # Home Assistant shows nothing the agent did not measure
                assert any(abs(value - r) < 1e-9 for r in readings[metric]), (
                    metric,
                    value,
                    readings[metric][-5:],
                )
        return all(len(seen) >= 3 for seen in shown.values())

    wait_until(
        several_values_each_a_reading, 60, "three successive readings of each sensor in Home Assistant"
    )


def test_the_button_is_a_binary_sensor_that_goes_on_and_off(setup: Setup) -> None:
    door = entity("binary_sensor", "door")
    seen: set[str | None] = set()

    def both() -> bool:
        seen.add(setup.state(door))
        return {"on", "off"} <= seen

    # the simulation presses the button every half second on average and holds it a while
    wait_until(both, 90, "the door binary sensor on and off", interval=0.02)
    assert seen <= {"on", "off", "unknown"}, seen


def test_switching_the_led_entity_drives_the_agents_mock_pin(setup: Setup) -> None:
    led = entity("switch", "output_led")
    switch = wait_until(lambda: setup.ha.state(led) or {}, 60, "the LED's switch entity")
    # with a state topic the switch is not optimistic: its state comes only from the device's result
    assert "assumed_state" not in switch["attributes"], switch
    for service, value, pin in (("turn_on", "on", True), ("turn_off", "off", False), ("turn_on", "on", True)):
        before = {c["id"] for c in setup.commands()}
        setup.ha.call("switch", service, entity_id=led)
        result = new_command(setup, before, "set", f"the ledger's set led {value} from Home Assistant")
        assert result["args"] == {"target": "led", "value": value}, result
        assert result["sender"] == "mqtt:homeassistant"
        # the agent drove GPIO22 and read it back
        assert result["value"] == {"target": "led", "type": "led", "value": pin, "pin": 22, "pin_state": pin}
        wait_until(lambda: setup.state(led) == value, 60, f"the switch entity {value}")  # noqa: B023


def test_the_pwm_led_number_and_the_ping_button_go_through_the_ledger(setup: Setup) -> None:
    dimmer = entity("number", "output_dimmer")
    wait_until(lambda: setup.state(dimmer) is not None, 60, "the dimmer's number entity")
    before = {c["id"] for c in setup.commands()}
    setup.ha.call("number", "set_value", entity_id=dimmer, value=0.25)
    result = new_command(setup, before, "set", "the ledger's set dimmer 0.25 from Home Assistant")
    # the payload as Home Assistant published it; the agent parses the number
    assert result["args"] == {"target": "dimmer", "value": "0.25"}, result
    assert result["sender"] == "mqtt:homeassistant"
    assert result["value"] == {
        "target": "dimmer",
        "type": "pwm_led",
        "value": 0.25,
        "pin": 13,
        "pin_state": 0.25,
    }
    wait_until(lambda: setup.state(dimmer) == "0.25", 60, "the number entity at 0.25")

    before = {c["id"] for c in setup.commands()}
    setup.ha.call("button", "press", entity_id=entity("button", "command_ping"))
    pong = new_command(setup, before, "ping", "the ledger's ping from the button")
    assert pong["sender"] == "mqtt:homeassistant" and pong["value"]["pong"] is True
    assert pong["value"]["actuators"]["led"] is True  # as the switch test left it


def new_command(setup: Setup, before: set[str], name: str, what: str) -> dict[str, Any]:
    """Wait for a command ``name`` not in ``before`` to succeed in the ledger; return it."""

    def found() -> dict[str, Any]:
        for command in setup.commands():
            if command["id"] not in before and command["name"] == name and command["state"] == "succeeded":
                return command
        return {}

    return wait_until(found, 60, what)


def test_the_device_goes_unavailable_when_the_agent_stops(setup: Setup) -> None:
    mine = [
        entity("sensor", "cpu_temp"), entity("binary_sensor", "door"), entity("switch", "output_led"),
        entity("number", "output_dimmer"), entity("button", "command_ping"),
    ]  # fmt: skip
    assert all(setup.state(i) != "unavailable" for i in mine)
    assert setup.agent.stop() == 0
    wait_until(
        lambda: all(setup.state(i) == "unavailable" for i in mine),
        60,
        "every entity of the agent unavailable",
    )
    assert (
        setup.state(f"binary_sensor.{entity_slug(f'iotgw_{GW}_status')}") == "on"
    )  # the gateway is still up
    assert setup.ha.complaints("homeassistant.components.mqtt") == []
