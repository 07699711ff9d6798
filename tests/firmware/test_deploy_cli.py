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
    ],
)
def test_unusable_board_configs_are_refused_before_touching_the_board(
    tmp_path: Path, config, message
) -> None:
    result = deploy(tmp_path, config)
    assert result.returncode == 2
    assert message in result.stderr
    assert "mpremote" not in result.stdout
