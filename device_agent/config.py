"""Typed configuration of the Raspberry Pi agent: one TOML file plus environment overrides.

File shape (every key but ``gateway.url`` and ``gateway.token`` has a default)::

    [gateway]
    url = "ws://127.0.0.1:8765/v1/device"   # wss://... with TLS (docs/security.md)
    token = "iotgw_d_..."
    device = "pi-kitchen"             # optional; must match the token's device
    ca_file = "/etc/iotgw/ca.pem"     # wss:// only: the site CA; default: the system's CAs
    tls_verify = true                 # wss:// only: false = no certificate check (warned each connect)

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
    type = "cpu_temperature"          # each type's keys: the *Sensor structs in hardware_config.py

    [[actuators]]                     # driven by the set / toggle / blink commands
    type = "led"                      # led | pwm_led | output (relay) | buzzer | servo (same file)
    name = "status_led"
    pin = 27

    [[commands]]                      # a fixed program, run without a shell (docs/commands.md)
    name = "restart_app"
    argv = ["systemctl", "restart", "myapp"]
    timeout = 30.0

A relative ``buffer_path`` or ``ca_file`` in the file is relative to the file's directory.

Environment overrides (one scheme: ``IOTGW_AGENT_`` + section-less key name, upper case);
they win over the file:

======================================  ===================  ======
variable                                key                  type
======================================  ===================  ======
``IOTGW_AGENT_GATEWAY_URL``             ``gateway.url``      str
``IOTGW_AGENT_TOKEN``                   ``gateway.token``    str
``IOTGW_AGENT_DEVICE``                  ``gateway.device``   str
``IOTGW_AGENT_CA_FILE``                 ``gateway.ca_file``  str (relative: to the cwd)
``IOTGW_AGENT_INTERVAL``                ``agent.interval``   float
``IOTGW_AGENT_BUFFER_PATH``             ``agent.buffer_path``  str (relative: to the cwd)
``IOTGW_AGENT_BUFFER_MAX_FRAMES``       ``agent.buffer_max_frames``  int
======================================  ===================  ======

Callers use :func:`load_config` (file + environment) or :func:`parse_config` (a TOML
string, no environment unless passed) and catch :class:`ConfigError`, whose message
names the bad key.

This module owns the file, its ``[gateway]``, ``[agent]``, ``[simulation]`` and
``[[commands]]`` tables and the parsing; the ``[[sensors]]`` and ``[[actuators]]`` tables
(one struct per type, the pin and name rules) are :mod:`device_agent.hardware_config`'s,
re-exported here.
"""

from __future__ import annotations

import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from device_agent.hardware_config import (
    ActuatorConfig,
    ButtonSensor,
    BuzzerActuator,
    CpuTemperatureSensor,
    DigitalInputSensor,
    DiskUsageSensor,
    DistanceSensorConfig,
    Ds18b20Sensor,
    HardwareError,
    LedActuator,
    LightSensorConfig,
    LoadAverageSensor,
    Mcp3008Sensor,
    MetricName,
    OutputActuator,
    Positive,
    PwmLedActuator,
    SensorConfig,
    ServoActuator,
    Table,
    check_hardware,
    declared_names,
    sensor_pins,
)
from iotgw_common.protocol.messages import DEVICE_NAME_PATTERN

ENV_PREFIX = "IOTGW_AGENT_"


class ConfigError(ValueError):
    """The configuration file or an environment override is invalid; the message names the key."""


class GatewayConfig(Table):
    """``[gateway]``: where to connect and who the device is."""

    url: Annotated[str, msgspec.Meta(pattern=r"^wss?://")]
    token: Annotated[str, msgspec.Meta(min_length=1)]
    device: Annotated[str, msgspec.Meta(pattern=DEVICE_NAME_PATTERN)] | None = None
    ca_file: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    """``wss://`` only: trust this CA file (PEM, e.g. the site CA's ca.pem) instead of the system's."""
    tls_verify: bool = True
    """``wss://`` only: False accepts any certificate (no protection from a man in the middle);
    the agent then logs a warning at every connect."""


