"""``iotgw demo``'s private MQTT broker: Mosquitto on a free loopback port, when it is installed.

``broker = DemoBroker.start(root)`` returns None when there is no ``mosquitto`` binary (the
demo then runs without the MQTT plane) or when it does not come up (the reason is in
``<root>/mosquitto/mosquitto.log``); else a running broker, anonymous and bound to 127.0.0.1
only, with its persistence under ``<root>/mosquitto/`` so retained topics survive a restart of
the demo. The caller must ``stop()`` it (safe twice); the process also dies with the demo
(``child_options``) if the demo is killed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from gateway.cli.common import free_loopback_port
from gateway.cli.demo_support import child_options

__all__ = ["DemoBroker", "find_mosquitto"]

START_TIMEOUT_S = 10.0


def find_mosquitto() -> str | None:
    """The ``mosquitto`` binary (Debian puts it in /usr/sbin, often not on a user's PATH), or None."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


class DemoBroker:
    """A Mosquitto child process; see the module docstring."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, directory: Path) -> None:
        self.proc = proc
        self.port = port
        self.directory = directory

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def watch_command(self, prefix: str) -> str:
        """The ``mosquitto_sub`` line that shows every topic of the demo's gateway."""
        line = f"mosquitto_sub -h 127.0.0.1 -p {self.port} -v -t '{prefix}/#' -t 'homeassistant/#'"
        if shutil.which("mosquitto_sub") is None:
            line += "   (apt install mosquitto-clients)"
        return line

    @classmethod
    def start(cls, root: Path) -> DemoBroker | None:
        binary = find_mosquitto()
        if binary is None:
            return None
        directory = root / "mosquitto"
        directory.mkdir(parents=True, exist_ok=True)
        port = free_loopback_port()
        lines = [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {directory}/",
            f"log_dest file {directory / 'mosquitto.log'}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # keep demo-data/ readable: do not drop to the mosquitto user
        config = directory / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        proc = subprocess.Popen(
            [binary, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **child_options(),
        )
        broker = cls(proc, port, directory)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return broker
            except OSError:
                time.sleep(0.05)
        broker.stop()
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
