"""A real gateway process for tests: ``python -m gateway.cli serve`` on a free port.

with GatewayProcess.start(tmp_path) as gw:
    token = gw.add_device("pi-1")
    ... connect to gw.device_url ...
    gw.kill(); gw.restart()
    rows = gw.readings("pi-1")
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

sys.path.insert(0, str(REPO))

from gateway import store  # noqa: E402
from gateway.store import registry  # noqa: E402


def repo_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a subprocess that must import this checkout's packages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTGW_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class GatewayProcess:
    """A gateway subprocess with its own store in ``directory``."""

    def __init__(self, directory: Path, env: dict[str, str] | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.store_path = self.directory / "gateway.sqlite3"
        self.log_path = self.directory / "gateway.log"
        self.env = repo_env(env)
        self.port = 0
        self.api_port = 0  # the operator API: any free port at the first start, the same after
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @classmethod
    @contextlib.contextmanager
    def start(cls, directory: Path, env: dict[str, str] | None = None) -> Iterator[GatewayProcess]:
        gateway = cls(directory, env)
        gateway.launch()
        try:
            yield gateway
        finally:
            gateway.stop()

    @property
    def device_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/device"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def add_operator(self, name: str, role: str = "control") -> str:
        """Create an operator token (gateway/store/operators.py) and return it."""
        from gateway.store import operators

        conn = self.connect()
        try:
            return operators.add_operator(conn, name, role)
        finally:
            conn.close()

    def launch(self, timeout: float = 15.0) -> None:
        """Start the process (same port as before, if any) and wait until it is ready."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        marker = f"--- start {self.starts} ---\n"
        with self.log_path.open("a") as log:
            log.write(marker)
        log = self.log_path.open("ab")
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--store", str(self.store_path),
               "--host", "127.0.0.1", "--port", str(self.port), "--api-port", str(self.api_port)]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, cwd=self.directory, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text().split(marker)[-1]
            for line in text.splitlines():
                if line.startswith("operator API at http://"):
                    self.api_port = int(line.split("http://", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
                if " ready: devices connect to ws://" in line:
                    self.port = int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        raise RuntimeError(f"gateway not ready after {timeout}s:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut of the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait: the graceful shutdown path. Returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        return self.proc.returncode

    def restart(self) -> None:
        self.kill()
        self.launch()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text()

    # -- the store, read directly ---------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        return store.connect(self.store_path)

    def add_device(self, name: str, labels: dict[str, str] | None = None) -> str:
        """Register ``name`` in the store and return its token."""
        conn = self.connect()
        try:
            return registry.add_device(conn, name, labels)
        finally:
            conn.close()

    def readings(self, device: str) -> list[tuple[int, int, dict[str, object]]]:
        """Every stored reading of ``device`` as (seq, ts, values), in insertion order."""
        conn = self.connect()
        try:
            rows = conn.execute(
                "SELECT r.seq, r.ts, r.data FROM readings r JOIN devices d ON d.id = r.device_id "
                "WHERE d.name = ? ORDER BY r.id",
                (device,),
            ).fetchall()
        finally:
            conn.close()
        return [(seq, ts, json.loads(data)) for seq, ts, data in rows]

    def events(self, device: str) -> list[tuple[int, int, str, dict[str, object]]]:
        """Every stored event of ``device`` as (seq, ts, name, data)."""
        conn = self.connect()
        try:
            rows = conn.execute(
                "SELECT e.seq, e.ts, e.name, e.data FROM events e JOIN devices d ON d.id = e.device_id "
                "WHERE d.name = ? ORDER BY e.id",
                (device,),
            ).fetchall()
        finally:
            conn.close()
        return [(seq, ts, name, json.loads(data)) for seq, ts, name, data in rows]
