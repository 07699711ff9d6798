"""The processes under test, started for real: the gateway, the bare server, Mosquitto.

Each target is a subprocess on a free loopback port with its files in a
temporary directory, started by ``start()`` and stopped (SIGTERM, then
SIGKILL) by ``stop()``. ``pid`` is what ``procstat`` reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def raise_nofile() -> int:
    """Raise this process's open-file limit to the hard limit; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _preexec() -> None:  # runs in the child between fork and exec
    raise_nofile()


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTGW_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Target:
    """A subprocess that prints a ready line; subclasses say how to start it."""

    name = "target"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = self.directory / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=_preexec,
            )  # fmt: skip

    def _wait_for(self, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            for line in text.splitlines():
                if marker in line:
                    return line
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def _wait_port(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-3000:]}") from None
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} does not accept connections on port {self.port}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful), SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


GATEWAY_TREE: Path | None = None
"""``--gateway-tree``: run the gateway of this source tree (e.g. a ``git worktree`` of an older
commit) under this bench, for old/new runs alternated in one session."""


GATEWAY_ENV: dict[str, str] = {}
"""``--gateway-env NAME=VALUE``: more environment for every gateway (A/B of a runtime setting)."""
RUNTIME_NOTES: dict[str, list[str]] = {}
"""What each gateway logged at shutdown about its run (garbage collections, event-loop lag,
group commit times: gateway/device/runtime.py, gateway/store/writer.py), by store directory;
the runner puts them in each scenario's JSON."""
_RUNTIME_MARKS = (
    "garbage collector while serving",
    "garbage collections over",
    "event loop lag",
    "event loop stalls",
    "group commits: ",
    "wal checkpoints: ",
)


class GatewayTarget(Target):
    """``python -m gateway.cli serve`` with its store in ``directory``; provision before start."""

    name = "gateway"

    def __init__(self, directory: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(directory)
        self.store_path = self.directory / "gateway.sqlite3"
        self.env = child_env(env)
        if GATEWAY_TREE is not None:
            self.env["PYTHONPATH"] = str(GATEWAY_TREE)
        self.env.update(GATEWAY_ENV)

    def provision(self, count: int, prefix: str = "dev") -> list[tuple[str, str]]:
        """Register ``count`` devices in one transaction (registry.add_devices); (name, token)."""
        names = [f"{prefix}-{i:05d}" for i in range(count)]
        tokens = self.store_call(
            f"registry.add_devices(conn, [f'{prefix}-{{i:05d}}' for i in range({count})])"
        )
        return [(name, tokens[name]) for name in names]

    def store_call(self, expression: str) -> Any:
        """Evaluate ``expression`` over ``conn`` (the store, opened by the gateway's own code, with
        ``registry`` and ``operators`` imported): in this process, or with ``--gateway-tree`` in
        a child process of that tree, so that its schema version is the one that creates the store."""
        code = (
            "import json, sys\n"
            "from gateway import store\n"
            "from gateway.store import operators, registry\n"
            f"conn = store.connect({str(self.store_path)!r})\n"
            f"try:\n    value = {expression}\nfinally:\n    conn.close()\n"
            "sys.stdout.write(json.dumps(value))\n"
        )
        if GATEWAY_TREE is None:
            scope: dict[str, Any] = {}
            from contextlib import redirect_stdout
            from io import StringIO

            out = StringIO()
            with redirect_stdout(out):
                exec(code, scope)
            return json.loads(out.getvalue())
        done = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                              check=True, timeout=120, cwd=self.directory)  # fmt: skip
        return json.loads(done.stdout)

    def start(self, timeout: float = 30.0) -> None:
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--store", str(self.store_path),
               "--host", "127.0.0.1", "--port", "0", "--api-port", "0"]  # fmt: skip
        self._spawn(cmd, self.env)
        line = self._wait_for(" ready: devices connect to ws://", timeout)
        self.port = int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])

    def stop(self, timeout: float = 30.0) -> int | None:
        code = super().stop(timeout)
        with contextlib.suppress(OSError):
            lines = [
                line.split(": ", 1)[-1].strip()
                for line in self.log_path.read_text(errors="replace").splitlines()
                if any(mark in line for mark in _RUNTIME_MARKS)
            ]
            if lines:
                RUNTIME_NOTES[self.directory.name] = lines
                for line in lines:
                    print(f"    [{self.directory.name}] {line}", flush=True)
        return code

    def count_rows(self) -> int:
        conn = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, timeout=30)
        try:
            (rows,) = conn.execute("SELECT count(*) FROM readings").fetchone()
        finally:
            conn.close()
        return int(rows)

    def store_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("gateway.sqlite3*"))


class BareTarget(Target):
    """``bench.bare``: a websockets server that counts frames and acks each one."""

    name = "bare"

    def start(self, timeout: float = 15.0) -> None:
        self._spawn([sys.executable, "-m", "bench.bare", "--host", "127.0.0.1", "--port", "0"], child_env())
        line = self._wait_for("ready port ", timeout)
        self.port = int(line.rsplit(" ", 1)[1])


class RelayTarget(Target):
    """``bench.relay``: the command round trip's floor (HTTP in, a device frame out and back)."""

    name = "relay"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.api_port = 0

    def start(self, timeout: float = 15.0) -> None:
        self._spawn([sys.executable, "-m", "bench.relay", "--host", "127.0.0.1"], child_env())
        words = self._wait_for("ready ws ", timeout).split()
        self.port, self.api_port = int(words[-3]), int(words[-1])


class MosquittoTarget(Target):
    """A private Mosquitto (no systemd) on a free loopback port, anonymous, no persistence."""

    name = "mosquitto"

    @staticmethod
    def available() -> str | None:
        return shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
        )

    def start(self, timeout: float = 15.0) -> None:
        binary = self.available()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto; .ci/system-deps.sh)")
        self.port = free_port()
        conf = self.directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "max_connections -1",
            "max_queued_messages 100000",  # a slow subscriber queues instead of losing messages
            "log_type error",
            "log_type warning",
            "log_dest stdout",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # do not drop privileges: the log is in our temp dir
        conf.write_text("\n".join(lines) + "\n")
        self._spawn([binary, "-c", str(conf)])
        self._wait_port(timeout)
