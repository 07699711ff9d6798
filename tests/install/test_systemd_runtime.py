"""What the processes do under systemd: sd_notify readiness and watchdog, journal-friendly logs.

No systemd runs here, so each test plays its part: it binds the ``NOTIFY_SOCKET``
datagram socket and sets ``WATCHDOG_USEC`` and ``JOURNAL_STREAM`` as systemd does for
a ``Type=notify`` unit with ``WatchdogSec=``, then starts the real gateway or agent.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent.agent import AGENT_NAME
from iotgw_common._version import __version__
from tests.support.gateway import REPO, GatewayProcess, repo_env

SYSTEMD_ENV = {"WATCHDOG_USEC": "300000", "JOURNAL_STREAM": "8:12345"}  # watchdog pings every 0.1 s


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    try:
        yield sock, path
    finally:
        sock.close()


def messages_until(sock: socket.socket, wanted: set[str], timeout: float = 20.0) -> list[str]:
    """Datagrams received until each of ``wanted`` has been seen (as a line)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while not wanted <= {line for message in got for line in message.splitlines()}:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            pytest.fail(f"only got {got}, wanted {wanted}")
    return got


def test_gateway_notifies_ready_feeds_the_watchdog_and_logs_without_timestamps(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    with GatewayProcess.start(tmp_path, env={**SYSTEMD_ENV, "NOTIFY_SOCKET": path}) as gw:
        got = messages_until(sock, {"READY=1", "WATCHDOG=1"})
        ready = next(m for m in got if m.startswith("READY=1"))
        assert f"STATUS=devices connect to ws://127.0.0.1:{gw.port}/v1/device" in ready
        assert got.index(ready) == 0  # READY before any watchdog ping
        gw.terminate()
        log = gw.log()
    lines = [line for line in log.splitlines() if re.match(r"(DEBUG|INFO|WARNING|ERROR) ", line)]
    assert lines, log
    assert not [line for line in log.splitlines() if re.match(r"\d{4}-\d\d-\d\d", line)], log


AGENT_CONFIG = """
[gateway]
url = "ws://127.0.0.1:9/v1/device"
token = "iotgw_d_nobody"
[agent]
interval = 0.2
buffer_path = "buffer.sqlite3"
backoff_max = 1.0
[simulation]
enabled = true
[[sensors]]
type = "cpu_temperature"
"""


def test_agent_notifies_ready_once_sampling_and_logs_json(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    config = tmp_path / "agent.toml"
    config.write_text(AGENT_CONFIG)
    env = repo_env({**SYSTEMD_ENV, "NOTIFY_SOCKET": path, "GPIOZERO_PIN_FACTORY": "mock"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "device_agent.cli", "run", "--config", str(config), "--log-format", "json"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        got = messages_until(sock, {"READY=1", "WATCHDOG=1"})
        assert got[0].startswith("READY=1\nSTATUS=sampling every 0.2 s"), got
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert records and {"ts", "level", "logger", "message"} <= records[0].keys()
    assert any(r["message"].startswith(f"{AGENT_NAME} starting") for r in records)


def test_without_systemd_nothing_is_sent_and_plain_logs_have_timestamps(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(AGENT_CONFIG)
    proc = subprocess.Popen(
        [sys.executable, "-m", "device_agent.cli", "run", "--config", str(config)],
        cwd=tmp_path, env=repo_env({"GPIOZERO_PIN_FACTORY": "mock"}), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Ready once it logs that it is starting (its signal handlers are in place by then): no fixed wait.
    # Without systemd there is no READY=1 to wait for; the log line is the readiness.
    assert proc.stdout is not None
    head: list[str] = []
    for line in proc.stdout:  # a line at a time (PYTHONUNBUFFERED); the test's timeout bounds it
        head.append(line)
        if f"{AGENT_NAME} starting" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    out = "".join(head) + rest
    assert proc.returncode == 0, out
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO device_agent", out), out


def test_agent_and_gateway_report_one_version() -> None:
    env = repo_env()
    gateway = subprocess.run([sys.executable, "-m", "gateway.cli", "--version"], capture_output=True, text=True,
                             env=env, cwd=REPO, check=True)  # fmt: skip
    agent = subprocess.run([sys.executable, "-m", "device_agent.cli", "--version"], capture_output=True,
                           text=True, env=env, cwd=REPO, check=True)  # fmt: skip
    assert gateway.stdout.split() == ["iotgw", __version__]
    assert agent.stdout.split() == ["iotgw-agent", __version__]
    assert f"iotgw-agent/{__version__}" == AGENT_NAME  # what hello carries
