"""`iotgw demo`, the README's first command, shows readings from three agents and a board."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import store
from gateway.store import delivery, registry
from tests.support.gateway import repo_env

pytestmark = pytest.mark.slow


def test_demo_runs_three_simulated_agents_and_a_board_and_says_where_to_look(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "gateway.cli", "demo", "--duration", "11", "--port", "0", "--dir", "demo"]
    result = subprocess.run(cmd, cwd=tmp_path, env=repo_env(), capture_output=True, text=True, timeout=90)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "devices connect to ws://127.0.0.1:" in out
    assert "demo/gateway.sqlite3" in out
    assert "Stop with Ctrl-C" in out
    summary = out.split("A summary prints here")[1]
    assert "board-greenhouse (the real MicroPython firmware" in out  # micropython is a test dependency
    # mosquitto is a system dependency: the demo bridges to a private broker (docs/mqtt.md)
    assert re.search(r"mosquitto_sub -h 127\.0\.0\.1 -p \d+ -v -t 'iotgw/#'", out), out
    for name in ("pi-kitchen", "pi-greenhouse", "pi-garage", "board-greenhouse"):
        counts = [int(n) for n in re.findall(rf"{name}\s+(\d+) readings", summary)]
        assert counts and counts[-1] > 0, f"{name}: no readings in the summary:\n{summary}"
        assert "[running]" in summary
    conn = store.connect(tmp_path / "demo" / "gateway.sqlite3")
    try:
        devices = {d.name: d for d in registry.list_devices(conn)}
        assert set(devices) == {"pi-kitchen", "pi-greenhouse", "pi-garage", "board-greenhouse"}
        board = devices.pop("board-greenhouse")
        assert board.agent.startswith("iotgw-fw/") and board.labels["kind"] == "board"
        assert all(d.agent.startswith("iotgw-agent/") for d in devices.values())
        assert devices["pi-kitchen"].labels == {"site": "home", "room": "kitchen"}
        sensors = {s["metric"] for s in devices["pi-kitchen"].sensors}
        assert {"cpu_temp", "soil_moisture", "light", "distance_m"} <= sensors
        bridge = delivery.read_status(conn, "mqtt")
        assert bridge.configured and bridge.sent_readings > 0 and bridge.dead_letters == 0
    finally:
        conn.close()
    # A second run resumes with the same devices (tokens reused from the agent configs).
    again = subprocess.run(
        [*cmd[:5], "3", *cmd[6:]], cwd=tmp_path, env=repo_env(), capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "unknown device token" not in (tmp_path / "demo" / "agents" / "pi-kitchen.log").read_text()
