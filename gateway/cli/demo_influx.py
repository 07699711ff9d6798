"""``iotgw demo``'s private InfluxDB 1.x: ``influxd`` on loopback ports, when it is installed.

``influx = DemoInflux.start(root, say)`` returns None when there is no ``influxd`` binary
(Debian: ``apt install influxdb``; the demo then runs without forwarding) or when it does not
answer ``/ping`` in time (the reason is in ``<root>/influxdb/influxd.log``, and ``say`` is
told); else a running server, without authentication, bound to 127.0.0.1 only, with its data
under ``<root>/influxdb/`` (kept between runs, like the store) and the database ``iotgw``
created. Its HTTP port is 8086, where the Grafana provisioning in docs/grafana/ points, when
that is free, else any free port. The caller must ``stop()`` it (safe twice); the process also
dies with the demo (``child_options``) if the demo is killed.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from gateway.cli.common import free_loopback_port, port_free
from gateway.cli.demo_support import child_options

__all__ = ["DATABASE", "DemoInflux", "find_influxd"]

START_TIMEOUT_S = 30.0
DATABASE = "iotgw"
#: InfluxDB's own default HTTP port: the Grafana data sources in docs/grafana/ point there.
PREFERRED_PORT = 8086


def find_influxd() -> str | None:
    """The ``influxd`` binary (InfluxDB 1.x, Debian package ``influxdb``), or None."""
    return shutil.which("influxd") or shutil.which("influxd", path="/usr/bin:/usr/sbin:/usr/local/bin")


def _config(directory: Path, port: int, rpc_port: int) -> str:
    return f"""# written by `iotgw demo` at every start: a private InfluxDB 1.x on loopback
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{directory / "meta"}"
  logging-enabled = false
[data]
  dir = "{directory / "data"}"
  wal-dir = "{directory / "wal"}"
  index-version = "inmem"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false
[continuous_queries]
  enabled = false
[logging]
  level = "warn"
  suppress-logo = true
"""


class DemoInflux:
    """An ``influxd`` child process; see the module docstring."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, directory: Path) -> None:
        self.proc = proc
        self.port = port
        self.directory = directory

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "influxdb.conf"

    def query_command(self, measurement: str = "iotgw") -> str:
        """The ``influx`` line that shows the newest readings (the CLI is Debian's ``influxdb-client``)."""
        line = (
            f"influx -port {self.port} -database {DATABASE} -execute "
            f"'SELECT * FROM \"{measurement}\" ORDER BY time DESC LIMIT 5'"
        )
        if shutil.which("influx") is None:
            line += "   (apt install influxdb-client)"
        return line

    @classmethod
    def start(cls, root: Path, say: Callable[[str], None]) -> DemoInflux | None:
        binary = find_influxd()
        if binary is None:
            return None
        directory = root / "influxdb"
        directory.mkdir(parents=True, exist_ok=True)
        ports = [PREFERRED_PORT] if port_free("127.0.0.1", PREFERRED_PORT) else []
        ports.append(free_loopback_port())
        for port in ports:  # the preferred port may be taken between the probe and the bind
            server = cls._launch(binary, directory, port)
            if server is not None:
                try:
                    server.query(f"CREATE DATABASE {DATABASE}")  # a no-op when it exists
                except (OSError, RuntimeError) as exc:
                    say(f"influxd: cannot create the database {DATABASE}: {exc}; the demo runs without it")
                    server.stop()
                    return None
                return server
        say(
            f"influxd did not come up (see {directory / 'influxd.log'}); the demo runs without "
            "InfluxDB (--no-influx silences this)"
        )
        return None

    @classmethod
    def _launch(cls, binary: str, directory: Path, port: int) -> DemoInflux | None:
        config = directory / "influxdb.conf"
        config.write_text(_config(directory, port, free_loopback_port()), encoding="utf-8")
        with (directory / "influxd.log").open("ab") as log:
            proc = subprocess.Popen(
                [binary, "-config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
                **child_options(),
            )
        server = cls(proc, port, directory)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if server.ping():
                return server
            time.sleep(0.1)
        server.stop()
        return None

    def ping(self) -> bool:
        """``/ping`` answers 204 (and it is this process: it is still running)."""
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1.0) as response:
                return bool(response.status == 204 and self.proc.poll() is None)
        except (OSError, urllib.error.URLError):
            return False

    def query(self, q: str) -> dict[str, object]:
        """Run InfluxQL through ``/query``; raises RuntimeError when InfluxDB reports an error."""
        params = urllib.parse.urlencode({"q": q, "db": DATABASE})
        request = urllib.request.Request(f"{self.url}/query?{params}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10.0) as response:
                body: dict[str, object] = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"HTTP {exc.code}: {exc.read()[:300]!r}") from None
        results = body.get("results")
        if "error" in body or (
            isinstance(results, list) and any(isinstance(r, dict) and "error" in r for r in results)
        ):
            raise RuntimeError(str(body)[:300])
        return body

    def stop(self) -> None:
        """SIGTERM (influxd flushes and exits), SIGKILL after 15 s; safe to call twice."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
