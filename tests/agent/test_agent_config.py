"""device_agent.config: the TOML shape, defaults, env overrides, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent.config import (
    ButtonSensor,
    ConfigError,
    CpuTemperatureSensor,
    DigitalInputSensor,
    DiskUsageSensor,
    DistanceSensorConfig,
    Ds18b20Sensor,
    LightSensorConfig,
    LoadAverageSensor,
    Mcp3008Sensor,
    declared_names,
    load_config,
    parse_config,
)

FULL = """
[gateway]
url = "ws://127.0.0.1:8765/v1/device"
token = "iotgw_d_abc"
device = "pi-kitchen"
[agent]
interval = 2.5
samples_per_frame = 4
buffer_path = "/tmp/x/buffer.sqlite3"
buffer_max_frames = 10
backoff_base = 0.5
backoff_max = 30.0
[simulation]
enabled = true
[[sensors]]
type = "cpu_temperature"
[[sensors]]
type = "load_average"
[[sensors]]
type = "disk_usage"
path = "/"
[[sensors]]
type = "mcp3008"
channel = 0
metric = "soil_moisture"
scale = 100.0
offset = 0.0
unit = "%"
[[sensors]]
type = "distance"
trigger_pin = 23
echo_pin = 24
metric = "distance_m"
[[sensors]]
type = "light"
pin = 18
metric = "light"
[[sensors]]
type = "ds18b20"
[[sensors]]
type = "button"
pin = 17
name = "door"
[[sensors]]
type = "digital_input"
pin = 27
name = "motion"
pull_up = false
"""

MINIMAL = '[gateway]\nurl = "ws://gw:8765/v1/device"\ntoken = "t"\n'


def test_full_example_parses_into_typed_sections() -> None:
    config = parse_config(FULL)
    assert config.gateway.device == "pi-kitchen"
    assert config.agent.interval == 2.5
    assert config.agent.samples_per_frame == 4
    assert config.agent.buffer_max_frames == 10
    assert config.simulation.enabled
    assert [type(s) for s in config.sensors] == [
        CpuTemperatureSensor,
        LoadAverageSensor,
        DiskUsageSensor,
        Mcp3008Sensor,
        DistanceSensorConfig,
        LightSensorConfig,
        Ds18b20Sensor,
        ButtonSensor,
        DigitalInputSensor,
    ]
    mcp = config.sensors[3]
    assert isinstance(mcp, Mcp3008Sensor)
    assert (mcp.channel, mcp.metric, mcp.scale, mcp.unit) == (0, "soil_moisture", 100.0, "%")


def test_defaults_follow_the_documented_names() -> None:
    config = parse_config(
        MINIMAL + '[[sensors]]\ntype = "cpu_temperature"\n[[sensors]]\ntype = "load_average"\n'
        '[[sensors]]\ntype = "disk_usage"\n[[sensors]]\ntype = "button"\npin = 5\n'
    )
    assert config.agent.interval == 5.0
    assert config.agent.backoff_base == 1.0
    assert config.agent.backoff_max == 60.0
    assert config.agent.buffer_synchronous == "FULL"
    assert config.agent.max_in_flight == 64
    assert not config.simulation.enabled
    assert config.gateway.device is None
    cpu = config.sensors[0]
    assert isinstance(cpu, CpuTemperatureSensor)
    assert (cpu.metric, cpu.unit, cpu.sensor_file) == (
        "cpu_temp",
        "°C",
        "/sys/class/thermal/thermal_zone0/temp",
    )
    assert [name for s in config.sensors for name in declared_names(s)] == [
        "cpu_temp",
        "load_1m",
        "disk_used_pct",
        "button_5",
    ]


def test_env_overrides_win_over_the_file(tmp_path: Path) -> None:
    env = {
        "IOTGW_AGENT_GATEWAY_URL": "wss://elsewhere/v1/device",
        "IOTGW_AGENT_TOKEN": "iotgw_d_env",
        "IOTGW_AGENT_DEVICE": "pi-env",
        "IOTGW_AGENT_INTERVAL": "0.25",
        "IOTGW_AGENT_BUFFER_PATH": str(tmp_path / "b.sqlite3"),
        "IOTGW_AGENT_BUFFER_MAX_FRAMES": "7",
        "IOTGW_AGENT_UNRELATED": "ignored",
    }
    config = parse_config(FULL, env=env)
    assert config.gateway.url == "wss://elsewhere/v1/device"
    assert config.gateway.token == "iotgw_d_env"
    assert config.gateway.device == "pi-env"
    assert config.agent.interval == 0.25
    assert config.agent.buffer_path == str(tmp_path / "b.sqlite3")
    assert config.agent.buffer_max_frames == 7


def test_env_can_supply_a_token_missing_from_the_file() -> None:
    config = parse_config('[gateway]\nurl = "ws://gw/v1/device"\n', env={"IOTGW_AGENT_TOKEN": "secret"})
    assert config.gateway.token == "secret"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("IOTGW_AGENT_INTERVAL", "fast", "IOTGW_AGENT_INTERVAL='fast'"),
        ("IOTGW_AGENT_BUFFER_MAX_FRAMES", "1e3", "IOTGW_AGENT_BUFFER_MAX_FRAMES"),
        ("IOTGW_AGENT_INTERVAL", "-1", "agent.interval"),
        ("IOTGW_AGENT_GATEWAY_URL", "http://gw", "gateway.url"),
    ],
)
def test_bad_env_values_name_the_variable_or_key(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("'", ".")):
        parse_config(MINIMAL, env={name: value})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[gateway]\nurl = "ws://gw"\n', "gateway: Object missing required field `token`"),
        ('[gateway]\nurl = "http://gw"\ntoken = "t"\n', "gateway.url"),
        (MINIMAL + '[agent]\ninterval = "5"\n', "agent.interval: Expected `float`, got `str`"),
        (MINIMAL + "[agent]\ninterval = 0\n", "agent.interval"),
        (MINIMAL + "[agent]\nintervall = 5\n", "agent: Object contains unknown field `intervall`"),
        (
            MINIMAL + '[[sensors]]\ntype = "cpu_temperature"\n[[sensors]]\ntype = "thermometer"\n',
            "sensors[1].type",
        ),
        (MINIMAL + '[[sensors]]\ntype = "mcp3008"\nchannel = 9\n', "sensors[0].channel"),
        (
            MINIMAL + '[[sensors]]\ntype = "mcp3008"\nchanel = 1\n',
            "sensors[0]: Object contains unknown field `chanel`",
        ),
        (MINIMAL + '[[sensors]]\ntype = "light"\n', "sensors[0]: Object missing required field `pin`"),
        (MINIMAL + '[[sensors]]\ntype = "light"\npin = 4\nmetric = "9lux"\n', "sensors[0].metric"),
        (
            MINIMAL + '[[sensors]]\ntype = "button"\npin = 4\n[[sensors]]\ntype = "light"\npin = 4\n',
            "sensors[1]: GPIO4 is already used by sensors[0]",
        ),
        (
            MINIMAL
            + '[[sensors]]\ntype = "button"\npin = 4\nname = "x"\n[[sensors]]\ntype = "light"\npin = 5\n'
            'metric = "x"\n',
            "sensors[1]: metric or event name 'x'",
        ),
        (MINIMAL + "[agent]\nbackoff_base = 10.0\nbackoff_max = 5.0\n", "agent.backoff_base"),
        ("[gateway\n", "not valid TOML"),
    ],
)
def test_errors_name_the_bad_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert expected in str(info.value)


def test_load_config_resolves_a_relative_buffer_path_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "agent.toml"
    path.parent.mkdir()
    path.write_text(MINIMAL + '[agent]\nbuffer_path = "data/buffer.sqlite3"\n', encoding="utf-8")
    config = load_config(path, env={})
    assert config.agent.buffer_path == str(tmp_path / "conf" / "data" / "buffer.sqlite3")


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(path, env={})
    path.write_text(MINIMAL + "[agent]\nbuffer_max_frames = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(path) in str(info.value)
    assert "agent.buffer_max_frames" in str(info.value)


def test_the_shipped_example_is_valid_and_complete() -> None:
    example = Path(__file__).resolve().parents[2] / "device_agent" / "example.toml"
    config = load_config(example, env={})
    assert {type(s).__struct_config__.tag for s in config.sensors} == {
        "cpu_temperature",
        "load_average",
        "disk_usage",
        "mcp3008",
        "distance",
        "light",
        "ds18b20",
        "button",
        "digital_input",
    }
