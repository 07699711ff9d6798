"""From ``[[sensors]]`` entries to sensor drivers: one table of types, failures collected.

:func:`build_sensors` is what the agent and ``iotgw-agent check`` call (through
:func:`device_agent.hardware.open_hardware`); it never raises for one bad sensor.
A new sensor type needs a config struct in :mod:`device_agent.hardware_config`, a
driver in this package, and a row in :data:`BUILDERS`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from device_agent.hardware_config import (
    ButtonSensor,
    CpuTemperatureSensor,
    DigitalInputSensor,
    DiskUsageSensor,
    DistanceSensorConfig,
    Ds18b20Sensor,
    LightSensorConfig,
    LoadAverageSensor,
    Mcp3008Sensor,
    SensorConfig,
)
from device_agent.sensors.base import Sensor, SensorError
from device_agent.sensors.gpio import Distance, Light, Mcp3008Channel
from device_agent.sensors.inputs import Button, DigitalInput
from device_agent.sensors.onewire import Ds18b20
from device_agent.sensors.system import CpuTemperature, DiskUsage, LoadAverage

#: Config struct type -> driver class (called with the config and a pin factory or None).
BUILDERS: dict[type[Any], Callable[[Any, Any], Sensor]] = {
    CpuTemperatureSensor: CpuTemperature,
    LoadAverageSensor: LoadAverage,
    DiskUsageSensor: DiskUsage,
    Mcp3008Sensor: Mcp3008Channel,
    DistanceSensorConfig: Distance,
    LightSensorConfig: Light,
    Ds18b20Sensor: Ds18b20,
    ButtonSensor: Button,
    DigitalInputSensor: DigitalInput,
}

#: Sensors that need no GPIO pins (gpiozero uses the factory only for its clock, or none at all).
PINLESS = (CpuTemperatureSensor, LoadAverageSensor, DiskUsageSensor, Ds18b20Sensor)


@dataclasses.dataclass(frozen=True)
class SensorFailure:
    """A configured sensor that could not be built: which one (``sensors[position]``) and why."""

    position: int
    type: str
    error: str


def build_sensor(config: SensorConfig, pin_factory: Any = None) -> Sensor:
    """Build one sensor; raises SensorError naming the sensor and the cause.

    ``pin_factory``: a gpiozero pin factory, or None for the global ``Device.pin_factory``.
    The caller owns the sensor and must close it.
    """
    _quiet_gpiozero()
    return BUILDERS[type(config)](config, pin_factory)


def build_sensors(
    configs: Iterable[SensorConfig], pin_factory: Any = None
) -> tuple[list[Sensor], list[SensorFailure]]:
    """Build every sensor that can be built; return them and the failures (not raised).

    ``pin_factory`` None resolves gpiozero's global factory once. If no factory
    can be loaded (not a Pi, no GPIOZERO_PIN_FACTORY), sensors on pins fail
    with one clear reason while the pinless ones (CPU temperature, load, disk,
    DS18B20) still work. The caller owns the returned sensors and must close them.
    """
    no_pins: str | None = None
    pinless_factory = pin_factory
    if pin_factory is None:
        pin_factory, no_pins = resolve_pin_factory()
        if pin_factory is None:
            from gpiozero.pins.mock import MockFactory

            pinless_factory = MockFactory()  # only its clock is used by pinless devices
        else:
            pinless_factory = pin_factory
    sensors: list[Sensor] = []
    failures: list[SensorFailure] = []
    for index, config in enumerate(configs):
        kind = str(type(config).__struct_config__.tag)
        pinless = isinstance(config, PINLESS)
        if no_pins is not None and not pinless:
            failures.append(SensorFailure(index, kind, no_pins))
            continue
        try:
            sensors.append(build_sensor(config, pinless_factory if pinless else pin_factory))
        except SensorError as exc:
            failures.append(SensorFailure(index, kind, str(exc)))
    return sensors, failures


def resolve_pin_factory() -> tuple[Any, str | None]:
    """gpiozero's global pin factory, loading it if needed: (factory, None) or (None, reason)."""
    from gpiozero import Device

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one PinFactoryFallback per candidate: the reason says enough
        try:
            Device.ensure_pin_factory()
        except Exception as exc:  # each candidate factory fails its own way; the reason is all we need
            return None, (
                f"no GPIO pin factory ({exc}); not a Raspberry Pi? "
                "Set GPIOZERO_PIN_FACTORY=mock to run without hardware"
            )
    return Device.pin_factory, None


_quieted = False


def _quiet_gpiozero() -> None:
    """gpiozero warns that software timing is imprecise for every DistanceSensor: noise for us."""
    global _quieted
    if not _quieted:
        _quieted = True
        from gpiozero.exc import PWMSoftwareFallback

        warnings.filterwarnings("ignore", category=PWMSoftwareFallback)


__all__ = ["BUILDERS", "PINLESS", "SensorFailure", "build_sensor", "build_sensors", "resolve_pin_factory"]
