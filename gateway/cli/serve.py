"""``iotgw serve``: run the gateway in the foreground until SIGINT or SIGTERM.

Under systemd (``Type=notify``, systemd/iotgw.service) it says ``READY=1`` once
the device plane listens and feeds the watchdog from the event loop, so a stuck
loop gets the service restarted. The gateway itself is wired in gateway/app.py.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import msgspec

from gateway import __version__
from gateway.cli.common import config_from_args
from gateway.config import env_names


def add_serve_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``serve`` on ``iotgw``'s sub-parsers; ``common`` has --config/--store."""
    command = sub.add_parser("serve", parents=[common], help="run the gateway")
    command.add_argument("--host", help="device plane address to bind (overrides [device] host)")
    command.add_argument("--port", type=int, help="device plane port, 0 for any free one")
    command.add_argument("--api-host", help="operator API address to bind (overrides [api] host)")
    command.add_argument("--api-port", type=int, help="operator API port, 0 for any free one ([api] port)")
    command.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    command.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    """Run the gateway the settings and options describe; 0 on a clean stop, 2 if it cannot start."""
    from gateway.app import Gateway
    from gateway.integrations.sink import DeliveryStartError
    from iotgw_common import sdnotify
    from iotgw_common.logs import setup_logging

    config = config_from_args(args)
    if args.host is not None:
        config.device.host = args.host
    if args.port is not None:
        config.device.port = args.port
    if args.api_host is not None:
        config.api.host = args.api_host
    if args.api_port is not None:
        config.api.port = args.api_port
    if args.print_config:
        shown = msgspec.to_builtins(config)
        for secret in ("password", "token"):  # never print credentials
            if shown["influx"][secret]:
                shown["influx"][secret] = "***"
        print(msgspec.json.format(msgspec.json.encode(shown), indent=2).decode())
        print("# environment overrides: " + ", ".join(sorted(env_names())))
        return 0
    setup_logging(config.log.level, config.log.format)

    async def run() -> None:
        gateway = Gateway(config)
        await gateway.start()
        if gateway.api is not None:
            print(
                f"operator API at {gateway.api.url} (OpenAPI: {gateway.api.url}/api/v1/openapi.json)",
                flush=True,
            )
        print(f"iotgw {__version__} ready: devices connect to {gateway.device_url}, store {gateway.store_path}",
              flush=True)  # fmt: skip
        # Under systemd (Type=notify): ready once the device plane listens; the watchdog
        # is fed from this loop, so a stuck loop gets the service restarted.
        sdnotify.notify("READY=1", status=f"devices connect to {gateway.device_url}")
        watchdog = asyncio.create_task(sdnotify.watchdog_loop(), name="systemd-watchdog")
        try:
            await gateway.run_until_signalled()
        finally:
            watchdog.cancel()

    try:
        asyncio.run(run())
    except DeliveryStartError as exc:
        print(f"iotgw: {exc}", file=sys.stderr)
        return 2
    return 0
