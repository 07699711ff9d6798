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

from tests.support.services import ServiceMissing, _binary

__all__ = ["RabbitCluster", "RabbitNode"]

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _free_port_any() -> int:
    """A port free on every address, picked **below the ephemeral range** (32768-60999 on Linux).

    Erlang's distribution and epmd listen on 0.0.0.0, so a port another process uses on any
    address would be taken for them. And a port the kernel handed out as ephemeral is the kind an
    outgoing connection of any other process (a busy test suite makes thousands) can take again
    between the check here and the node's bind: seen as ``eaddrinuse`` on node 2's MQTT listener
    and ``nodistribution`` from rabbitmqctl. Ports in 20000-32767 are never handed out that way.
    """
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32767")


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
        self.amqp_port = _free_port_any()
        self.mqtt_port = _free_port_any()
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

    def ctl(self, *args: str, timeout: float = 60.0, attempts: int = 4) -> str:
        """``rabbitmqctl -n <node> ...``; raises with its output if it fails.

        rabbitmqctl starts an Erlang node of its own that listens on one port: each call gets a
        port of its own (a port just used can linger in TIME_WAIT), and a call whose own node could
        not start ("Distribution failed", ``nodistribution``: nothing reached the cluster) is run
        again on another port.
        """
        for attempt in range(attempts):
            env = self.env()
            ctl_port = str(_free_port_any())
            env["RABBITMQ_CTL_DIST_PORT_MIN"] = env["RABBITMQ_CTL_DIST_PORT_MAX"] = ctl_port
            done = subprocess.run(
                [_rabbit_binary("rabbitmqctl"), "-n", self.name, *args], env=env,
                capture_output=True, text=True, timeout=timeout,
            )  # fmt: skip
            if done.returncode == 0:
                return done.stdout
            output = done.stdout + done.stderr
            if "nodistribution" not in output or attempt == attempts - 1:
                raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: {output}")
            time.sleep(0.5)
        raise AssertionError("unreachable")

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
        self.epmd: subprocess.Popen[bytes] | None = None
        self.nodes = [RabbitNode(self, i + 1) for i in range(nodes)]

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **keep,
            "HOME": str(self.home),
            "ERL_EPMD_PORT": str(self.epmd_port),
        }

    @classmethod
    @contextlib.contextmanager
    def start(cls, directory: Path, nodes: int = 2, attempts: int = 3) -> Iterator[RabbitCluster]:
        """Start a cluster, or start it afresh (new directory, new ports) when a start fails.

        What is under test is the gateways on the cluster, not RabbitMQ's start on a busy machine:
        a failed start is said on stdout and retried; the last failure is raised.
        """
        for attempt in range(attempts):
            cluster = cls(Path(directory) / f"attempt{attempt}" if attempt else directory, nodes)
            try:
                cluster.launch()
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                cluster.stop()
                if attempt == attempts - 1:
                    raise
                print(f"\nrabbitmq cluster start {attempt + 1} failed, starting afresh: {str(exc)[:300]}")
                continue
            try:
                yield cluster
            finally:
                cluster.stop()
            return

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
