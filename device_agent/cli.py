"""``iotgw-agent``: run the agent, or check the wiring of every configured sensor.

Commands::

    iotgw-agent run   --config FILE [--log-level LEVEL]   stream to the gateway until SIGINT/SIGTERM
    iotgw-agent check --config FILE                        read every sensor once, print a table;
                                                           exit 1 if any sensor failed
    iotgw-agent install --gateway URL --token TOKEN [--config FILE] [--dry-run]
                                                           the agent as a systemd service (sudo)
    iotgw-agent uninstall                                  stop and remove the service
    iotgw-agent --version

Exit codes: 0 success, 1 a sensor failed (check), 2 bad command line or configuration.
``python -m device_agent`` and ``python -m device_agent.cli`` are the same program.
Logs are plain ``time LEVEL logger: message`` lines on stdout, without the time under
systemd (journald adds it), or JSON lines with ``--log-format json`` (or
``IOTGW_AGENT_LOG_FORMAT=json``): the gateway's :mod:`iotgw_common.logs`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Sequence
from typing import TextIO

from device_agent.agent import Agent
from device_agent.config import AgentConfig, ConfigError, load_config
from device_agent.hardware import open_hardware
from device_agent.sensors import SensorError
from iotgw_common import sdnotify
from iotgw_common._version import __version__
from iotgw_common.logs import setup_logging

log = logging.getLogger("device_agent")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="iotgw-agent",
        description="iotgw Raspberry Pi agent: stream sensor readings to an iotgw gateway.",
    )
    parser.add_argument("--version", action="version", version=f"iotgw-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="sample sensors and stream them to the gateway")
    check = commands.add_parser("check", help="read every configured sensor once and print the values")
    for sub in (run, check):
        sub.add_argument(
            "--config", "-c", required=True, metavar="FILE", help="agent TOML configuration file"
        )
        sub.add_argument(
            "--log-level",
            default="INFO" if sub is run else "ERROR",
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            help="log level (default: %(default)s)",
        )
        sub.add_argument(
            "--log-format",
            default=os.environ.get("IOTGW_AGENT_LOG_FORMAT", "plain"),
            choices=["plain", "json"],
            help="plain lines (no timestamps under systemd) or JSON lines (default: %(default)s)",
        )
    from device_agent.install import add_install_commands

    add_install_commands(commands)  # install, uninstall (device_agent/install.py)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``iotgw-agent`` console script; exits the process."""
    args = build_parser().parse_args(argv)
    if args.command in ("install", "uninstall"):
        sys.exit(args.func(args))
    setup_logging(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"iotgw-agent: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.command == "check":
        sys.exit(check(config))
    sys.exit(run(config))


def run(config: AgentConfig) -> int:
    """Run the agent until SIGINT or SIGTERM; return the exit code."""

    async def _main() -> None:
        agent = Agent(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop)
        systemd = asyncio.create_task(_notify_systemd(agent), name="systemd-notify")
        try:
            await agent.run()
        finally:
            systemd.cancel()

    try:
        asyncio.run(_main())
    except (OSError, sqlite3.Error) as exc:  # e.g. the buffer directory is not writable
        log.error("cannot run: %s", exc)
        return 1
    return 0


async def _notify_systemd(agent: Agent) -> None:
    """Under systemd (Type=notify): READY=1 once the sensors and the buffer are open and
    sampling starts (``agent.ready``), then feed the watchdog from the event loop."""
    await agent.ready.wait()
    sdnotify.notify(
        "READY=1", status=f"sampling every {agent.interval:g} s, sending to {agent.config.gateway.url}"
    )
    await sdnotify.watchdog_loop()


def check(config: AgentConfig, out: TextIO | None = None) -> int:
    """Build and read every sensor once; print ``metric value unit sensor`` rows. 1 if any failed."""
    stream = sys.stdout if out is None else out
    hardware = open_hardware(config)
    rows: list[tuple[str, str, str, str]] = []
    failed = [f"sensors[{f.position}] {f.type}: {f.error}" for f in hardware.failures]
    try:
        for sensor in hardware.sensors:
            units = {info.metric: info.unit for info in sensor.declare()}
            try:
                values = sensor.read()
            except SensorError as exc:
                failed.append(f"{sensor.label}: {exc}")
                continue
            for metric, value in values.items():
                rows.append((metric, _format(value), units.get(metric, ""), sensor.label))
    finally:
        hardware.close()
    header = ("metric", "value", "unit", "sensor")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = [
        f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}"
        for row in [header, *rows]
    ]
    lines.extend(f"FAILED  {message}" for message in failed)
    summary = f"{len(rows)} values read, {len(failed)} sensors failed"
    if hardware.simulation is not None:
        summary += " (simulated hardware)"
    lines.append(summary)
    print("\n".join(lines), file=stream)
    return 1 if failed else 0


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


if __name__ == "__main__":
    main()
