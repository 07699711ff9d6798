"""How every `iotgw` command finds the gateway's settings, and the errors that say what to do."""

from __future__ import annotations

import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec
import pytest

from gateway.cli.common import ConfigSource, find_config, load_checked_config
from gateway.cli.tomlfile import dumps
from gateway.config import ConfigError, GatewayConfig
from tests.support.gateway import repo_env


def iotgw(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=cwd,
        env=repo_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_search_order_is_flag_env_installed_demo_defaults(tmp_path: Path) -> None:
    installed = tmp_path / "etc" / "gateway.toml"
    demo = tmp_path / "demo-data" / "gateway.toml"
    env = {"IOTGW_CONFIG": "/from/env.toml"}

    def found(given: str | None, environ: dict[str, str], **kw: bool) -> ConfigSource:
        return find_config(given, environ, cwd=tmp_path, installed=installed, **kw)

    assert found(None, {}) == ConfigSource(None, "defaults")
    demo.parent.mkdir()
    demo.write_text("")
    assert found(None, {}) == ConfigSource(demo, "demo")
    assert found(None, {}, demo=False) == ConfigSource(None, "defaults")  # serve and demo skip it
    installed.parent.mkdir()
    installed.write_text("")
    assert found(None, {}) == ConfigSource(installed, "installed")
    assert found(None, env) == ConfigSource(Path("/from/env.toml"), "IOTGW_CONFIG")
    assert found("mine.toml", env) == ConfigSource(Path("mine.toml"), "--config")
    assert found("mine.toml", env).explicit and not found(None, {}).explicit


def test_the_demo_config_round_trips_through_toml() -> None:
    config = GatewayConfig()
    config.store.path = 'odd "path" \\ with\nnewline and ünïcode'
    config.influx.enabled = True
    text = dumps(msgspec.to_builtins(config), "header line")
    assert text.startswith("# header line\n")
    assert msgspec.convert(tomllib.loads(text), GatewayConfig) == config


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read config file"),  # a directory
        (b"\xff\xfe not utf-8", "is not UTF-8 text"),
        (b"[store\npath = 1", "config file"),
        (b"[store]\nsynchronous = 'SOMETIMES'\n", "config file"),
    ],
)
def test_an_unreadable_or_invalid_config_is_one_line_without_a_traceback(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "gw.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=expected):
        load_checked_config(path)
    result = iotgw("device", "list", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("iotgw: ") and "Traceback" not in result.stderr
    assert expected in result.stderr


@pytest.mark.parametrize("plane", ["device", "api"])
def test_serve_on_a_taken_port_says_which_and_how_to_move_it(tmp_path: Path, plane: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        ports = (
            ["--port", port, "--api-port", "0"] if plane == "device" else ["--port", "0", "--api-port", port]
        )
        result = iotgw(
            "serve", "--store", str(tmp_path / "s.sqlite3"), "--host", "127.0.0.1", *ports, cwd=tmp_path
        )
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    assert "already in use" in result.stderr and f"127.0.0.1:{port}" in result.stderr
    assert ("--port" if plane == "device" else "--api-port") in result.stderr


def test_a_named_store_may_be_new_an_implicit_one_may_not(tmp_path: Path) -> None:
    named = iotgw("device", "add", "pi-1", "--store", "new.sqlite3", cwd=tmp_path)
    assert named.returncode == 0 and "creating a new, empty store at new.sqlite3" in named.stderr
    implicit = iotgw("device", "add", "pi-1", cwd=tmp_path)
    assert implicit.returncode == 2 and "no store at iotgw-data/iotgw.sqlite3" in implicit.stderr
    assert not (tmp_path / "iotgw-data").exists()
    # IOTGW_CONFIG names the gateway: its store is used, and no note is needed
    (tmp_path / "gw.toml").write_text('[store]\npath = "new.sqlite3"\n')
    listed = iotgw("device", "list", cwd=tmp_path, env={"IOTGW_CONFIG": "gw.toml"})
    assert listed.returncode == 0 and "pi-1" in listed.stdout and listed.stderr == ""
