"""What ``iotgw demo`` needs around the gateway: its settings, its config file, its console, its children.

- :func:`demo_settings`: the demo's settings from ``--config FILE`` and the ``IOTGW_*``
  environment (InfluxDB, MQTT, TLS... honoured), with the demo's own store, loopback
  host and ports; a taken port is moved to a free one, and the move is said.
- :func:`write_demo_config`: ``<dir>/gateway.toml``, the settings as really bound, which
  every other ``iotgw`` command finds (gateway/cli/common.py) when run from the checkout.
- :class:`Console`: stdout that survives a reader going away (``make demo | head``): the
  first EPIPE stops the demo cleanly instead of a traceback that leaves the agents running.
- :func:`child_options`: Popen options that make each agent and the board die with the demo
  (Linux ``PR_SET_PDEATHSIG``), even when the demo itself is killed with SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from gateway.cli.common import DEMO_CONFIG, load_checked_config, note, port_free
from gateway.cli.tomlfile import dumps
from gateway.config import GatewayConfig

#: Port the demo's operator API asks for first.
DEMO_API_PORT = 8080


def demo_settings(
    config_path: str | None, root: Path, port: int | None, say: Callable[[str], None]
) -> GatewayConfig:
    """The demo's settings: the file's and the environment's, with the demo's store and ports.

    ``port`` None keeps the config's device port (8765 by default). The device and API ports
    move to free ones when taken, and ``say`` is told so. Raises ConfigError for a bad file.
    """
    given = os.environ.get("IOTGW_CONFIG")
    if given and not config_path and Path(given).resolve() != (root / "gateway.toml").resolve():
        note(
            f"IOTGW_CONFIG is set ({given}): the demo ignores it (use --config), and other iotgw "
            f"commands in this shell will use it, not {root / 'gateway.toml'}: unset it to reach the demo"
        )
    config = load_checked_config(config_path)
    config.store.path = str(root / "gateway.sqlite3")
    if config.device.host == "0.0.0.0":
        config.device.host = "127.0.0.1"  # the demo's agents are local; a --config may open it up
    if port is not None:
        config.device.port = port
    if config.device.port and not port_free(config.device.host, config.device.port):
        say(
            f"device port {config.device.port} is taken (another gateway?); the demo uses a free port instead"
        )
        config.device.port = 0
    if config.api.enabled and config.api.port and not port_free(config.api.host, config.api.port):
        say(
            f"operator API port {config.api.port} is taken; the demo's API uses a free port instead "
            "(the banner and demo-data/gateway.toml say which)"
        )
        config.api.port = 0
    return config


def write_demo_config(root: Path, config: GatewayConfig, device_port: int, api_port: int | None) -> Path:
    """Write ``<root>/gateway.toml``: ``config`` with the ports really bound (mode 0600: it may hold
    InfluxDB or MQTT credentials from ``--config``). Returns its path."""
    shown = msgspec.to_builtins(config)
    shown["device"]["port"] = device_port
    if api_port is not None:
        shown["api"]["port"] = api_port
    path = root / "gateway.toml"
    header = (
        "written by `iotgw demo` while it runs: the settings of the demo's gateway, ports as bound.\n"
        f"Other iotgw commands run from the checkout find it ({DEMO_CONFIG}); edits are overwritten:\n"
        "give the demo your own file with `iotgw demo --config FILE` instead."
    )
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(dumps(shown, header), encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


class Console:
    """The demo's stdout. After the reader goes away (EPIPE), output is dropped and ``on_broken`` runs
    once, so the demo stops cleanly and still stops its agents."""

    def __init__(self, on_broken: Callable[[], None] | None = None) -> None:
        self.broken = False
        self.on_broken = on_broken

    def say(self, text: str = "") -> None:
        if self.broken:
            return
        try:
            print(text, flush=True)
        except (BrokenPipeError, ValueError):  # ValueError: stdout already closed
            self.broken = True
            _silence_stdout()
            if self.on_broken is not None:
                self.on_broken()


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's own flush at exit cannot fail either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


_PR_SET_PDEATHSIG = 1


def child_options() -> dict[str, Any]:
    """Popen keyword arguments: the child gets SIGTERM when the demo dies, however it dies (Linux).

    Elsewhere (no prctl) the children stay in the demo's process group, so Ctrl-C still
    reaches them; the demo's own ``finally`` terminates them on every other exit.
    """
    if not sys.platform.startswith("linux"):
        return {}
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved now: the child only calls it
    except (OSError, AttributeError):
        return {}
    parent = os.getpid()

    def die_with_parent() -> None:  # runs in the child between fork and exec: no imports, no locks
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the demo died before prctl took effect
            os._exit(1)

    return {"preexec_fn": die_with_parent}
