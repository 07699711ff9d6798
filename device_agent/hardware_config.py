"""The ``[[sensors]]`` and ``[[actuators]]`` tables of the agent's config: what is wired to the Pi.

Each table is a msgspec tagged union on its ``type`` key: one struct per kind of sensor
(built into a driver by :mod:`device_agent.sensors`) or actuator (built by
:mod:`device_agent.actuators`), whose fields are the keys a user may write, with their
defaults and ranges. :func:`check_hardware` holds the rules types cannot express: no GPIO
pin used twice, no metric, event or actuator name used twice.

The rest of the file (``[gateway]``, ``[agent]``, ``[simulation]``, ``[[commands]]``), the
environment overrides and the parsing live in :mod:`device_agent.config`, which re-exports
every name here; callers load a config there and catch its ``ConfigError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec

from iotgw_common.protocol.messages import METRIC_NAME_PATTERN

MetricName = Annotated[str, msgspec.Meta(pattern=METRIC_NAME_PATTERN)]
Pin = Annotated[int, msgspec.Meta(ge=0, le=53)]
Positive = Annotated[float, msgspec.Meta(gt=0)]


class Table(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every table of the file: an unknown key is an error, so that typos do not pass silently."""


class HardwareError(ValueError):
    """Two sensors or actuators claim the same pin or name; the message names the entry.

    :func:`device_agent.config.parse_config` turns it into its ``ConfigError``.
    """


# -- sensors: a tagged union on ``type`` -------------------------------------------------


class _SensorBase(Table, tag_field="type"):
    pass


class CpuTemperatureSensor(_SensorBase, tag="cpu_temperature"):
    """SoC temperature from the kernel's thermal zone file (gpiozero ``CPUTemperature``)."""

    metric: MetricName = "cpu_temp"
    unit: str = "°C"
    sensor_file: str = "/sys/class/thermal/thermal_zone0/temp"


class LoadAverageSensor(_SensorBase, tag="load_average"):
    """System load average (gpiozero ``LoadAverage``); metric defaults to ``load_<minutes>m``."""

    minutes: Literal[1, 5, 15] = 1
    metric: MetricName | None = None
    unit: str = ""
    load_average_file: str = "/proc/loadavg"


class DiskUsageSensor(_SensorBase, tag="disk_usage"):
    """Used space of the file system holding ``path``, in percent (gpiozero ``DiskUsage``)."""

    path: str = "/"
    metric: MetricName = "disk_used_pct"
    unit: str = "%"


class Mcp3008Sensor(_SensorBase, tag="mcp3008"):
    """One MCP3008 ADC channel; reported value = fraction of Vref (0..1) * scale + offset."""

    channel: Annotated[int, msgspec.Meta(ge=0, le=7)]
    spi_device: Literal[0, 1] = 0
    metric: MetricName | None = None
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""


class DistanceSensorConfig(_SensorBase, tag="distance"):
    """HC-SR04 ultrasonic distance sensor, in metres (gpiozero ``DistanceSensor``)."""

    trigger_pin: Pin
    echo_pin: Pin
    metric: MetricName = "distance_m"
    unit: str = "m"
    max_distance: Positive = 2.0


class LightSensorConfig(_SensorBase, tag="light"):
    """LDR + capacitor light sensor, 0 (dark) .. 1 (bright) (gpiozero ``LightSensor``)."""

    pin: Pin
    metric: MetricName = "light"
    unit: str = ""
    charge_time_limit: Positive = 0.01


class Ds18b20Sensor(_SensorBase, tag="ds18b20"):
    """DS18B20 1-wire thermometers read from sysfs.

    Without ``serial`` every ``28-*`` device under ``base_dir`` is reported as
    ``temp_<serial>``; with ``serial`` only that one, as ``metric`` if given.
    """

    serial: Annotated[str, msgspec.Meta(pattern=r"^28-[0-9a-fA-F]{1,16}$")] | None = None
    metric: MetricName | None = None
    unit: str = "°C"
    base_dir: str = "/sys/bus/w1/devices"


class ButtonSensor(_SensorBase, tag="button"):
    """A push button; each press and release is an ``event`` ``name`` with ``{"pressed": bool}``."""

    pin: Pin
    name: MetricName | None = None
    pull_up: bool = True
    bounce_time: Positive | None = 0.05


class DigitalInputSensor(_SensorBase, tag="digital_input"):
    """A digital input (PIR, reed switch); each change is an ``event`` with ``{"active": bool}``."""

    pin: Pin
    name: MetricName | None = None
    pull_up: bool = False
    bounce_time: Positive | None = None


SensorConfig = (
    CpuTemperatureSensor
    | LoadAverageSensor
    | DiskUsageSensor
    | Mcp3008Sensor
    | DistanceSensorConfig
    | LightSensorConfig
    | Ds18b20Sensor
    | ButtonSensor
    | DigitalInputSensor
)


# -- actuators: a tagged union on ``type`` (device_agent/actuators.py) ----------------------


class _ActuatorBase(Table, tag_field="type"):
    name: MetricName
    """What commands call it: ``set target=<name>``."""
    pin: Pin


