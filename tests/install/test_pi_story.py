"""The Pi install, one story: the installer's plan per architecture, the README and
docs/install.md giving the same commands, and the ``[agent]`` extra's lgpio marker.

The plans run through the real CLI (``iotgw-agent install --dry-run --root DIR --machine M``):
``--root`` makes the facts come from a temporary tree (its ``etc/pip.conf`` says whether
piwheels is configured, as Raspberry Pi OS's does), ``--dry-run`` changes nothing.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.install.test_installer import TOKEN, cli, seed_accounts
from tests.support.gateway import REPO

PIWHEELS = "https://www.piwheels.org/simple"
RASPI_PIP_CONF = f"[global]\nextra-index-url={PIWHEELS}\n"  # what Raspberry Pi OS ships


def dry_run(tmp_path: Path, machine: str, *args: str, pip_conf: str | None = None) -> str:
    root = tmp_path / "root"
    seed_accounts(root)
    if pip_conf is not None:
        (root / "etc/pip.conf").write_text(pip_conf)
    result = cli("device_agent.cli", "install", "--dry-run", "--root", str(root), "--machine", machine,
                 "--gateway", "ws://gw:8765", "--token", TOKEN, *args)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Dry run: nothing was changed" in result.stdout
    assert not (root / ".iotgw-install.log").exists()
    return result.stdout


def steps(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("[")]


def step(stdout: str, needle: str) -> str:
    found = [line for line in steps(stdout) if needle in line]
    assert len(found) == 1, (needle, stdout)
    return found[0]


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_64_bit_plan_is_a_plain_venv_and_wheels_from_pypi(tmp_path: Path, machine: str) -> None:
    out = dry_run(tmp_path, machine)
    assert f"architecture {machine}, Python" in out
    venv = step(out, "create virtual environment")
    assert venv.endswith(" -m venv /opt/iotgw/agent") and "--system-site-packages" not in out
    pip = step(out, "install iotgw from")
    assert pip.endswith(f"'{REPO}[agent]'") and "piwheels" not in out and "apt-get" not in out
    # lgpio: the [agent] extra brings it on aarch64 (a PyPI wheel), not on a PC
    assert ("lgpio" in pip and "lgpio (gpiozero's pin library)" in out) == (machine == "aarch64")
    assert len(steps(out)) == 14


def test_armv7l_without_piwheels_configured_asks_piwheels_for_msgspec(tmp_path: Path) -> None:
    out = dry_run(tmp_path, "armv7l")
    pip = step(out, "install iotgw from")
    assert (
        f"pip install --upgrade --disable-pip-version-check --extra-index-url {PIWHEELS} '{REPO}[agent]'"
        in pip
    )
    assert "msgspec from piwheels.org" in pip and "with lgpio" in pip
    assert "msgspec: no 32-bit ARM wheel on PyPI" in out and "--no-piwheels compiles instead" in out
    assert "apt-get" not in out and "--system-site-packages" not in out


def test_armv7l_on_raspberry_pi_os_uses_its_pip_conf(tmp_path: Path) -> None:
    out = dry_run(tmp_path, "armv7l", pip_conf=RASPI_PIP_CONF)
    pip = step(out, "install iotgw from")
    assert "--extra-index-url" not in pip and pip.endswith(f"'{REPO}[agent]'")
    assert "piwheels.org is in /etc/pip.conf" in out


def test_armv7l_without_piwheels_installs_a_compiler_and_says_what_it_costs(tmp_path: Path) -> None:
    out = dry_run(tmp_path, "armv7l", "--no-piwheels", pip_conf=RASPI_PIP_CONF)
    lines = steps(out)
    apt = step(out, "apt-get")
    assert apt.endswith("apt-get install -y --no-install-recommends build-essential python3-dev")
    assert "about 275 MB" in apt and "takes minutes" in apt
    order = [i for i, line in enumerate(lines) if "apt-get" in line or "install iotgw from" in line]
    assert len(order) == 2 and "apt-get" in lines[order[0]]  # the compiler before pip
    assert "msgspec compiled here" in step(out, "install iotgw from")
    assert PIWHEELS not in step(out, "install iotgw from") and len(lines) == 15


def test_offline_install_asks_no_index_on_any_architecture(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    out = dry_run(tmp_path, "armv7l", "--from", str(wheels))
    pip = step(out, "install iotgw from")
    assert f"--no-index --find-links {wheels}" in pip and "piwheels" not in pip
    assert "must hold a msgspec wheel" in out


def test_machine_is_refused_for_a_real_install(tmp_path: Path) -> None:
    result = cli("device_agent.cli", "install", "--machine", "armv7l", "--gateway", "ws://gw:8765",
                 "--token", TOKEN)  # fmt: skip
    assert result.returncode == 1 and "--machine only goes with --dry-run or --root" in result.stderr


# -- README and docs/install.md ---------------------------------------------------------------

INSTALL_COMMAND = re.compile(
    r"^(sudo apt install|git clone|python3 -m venv|PIP_EXTRA_INDEX_URL=|\.venv/bin/pip)"
)


def section(path: Path, heading: str) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index(heading)
    level = heading.split(" ")[0]
    end = text.find(f"\n{level} ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def install_commands(text: str) -> list[str]:
    """The install lines of every ```sh block, comments dropped."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()
            if INSTALL_COMMAND.match(command):
                lines.append(command)
    return lines


def test_readme_and_install_doc_give_the_same_pi_install_commands() -> None:
    readme = install_commands(section(REPO / "README.md", "## Install the agent on a Raspberry Pi"))
    doc = install_commands(section(REPO / "docs/install.md", "## A Raspberry Pi running the agent"))
    assert readme == doc, (readme, doc)
    assert "sudo apt install -y git python3-venv" in readme
    assert "python3 -m venv .venv && .venv/bin/pip install -e '.[agent]'" in readme
    assert any("piwheels.org" in line for line in readme)
    assert "sudo apt install -y build-essential python3-dev && .venv/bin/pip install -e '.[agent]'" in readme
    for text in (REPO / "README.md", REPO / "docs/install.md"):
        body = text.read_text(encoding="utf-8")
        assert "apt install -y git python3-venv python3-lgpio" not in body
        assert "with `--system-site-packages`" not in body


# -- the [agent] extra ----------------------------------------------------------------------


def test_agent_extra_brings_lgpio_exactly_where_pypi_has_wheels() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (lgpio,) = [Requirement(r) for r in extras["agent"] if Requirement(r).name == "lgpio"]
    assert lgpio.marker is not None
    assert not lgpio.specifier.contains("0.0.0.2") and lgpio.specifier.contains("0.2.2.0")  # 0.0.0.2: empty
    for machine, python, wanted in [
        ("aarch64", "3.11", True),  # manylinux_2_34_aarch64, cp39-cp312
        ("armv7l", "3.11", True),  # linux_armv7l, cp39-cp312
        ("aarch64", "3.12", True),
        ("aarch64", "3.13", False),  # no cp313 wheel: it would need the lgpio C library to build
        ("armv7l", "3.13", False),
        ("x86_64", "3.11", False),  # no GPIO header
        ("armv6l", "3.11", False),  # no wheel on PyPI
    ]:
        env = {"platform_machine": machine, "python_version": python}
        assert lgpio.marker.evaluate(env) == wanted, (machine, python)
