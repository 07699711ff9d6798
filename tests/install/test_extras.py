"""Fresh virtual environments with one extra each, installed from this checkout by pip.

This is what ``iotgw-agent install`` does on a Pi. The agent's environment must be lean
(no InfluxDB client, no web framework), must carry the shared ``iotgw_common`` package,
must not need the ``gateway`` package at all (the one distribution ships it, so the test
deletes it from the agent's environment), and still run ``iotgw-agent check`` with mock
pins; the gateway's must run ``iotgw serve --help`` and carry the firmware as data. Needs
the package index (pip's cache makes repeated runs quick). The checkout is copied first,
so the build leaves no ``build/`` behind in it. That no agent module imports ``gateway``,
even inside a function, is checked without installing: tests/agent/test_agent_imports.py.
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

IGNORE = shutil.ignore_patterns(".git", ".venv", ".venv-*", "build", "dist", "*.egg-info", "__pycache__", "demo-data",
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


WHEEL_FILES = """
import importlib.metadata
print("\\n".join(str(f) for f in importlib.metadata.files("iotgw") or ()))
"""

REMOVE_GATEWAY = """
import pathlib, shutil, sysconfig
package = pathlib.Path(sysconfig.get_paths()["purelib"]) / "gateway"
assert (package / "__init__.py").is_file(), package
shutil.rmtree(package)
print("removed")
"""

IMPORT_ALL_AGENT_MODULES = """
import importlib, pkgutil, sys
import device_agent
names = [m.name for m in pkgutil.walk_packages(device_agent.__path__, "device_agent.")
         if not m.name.endswith(".__main__")]  # that one runs the command line
for name in names:
    importlib.import_module(name)
assert not [m for m in sys.modules if m.split(".")[0] == "gateway"]
print("\\n".join(names))
"""


def test_agent_extra_is_lean_and_checks_sensors_with_mock_pins(
    venvs: dict[str, Path], tmp_path: Path
) -> None:
    venv = venvs["agent"]
    for heavy in ("influxdb_client", "fastapi", "uvicorn", "starlette"):
        assert not importable(venv, heavy, tmp_path), f"{heavy} is installed with the agent extra"
    for needed in ("gpiozero", "websockets", "msgspec", "device_agent", "iotgw_common.install"):
        assert importable(venv, needed, tmp_path), needed
    # iotgw_common and the agent's subpackages come from the wheel, not from a checkout
    shipped = run(venv, "python", "-c", WHEEL_FILES, cwd=tmp_path)
    assert shipped.returncode == 0, shipped.stderr
    files = set(shipped.stdout.split())
    for path in ("iotgw_common/__init__.py", "iotgw_common/protocol/codec.py", "iotgw_common/install/plan.py",
                 "iotgw_common/logs.py", "iotgw_common/sdnotify.py", "device_agent/sensors/base.py",
                 "device_agent/example.toml"):  # fmt: skip
        assert path in files, f"{path} is not in the wheel"
    # the agent does not need the gateway package: take it away, then every agent module
    # imports and every command below still works
    gone = run(venv, "python", "-c", REMOVE_GATEWAY, cwd=tmp_path)
    assert gone.returncode == 0 and gone.stdout.strip() == "removed", gone.stdout + gone.stderr
    assert not importable(venv, "gateway", tmp_path)
    modules = run(venv, "python", "-c", IMPORT_ALL_AGENT_MODULES, cwd=tmp_path)
    assert modules.returncode == 0, modules.stderr
    assert "device_agent.sensors.gpio" in modules.stdout.split(), modules.stdout
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
