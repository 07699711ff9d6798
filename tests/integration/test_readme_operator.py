"""The README's operator commands, exactly as written there, against a running `iotgw demo`.

A new user runs `make demo`, then the README's commands from the checkout, with no
`--store`, `--config` or `--api`: they must reach the demo's gateway (through
`demo-data/gateway.toml`, which the demo writes), never a second, empty store.
Also: `iotgw demo | head` must leave no agent behind.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import REPO, repo_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

README = REPO / "README.md"


def readme_block(heading: str) -> list[str]:
    """The shell lines of the first ```sh block under ``heading`` (comments kept: bash drops them)."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("\n```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def shell(line: str, cwd: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """`iotgw demo` running in a fresh directory laid out like the checkout (`.venv` beside it).

    The demo gets its ports from a `--config` file (any free ones), as a user who moved the
    ports would: the README's commands must find them all the same.
    """
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    settings = tmp_path / "my-gateway.toml"
    settings.write_text("[device]\nport = 0\n\n[api]\nport = 0\n", encoding="utf-8")
    env = repo_env()
    env.pop("IOTGW_TOKEN", None)
    cmd = [sys.executable, "-m", "gateway.cli", "demo", "--agents", "1", "--duration", "300"]
    log = (tmp_path / "demo.out").open("wb")
    proc = subprocess.Popen(
        [*cmd, "--config", str(settings)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_until(
            lambda: (
                "summary prints here" in (tmp_path / "demo.out").read_text(errors="replace")
                or proc.poll() is not None
            ),
            timeout=60,
            what="the demo's banner",
        )
        assert proc.poll() is None, (tmp_path / "demo.out").read_text()
        yield tmp_path, env
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_the_readme_operator_commands_reach_the_running_demo(demo: tuple[Path, dict[str, str]]) -> None:
    cwd, env = demo
    banner = (cwd / "demo.out").read_text()
    assert "config       demo-data/gateway.toml" in banner
    assert "--api http://127.0.0.1:" in banner  # the API is not on 8080: the watch hint says where

    lines = readme_block("Commands and the operator API")
    assert lines[0].startswith(".venv/bin/iotgw token add alice --role control")
    added = shell(lines[0], cwd, env)
    assert added.returncode == 0, added.stderr
    token = re.search(r"iotgw_o_\S+", added.stdout)
    assert token, added.stdout
    assert "demo-data/gateway.sqlite3" in added.stderr  # it says which store it used
    assert not (cwd / "iotgw-data").exists()  # ... and it is not a second, empty one

    export = lines[1]
    assert export.startswith("export IOTGW_TOKEN=iotgw_o_...")
    prefix = export.replace("iotgw_o_...", shlex.quote(token.group(0))) + "; "
    devices = shell(prefix + lines[2], cwd, env)
    assert devices.returncode == 0, devices.stderr
    assert re.search(r"pi-kitchen\s+online", devices.stdout) or wait_until(
        lambda: re.search(r"pi-kitchen\s+online", shell(prefix + lines[2], cwd, env).stdout),
        timeout=60,
        what="pi-kitchen online in `iotgw devices`",
    )

    send = lines[3]
    assert send.startswith(".venv/bin/iotgw send pi-kitchen set")
    sent = shell(prefix + send, cwd, env)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "succeeded" in sent.stdout

    follow = lines[4]
    assert "--follow" in follow
    out = cwd / "follow.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(["bash", "-c", prefix + "exec " + follow], cwd=cwd, env=env, stdout=sink)
        try:
            wait_until(
                lambda: len(re.findall(r"cpu_temp\s+\d", out.read_text())) >= 2,
                timeout=60,
                what="two cpu_temp values from `readings --follow`",
            )
        finally:
            proc.terminate()
            proc.wait(10)

    # The first section's "from a second terminal" command, too.
    section = README.read_text(encoding="utf-8").split("\n## Two commands\n")[1].split("\n## ")[0]
    listing = next(line for line in section.splitlines() if line.startswith(".venv/bin/iotgw device list"))
    listed = shell(listing, cwd, env)
    assert listed.returncode == 0 and "pi-kitchen" in listed.stdout, listed.stderr

    # A typo in a metric name: a non-zero exit that names the metrics there are.
    typo = shell(prefix + ".venv/bin/iotgw readings pi-kitchen --metric cpu_tmp", cwd, env)
    assert typo.returncode != 0
    assert "no metric cpu_tmp" in typo.stderr and "cpu_temp" in typo.stderr, typo.stderr
    assert "Traceback" not in typo.stderr


def test_without_a_gateway_the_cli_creates_no_store_and_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    for line in (".venv/bin/iotgw token add alice --role control", ".venv/bin/iotgw device list"):
        result = shell(line, tmp_path, repo_env())
        assert result.returncode == 2, result.stdout
        assert "no store at iotgw-data/iotgw.sqlite3" in result.stderr
        assert "--config" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "iotgw-data").exists()


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry.name))
    return found


def test_demo_piped_into_head_stops_its_agents_and_board(tmp_path: Path) -> None:
    """No --duration: the demo runs until something stops it, here `head` going away (EPIPE)."""
    demo_dir = tmp_path / "piped"
    line = (
        f"{shlex.quote(sys.executable)} -m gateway.cli demo --agents 2 --port 0 "
        f"--dir {shlex.quote(str(demo_dir))} | head -3"
    )
    proc = subprocess.Popen(
        ["bash", "-c", line],
        cwd=tmp_path,
        env=repo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in _processes_mentioning(str(demo_dir)):
            os.kill(pid, signal.SIGKILL)
        raise AssertionError("the demo kept running after `head` exited") from None
    assert "demo is running" in out
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    wait_until(
        lambda: not _processes_mentioning(str(demo_dir)),
        timeout=30,
        what=f"no process left using {demo_dir}",
    )
    assert (demo_dir / "gateway.toml").is_file()
