"""Every Home Assistant discovery payload the gateway publishes, against Home Assistant's schemas.

``tests/mqtt/ha_discovery_schema.json`` is dumped from Home Assistant's own MQTT
``DISCOVERY_SCHEMA`` of each component and its sensor/binary sensor/number constants
(``tests/mqtt/ha_schema.py dump``, run in a venv with Home Assistant 2024.3.3, the last
release that installs on Python 3.11). So this test needs no Home Assistant: it checks
that each payload uses only keys Home Assistant knows (its schemas drop unknown keys
silently, so a typo would go unnoticed there), has the required ones, and that device
classes, units, state classes and number modes are values Home Assistant accepts
together. The same payloads were also validated by the schemas themselves:

    .venv/bin/python -m tests.mqtt.test_discovery_schema | .venv-ha/bin/python tests/mqtt/ha_schema.py validate

The devices are what a real agent and a real board declare in ``hello`` (copied from
the demo's store), plus one sensor for every unit the gateway maps to a device class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.integrations.mqtt.discovery import _UNIT_CLASSES, device_configs, gateway_configs
from gateway.integrations.mqtt.topics import Topics
from gateway.store.registry import DeviceRecord

SCHEMA = json.loads(Path(__file__).with_name("ha_discovery_schema.json").read_text(encoding="utf-8"))
TOPICS = Topics("iotgw", "gw-1")

AGENT = DeviceRecord(
    id=1,
    name="pi-kitchen",
    agent="iotgw-agent/0.1.0",
    sensors=[
        {"metric": "cpu_temp", "unit": "°C", "kind": "temperature"},
        {"metric": "load_1m", "kind": "load"},
        {"metric": "disk_used_pct", "unit": "%", "kind": "disk"},
        {"metric": "soil_moisture", "unit": "%", "kind": "adc"},
        {"metric": "light", "kind": "light"},
        {"metric": "distance_m", "unit": "m", "kind": "distance"},
        {"metric": "temp_28-59b37d38034b", "unit": "°C", "kind": "temperature"},
        {"metric": "door", "kind": "event"},
        {"metric": "humidity", "unit": "%", "kind": "humidity"},
        {"metric": "battery", "unit": "%", "kind": "battery"},
    ],
    commands=[
        {"name": "ping"},
        {"name": "read_now"},
        {"name": "set_interval", "args": {"seconds": "number"}},
        {"name": "set", "args": {"target": "actuator", "value": "on/off"}},
        {"name": "toggle", "args": {"target": "actuator"}},
        {"name": "blink", "args": {"target": "actuator"}},
        {"name": "reboot.now"},  # a custom program; the dot is not allowed in a Home Assistant id
    ],
    info={"machine": "x86_64", "outputs": "led:led,relay:output,dimmer:pwm_led,arm:servo,beeper:buzzer"},
)
BOARD = DeviceRecord(
    id=2,
    name="board-greenhouse",
    agent="iotgw-fw/0.1.0",
    sensors=[
        {"metric": "temperature", "unit": "C", "kind": "gauge"},
        {"metric": "humidity", "unit": "%", "kind": "gauge"},
        {"metric": "light", "unit": "%", "kind": "gauge"},
    ],
    # the firmware's hello since it declares its outputs like the agent (firmware_micropython/hello.py)
    commands=[
        {"name": "ping"},
        {"name": "read_now"},
        {"name": "set_interval", "args": {"seconds": "interval in seconds"}},
        {
            "name": "set",
            "args": {"target": "actuator: fan, led", "value": "on/off, true/false, 1/0, or a number 0..1"},
        },
        {"name": "toggle", "args": {"target": "actuator: fan, led"}},
        {
            "name": "blink",
            "args": {
                "target": "actuator: fan, led",
                "on_time": "seconds on (0.5)",
                "off_time": "seconds off (0.5)",
                "n": "times (3); 0: until the next set or toggle",
            },
        },
        {"name": "ota", "args": {"op": "begin, chunk or commit"}},
    ],
    info={
        "outputs": "led:led,fan:pwm_led",
        "mem_free": 185216,
        "mem_alloc": 73856,
        "platform": "linux",
        "sessions": 0,
    },
)
UNITS = DeviceRecord(
    id=3,
    name="every-unit",
    agent="scripted/1",
    sensors=[{"metric": f"m{i}", "unit": unit} for i, unit in enumerate(_UNIT_CLASSES)],
)


def payloads() -> dict[str, dict[str, Any]]:
    out = dict(gateway_configs(TOPICS, "homeassistant"))
    for record in (AGENT, BOARD, UNITS):
        out.update(device_configs(record, TOPICS, "homeassistant"))
    return out


ALL = payloads()


def test_the_devices_become_the_entities_docs_mqtt_md_promises() -> None:
    kinds: dict[str, int] = {}
    for topic in ALL:
        kinds[topic.split("/")[1]] = kinds.get(topic.split("/")[1], 0) + 1
    # 10 + 3 + 26 sensors; the door and the gateway's status; the agent's led, relay, beeper and
    # the board's led; the agent's dimmer, arm and the board's fan; ping, read_now, reboot.now
    # for the agent, ping and read_now for the board
    assert kinds == {"sensor": 9 + 3 + len(_UNIT_CLASSES), "binary_sensor": 2, "switch": 4, "number": 3,
                     "button": 5}  # fmt: skip
    board = {(t.split("/")[1], t.split("/")[3]) for t in ALL if t.split("/")[2].endswith("_board-greenhouse")}
    assert {("switch", "output_led"), ("number", "output_fan")} <= board, sorted(board)
    for topic in ALL:
        prefix, _, node, obj, config = topic.split("/")
        assert prefix == "homeassistant" and config == "config"
        assert all(part.replace("_", "").replace("-", "").isalnum() for part in (node, obj)), topic


@pytest.mark.parametrize("topic", sorted(ALL))
def test_payload_matches_home_assistant_schema(topic: str) -> None:
    payload = ALL[topic]
    component = topic.split("/")[1]
    schema = SCHEMA["components"][component]
    unknown = set(payload) - set(schema["keys"])
    assert not unknown, f"keys Home Assistant {SCHEMA['homeassistant']} does not know: {sorted(unknown)}"
    missing = set(schema["required"]) - set(payload)
    assert not missing, f"required keys missing: {sorted(missing)}"
    device = payload["device"]
    assert set(device) <= set(SCHEMA["device_keys"]) and device["identifiers"]
    assert payload["unique_id"] and isinstance(payload["name"], str)
    for availability in payload.get("availability", []):
        assert set(availability) <= {"topic", "payload_available", "payload_not_available", "value_template"}
    assert payload.get("availability_mode", "latest") in ("all", "any", "latest")
    device_class = payload.get("device_class")
    if component == "sensor":
        assert payload.get("state_class") in SCHEMA["sensor_state_classes"]
        if device_class is not None:
            allowed = SCHEMA["sensor_device_classes"][device_class]
            assert payload.get("unit_of_measurement") in allowed["units"], (device_class, payload)
            if allowed["state_classes"]:
                assert payload["state_class"] in allowed["state_classes"], (device_class, payload)
    elif component == "binary_sensor" and device_class is not None:
        assert device_class in SCHEMA["binary_sensor_device_classes"]
    elif component == "number":
        assert payload["mode"] in SCHEMA["number_modes"] and payload["min"] < payload["max"]


if __name__ == "__main__":  # the payloads as JSON, for tests/mqtt/ha_schema.py validate
    print(json.dumps(ALL, ensure_ascii=False))
