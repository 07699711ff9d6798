"""Real InfluxDB 1.x and VictoriaMetrics servers for tests, on free loopback ports.

with InfluxDB1.start(tmp_path / "influx") as influx:
    influx.create_database("iotgw")
    influx.query("SELECT * FROM iotgw", db="iotgw")
    influx.stop(); influx.launch()          # an outage, same port and data

with VictoriaMetrics.start(tmp_path / "vm") as vm:
    vm.export('{__name__=~"iotgw_.*"}')

Both binaries come from Debian (``apt-get install influxdb victoria-metrics``,
``.ci/system-deps.sh``). A missing binary raises ServiceMissing: the tests that
need a server fail loudly instead of skipping. The Debian systemd units are
never used; each instance lives in its own temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class ServiceMissing(RuntimeError):
    """A server binary the tests need is not installed (run .ci/system-deps.sh)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _binary(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise ServiceMissing(
            f"{name} is not installed: `apt-get install -y {package}` (or bash .ci/system-deps.sh)"
        )
    return path


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10.0) -> tuple[int, bytes]:  # fmt: skip
    """One HTTP request; returns (status, body) for any status, raises OSError if unreachable."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class _Server:
    name = "server"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.directory / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def launch(self, timeout: float = 20.0) -> None:
        """Start (again, on the same port and data) and wait until it answers."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self._command(), cwd=self.directory, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            with contextlib.suppress(OSError):
                if self._ready():
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM and wait (SIGKILL past ``timeout``); safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class InfluxDB1(_Server):
    """``influxd`` (InfluxDB 1.x) with a temp config: data, meta and WAL under ``directory``."""

    name = "influxd"

    def __init__(self, directory: Path, *, auth: bool = False) -> None:
        super().__init__(directory)
        self.binary = _binary("influxd", "influxdb")
        self.auth = auth
        self.admin = ("admin", "admin-secret")
        self.rpc_port = free_port()
        self.config_path = self.directory / "influxdb.conf"
        d = self.directory
        self.config_path.write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d / "meta"}"
  logging-enabled = false
[data]
  dir = "{d / "data"}"
  wal-dir = "{d / "wal"}"
  index-version = "inmem"
  query-log-enabled = false
  wal-fsync-delay = "0s"
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = {"true" if auth else "false"}
  log-enabled = false
  pprof-enabled = false
[continuous_queries]
  enabled = false
[logging]
  level = "warn"
  suppress-logo = true
