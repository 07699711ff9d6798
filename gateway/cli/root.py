"""``iotgw``: the parser and the dispatch; each command lives in a module of its own.

``serve`` (serve.py); ``device``, ``status``, ``deadletters`` (device.py); the
operator's ``token``, ``send``, ``devices``, ``readings``, ``watch``
(operator.py, watch.py); ``demo`` (demo.py); ``firmware deploy``
(firmware.py); ``install``, ``uninstall`` (install.py). A handler returns the
exit status, or raises ``ConfigError``, ``RegistryError`` or
``FileNotFoundError``, which ``main`` prints as ``iotgw: ...`` with status 2.

Every sub-command takes ``--config FILE`` (TOML) and honours the ``IOTGW_*``
environment overrides (gateway/config.py); ``--store`` overrides the store path.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.cli.device import add_device_commands
from gateway.cli.install import add_gateway_commands
from gateway.cli.operator import add_operator_commands
from gateway.cli.serve import add_serve_command
from gateway.config import ConfigError
from gateway.store.registry import RegistryError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result: int = args.func(args)
    except (ConfigError, RegistryError, FileNotFoundError) as exc:
        print(f"iotgw: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iotgw", description="IoT telemetry gateway")
    parser.add_argument("--version", action="version", version=f"iotgw {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="TOML configuration file")
    common.add_argument("--store", metavar="PATH", help="SQLite store (overrides [store] path)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    add_serve_command(sub, common)  # gateway/cli/serve.py

    firmware = sub.add_parser("firmware", help="the MicroPython firmware for ESP32 / Pico W boards")
    firmware_sub = firmware.add_subparsers(title="firmware commands", metavar="ACTION")
    deploy = firmware_sub.add_parser(
        "deploy", help="copy the firmware and a config.json to a board (mpremote)"
    )
    deploy.add_argument(
        "--port", required=True, help="the board's serial port, e.g. /dev/ttyACM0 (mpremote's device)"
    )
    deploy.add_argument("--config", required=True, type=Path, help="the board's config.json")
    deploy.add_argument(
        "--mpy", action="store_true", help="precompile modules to .mpy with mpy-cross (less RAM)"
    )
    deploy.add_argument(
        "--dry-run", action="store_true", help="print the mpremote command without running it"
    )
    deploy.set_defaults(func=_firmware_deploy)

    demo = sub.add_parser("demo", help="gateway + simulated Raspberry Pi agents, on this machine")
    demo.add_argument("--dir", default="demo-data", help="where the demo keeps its store and agent files")
    demo.add_argument("--agents", type=int, default=3, help="number of simulated Pi agents (default 3)")
    demo.add_argument("--port", type=int, default=8765, help="device plane port (default 8765, 0 = any)")
    demo.add_argument(
        "--duration", type=float, default=0, help="stop after this many seconds (0 = run until Ctrl-C)"
    )
    demo.set_defaults(func=_demo)

    add_device_commands(sub, common)  # device, status, deadletters (gateway/cli/device.py)
    add_operator_commands(sub, common)  # token, send, devices, readings (gateway/cli/operator.py)
    add_gateway_commands(sub)  # install, uninstall: the systemd service (gateway/cli/install.py)
    return parser


def _firmware_deploy(args: argparse.Namespace) -> int:
    from gateway.cli.firmware import FirmwareError, deploy

    try:
        return deploy(args.port, args.config, compiled=args.mpy, dry_run=args.dry_run)
    except FirmwareError as exc:
        print(f"iotgw firmware deploy: {exc}", file=sys.stderr)
        return 2


def _demo(args: argparse.Namespace) -> int:
    from gateway.cli.demo import run_demo

    return run_demo(directory=args.dir, agents=args.agents, port=args.port, duration=args.duration)


if __name__ == "__main__":
    sys.exit(main())
