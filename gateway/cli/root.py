"""``iotgw``: the parser and the dispatch; each command lives in a module of its own.

``serve`` (serve.py); ``device``, ``status``, ``deadletters`` (device.py); the
operator's ``token``, ``send``, ``devices``, ``readings``, ``watch``
(operator.py, watch.py); ``demo`` (demo.py); ``firmware deploy``
(firmware.py); ``install``, ``uninstall`` (install.py); ``tls`` (tls.py). A handler returns the
exit status, or raises ``ConfigError``, ``RegistryError`` or
``FileNotFoundError``, which ``main`` prints as ``iotgw: ...`` with status 2.

Every sub-command takes ``--config FILE`` (TOML) and honours the ``IOTGW_*``
environment overrides (gateway/config.py); ``--store`` overrides the store path.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.cli.board import add_firmware_commands
from gateway.cli.device import add_device_commands
from gateway.cli.install import add_gateway_commands
from gateway.cli.operator import add_operator_commands
from gateway.cli.serve import add_serve_command
from gateway.cli.tls import add_tls_commands
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
    except BrokenPipeError:  # `iotgw readings ... | head`: the reader has what it wanted
        _silence_stdout()
        return 0
    return result


def _silence_stdout() -> None:
    """fd 1 to /dev/null, so the interpreter's flush at exit does not report the broken pipe again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iotgw", description="IoT telemetry gateway")
    parser.add_argument("--version", action="version", version=f"iotgw {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="TOML configuration file")
    common.add_argument("--store", metavar="PATH", help="SQLite store (overrides [store] path)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    add_serve_command(sub, common)  # gateway/cli/serve.py

    add_firmware_commands(sub)  # firmware deploy/flash/provision/logs (gateway/cli/board.py)

    demo = sub.add_parser("demo", help="gateway + simulated Raspberry Pi agents, on this machine")
    demo.add_argument("--dir", default="demo-data", help="where the demo keeps its store and agent files")
    demo.add_argument("--agents", type=int, default=3, help="number of simulated Pi agents (default 3)")
    demo.add_argument(
        "--port", type=int, help="device plane port (default: the config's, 8765; 0 = any free one)"
    )
    demo.add_argument(
        "--config",
        metavar="FILE",
        help="a gateway config whose settings (InfluxDB, MQTT...) the demo uses, with its own store",
    )
    demo.add_argument(
        "--duration", type=float, default=0, help="stop after this many seconds (0 = run until Ctrl-C)"
    )
    demo.add_argument(
        "--no-influx",
        action="store_true",
        help="do not start a private InfluxDB even when influxd is installed (gateway/cli/demo_influx.py)",
    )
    demo.set_defaults(func=_demo)

    add_device_commands(sub, common)  # device, status, deadletters (gateway/cli/device.py)
    add_operator_commands(sub, common)  # token, send, devices, readings (gateway/cli/operator.py)
    add_gateway_commands(sub)  # install, uninstall: the systemd service (gateway/cli/install.py)
    add_tls_commands(sub)  # tls init-ca, issue, show: a site CA and certificates (gateway/cli/tls.py)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from gateway.cli.demo import run_demo

    return run_demo(
        directory=args.dir,
        agents=args.agents,
        port=args.port,
        duration=args.duration,
        config_path=args.config,
        influx=not args.no_influx,
    )


if __name__ == "__main__":
    sys.exit(main())
