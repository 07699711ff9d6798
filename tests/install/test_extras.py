"""Fresh virtual environments with one extra each, installed from this checkout by pip.

This is what ``iotgw-agent install`` does on a Pi. The agent's environment must be lean
(no InfluxDB client, no web framework) and still run ``iotgw-agent check`` with mock pins;
the gateway's must run ``iotgw serve --help`` and carry the firmware as data. Needs the
package index (pip's cache makes repeated runs quick). The checkout is copied first, so
the build leaves no ``build/`` behind in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from iotgw_common._version import __version__
from tests.support.gateway import REPO

IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "demo-data",
                                ".*_cache", "test-artifacts", "tests", "bench", "results")  # fmt: skip


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOTGW_", "PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def make_venv(directory: Path, source: Path, extra: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True, timeout=120)
    result = subprocess.run(
        [str(directory / "bin/python"), "-m", "pip", "install", "--quiet", f"{source}[{extra}]"],
        capture_output=True, text=True, env=clean_env(), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return directory


@pytest.fixture(scope="module")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    base = tmp_path_factory.mktemp("extras")
    for extra in ("agent", "gateway"):  # one copy each: setuptools builds in the tree
        shutil.copytree(REPO, base / f"src-{extra}", ignore=IGNORE, symlinks=True)
    with ThreadPoolExecutor(2) as pool:
        futures = {
            extra: pool.submit(make_venv, base / extra, base / f"src-{extra}", extra)
            for extra in ("agent", "gateway")
        }
        yield {extra: future.result() for extra, future in futures.items()}


def run(
    venv: Path, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        capture_output=True, text=True, cwd=cwd, env={**clean_env(), **(env or {})}, timeout=120,
    )  # fmt: skip


def importable(venv: Path, module: str, cwd: Path) -> bool:
    return run(venv, "python", "-c", f"import {module}", cwd=cwd).returncode == 0


def test_agent_extra_is_lean_and_checks_sensors_with_mock_pins(
    venvs: dict[str, Path], tmp_path: Path
) -> None:
    venv = venvs["agent"]
    for heavy in ("influxdb_client", "fastapi", "uvicorn", "starlette"):
        assert not importable(venv, heavy, tmp_path), f"{heavy} is installed with the agent extra"
    for needed in ("gpiozero", "websockets", "msgspec", "device_agent", "iotgw_common.install"):
        assert importable(venv, needed, tmp_path), needed
    example = venv.parent / "src-agent/device_agent/example.toml"
    config = tmp_path / "agent.toml"
    config.write_text(example.read_text().replace("/var/lib/iotgw-agent/", f"{tmp_path}/"))
    result = run(venv, "iotgw-agent", "check", "--config", str(config), cwd=tmp_path,
                 env={"GPIOZERO_PIN_FACTORY": "mock"})  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 sensors failed (simulated hardware)" in result.stdout
    version = run(venv, "iotgw-agent", "--version", cwd=tmp_path)
    assert version.stdout.split() == ["iotgw-agent", __version__]
    # installed from a wheel-like copy, no checkout in sight: the installer would use the index
    dry = run(venv, "iotgw-agent", "install", "--dry-run", "--root", str(tmp_path / "r"),
              "--gateway", "ws://gw:8765", "--token", "t", cwd=tmp_path)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert f"'iotgw[agent]=={__version__}'" in dry.stdout


def test_gateway_extra_serves_and_ships_the_firmware(venvs: dict[str, Path], tmp_path: Path) -> None:
    venv = venvs["gateway"]
    assert not importable(venv, "gpiozero", tmp_path)
    result = run(venv, "iotgw", "serve", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "--config" in result.stdout, result.stderr
    version = run(venv, "iotgw", "--version", cwd=tmp_path)
    agent_version = run(venvs["agent"], "iotgw-agent", "--version", cwd=tmp_path)
    assert version.stdout.split()[1] == agent_version.stdout.split()[1] == __version__
    share = venv / "share/iotgw"
    assert (share / "firmware_micropython/main.py").is_file()
    assert (share / "firmware_micropython/drivers/hw.py").is_file()
    assert (share / "systemd/iotgw.service").read_text() == (REPO / "systemd/iotgw.service").read_text()
    found = run(
        venv,
        "python",
        "-c",
        "from gateway.cli.firmware import firmware_dir; print(firmware_dir())",
        cwd=tmp_path,
    )
    assert found.stdout.strip() == str(share / "firmware_micropython"), found.stderr
