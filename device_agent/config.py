"""Typed configuration of the Raspberry Pi agent: one TOML file plus environment overrides.

File shape (every key but ``gateway.url`` and ``gateway.token`` has a default)::

    [gateway]
    url = "ws://127.0.0.1:8765/v1/device"
    token = "iotgw_d_..."
    device = "pi-kitchen"             # optional; must match the token's device

    [agent]
    interval = 5.0                    # seconds between samples
    samples_per_frame = 1             # samples batched into one readings frame
    buffer_path = "/var/lib/iotgw-agent/buffer.sqlite3"
    buffer_max_frames = 100000        # cap: the oldest frames beyond it are dropped and counted
    buffer_synchronous = "FULL"       # SQLite synchronous pragma: FULL or NORMAL
    backoff_base = 1.0                # reconnect delay: full jitter in [0, min(max, base * 2**n)]
    backoff_max = 60.0
    status_interval = 60.0            # seconds between status messages
    max_in_flight = 64                # unacknowledged frames on the wire

    [simulation]                      # honoured only when gpiozero's pin factory is MockFactory
    enabled = false
    seed = 1                          # optional, for reproducible runs
    step = 0.5                        # seconds between simulated changes
    event_interval = 30.0             # mean seconds between simulated button presses / inputs

    [[sensors]]
    type = "cpu_temperature"          # see the *Sensor structs below for each type's keys

    [[actuators]]                     # driven by the set / toggle / blink commands
    type = "led"                      # led | pwm_led | output (relay) | buzzer | servo
    name = "status_led"
    pin = 27

    [[commands]]                      # a fixed program, run without a shell (docs/commands.md)
    name = "restart_app"
    argv = ["systemctl", "restart", "myapp"]
    timeout = 30.0

A relative ``buffer_path`` in the file is relative to the file's directory.

Environment overrides (one scheme: ``IOTGW_AGENT_`` + section-less key name, upper case);
they win over the file:

======================================  ===================  ======
variable                                key                  type
======================================  ===================  ======
``IOTGW_AGENT_GATEWAY_URL``             ``gateway.url``      str
``IOTGW_AGENT_TOKEN``                   ``gateway.token``    str
``IOTGW_AGENT_DEVICE``                  ``gateway.device``   str
``IOTGW_AGENT_INTERVAL``                ``agent.interval``   float
``IOTGW_AGENT_BUFFER_PATH``             ``agent.buffer_path``  str (relative: to the cwd)
``IOTGW_AGENT_BUFFER_MAX_FRAMES``       ``agent.buffer_max_frames``  int
======================================  ===================  ======

Callers use :func:`load_config` (file + environment) or :func:`parse_config` (a TOML
string, no environment unless passed) and catch :class:`ConfigError`, whose message
names the bad key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from iotgw_common.protocol.messages import DEVICE_NAME_PATTERN, METRIC_NAME_PATTERN

ENV_PREFIX = "IOTGW_AGENT_"

MetricName = Annotated[str, msgspec.Meta(pattern=METRIC_NAME_PATTERN)]
Pin = Annotated[int, msgspec.Meta(ge=0, le=53)]
Positive = Annotated[float, msgspec.Meta(gt=0)]


class ConfigError(ValueError):
    """The configuration file or an environment override is invalid; the message names the key."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every table: an unknown key is an error, so that typos do not pass silently."""


class GatewayConfig(_Section):
    """``[gateway]``: where to connect and who the device is."""

    url: Annotated[str, msgspec.Meta(pattern=r"^wss?://")]
    token: Annotated[str, msgspec.Meta(min_length=1)]
    device: Annotated[str, msgspec.Meta(pattern=DEVICE_NAME_PATTERN)] | None = None


class AgentSettings(_Section):
    """``[agent]``: sampling, buffering and reconnection."""

    interval: Positive = 5.0
    samples_per_frame: Annotated[int, msgspec.Meta(ge=1, le=500)] = 1
    buffer_path: Annotated[str, msgspec.Meta(min_length=1)] = "/var/lib/iotgw-agent/buffer.sqlite3"
    buffer_max_frames: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    buffer_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    backoff_base: Positive = 1.0
    backoff_max: Positive = 60.0
    status_interval: Positive = 60.0
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 64


class SimulationConfig(_Section):
    """``[simulation]``: drive gpiozero's mock pins so that readings change plausibly."""

    enabled: bool = False
    seed: int | None = None
    step: Positive = 0.5
    event_interval: Positive = 30.0


# -- sensors: a tagged union on ``type`` -------------------------------------------------


class _SensorBase(_Section, tag_field="type"):
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


class _ActuatorBase(_Section, tag_field="type"):
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

BUILTIN_COMMANDS = ("ping", "read_now", "set_interval", "set", "toggle", "blink")
"""Names of the agent's built-in commands (device_agent/commands.py); custom ones may not reuse them."""


class CustomCommand(_Section):
    """``[[commands]]``: a command that runs a fixed program (no shell, no arguments from the gateway)."""

    name: MetricName
    argv: Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)]
    timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    """Seconds before the program is killed and the command fails."""
    description: Annotated[str, msgspec.Meta(max_length=256)] = ""


