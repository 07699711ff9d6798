"""``iotgw serve``: run the gateway in the foreground until SIGINT or SIGTERM.

Under systemd (``Type=notify``, systemd/iotgw.service) it says ``READY=1`` once
the device plane listens and feeds the watchdog from the event loop, so a stuck
loop gets the service restarted. The gateway itself is wired in gateway/app.py.

With ``[tls] cert``/``key`` both ports serve TLS, and SIGHUP reloads the pair for new
connections. Without them, a plane bound beyond loopback gets a loud warning at start
(log and stderr): tokens would cross the network in clear text (docs/security.md).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import sys
from typing import Any

import msgspec

from gateway import __version__
from gateway.cli.common import config_from_args, port_free
from gateway.config import env_names

log = logging.getLogger(__name__)


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
    from iotgw_common.tls import TlsError
    from iotgw_common.urgency import UrgentFirstLoop

    config = config_from_args(args, demo=False)  # serve IS the gateway: no demo config
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
    setup_logging(config.log.level, config.log.format, background=True)

    async def run() -> None:
        gateway = Gateway(config)
        await gateway.start()
        _warn_cleartext(gateway)  # loud: log and stderr (docs/security.md)
        _reload_tls_on_sighup(gateway)
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
        # the urgent lane: the command plane's callbacks run before the queued device frames
        with asyncio.Runner(loop_factory=UrgentFirstLoop) as runner:
            runner.run(run())
    except (DeliveryStartError, TlsError) as exc:
        print(f"iotgw: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _BIND_ERRORS:
            raise
        print(f"iotgw: {_bind_failure(exc, config)}", file=sys.stderr)
        return 2
    return 0


_BIND_ERRORS = (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL)


def _bind_failure(exc: OSError, config: Any) -> str:
    """Which port could not be had, and what to do about it (no traceback)."""
    planes = [
        ("device plane", config.device.host, config.device.port, "--port or [device] port"),
    ]
    if config.api.enabled:
        planes.append(("operator API", config.api.host, config.api.port, "--api-port or [api] port"))
    taken = [p for p in planes if p[2] and not port_free(p[1], p[2])] or planes
    reason = {
        errno.EADDRINUSE: "the address is already in use (another gateway, or `iotgw demo`, running?)",
        errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
        errno.EADDRNOTAVAIL: "that address is not one of this machine's",
    }[exc.errno or 0]
    where = "; ".join(
        f"the {name} on {host}:{port} (change it with {how})" for name, host, port, how in taken
    )
    return f"cannot listen: {reason}: {where}. `ss -ltnp` shows who holds a port"


def _warn_cleartext(gateway: Any) -> None:
    """Warn, in the log and on stderr, for each plane the started ``gateway`` serves in clear
    text on a non-loopback address (0.0.0.0 included)."""
    from iotgw_common.tls import is_loopback

    config = gateway.config
    if gateway.tls is not None:
        return
    planes = [
        (
            "device plane",
            "ws://",
            config.device.host,
            gateway.devices.port,
            "device tokens, readings and commands",
        )
    ]
    if gateway.api is not None and gateway.api.server is not None:
        api_port = gateway.api.server.port
        planes.append(("operator API", "http://", config.api.host, api_port, "operator tokens and commands"))
    for name, scheme, host, port, what in planes:
        if is_loopback(host):
            continue
        message = (
            f"SECURITY WARNING: the {name} serves {scheme} (clear text) on {host or '*'}:{port}, reachable "
            f"from other machines: {what} cross the network readable and alterable by anyone on the path. "
            "Set [tls] cert and key (iotgw tls init-ca / issue), or bind 127.0.0.1 behind a TLS reverse "
            "proxy: docs/security.md"
        )
        log.warning("%s", message)
        print(message, file=sys.stderr, flush=True)


def _reload_tls_on_sighup(gateway: Any) -> None:
    """SIGHUP: load ``[tls] cert``/``key`` again into the context both ports use.

    New connections get the new certificate; open ones keep theirs. A pair that does
    not load is logged and the running one stays. Without TLS, SIGHUP is logged and ignored
    (rather than ending the process, its default).
    """
    import signal

    from iotgw_common.tls import TlsError, reload_server_context

    settings = gateway.config.tls

    def reload() -> None:
        if gateway.tls is None:
            log.info("SIGHUP: no [tls] certificate configured, nothing to reload")
            return
        try:
            reload_server_context(gateway.tls, settings.cert, settings.key)
        except TlsError as exc:
            log.error("SIGHUP: TLS certificate not reloaded, the previous one stays in use: %s", exc)
            return
        log.info("SIGHUP: TLS certificate reloaded from %s (new connections use it)", settings.cert)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
