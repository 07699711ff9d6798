"""The installer under ``--root`` and ``--dry-run``: files, owners, modes, unit text, idempotence.

The installers run as real subprocesses of the CLI (``python -m device_agent.cli install``,
``python -m gateway.cli install``). ``--root`` keeps every path under a temporary directory
and records system commands instead of running them; owners are real (numeric ids from the
simulated ``ROOT/etc/passwd``), so these tests need root, as CI has.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import pytest

from device_agent.config import parse_config
from device_agent.install import device_url
from gateway.config import load_config
from iotgw_common.install import (
    AGENT,
    GATEWAY,
    LOG_NAME,
    AddToGroups,
    CreateVenv,
    EnsureUser,
    Facts,
    Layout,
    PipInstall,
    Systemctl,
    WriteFile,
    plan_install,
    plan_uninstall,
    read_accounts,
    render_unit,
    resolve_source,
)
from tests.support.gateway import REPO, repo_env

TOKEN = "iotgw_d_0123456789abcdef"


def cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=repo_env({"GPIOZERO_PIN_FACTORY": "mock"}),
        cwd=REPO,
        timeout=60,
    )
    return result


def agent_install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = cli("device_agent.cli", "install", "--root", str(root), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def seed_accounts(root: Path) -> None:
    """A Raspberry Pi OS-like account database: gpio and i2c exist (spi does not), pi in i2c."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000::/home/pi:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\npi:x:1000:\ngpio:x:997:pi\ni2c:x:998:pi\n")


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """path -> (mode, uid, gid, sha256 of content or link target), the install log left out."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path.name == LOG_NAME:
            continue
        st = path.lstat()
        if path.is_symlink():
            digest = "-> " + os.readlink(path)
        elif path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            digest = "dir"
        state[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, digest)
    return state


def outcomes(stdout: str) -> list[str]:
    """The outcome word of every step line (``[ 3/14] changed   ...``)."""
    return [line.split("]", 1)[1].split()[0] for line in stdout.splitlines() if line.startswith("[")]


def tags(sensors: Sequence[object]) -> list[object]:
    """The ``type`` of each sensor table (msgspec keeps it as the struct's tag)."""
    return [type(s).__struct_config__.tag for s in sensors]  # type: ignore[attr-defined]


def owner(root: Path, path: str) -> tuple[str, int]:
    users, _ = read_accounts(root)
    by_uid = {uid: name for name, (uid, _) in users.items()} | {0: "root"}
    st = (root / path.lstrip("/")).stat()
    return by_uid[st.st_uid], st.st_mode & 0o7777


# -- the agent ---------------------------------------------------------------------------------


def test_agent_install_under_root_writes_the_expected_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    seed_accounts(root)
    result = agent_install(
        root, "--gateway", "ws://gw.local:8765", "--token", TOKEN, "--device", "pi-kitchen"
    )

    users, groups = read_accounts(root)
    assert "iotgw-agent" in users
    assert "iotgw-agent" in groups["gpio"][1] and "iotgw-agent" in groups["i2c"][1]
    assert "spi" not in groups  # joined only the groups that exist
    assert owner(root, "/etc/iotgw") == ("root", 0o755)
    assert owner(root, "/etc/iotgw/agent.toml") == ("iotgw-agent", 0o600)
    assert owner(root, "/var/lib/iotgw") == ("root", 0o755)
    assert owner(root, "/var/lib/iotgw/agent") == ("iotgw-agent", 0o700)
    assert owner(root, "/etc/systemd/system/iotgw-agent.service") == ("root", 0o644)

    unit = (root / "etc/systemd/system/iotgw-agent.service").read_text()
    assert unit == render_unit(AGENT)
    assert unit == (REPO / "systemd/iotgw-agent.service").read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/iotgw-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/iotgw-agent.service"
    assert os.readlink(root / "usr/local/bin/iotgw-agent") == "/opt/iotgw/agent/bin/iotgw-agent"

    config = parse_config((root / "etc/iotgw/agent.toml").read_text(), env={})
    assert config.gateway.url == "ws://gw.local:8765/v1/device"
    assert (config.gateway.token, config.gateway.device) == (TOKEN, "pi-kitchen")
    assert config.agent.buffer_path == "/var/lib/iotgw/agent/buffer.sqlite3"
    assert tags(config.sensors) == ["cpu_temperature", "load_average", "disk_usage"]

    log = (root / LOG_NAME).read_text().splitlines()
    assert log[0].startswith("useradd --system --user-group --home-dir /var/lib/iotgw/agent")
    assert log[1] == "usermod --append --groups gpio,i2c iotgw-agent"
    assert log[2].endswith(" -m venv /opt/iotgw/agent")  # a plain venv: lgpio comes from pip
    assert log[3].endswith(f"pip install --upgrade --disable-pip-version-check '{REPO}[agent]'")
    assert log[4:] == ["systemctl daemon-reload", "systemctl enable iotgw-agent.service",
                       "systemctl restart iotgw-agent.service"]  # fmt: skip
    assert "journalctl -u iotgw-agent" in result.stdout and "systemctl status iotgw-agent" in result.stdout


def test_agent_install_twice_changes_nothing_and_keeps_the_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    seed_accounts(root)
    agent_install(root, "--gateway", "ws://gw.local:8765/v1/device", "--token", TOKEN)
    (root / "var/lib/iotgw/agent/buffer.sqlite3").write_bytes(b"buffered readings")  # the agent's data
    before = snapshot(root)
    log_before = (root / LOG_NAME).read_text().splitlines()

    second = agent_install(root, "--gateway", "ws://other:8765/v1/device", "--token", "iotgw_d_new")
    assert snapshot(root) == before
    assert "changed" not in outcomes(second.stdout), second.stdout
    assert "kept as it is (differs from the one given" in second.stdout
    # No account, unit or service command the second time: only pip, which is a no-op for
    # an installed version (on a real machine the executor compares the installed RECORD).
    new_commands = (root / LOG_NAME).read_text().splitlines()[len(log_before) :]
    assert len(new_commands) == 1 and " -m pip install " in new_commands[0], new_commands

    third = agent_install(root, "--token", "iotgw_d_new", "--overwrite-config")
    assert parse_config((root / "etc/iotgw/agent.toml").read_text(), env={}).gateway.token == "iotgw_d_new"
    assert outcomes(third.stdout).count("changed") == 1  # the config; no restart needed elsewhere
    assert (root / "var/lib/iotgw/agent/buffer.sqlite3").read_bytes() == b"buffered readings"


def test_agent_install_with_a_config_file_keeps_its_sensors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    seed_accounts(root)
    mine = tmp_path / "mine.toml"
    mine.write_text(
        '[gateway]\nurl = "ws://old:8765/v1/device"\ntoken = "old"\n'
        "[agent]\ninterval = 2.5\nsamples_per_frame = 12\n"
        '[[sensors]]\ntype = "button"\npin = 17\nname = "door"\n'
        '[[sensors]]\ntype = "mcp3008"\nchannel = 0\nmetric = "soil"\nscale = 100.0\nunit = "%"\n'
    )
    agent_install(root, "--config", str(mine), "--token", TOKEN)
    config = parse_config((root / "etc/iotgw/agent.toml").read_text(), env={})
    assert (config.gateway.url, config.gateway.token) == ("ws://old:8765/v1/device", TOKEN)
    assert (config.agent.interval, config.agent.samples_per_frame) == (2.5, 12)
    assert tags(config.sensors) == ["button", "mcp3008"]


def test_agent_install_refuses_a_bad_config_and_a_missing_token(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = cli("device_agent.cli", "install", "--root", str(root), "--gateway", "ws://gw:8765")
    assert result.returncode == 1 and "needs --gateway URL and --token" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[gateway]\nurl = "ws://gw:8765/v1/device"\ntoken = "t"\n[[sensors]]\ntype = "button"\npin = 99\n'
    )
    result = cli("device_agent.cli", "install", "--root", str(root), "--config", str(bad))
    assert result.returncode == 1 and "sensors[0].pin" in result.stderr
    assert not (root / "etc").exists()  # nothing was done


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    seed_accounts(root)
    before = snapshot(root)
    result = cli("device_agent.cli", "install", "--root", str(root), "--dry-run", "--gateway", "ws://gw:8765",
                 "--token", TOKEN)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert snapshot(root) == before and not (root / LOG_NAME).exists()
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 14 and set(outcomes(result.stdout)) == {"would"}
    text = "\n".join(lines)
    for expected in ("useradd --system", "usermod --append --groups gpio,i2c iotgw-agent", "-m venv",
                     "pip install", "file /etc/iotgw/agent.toml (0600 iotgw-agent)",
                     "file /etc/systemd/system/iotgw-agent.service (0644 root)",
                     "systemctl enable iotgw-agent.service", "systemctl restart iotgw-agent.service"):  # fmt: skip
        assert expected in text, expected
    assert "Dry run: nothing was changed" in result.stdout


def test_agent_uninstall_removes_the_service_and_keeps_the_data(tmp_path: Path) -> None:
    root = tmp_path / "root"
    seed_accounts(root)
    agent_install(root, "--gateway", "ws://gw:8765", "--token", TOKEN)
    result = cli("device_agent.cli", "uninstall", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert not (root / "etc/systemd/system/iotgw-agent.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/iotgw-agent.service").is_symlink()
    assert not (root / "usr/local/bin/iotgw-agent").is_symlink()
    assert not (root / "opt/iotgw/agent").exists()
    assert (root / "etc/iotgw/agent.toml").is_file() and (root / "var/lib/iotgw/agent").is_dir()
    assert "Left in place" in result.stdout and "sudo userdel iotgw-agent" in result.stdout
    assert "systemctl disable --now iotgw-agent.service" in (root / LOG_NAME).read_text()
    again = cli("device_agent.cli", "uninstall", "--root", str(root))
    assert again.returncode == 0 and "changed" not in outcomes(again.stdout)


def test_uninstall_leaves_a_command_it_did_not_create(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/iotgw-agent").write_text("#!/bin/sh\n# someone else's\n")
    result = cli("device_agent.cli", "uninstall", "--root", str(root))
    assert result.returncode == 0 and "left alone" in result.stdout
    assert (root / "usr/local/bin/iotgw-agent").read_text().endswith("someone else's\n")


# -- the gateway -------------------------------------------------------------------------------


def test_gateway_install_under_root_twice(tmp_path: Path) -> None:
    root = tmp_path / "root"
    seed_accounts(root)
    result = cli("gateway.cli", "install", "--root", str(root), "--prefix", "/srv/iotgw")
    assert result.returncode == 0, result.stdout + result.stderr
    users, groups = read_accounts(root)
    assert "iotgw" in users and "iotgw" not in groups["gpio"][1]  # no device access for the gateway
    assert owner(root, "/etc/iotgw/gateway.toml") == ("iotgw", 0o600)
    assert owner(root, "/var/lib/iotgw/gateway") == ("iotgw", 0o700)
    config = load_config(root / "etc/iotgw/gateway.toml", environ={})
    assert config.store.path == "/var/lib/iotgw/gateway/iotgw.sqlite3"
    layout = Layout(prefix=PurePosixPath("/srv/iotgw"))
    unit = (root / "etc/systemd/system/iotgw.service").read_text()
    assert unit == render_unit(GATEWAY, layout)
    assert "ExecStart=/srv/iotgw/gateway/bin/iotgw serve --config /etc/iotgw/gateway.toml" in unit
    assert os.readlink(root / "usr/local/bin/iotgw") == "/srv/iotgw/gateway/bin/iotgw"
    assert "sudo -u iotgw iotgw device add NAME --config /etc/iotgw/gateway.toml" in result.stdout

    before = snapshot(root)
    again = cli("gateway.cli", "install", "--root", str(root), "--prefix", "/srv/iotgw")
    assert again.returncode == 0 and "changed" not in outcomes(again.stdout), again.stdout
    assert snapshot(root) == before


def test_gateway_install_validates_its_config(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.toml"
    bad.write_text("[device]\nport = 99999\n")
    result = cli("gateway.cli", "install", "--root", str(tmp_path / "root"), "--config", str(bad))
    assert result.returncode == 1 and "device.port" in result.stderr


# -- the planner, without I/O -------------------------------------------------------------------


def plan_kinds(facts: Facts, **kwargs: object) -> list[str]:
    plan = plan_install(AGENT, facts, config_text="x", source=None, python="python3", **kwargs)  # type: ignore[arg-type]
    return [type(step).__name__ for step in plan.steps]


def test_the_plan_leaves_out_what_is_already_there() -> None:
    fresh = plan_kinds(Facts(group_members={"gpio": frozenset(), "spi": frozenset()}))
    assert fresh[:2] == ["EnsureUser", "AddToGroups"] and "CreateVenv" in fresh
    done = Facts(
        users=frozenset({"iotgw-agent"}),
        group_members={"gpio": frozenset({"iotgw-agent"})},
        venv_ready=True,
        enabled=True,
        active=True,
    )
    plan = plan_install(AGENT, done, config_text="x", source=None, python="python3")
    kinds = [type(step) for step in plan.steps]
    assert EnsureUser not in kinds and AddToGroups not in kinds and CreateVenv not in kinds
    systemctl = [step for step in plan.steps if isinstance(step, Systemctl)]
    assert [(s.args[0], s.only_if_changed) for s in systemctl] == [("daemon-reload", True), ("restart", True)]


def test_restart_backoff_drop_in_only_where_systemd_supports_it() -> None:
    for version, expected in ((252, False), (254, True), (257, True), (None, False)):
        plan = plan_install(GATEWAY, Facts(systemd_version=version), config_text="x", source=None, python="p")
        dropins = [
            s for s in plan.steps if isinstance(s, WriteFile) and s.path.name == "restart-backoff.conf"
        ]
        assert bool(dropins) == expected, version
        if dropins:
            assert "RestartSteps=" in dropins[0].content and "RestartMaxDelaySec=" in dropins[0].content


def test_without_a_running_systemd_the_unit_is_enabled_but_not_started() -> None:
    plan = plan_install(AGENT, Facts(systemd_running=False), config_text="x", source=None, python="p")
    assert [s.args[0] for s in plan.steps if isinstance(s, Systemctl)] == ["enable"]
    assert any("starts at the next boot" in line for line in plan.epilogue)


def test_uninstall_plan_stops_only_what_exists() -> None:
    assert not [
        s for s in plan_uninstall(AGENT, Facts()).steps if isinstance(s, Systemctl) and s.args[0] == "disable"
    ]
    plan = plan_uninstall(AGENT, Facts(unit_present=True, enabled=True))
    assert Systemctl(("disable", "--now", "iotgw-agent.service")) in plan.steps


def test_sources(tmp_path: Path) -> None:
    layout = Layout()
    wheel = tmp_path / "iotgw-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    assert resolve_source(AGENT, layout, str(wheel)).args == (f"iotgw[agent] @ {wheel.as_uri()}",)  # type: ignore[union-attr]
    house = tmp_path / "wheels"
    house.mkdir()
    assert resolve_source(AGENT, layout, str(house)).args == (  # type: ignore[union-attr]
        "--no-index", "--find-links", str(house), "iotgw[agent]")  # fmt: skip
    assert resolve_source(GATEWAY, layout, str(REPO)).args == (f"{REPO}[gateway]",)  # type: ignore[union-attr]
    assert resolve_source(GATEWAY, layout, "iotgw==9.9").args == ("iotgw[gateway]==9.9",)  # type: ignore[union-attr]
    assert resolve_source(AGENT, layout, None).args == (f"{REPO}[agent]",)  # type: ignore[union-attr]
    # running from the target environment itself: nothing to install
    assert resolve_source(AGENT, layout, None, running_prefix="/opt/iotgw/agent") is None
    pip = PipInstall(layout.venv(AGENT), ("x",), "y").argv()
    assert pip[:4] == ["/opt/iotgw/agent/bin/python", "-m", "pip", "install"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ws://gw.local:8765", "ws://gw.local:8765/v1/device"),
        ("http://gw.local:8765/", "ws://gw.local:8765/v1/device"),
        ("wss://gw.example.com/v1/device", "wss://gw.example.com/v1/device"),
    ],
)
def test_device_url(given: str, expected: str) -> None:
    assert device_url(given) == expected