class AgentConfig(_Section):
    """The whole file. Build it with :func:`load_config` or :func:`parse_config`."""

    gateway: GatewayConfig
    agent: AgentSettings = msgspec.field(default_factory=AgentSettings)
    simulation: SimulationConfig = msgspec.field(default_factory=SimulationConfig)
    sensors: list[SensorConfig] = []
    actuators: list[ActuatorConfig] = []
    commands: list[CustomCommand] = []


# -- environment overrides -----------------------------------------------------------------

#: variable suffix -> (section, key, parser); the one naming scheme of the module docstring.
ENV_OVERRIDES: dict[str, tuple[str, str, type]] = {
    "GATEWAY_URL": ("gateway", "url", str),
    "TOKEN": ("gateway", "token", str),
    "DEVICE": ("gateway", "device", str),
    "INTERVAL": ("agent", "interval", float),
    "BUFFER_PATH": ("agent", "buffer_path", str),
    "BUFFER_MAX_FRAMES": ("agent", "buffer_max_frames", int),
}


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for suffix, (section, key, parse) in ENV_OVERRIDES.items():
        name = ENV_PREFIX + suffix
        if name not in env:
            continue
        text = env[name]
        try:
            value = parse(text)
        except ValueError:
            raise ConfigError(
                f"environment variable {name}={text!r}: expected {parse.__name__} for {section}.{key}"
            ) from None
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        if key == "buffer_path":
            value = os.path.abspath(value)
        table[key] = value


def parse_config(
    text: str, *, env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> AgentConfig:
    """Parse and validate a TOML document; raise ConfigError naming the bad key.

    ``env`` (for example ``os.environ``) supplies the ``IOTGW_AGENT_*``
    overrides; ``base_dir`` anchors a relative ``agent.buffer_path`` from the file.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    agent_table = raw.get("agent")
    if base_dir is not None and isinstance(agent_table, dict):
        path = agent_table.get("buffer_path")
        if isinstance(path, str) and path and not os.path.isabs(path):
            agent_table["buffer_path"] = str(base_dir / path)
    if env is not None:
        _apply_env(raw, env)
    try:
        config = msgspec.convert(raw, AgentConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc))) from None
    _check(config)
    return config


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read ``path`` and apply the environment overrides (``os.environ`` unless ``env`` is given)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror or exc}") from None
    try:
        return parse_config(text, env=os.environ if env is None else env, base_dir=file.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None


def _explain(message: str) -> str:
    """Turn msgspec's ``... - at `$.sensors[2].pin``` into ``sensors[2].pin: ...``."""
    text, sep, where = message.rpartition(" - at `$")
    if not sep:
        return message
    key = where.rstrip("`").lstrip(".")
    return f"{key or '(top level)'}: {text}"


def _check(config: AgentConfig) -> None:
    """Cross-field rules that types cannot express."""
    agent = config.agent
    if agent.backoff_base > agent.backoff_max:
        raise ConfigError("agent.backoff_base: must not exceed agent.backoff_max")
    pins: dict[int, str] = {}
    names: dict[str, str] = {}
    for index, sensor in enumerate(config.sensors):
        where = f"sensors[{index}]"
        for pin in sensor_pins(sensor):
            if pin in pins:
                raise ConfigError(f"{where}: GPIO{pin} is already used by {pins[pin]}")
            pins[pin] = where
        for name in declared_names(sensor):
            if name in names:
                raise ConfigError(f"{where}: metric or event name {name!r} is already used by {names[name]}")
            names[name] = where
    actuators: dict[str, str] = {}
    for index, actuator in enumerate(config.actuators):
        where = f"actuators[{index}]"
        if actuator.pin in pins:
            raise ConfigError(f"{where}: GPIO{actuator.pin} is already used by {pins[actuator.pin]}")
        pins[actuator.pin] = where
        if actuator.name in actuators:
            raise ConfigError(
                f"{where}: actuator name {actuator.name!r} is already used by {actuators[actuator.name]}"
            )
        actuators[actuator.name] = where
        if isinstance(actuator, ServoActuator) and actuator.min_pulse_width >= actuator.max_pulse_width:
            raise ConfigError(f"{where}.min_pulse_width: must be below max_pulse_width")
    commands: dict[str, str] = {}
    for index, command in enumerate(config.commands):
        where = f"commands[{index}]"
        if command.name in BUILTIN_COMMANDS:
            raise ConfigError(f"{where}.name: {command.name!r} is a built-in command")
        if command.name in commands:
            raise ConfigError(f"{where}.name: {command.name!r} is already used by {commands[command.name]}")
        commands[command.name] = where


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


__all__ = [
    "BUILTIN_COMMANDS",
    "ENV_OVERRIDES",
    "ENV_PREFIX",
    "ActuatorConfig",
    "AgentConfig",
    "AgentSettings",
    "ButtonSensor",
    "BuzzerActuator",
    "ConfigError",
    "CpuTemperatureSensor",
    "CustomCommand",
    "DigitalInputSensor",
    "DiskUsageSensor",
    "DistanceSensorConfig",
    "Ds18b20Sensor",
    "GatewayConfig",
    "LedActuator",
    "LightSensorConfig",
    "LoadAverageSensor",
    "Mcp3008Sensor",
    "OutputActuator",
    "PwmLedActuator",
    "SensorConfig",
    "ServoActuator",
    "SimulationConfig",
    "declared_names",
    "load_config",
    "parse_config",
    "sensor_pins",
]
