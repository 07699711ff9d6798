"""`iotgw firmware deploy`: one mpremote command that installs every firmware file and the config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.firmware import firmware_dir, firmware_files
from tests.support.gateway import repo_env


def deploy(tmp_path: Path, config: dict[str, object] | str, *extra: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    cmd = [sys.executable, "-m", "gateway.cli", "firmware", "deploy", "--port", "/dev/ttyACM0",
           "--config", str(path), "--dry-run", *extra]  # fmt: skip
    return subprocess.run(cmd, env=repo_env(), capture_output=True, text=True, timeout=120)


GOOD = {"url": "ws://192.168.1.10:8765/v1/device", "token": "iotgw_d_abc", "device": "greenhouse"}


@pytest.mark.parametrize("compiled", [False, True])
def test_dry_run_prints_one_mpremote_command_with_every_file(tmp_path: Path, compiled: bool) -> None:
    result = deploy(tmp_path, GOOD, *(["--mpy"] if compiled else []))
    assert result.returncode == 0, result.stderr
    command = next(line for line in result.stdout.splitlines() if line.startswith("$ "))
    assert "mpremote connect /dev/ttyACM0" in command
    assert command.rstrip().endswith("+ reset")
    targets = [part for part in command.split() if part.startswith(":") and part != ":"]
    expected = [":config.json"]
    packages = set()
    for rel in firmware_files(firmware_dir()):
        if len(rel.parts) > 1:
            packages.add(rel.parts[0])  # copied with cp -r, which creates or reuses the directory
            continue
        name = rel.as_posix()
        if compiled and rel.name not in ("main.py", "boot.py"):
            name = name[:-3] + ".mpy"
        expected.append(":" + name)
    assert sorted(targets) == sorted(expected)
    assert packages == {"drivers"}
    assert re.search(r"fs cp -r \S+/drivers : \+", command)
    assert "dry run" in result.stdout


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({**GOOD, "url": "ws://127.0.0.1:8765/v1/device"}, "points at the board itself"),
        ({**GOOD, "token": "iotgw_d_REPLACE_WITH_THE_TOKEN"}, "still the example's"),
        ({"url": GOOD["url"]}, "missing token, device"),
        ({**GOOD, "url": "http://gw:8765"}, "must start with ws://"),
        ("{not json", "not valid JSON"),
        ({**GOOD, "url": "ws://192.168.1.10:8765"}, "has no /v1/device path"),
        ({**GOOD, "url": "wss://gw.lan:8765/v1/device"}, "wss:// needs ca_file"),
        (
            {**GOOD, "sensors": [{"type": "bme280"}]},
            "unknown sensor type 'bme280'; known types: adc, dht11, dht22",
        ),
    ],
)
def test_unusable_board_configs_are_refused_before_touching_the_board(
    tmp_path: Path, config, message
) -> None:
    result = deploy(tmp_path, config)
    assert result.returncode == 2
    assert message in result.stderr
    assert "mpremote" not in result.stdout


def test_a_sensor_the_board_type_lacks_is_refused(tmp_path: Path) -> None:
    config = {**GOOD, "sensors": [{"type": "rp2_temp"}]}
    assert deploy(tmp_path, config, "--board", "pico").returncode == 0
    result = deploy(tmp_path, config, "--board", "esp32")
    assert result.returncode == 2
    assert "exists only on a pico board, not esp32" in result.stderr


def iotgw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gateway.cli", "firmware", *args]
    return subprocess.run(cmd, env=repo_env(env), capture_output=True, text=True, timeout=120)


def commands(stdout: str) -> list[str]:
    return [line[2:] for line in stdout.splitlines() if line.startswith("$ ")]


def test_flash_esp32_dry_run_prints_the_esptool_steps(tmp_path: Path) -> None:
    image = tmp_path / "ESP32_GENERIC-v1.24.1.bin"
    image.write_bytes(b"\xe9" + bytes(1023))
    result = iotgw("flash", "--board", "esp32", "--port", "/dev/ttyUSB0", "--image", str(image), "--dry-run")
    assert result.returncode == 0, result.stderr
    esptool = f"{sys.executable} -m esptool --chip esp32 --port /dev/ttyUSB0"
    assert commands(result.stdout) == [
        f"{esptool} erase-flash",
        f"{esptool} --baud 460800 write-flash -z 0x1000 {image}",
    ]
    s3 = iotgw("flash", "--board", "esp32", "--chip", "esp32s3", "--port", "/dev/ttyACM0", "--image", str(image),
               "--dry-run")  # fmt: skip
    assert commands(s3.stdout)[1].endswith(f"write-flash -z 0x0 {image}")


def test_flash_pico_dry_run_copies_the_uf2_to_the_bootsel_drive(tmp_path: Path) -> None:
    image = tmp_path / "RPI_PICO_W-v1.24.1.uf2"
    image.write_bytes(b"UF2\n" + bytes(508))
    drive = tmp_path / "RPI-RP2"
    drive.mkdir()
    (drive / "INFO_UF2.TXT").write_text("UF2 Bootloader v3.0\nBoard-ID: RPI-RP2\n")
    result = iotgw("flash", "--board", "pico", "--image", str(image), "--drive", str(drive), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert commands(result.stdout) == [f"cp {image} {drive / image.name}", "sync"]


@pytest.mark.parametrize(
    ("board", "content", "message"),
    [
        ("esp32", b"UF2\n" + bytes(508), "is not an ESP32 firmware image"),
        ("pico", b"\xe9" + bytes(511), "is not a UF2 file"),
    ],
)
def test_flash_refuses_an_image_for_another_board(
    tmp_path: Path, board: str, content: bytes, message: str
) -> None:
    image = tmp_path / "firmware.img"
    image.write_bytes(content)
    result = iotgw("flash", "--board", board, "--port", "/dev/ttyUSB0", "--image", str(image),
                   "--drive", str(tmp_path), "--dry-run")  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert not commands(result.stdout)


def test_provision_dry_run_prints_the_mpremote_step_and_the_config_with_secrets_masked(
    tmp_path: Path,
) -> None:
    base = tmp_path / "sensors.json"
    base.write_text(json.dumps({**GOOD, "sensors": [{"type": "dht22", "pin": 4}], "interval_s": 30}))
    ca = tmp_path / "site-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    secrets = {"IOTGW_DEVICE_TOKEN": "iotgw_d_supersecrettoken", "IOTGW_WIFI_PASSWORD": "hunter2"}
    result = iotgw(
        "provision", "--port", "/dev/ttyACM0", "--gateway", "wss://192.168.1.10:8765/v1/device",
        "--device", "greenhouse", "--ssid", "farm", "--config", str(base), "--ca", str(ca), "--dry-run",
        env=secrets,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "supersecrettoken" not in result.stdout and "hunter2" not in result.stdout
    shown = json.loads(result.stdout[: result.stdout.index("$ ")])
    assert shown["url"] == "wss://192.168.1.10:8765/v1/device"
    assert shown["wifi"] == {"ssid": "farm", "password": "***"}
    assert shown["ca_file"] == "site-ca.pem"
    assert shown["sensors"] == [{"type": "dht22", "pin": 4}] and shown["interval_s"] == 30
    [step] = commands(result.stdout)
    assert re.fullmatch(
        rf"\S*mpremote connect /dev/ttyACM0 fs cp {re.escape(str(ca))} :site-ca.pem \+ "
        r"fs cp \S+/config.json :config.json \+ reset",
        step,
    ), step


def test_provision_refuses_a_url_without_the_device_path(tmp_path: Path) -> None:
    result = iotgw(
        "provision", "--port", "/dev/ttyACM0", "--gateway", "ws://192.168.1.10:8765", "--device", "g",
        "--ssid", "farm", "--dry-run", env={"IOTGW_DEVICE_TOKEN": "iotgw_d_x", "IOTGW_WIFI_PASSWORD": "p"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "has no /v1/device path" in result.stderr


def test_logs_follows_the_console_without_resetting_the_board() -> None:
    result = iotgw("logs", "--port", "/dev/ttyACM0", "--dry-run")
    assert result.returncode == 0, result.stderr
    [step] = commands(result.stdout)
    assert step.endswith("mpremote connect /dev/ttyACM0 resume repl")
