"""Home Assistant MQTT discovery: a device's entities from what it declared in ``hello``.

Pure functions (docs/mqtt.md, "Home Assistant"): ``device_configs(record, topics, prefix)``
returns ``{config topic: payload}`` for one device; publish each payload retained, and
publish an empty retained payload on every topic of a removed device (or of an entity the
device no longer declares) to delete it in Home Assistant.

What becomes an entity, as Zigbee2MQTT and ESPHome do it:

- each declared sensor metric -> ``sensor`` (unit, ``device_class`` and ``state_class`` from
  the unit and the sensor's ``kind``), its value read from the retained ``state`` topic;
- a sensor of kind ``event`` (buttons, digital inputs) -> ``binary_sensor`` on its event topic;
- each output in ``hello.info.outputs`` (``name:type,...``, sent by the agent) -> ``switch``
  (led, output, buzzer), ``number`` 0..1 (pwm_led) or -1..1 (servo); their commands arrive on
  ``.../ha/<device>/<entity>/set`` and go through the command ledger as ``set``;
- each declared command without arguments (``ping``, ``read_now``, custom programs) -> ``button``.

Every entity is available when both the gateway (its last will) and the device are online.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from gateway.integrations.mqtt.topics import Topics
from gateway.store.registry import DeviceRecord
from iotgw_common._version import __version__

__all__ = [
    "OUTPUT_COMPONENTS",
    "device_configs",
    "entity_key",
    "gateway_configs",
    "ha_target",
    "parse_outputs",
]

OUTPUT_COMPONENTS = {
    "led": "switch",
    "output": "switch",
    "buzzer": "switch",
    "pwm_led": "number",
    "servo": "number",
}
"""Which Home Assistant component an agent output type becomes."""
ARGS_COMMANDS = frozenset({"set", "toggle", "blink"})

_UNIT_CLASSES = {
    "°C": "temperature",
    "°F": "temperature",
    "K": "temperature",
    "lx": "illuminance",
    "V": "voltage",
    "mV": "voltage",
    "A": "current",
    "mA": "current",
    "W": "power",
    "kW": "power",
    "Wh": "energy",
    "kWh": "energy",
    "hPa": "pressure",
    "Pa": "pressure",
    "kPa": "pressure",
    "bar": "pressure",
    "mm": "distance",
    "cm": "distance",
    "m": "distance",
    "km": "distance",
    "ppm": "carbon_dioxide",
    "dB": "sound_pressure",
    "Hz": "frequency",
    "B": "data_size",
    "MB": "data_size",
    "GB": "data_size",
}
_KIND_CLASSES = {"humidity": ("humidity", "%"), "battery": ("battery", "%"), "moisture": ("moisture", "%")}
_ENERGY_CLASSES = frozenset({"energy"})
_SAFE = re.compile(r"[^a-zA-Z0-9_-]")
_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")  # a topic level: no /, +, #


def entity_key(text: str) -> str:
    """A name as a topic level Home Assistant accepts (``[a-zA-Z0-9_-]``), unique per original."""
    safe = _SAFE.sub("_", text)
    if safe != text:
        safe += "_" + hashlib.sha1(text.encode()).hexdigest()[:6]
    return safe


def parse_outputs(info: dict[str, Any]) -> list[tuple[str, str]]:
    """``info["outputs"]`` (``"name:type,..."``) as (name, type) pairs of known types."""
    raw = info.get("outputs")
    if not isinstance(raw, str):
        return []
    out = []
    for part in raw.split(","):
        name, _, kind = part.strip().partition(":")
        if kind in OUTPUT_COMPONENTS and _OUTPUT_NAME.match(name):
            out.append((name, kind))
    return out


def _device_block(record: DeviceRecord, topics: Topics) -> dict[str, Any]:
    info = record.info
    block: dict[str, Any] = {
        "identifiers": [f"iotgw_{topics.gateway}_{record.name}"],
        "name": record.name,
        "manufacturer": "iotgw",
        "model": str(
            info.get("model") or info.get("machine") or record.agent.split("/")[0] or "iotgw device"
        ),
        "via_device": f"iotgw_{topics.gateway}",
    }
    if record.agent:
        block["sw_version"] = record.agent
    return block


def _availability(record: DeviceRecord, topics: Topics) -> dict[str, Any]:
    return {
        "availability": [{"topic": topics.status}, {"topic": topics.availability(record.name)}],
        "availability_mode": "all",
    }


def _sensor(metric: str, unit: str, kind: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    device_class = _UNIT_CLASSES.get(unit)
    if kind in _KIND_CLASSES and unit == _KIND_CLASSES[kind][1]:
        device_class = _KIND_CLASSES[kind][0]
    if unit:
        config["unit_of_measurement"] = unit
    if device_class:
        config["device_class"] = device_class
    config["state_class"] = "total_increasing" if device_class in _ENERGY_CLASSES else "measurement"
    return config


def device_configs(record: DeviceRecord, topics: Topics, discovery_prefix: str) -> dict[str, dict[str, Any]]:
    """Config topic -> payload for every entity of ``record``; see the module docstring."""
    node = entity_key(f"iotgw_{topics.gateway}_{record.name}")
    uid = f"iotgw_{topics.gateway}_{record.name}"
    device = _device_block(record, topics)
    common = {"device": device, **_availability(record, topics)}
    configs: dict[str, dict[str, Any]] = {}

    def add(component: str, key: str, payload: dict[str, Any]) -> None:
        obj = entity_key(key)
        payload = {**payload, **common, "unique_id": f"{uid}_{obj}", "object_id": f"{node}_{obj}"}
        configs[f"{discovery_prefix}/{component}/{node}/{obj}/config"] = payload

    state = topics.state(record.name)
    for sensor in record.sensors:
        metric = str(sensor.get("metric", ""))
        if not metric:
            continue
        kind = str(sensor.get("kind", ""))
        if kind == "event":
            add("binary_sensor", metric, {
                "name": metric,
                "state_topic": topics.event(record.name, metric),
                "value_template": "{{ 'ON' if value_json.data.get('pressed', value_json.data.get('active')) else 'OFF' }}",
            })  # fmt: skip
            continue
        add("sensor", metric, {
            "name": metric,
            "state_topic": state,
            "value_template": f"{{{{ value_json['values'].get('{metric}') }}}}",
            **_sensor(metric, str(sensor.get("unit", "")), kind),
        })  # fmt: skip
    declared = {str(c.get("name", "")): c for c in record.commands}
    if "set" in declared:
        for name, kind in parse_outputs(record.info):
            key = f"output_{name}"
            base = {
                "name": name,
                "command_topic": topics.ha_command(record.name, entity_key(key)),
                "state_topic": topics.output(record.name, name),
            }
            if OUTPUT_COMPONENTS[kind] == "switch":
                add("switch", key, {
                    **base,
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "value_template": "{{ 'ON' if value_json.value else 'OFF' }}",
                })  # fmt: skip
            else:
                low = -1.0 if kind == "servo" else 0.0
                add("number", key, {
                    **base, "min": low, "max": 1.0, "step": 0.01, "mode": "slider",
                    "value_template": "{{ value_json.value }}",
                })  # fmt: skip
    for name, command in declared.items():
        if name and name not in ARGS_COMMANDS and not command.get("args"):
            key = f"command_{name}"
            add("button", key, {
                "name": name.replace("_", " "),
                "command_topic": topics.ha_command(record.name, entity_key(key)),
                "payload_press": "PRESS",
            })  # fmt: skip
    return configs


def gateway_configs(topics: Topics, discovery_prefix: str) -> dict[str, dict[str, Any]]:
    """The gateway itself as a Home Assistant device, with a connectivity binary sensor."""
    uid = f"iotgw_{topics.gateway}"
    node = entity_key(uid)
    return {
        f"{discovery_prefix}/binary_sensor/{node}/status/config": {
            "name": "status",
            "unique_id": f"{uid}_status",
            "object_id": f"{node}_status",
            "state_topic": topics.status,
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
            "device": {
                "identifiers": [uid],
                "name": f"iotgw {topics.gateway}",
                "manufacturer": "iotgw",
                "model": "iotgw gateway",
                "sw_version": __version__,
            },
        }
    }


def ha_target(record: DeviceRecord, entity: str) -> tuple[str, str] | None:
    """What an entity's command does: ("set", output name) or ("command", name); None if unknown."""
    for name, _ in parse_outputs(record.info):
        if entity_key(f"output_{name}") == entity:
            return "set", name
    for command in record.commands:
        name = str(command.get("name", ""))
        if name and entity_key(f"command_{name}") == entity:
            return "command", name
    return None
