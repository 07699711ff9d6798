"""`iotgw demo`, the README's first command, shows readings from three agents and a board,
forwards them to a private InfluxDB when ``influxd`` is installed, and stops it on the way out."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest

from gateway import store
from gateway.store import delivery, registry
from tests.support.gateway import repo_env
from tests.support.services import http
from tests.support.waiting import wait_until

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
    # influxd is a system dependency: the demo forwards to a private InfluxDB (docs/influxdb.md)
    assert re.search(r"influxdb     http://127\.0\.0\.1:\d+   \(a private influxd, database iotgw", out), out
    assert re.search(r"influx -port \d+ -database iotgw -execute 'SELECT \* FROM \"iotgw\"", out), out
    assert "docs/grafana.md" in out
    # A second run resumes with the same devices (tokens reused from the agent configs); --no-influx
    # starts no InfluxDB.
    again = subprocess.run(
        [*cmd[:5], "3", *cmd[6:], "--no-influx"], cwd=tmp_path, env=repo_env(), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "influxdb     off (--no-influx)" in again.stdout
    assert "unknown device token" not in (tmp_path / "demo" / "agents" / "pi-kitchen.log").read_text()


# -- the demo's private InfluxDB ----------------------------------------------------------------


class Demo:
    """``iotgw demo`` as a child process whose stdout is read line by line in a thread."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [
            sys.executable,
            "-m",
            "gateway.cli",
            "demo",
            "--port",
            "0",
            "--dir",
            "demo",
            "--agents",
            "1",
            *args,
        ]
        self.stderr = (cwd / "demo-stderr.log").open("ab")
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=repo_env(env), stdout=subprocess.PIPE, stderr=self.stderr
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # the test may close the pipe
            for raw in self.proc.stdout:
                self.lines.put(raw.decode("utf-8", "replace"))

    def banner(self) -> str:
        """Everything up to the banner's last line."""

        def ended() -> bool:
            while not self.lines.empty():
                self.seen.append(self.lines.get())
            return any("Stop with Ctrl-C" in line for line in self.seen) or self.proc.poll() is not None

        wait_until(ended, timeout=90, what="the demo's banner")
        text = "".join(self.seen)
        assert "Stop with Ctrl-C" in text, text
        return text


def influxd_pids(config: Path) -> list[int]:
    """Processes running influxd with this config file (read from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if str(config).encode() in argv and state != "Z":
                pids.append(int(entry.name))
    return pids


def influx_query(url: str, q: str) -> list[list[object]]:
    """The rows of the first series InfluxQL returns (empty when none)."""
    status, body = http("POST", f"{url}/query?" + urllib.parse.urlencode({"q": q, "db": "iotgw"}))
    assert status == 200, body
    series = json.loads(body)["results"][0].get("series", [])
    return series[0]["values"] if series else []


def test_demo_forwards_to_its_own_influxdb_and_stops_it_on_ctrl_c_and_on_a_closed_pipe(
    tmp_path: Path,
) -> None:
    config = tmp_path / "demo" / "influxdb" / "influxdb.conf"
    demo = Demo(tmp_path)
    try:
        out = demo.banner()
        found = re.search(r"influxdb     (http://127\.0\.0\.1:(\d+))   \(a private influxd", out)
        assert found, out
        url, port = found.group(1), found.group(2)
        assert f"influx -port {port} -database iotgw -execute" in out
        pids = influxd_pids(config)
        assert len(pids) == 1, pids
        # the readings of the demo's agent arrive in the demo's InfluxDB, with their units beside them
        rows = wait_until(
            lambda: influx_query(url, "SELECT count(cpu_temp) FROM iotgw WHERE device = 'pi-kitchen'"),
            timeout=60, what="pi-kitchen's readings in the demo's InfluxDB",
        )  # fmt: skip
        assert int(rows[0][1]) > 0  # type: ignore[call-overload]
        units = wait_until(
            lambda: influx_query(url, "SELECT last(unit) FROM iotgw_units WHERE metric = 'soil_moisture'"),
            timeout=30, what="soil_moisture's unit in iotgw_units",
        )  # fmt: skip
        assert units[0][1] == "%"
        demo.proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert demo.proc.wait(60) == 0
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
    wait_until(lambda: not influxd_pids(config), timeout=10, what="the demo's influxd to be gone")
    assert not any(os.path.exists(f"/proc/{pid}") and pid in influxd_pids(config) for pid in pids)

    # `iotgw demo | head`: the reader goes away; the demo stops, and its influxd with it.
    again = Demo(tmp_path)
    try:
        again.banner()
        assert len(influxd_pids(config)) == 1
        assert again.proc.stdout is not None
        again.proc.stdout.close()  # the next summary (every 5 s) meets EPIPE
        assert again.proc.wait(60) == 0
    finally:
        if again.proc.poll() is None:
            again.proc.kill()
    wait_until(lambda: not influxd_pids(config), timeout=10, what="the second run's influxd to be gone")
