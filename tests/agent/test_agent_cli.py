"""``iotgw-agent`` as a real subprocess: check with simulated hardware, failures, version, bad config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from device_agent.buffer import FrameBuffer
from iotgw_common._version import __version__

ROOT = Path(__file__).resolve().parents[2]

SIMULATED = """
[gateway]
url = "ws://127.0.0.1:8765/v1/device"
token = "iotgw_d_example"
device = "pi-kitchen"
[agent]
buffer_path = "buffer.sqlite3"
[simulation]
enabled = true
seed = 11
[[sensors]]
type = "cpu_temperature"
[[sensors]]
type = "load_average"
[[sensors]]
type = "disk_usage"
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


def agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "GPIOZERO_PIN_FACTORY": "mock", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "device_agent.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=ROOT,
        timeout=60,
    )


def table(stdout: str) -> dict[str, tuple[str, str]]:
    """metric -> (value, unit) from the check table, using the header's column offsets."""
    lines = stdout.splitlines()
    header = lines[0]
    unit_at, sensor_at = header.index("unit"), header.index("sensor")
    rows: dict[str, tuple[str, str]] = {}
    for line in lines[1:]:
        if line.startswith("FAILED") or "values read" in line:
            continue
        metric, value = line[:unit_at].split()
        rows[metric] = (value, line[unit_at:sensor_at].strip())
    return rows


def test_check_prints_plausible_simulated_values(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(SIMULATED, encoding="utf-8")
    result = agent("check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0].split() == ["metric", "value", "unit", "sensor"]
    rows = table(result.stdout)
    assert 30.0 < float(rows["cpu_temp"][0]) < 80.0 and rows["cpu_temp"][1] == "°C"
    assert 0.0 < float(rows["load_1m"][0]) < 4.0
    assert 0.0 < float(rows["disk_used_pct"][0]) <= 100.0 and rows["disk_used_pct"][1] == "%"
    assert 5.0 < float(rows["soil_moisture"][0]) < 95.0 and rows["soil_moisture"][1] == "%"
    assert 0.02 < float(rows["distance_m"][0]) < 2.0 and rows["distance_m"][1] == "m"
    assert 0.0 < float(rows["light"][0]) <= 1.0
    temps = [float(value) for metric, (value, _) in rows.items() if metric.startswith("temp_28-")]
    assert len(temps) == 2 and all(0.0 < t < 40.0 for t in temps)
    assert rows["door"][0] in ("true", "false")
    assert rows["motion"][0] in ("true", "false")
    assert "0 sensors failed (simulated hardware)" in result.stdout
    assert not (tmp_path / "buffer.sqlite3").exists()  # check never opens the buffer


def test_check_reports_a_missing_sensor_and_fails(tmp_path: Path) -> None:
    thermal = tmp_path / "temp"
    thermal.write_text("47250\n")
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[gateway]
url = "ws://127.0.0.1:8765/v1/device"
token = "t"
[[sensors]]
type = "cpu_temperature"
sensor_file = "{thermal}"
[[sensors]]
type = "ds18b20"
base_dir = "{tmp_path / "w1"}"
""",
        encoding="utf-8",
    )
    result = agent("check", "--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert table(result.stdout)["cpu_temp"][0] == "47.25"
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1
    assert "sensors[1] ds18b20" in failed[0] and "no DS18B20" in failed[0]


def test_version() -> None:
    result = agent("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"iotgw-agent {__version__}"


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[gateway]\nurl = "ws://gw/v1/device"\ntoken = "t"\n[agent]\ninterval = "often"\n')
    result = agent("check", "--config", str(config))
    assert result.returncode == 2
    assert "agent.interval" in result.stderr
    assert str(config) in result.stderr
    result = agent("check", "--config", str(config), env={"IOTGW_AGENT_BUFFER_MAX_FRAMES": "many"})
    assert result.returncode == 2
    assert "IOTGW_AGENT_BUFFER_MAX_FRAMES" in result.stderr


def test_run_buffers_while_the_gateway_is_down_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        SIMULATED.replace("8765", "9").replace("[agent]", "[agent]\ninterval = 0.05"), encoding="utf-8"
    )
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "GPIOZERO_PIN_FACTORY": "mock"}
    process = subprocess.Popen(
        [sys.executable, "-m", "device_agent", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        cwd=ROOT,
    )
    try:
        buffer_path = tmp_path / "buffer.sqlite3"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if buffer_path.exists():
                with FrameBuffer(buffer_path) as buffer:
                    if buffer.stats().buffered >= 3:
                        break
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stdout + stderr
    assert " INFO device_agent.agent: iotgw-agent/" in stdout
    assert "cannot connect to ws://127.0.0.1:9/v1/device" in stdout
    assert "stopped" in stdout.splitlines()[-1]
    with FrameBuffer(tmp_path / "buffer.sqlite3") as buffer:
        assert buffer.stats().buffered >= 3
        assert buffer.last_acked == 0
