"""A real RabbitMQ cluster for tests: N nodes with the MQTT plugin, joined on this machine.

with RabbitCluster.start(tmp_path / "rabbit", nodes=2) as cluster:
    cluster.nodes[0].mqtt_url, cluster.nodes[1].mqtt_url   # mqtt://127.0.0.1:<port>
    cluster.running_nodes()                                  # ["fleet1@localhost", ...]

Debian's ``rabbitmq-server`` (3.10, ``.ci/system-deps.sh``) run without its systemd unit:
each node gets its own name (``fleet<i>@localhost``), free AMQP, MQTT and distribution
ports, and its mnesia and log directories under ``directory``. They share an Erlang cookie
(``$HOME/.erlang.cookie`` with HOME pointed at ``directory``) and a private ``epmd`` on a
free port (``ERL_EPMD_PORT``), so nothing collides with another cluster on the machine.
Node 2.. join node 1 with ``rabbitmqctl join_cluster``. A missing binary raises
ServiceMissing: the tests fail loudly instead of skipping. RabbitMQ 3.10's MQTT plugin
speaks MQTT 3.1.1 only (MQTT 5 came in 3.13), and it keeps retained messages per node.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.services import ServiceMissing, _binary, free_port

__all__ = ["RabbitCluster", "RabbitNode"]

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _free_port_any() -> int:
    """A port free on every address: Erlang's distribution and epmd listen on 0.0.0.0, so a port
    another process uses on any address (even 127.0.0.2) would be taken for them."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        port: int = sock.getsockname()[1]
        return port


def _rabbit_binary(name: str) -> str:
    path = RABBIT_BIN / name
    if not path.exists():
        raise ServiceMissing(
            f"{path} is missing: `apt-get install -y rabbitmq-server` (or bash .ci/system-deps.sh)"
        )
    return str(path)


class RabbitNode:
    """One node of the cluster (started by :class:`RabbitCluster`)."""

    def __init__(self, cluster: RabbitCluster, index: int) -> None:
        self.cluster = cluster
        self.name = f"fleet{index}@localhost"
        self.directory = cluster.directory / f"node{index}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = self.directory / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        (self.directory / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        self._pick_ports()

    def _pick_ports(self) -> None:
        self.amqp_port = free_port()
        self.mqtt_port = free_port()
        self.dist_port = _free_port_any()
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = true\n"
            "loopback_users = none\n"
        )

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def env(self) -> dict[str, str]:
        d = self.directory
        return {
            **self.cluster.env(),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
        }

    def launch(self, timeout: float = 90.0, attempts: int = 3) -> None:
        """Start the node and wait until its MQTT listener answers.

        A port picked free can be taken by another process before the node binds it (the node
        then stops with ``{error,address}``): it is started again on new ports, ``attempts`` times.
        """
        for attempt in range(attempts):
            start = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [_rabbit_binary("rabbitmq-server")], cwd=self.directory, env=self.env(),
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            try:
                self.wait_mqtt(timeout)
                return
            except RuntimeError:
                tail = self.log()[start:]
                taken = any(
                    sign in tail for sign in ("{error,address}", "eaddrinuse", "dist_port_already_used")
                )
                if not taken or attempt == attempts - 1:
                    raise
                self.proc.wait(30)
                self._pick_ports()

    def wait_mqtt(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.mqtt_port), 1.0):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: MQTT not answering after {timeout}s:\n{self.log()[-3000:]}")

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -n <node> ...``; raises with its output if it fails."""
        done = subprocess.run(
            [_rabbit_binary("rabbitmqctl"), "-n", self.name, *args], env=self.env(),
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: {done.stdout}{done.stderr}")
        return done.stdout

    def stop(self) -> None:
        """``rabbitmqctl stop``, then the process group is killed if it lingers. Safe twice."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            self.ctl("stop", timeout=30)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class RabbitCluster:
    """``nodes`` RabbitMQ nodes in one cluster; see the module docstring."""

    def __init__(self, directory: Path, nodes: int = 2) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.home = self.directory / "home"
        self.home.mkdir(exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(f"IOTGWFLEET{secrets.token_hex(16)}")
        cookie.chmod(0o400)
        self.epmd_port = _free_port_any()
        self.ctl_dist_port = _free_port_any()
        self.epmd: subprocess.Popen[bytes] | None = None
        self.nodes = [RabbitNode(self, i + 1) for i in range(nodes)]

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **keep,
            "HOME": str(self.home),
            "ERL_EPMD_PORT": str(self.epmd_port),
            # rabbitmqctl's own Erlang node listens on one of these (the default range is shared)
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ctl_dist_port),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ctl_dist_port),
        }

    @classmethod
    @contextlib.contextmanager
    def start(cls, directory: Path, nodes: int = 2) -> Iterator[RabbitCluster]:
        cluster = cls(directory, nodes)
        try:
            cluster.launch()
            yield cluster
        finally:
            cluster.stop()

    def launch(self) -> None:
        """epmd, every node, then each node after the first joins the first."""
        epmd = _binary("epmd", "erlang-base")
        _rabbit_binary("rabbitmq-server")
        for attempt in range(3):  # epmd quits at once (status 0) when its port was taken meanwhile
            if attempt:
                self.epmd_port = _free_port_any()
            if self._start_epmd(epmd):
                break
        else:
            raise RuntimeError(f"epmd would not start: see {self.directory / 'epmd.log'}")
        for node in self.nodes:
            node.launch()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")
            node.wait_mqtt()
        deadline = time.monotonic() + 60
        while set(self.running_nodes()) != {n.name for n in self.nodes}:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster did not form: {self.running_nodes()}")
            time.sleep(0.5)

    def _start_epmd(self, epmd: str) -> bool:
        """Start epmd on ``epmd_port``; True once it listens (the nodes register with it as they start)."""
        with (self.directory / "epmd.log").open("ab") as log:
            self.epmd = subprocess.Popen([epmd, "-port", str(self.epmd_port)], env=self.env(),
                                         stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 30
        while self.epmd.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.epmd_port), 1.0).close()
                return True
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"epmd not listening on {self.epmd_port}") from None
                time.sleep(0.05)
        return False

    def running_nodes(self) -> list[str]:
        """The nodes node 1 sees running in its cluster (``rabbitmqctl cluster_status``)."""
        import json

        status = json.loads(self.nodes[0].ctl("cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", []))

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.kill()
            self.epmd.wait(10)
