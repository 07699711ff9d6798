"""``iotgw install`` / ``iotgw uninstall``: the gateway's side of the shared installer.

The installer itself (plan, executor, unit files) lives in :mod:`iotgw_common.install`,
which the agent uses too; this module adds what only the gateway knows: its config file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.cli.common import load_checked_config
from gateway.config import ConfigError
from iotgw_common.install import GATEWAY, InstallError, Layout, add_commands

_GATEWAY_CONFIG = """\
# iotgw gateway configuration, written by `iotgw install` (every key: README.md,
# "Configuration reference"). `sudo systemctl restart iotgw` after a change.

[device]
host = "0.0.0.0"            # the device plane: ws://THIS-HOST:8765/v1/device
port = 8765

[store]
path = "{store}"
synchronous = "FULL"        # NORMAL writes less to an SD card, see docs/operations.md

[api]
host = "127.0.0.1"          # the operator API and web page; "0.0.0.0" serves the LAN (TLS in front)
port = 8080

[log]
level = "INFO"
format = "plain"            # or "json"
"""


def gateway_config_text(args: argparse.Namespace, layout: Layout, existing: Path | None) -> str:
    """The gateway's config file: ``--config FILE`` as it is (validated), or a default one."""
    store = layout.state_path(GATEWAY)
    if not args.config:
        return (
            existing.read_text(encoding="utf-8")
            if existing is not None
            else _GATEWAY_CONFIG.format(store=store)
        )
    try:
        config = load_checked_config(args.config, environ={})
        text = Path(args.config).read_text(encoding="utf-8")
    except ConfigError as exc:
        raise InstallError(str(exc)) from None
    if config.store.path != str(store):
        print(f"note: {args.config} has store.path {config.store.path}; the service uses {store} "
              f"(the unit sets {GATEWAY.state_env}: only the state directory is writable)")  # fmt: skip
    return text


def add_gateway_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``install`` and ``uninstall`` to the ``iotgw`` command line."""

    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--config",
            metavar="FILE",
            help="a gateway config to install (default: a new one, device port 8765)",
        )

    add_commands(sub, GATEWAY, options, gateway_config_text)