class LedActuator(_ActuatorBase, tag="led"):
    """An LED, on or off (gpiozero ``LED``)."""

    active_high: bool = True
    initial: bool = False


class PwmLedActuator(_ActuatorBase, tag="pwm_led"):
    """A dimmable LED, brightness 0..1 (gpiozero ``PWMLED``)."""

    active_high: bool = True
    initial: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    frequency: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100


class OutputActuator(_ActuatorBase, tag="output"):
    """A digital output such as a relay, on or off (gpiozero ``DigitalOutputDevice``)."""

    active_high: bool = True
    initial: bool = False


class BuzzerActuator(_ActuatorBase, tag="buzzer"):
    """An active buzzer, on or off; ``blink`` beeps (gpiozero ``Buzzer``)."""

    active_high: bool = True
    initial: bool = False


class ServoActuator(_ActuatorBase, tag="servo"):
    """A hobby servo, position -1 (min) .. 1 (max) (gpiozero ``Servo``); ``initial`` None: detached."""

    initial: Annotated[float, msgspec.Meta(ge=-1, le=1)] | None = 0.0
    min_pulse_width: Annotated[float, msgspec.Meta(gt=0, le=0.01)] = 0.001
    max_pulse_width: Annotated[float, msgspec.Meta(gt=0, le=0.01)] = 0.002
    frame_width: Annotated[float, msgspec.Meta(gt=0, le=0.1)] = 0.02


ActuatorConfig = LedActuator | PwmLedActuator | OutputActuator | BuzzerActuator | ServoActuator


# -- what each entry claims ------------------------------------------------------------------


def sensor_pins(sensor: SensorConfig) -> list[int]:
    """The GPIO pins (BCM numbers) a sensor occupies, for conflict checks and the simulation."""
    if isinstance(sensor, DistanceSensorConfig):
        return [sensor.trigger_pin, sensor.echo_pin]
    if isinstance(sensor, LightSensorConfig | ButtonSensor | DigitalInputSensor):
        return [sensor.pin]
    return []


def declared_names(sensor: SensorConfig) -> list[str]:
    """Metric or event names a sensor reports that are known before it is built."""
    if isinstance(sensor, ButtonSensor):
        return [sensor.name or f"button_{sensor.pin}"]
    if isinstance(sensor, DigitalInputSensor):
        return [sensor.name or f"input_{sensor.pin}"]
    if isinstance(sensor, Ds18b20Sensor):
        return [sensor.metric or f"temp_{sensor.serial}"] if sensor.serial else []
    if isinstance(sensor, LoadAverageSensor):
        return [sensor.metric or f"load_{sensor.minutes}m"]
    if isinstance(sensor, Mcp3008Sensor):
        return [sensor.metric or f"adc{sensor.spi_device}_ch{sensor.channel}"]
    return [sensor.metric]


def check_hardware(sensors: Sequence[SensorConfig], actuators: Sequence[ActuatorConfig]) -> None:
    """Raise :class:`HardwareError` naming the entry (``sensors[2]``) that reuses a pin or a name.

    Also checks what a servo's types cannot: ``min_pulse_width`` below ``max_pulse_width``.
    """
    pins: dict[int, str] = {}
    names: dict[str, str] = {}
    for index, sensor in enumerate(sensors):
        where = f"sensors[{index}]"
        for pin in sensor_pins(sensor):
            if pin in pins:
                raise HardwareError(f"{where}: GPIO{pin} is already used by {pins[pin]}")
            pins[pin] = where
        for name in declared_names(sensor):
            if name in names:
                raise HardwareError(
                    f"{where}: metric or event name {name!r} is already used by {names[name]}"
                )
            names[name] = where
    seen: dict[str, str] = {}
    for index, actuator in enumerate(actuators):
        where = f"actuators[{index}]"
        if actuator.pin in pins:
            raise HardwareError(f"{where}: GPIO{actuator.pin} is already used by {pins[actuator.pin]}")
        pins[actuator.pin] = where
        if actuator.name in seen:
            raise HardwareError(
                f"{where}: actuator name {actuator.name!r} is already used by {seen[actuator.name]}"
            )
        seen[actuator.name] = where
        if isinstance(actuator, ServoActuator) and actuator.min_pulse_width >= actuator.max_pulse_width:
            raise HardwareError(f"{where}.min_pulse_width: must be below max_pulse_width")


__all__ = [
    "ActuatorConfig",
    "ButtonSensor",
    "BuzzerActuator",
    "CpuTemperatureSensor",
    "DigitalInputSensor",
    "DiskUsageSensor",
    "DistanceSensorConfig",
    "Ds18b20Sensor",
    "HardwareError",
    "LedActuator",
    "LightSensorConfig",
    "LoadAverageSensor",
    "Mcp3008Sensor",
    "MetricName",
    "OutputActuator",
    "Pin",
    "Positive",
    "PwmLedActuator",
    "SensorConfig",
    "ServoActuator",
    "Table",
    "check_hardware",
    "declared_names",
    "sensor_pins",
]