class AgentSettings(Table):
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


class SimulationConfig(Table):
    """``[simulation]``: drive gpiozero's mock pins so that readings change plausibly."""

    enabled: bool = False
    seed: int | None = None
    step: Positive = 0.5
    event_interval: Positive = 30.0


BUILTIN_COMMANDS = ("ping", "read_now", "set_interval", "set", "toggle", "blink")
"""Names of the agent's built-in commands (device_agent/commands.py); custom ones may not reuse them."""


class CustomCommand(Table):
    """``[[commands]]``: a command that runs a fixed program (no shell, no arguments from the gateway)."""

    name: MetricName
    argv: Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)]
    timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    """Seconds before the program is killed and the command fails."""
    description: Annotated[str, msgspec.Meta(max_length=256)] = ""


class AgentConfig(Table):
    """The whole file. Build it with :func:`load_config` or :func:`parse_config`."""

    gateway: GatewayConfig
    agent: AgentSettings = msgspec.field(default_factory=AgentSettings)
    simulation: SimulationConfig = msgspec.field(default_factory=SimulationConfig)
    sensors: list[SensorConfig] = msgspec.field(default_factory=list)
    actuators: list[ActuatorConfig] = msgspec.field(default_factory=list)
    commands: list[CustomCommand] = msgspec.field(default_factory=list)


# -- environment overrides -----------------------------------------------------------------

#: variable suffix -> (section, key, parser); the one naming scheme of the module docstring.
ENV_OVERRIDES: dict[str, tuple[str, str, type]] = {
    "GATEWAY_URL": ("gateway", "url", str),
    "TOKEN": ("gateway", "token", str),
    "DEVICE": ("gateway", "device", str),
    "CA_FILE": ("gateway", "ca_file", str),
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
        if key in ("buffer_path", "ca_file"):
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
    for section, key in (("agent", "buffer_path"), ("gateway", "ca_file")):
        table = raw.get(section)
        if base_dir is not None and isinstance(table, dict):
            path = table.get(key)
            if isinstance(path, str) and path and not os.path.isabs(path):
                table[key] = str(base_dir / path)
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
    kinds = {"sensors": SensorConfig, "actuators": ActuatorConfig}.get(key.partition("[")[0])
    if kinds is not None and key.endswith("].type") and text.startswith("Invalid value"):
        valid = ", ".join(str(t.__struct_config__.tag) for t in typing.get_args(kinds))
        text += f"; the valid types are: {valid} (README.md, device_agent/hardware_config.py)"
    return f"{key or '(top level)'}: {text}"


def _check(config: AgentConfig) -> None:
    """Cross-field rules that types cannot express."""
    gateway = config.gateway
    if gateway.url.startswith("ws://") and (gateway.ca_file is not None or not gateway.tls_verify):
        raise ConfigError(
            "gateway.url: ca_file and tls_verify apply to wss:// URLs; this one is ws:// (clear text)"
        )
    if gateway.ca_file is not None and not os.path.isfile(gateway.ca_file):
        raise ConfigError(f"gateway.ca_file: {gateway.ca_file} does not exist")
    agent = config.agent
    if agent.backoff_base > agent.backoff_max:
        raise ConfigError("agent.backoff_base: must not exceed agent.backoff_max")
    try:
        check_hardware(config.sensors, config.actuators)
    except HardwareError as exc:
        raise ConfigError(str(exc)) from None
    commands: dict[str, str] = {}
    for index, command in enumerate(config.commands):
        where = f"commands[{index}]"
        if command.name in BUILTIN_COMMANDS:
            raise ConfigError(f"{where}.name: {command.name!r} is a built-in command")
        if command.name in commands:
            raise ConfigError(f"{where}.name: {command.name!r} is already used by {commands[command.name]}")
        commands[command.name] = where


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