"""
        )

    @classmethod
    @contextlib.contextmanager
    def start(cls, directory: Path, *, auth: bool = False) -> Iterator[InfluxDB1]:
        server = cls(directory, auth=auth)
        server.launch()
        try:
            if auth:  # the first user may be created without credentials
                server.query(
                    f"CREATE USER {server.admin[0]} WITH PASSWORD '{server.admin[1]}' WITH ALL PRIVILEGES",
                    auth=None,
                )
            yield server
        finally:
            server.stop()

    def _command(self) -> list[str]:
        return [self.binary, "-config", str(self.config_path)]

    def _ready(self) -> bool:
        status, _ = http("GET", f"{self.url}/ping", timeout=1.0)
        return status == 204

    def query(self, q: str, db: str | None = None, *, auth: tuple[str, str] | bool | None = True,
              epoch: str = "ms") -> dict[str, Any]:  # fmt: skip
        """Run InfluxQL through ``/query``; returns the decoded JSON, raises on an error."""
        params = {"q": q, "epoch": epoch}
        if db:
            params["db"] = db
        if auth is True:
            auth = self.admin if self.auth else None
        if auth:
            params["u"], params["p"] = auth
        status, body = http("POST", f"{self.url}/query?" + urllib.parse.urlencode(params))
        result: dict[str, Any] = json.loads(body or b"{}")
        if status != 200 or any("error" in r for r in result.get("results", [])) or "error" in result:
            raise RuntimeError(f"InfluxQL {q!r}: HTTP {status}: {body[:500]!r}")
        return result

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def rows(self, q: str, db: str) -> list[dict[str, Any]]:
        """A SELECT's rows as dicts (column -> value), with each series' tags merged in."""
        out: list[dict[str, Any]] = []
        for result in self.query(q, db)["results"]:
            for series in result.get("series", []):
                tags = series.get("tags", {})
                for values in series["values"]:
                    out.append({**tags, **dict(zip(series["columns"], values, strict=True))})
        return out

    def count(self, measurement: str, field: str, db: str) -> int:
        rows = self.rows(f'SELECT count("{field}") FROM "{measurement}"', db)
        return int(rows[0]["count"]) if rows else 0

    def write(self, body: str, db: str, precision: str = "ms") -> tuple[int, bytes]:
        params = {"db": db, "precision": precision}
        if self.auth:
            params["u"], params["p"] = self.admin
        return http("POST", f"{self.url}/write?" + urllib.parse.urlencode(params), body.encode())


class VictoriaMetrics(_Server):
    """``victoria-metrics`` single node; accepts ``/api/v2/write`` and exports what it stored."""

    name = "victoria-metrics"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.binary = _binary("victoria-metrics", "victoria-metrics")

    @classmethod
    @contextlib.contextmanager
    def start(cls, directory: Path) -> Iterator[VictoriaMetrics]:
        server = cls(directory)
        server.launch()
        try:
            yield server
        finally:
            server.stop()

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.directory / 'data'}",
            "-retentionPeriod=100y",
            "-search.disableCache",
            "-loggerLevel=WARN",
        ]

    def _ready(self) -> bool:
        status, _ = http("GET", f"{self.url}/health", timeout=1.0)
        return status == 200

    def flush(self) -> None:
        """Make recently written samples searchable now (VM buffers them for a second)."""
        http("GET", f"{self.url}/internal/force_flush")

    def export(self, match: str) -> list[dict[str, Any]]:
        """``/api/v1/export`` for a series selector: one dict per series (metric, values, timestamps)."""
        self.flush()
        params = urllib.parse.urlencode({"match[]": match, "start": "0"})
        status, body = http("GET", f"{self.url}/api/v1/export?{params}")
        if status != 200:
            raise RuntimeError(f"export {match!r}: HTTP {status}: {body[:500]!r}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]


class Mosquitto(_Server):
    """``mosquitto`` (Debian package) on a free loopback port, with persistence under ``directory``.

    ``acl``: the text of an ACL file (then clients log in: ``passwords`` maps user -> password);
    without it anonymous clients may do anything. ``stop()``/``launch()`` is an outage with the
    same port, retained messages and persistent sessions.
    """

    name = "mosquitto"

    def __init__(self, directory: Path, *, acl: str | None = None,
                 passwords: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(directory)
        self.binary = _binary("mosquitto", "mosquitto")
        self.config_path = self.directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.directory}/",
            "max_queued_messages 1000000",
            "log_type error",
            "log_type warning",
            "log_dest stdout",
        ]
        if acl is None:
            lines.append("allow_anonymous true")
        else:
            (self.directory / "acl").write_text(acl)
            pw = self.directory / "passwords"
            pw.write_text("".join(f"{user}:{secret}\n" for user, secret in (passwords or {}).items()))
            pw.chmod(0o600)
            subprocess.run([_binary("mosquitto_passwd", "mosquitto"), "-U", str(pw)], check=True)
            lines += ["allow_anonymous false", f"password_file {pw}", f"acl_file {self.directory / 'acl'}"]
        if os.geteuid() == 0:
            lines.append("user root")  # keep our temp dir readable: do not drop privileges
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @classmethod
    @contextlib.contextmanager
    def start(cls, directory: Path, *, acl: str | None = None,
              passwords: dict[str, str] | None = None) -> Iterator[Mosquitto]:  # fmt: skip
        server = cls(directory, acl=acl, passwords=passwords)
        server.launch()
        try:
            yield server
        finally:
            server.stop()

    def _command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    def _ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
            return True
