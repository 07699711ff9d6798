"""Home Assistant's own MQTT discovery schemas, for tests/mqtt/test_discovery_schema.py.

Run with a Python that has Home Assistant installed (its own venv: ``make ha-venv`` is not
needed, ``python3 -m venv .venv-ha && .venv-ha/bin/pip install 'homeassistant<2024.4'``; 2024.3
is the last release for Python 3.11). Two commands:

``.venv-ha/bin/python tests/mqtt/ha_schema.py dump``
    writes ``tests/mqtt/ha_discovery_schema.json``: for each component the gateway publishes,
    the keys its ``DISCOVERY_SCHEMA`` accepts and requires, plus the sensor device classes
    with their units and state classes, binary sensor device classes and number modes. The
    offline test checks every payload against this file, so ``make test`` needs no Home
    Assistant; re-run ``dump`` when moving to a newer Home Assistant.

``.venv-ha/bin/python tests/mqtt/ha_schema.py validate < payloads.json``
    validates ``{config topic: payload}`` with the schemas themselves (voluptuous), and also
    reports keys the schemas would silently drop (they use ``REMOVE_EXTRA``). Prints one
    line per problem and exits 1 if there is any. The offline test writes its payloads to
    ``$IOTGW_HA_PAYLOADS`` when that is set, to feed this command.

This file imports nothing of the project: it runs in Home Assistant's venv.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

COMPONENTS = ("sensor", "binary_sensor", "switch", "number", "button")
OUT = Path(__file__).with_name("ha_discovery_schema.json")


def _schema(component: str) -> Any:
    module = importlib.import_module(f"homeassistant.components.mqtt.{component}")
    return module.DISCOVERY_SCHEMA


def _mapping(schema: Any) -> dict[Any, Any]:
    """The dict of a voluptuous Schema, looking through All(...) wrappers."""
    import voluptuous as vol

    if isinstance(schema, dict):
        return schema
    if isinstance(schema, vol.Schema):
        return _mapping(schema.schema)
    if isinstance(schema, vol.All):  # e.g. All(deprecated("key"), Schema({...}), check)
        for validator in schema.validators:
            if isinstance(validator, vol.Schema | vol.All | dict):
                return _mapping(validator)
    raise TypeError(f"no mapping in {schema!r}")


def dump() -> None:
    import voluptuous as vol
    from homeassistant.components.binary_sensor import BinarySensorDeviceClass
    from homeassistant.components.number import NumberMode
    from homeassistant.components.sensor import SensorDeviceClass, SensorStateClass
    from homeassistant.components.sensor.const import DEVICE_CLASS_STATE_CLASSES, DEVICE_CLASS_UNITS
    from homeassistant.const import __version__

    components = {}
    for component in COMPONENTS:
        mapping = _mapping(_schema(component))
        components[component] = {
            "keys": sorted(str(k) for k in mapping),
            "required": sorted(str(k) for k in mapping if isinstance(k, vol.Required)),
        }
    document = {
        "homeassistant": __version__,
        "generated_by": "tests/mqtt/ha_schema.py dump",
        "components": components,
        "device_keys": sorted(str(k) for k in _device_schema()),
        "sensor_device_classes": {
            dc.value: {
                "units": sorted(str(u) for u in DEVICE_CLASS_UNITS.get(dc, set()) if u is not None),
                "state_classes": sorted(sc.value for sc in DEVICE_CLASS_STATE_CLASSES.get(dc, set())),
            }
            for dc in SensorDeviceClass
        },
        "sensor_state_classes": sorted(sc.value for sc in SensorStateClass),
        "binary_sensor_device_classes": sorted(dc.value for dc in BinarySensorDeviceClass),
        "number_modes": sorted(mode.value for mode in NumberMode),
    }
    OUT.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT} (Home Assistant {__version__})")


def _device_schema() -> dict[Any, Any]:
    import voluptuous as vol

    return _mapping(_mapping(_schema("switch"))[vol.Optional("device")])


def validate(payloads: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    for topic, payload in payloads.items():
        component = topic.split("/")[1]
        try:
            validated = _schema(component)(dict(payload))
        except Exception as exc:  # voluptuous.Invalid and friends: the message says what
            problems.append(f"{topic}: {exc}")
            continue
        dropped = set(payload) - set(validated)
        if dropped:
            problems.append(f"{topic}: keys Home Assistant ignores: {sorted(dropped)}")
    return problems


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "dump":
        dump()
        return 0
    if command == "validate":
        payloads = json.load(sys.stdin)
        problems = validate(payloads)
        for line in problems:
            print(line)
        from homeassistant.const import __version__

        print(f"{len(payloads)} payloads, {len(problems)} problems (Home Assistant {__version__})")
        return 1 if problems else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
