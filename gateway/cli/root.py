"""``iotgw``: run the gateway, the demo, and manage devices.

Every sub-command takes ``--config FILE`` (TOML) and honours the ``IOTGW_*``
environment overrides (gateway/config.py); ``--store`` overrides the store path.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from gateway import __version__, store
from gateway.cli.common import config_from_args
from gateway.cli.operator import add_operator_commands
from gateway.config import ConfigError, env_names
from gateway.integrations.influx.lineprotocol import LineError, check_label
from gateway.store import registry
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

    serve = sub.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--host", help="device plane address to bind (overrides [device] host)")
    serve.add_argument("--port", type=int, help="device plane port, 0 for any free one")
    serve.add_argument("--api-host", help="operator API address to bind (overrides [api] host)")
    serve.add_argument("--api-port", type=int, help="operator API port, 0 for any free one ([api] port)")
    serve.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    serve.set_defaults(func=_serve)

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

    device = sub.add_parser("device", help="register, list and remove devices").add_subparsers(
        title="device commands", metavar="ACTION"
    )
    add = device.add_parser("add", parents=[common], help="register a device and print its token once")
    add.add_argument("name")
    add.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label (repeatable)")
    add.set_defaults(func=_device_add)
    lst = device.add_parser("list", parents=[common], help="list registered devices")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=_device_list)
    rm = device.add_parser("remove", parents=[common], help="remove a device; its token stops working")
    rm.add_argument("name")
    rm.add_argument("--purge", action="store_true", help="also delete its stored readings and events")
    rm.set_defaults(func=_device_remove)
    rot = device.add_parser("rotate-token", parents=[common], help="give a device a new token")
    rot.add_argument("name")
    rot.set_defaults(func=_device_rotate)

    status = sub.add_parser("status", parents=[common], help="the store and the InfluxDB forwarder, now")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)

    dead = sub.add_parser(
        "deadletters", parents=[common], help="points InfluxDB refused: list them, or mark them for resending"
    )
    dead.add_argument("--json", action="store_true", help="machine-readable output")
    dead.add_argument("--all", action="store_true", help="include dead letters already resent")
    dead.add_argument(
        "--retry",
        nargs="*",
        type=int,
        metavar="ID",
        help="mark these dead letters (all if no ID is given) for the running gateway to resend",
    )
    dead.set_defaults(func=_deadletters)

    add_operator_commands(sub, common)  # token, send, devices, readings (gateway/cli/operator.py)
    from gateway.cli.install import add_gateway_commands

    add_gateway_commands(sub)  # install, uninstall: the systemd service (gateway/cli/install.py)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import Gateway
    from gateway.integrations.forwarder import ForwarderStartError
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
    except ForwarderStartError as exc:
        print(f"iotgw: {exc}", file=sys.stderr)
        return 2
    return 0


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


def _device_add(args: argparse.Namespace) -> int:
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RegistryError(f"label {item!r} is not KEY=VALUE")
        try:
            check_label(key, value)
        except LineError as exc:
            raise RegistryError(f"label {item!r}: {exc}") from None
        labels[key] = value
    config = config_from_args(args)
    conn = store.connect(config.store.path, synchronous=config.store.synchronous)
    try:
        token = registry.add_device(conn, args.name, labels)
    finally:
        conn.close()
    print(f"device {args.name} added. Its token (shown only now; the gateway keeps a hash):\n\n  {token}\n")
    print("Put it in the agent's config ([gateway] token) or the board's config.json (token).")
    return 0


def _device_list(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    conn = store.connect(config.store.path, create=False)
    devices = registry.list_devices(conn)
    counts = registry.reading_counts(conn)
    conn.close()
    if args.json:
        rows = [
            {**msgspec.structs.asdict(_DeviceRow.of(d)), "readings": counts.get(d.id, 0)} for d in devices
        ]
        print(msgspec.json.encode(rows).decode())
        return 0
    if not devices:
        print("no devices yet: add one with `iotgw device add NAME`")
        return 0
    header = (
        f"{'NAME':<20} {'LAST SEEN':<20} {'AGENT':<22} {'SEQ':>8} {'READINGS':>10} {'DROPPED':>8}  LABELS"
    )
    print(header)
    for d in devices:
        seen = _when(d.last_seen_ms)
        labels = ",".join(f"{k}={v}" for k, v in d.labels.items())
        print(
            f"{d.name:<20} {seen:<20} {d.agent[:22]:<22} {d.last_seq:>8} {counts.get(d.id, 0):>10} "
            f"{d.dropped:>8}  {labels}"
        )
    return 0


class _DeviceRow(msgspec.Struct):
    name: str
    last_seen_ms: int | None
    agent: str
    stream: str
    last_seq: int
    buffered: int
    dropped: int
    labels: dict[str, str]

    @classmethod
    def of(cls, d: registry.DeviceRecord) -> _DeviceRow:
        return cls(d.name, d.last_seen_ms, d.agent, d.stream, d.last_seq, d.buffered, d.dropped, d.labels)


def _device_remove(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    conn = store.connect(config.store.path, create=False)
    deleted = registry.remove_device(conn, args.name, purge=args.purge)
    conn.close()
    kept = (
        f"deleted {deleted} readings"
        if args.purge
        else "its readings stay in the store (use --purge to delete)"
    )
    print(f"device {args.name} removed; its token no longer works; {kept}")
    return 0


def _device_rotate(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    conn = store.connect(config.store.path, create=False)
    token = registry.rotate_token(conn, args.name)
    conn.close()
    print(f"new token for {args.name} (the old one stops working at its next connection):\n\n  {token}\n")
    return 0


def _status(args: argparse.Namespace) -> int:
    from gateway.integrations.forwarder import read_status

    config = config_from_args(args)
    conn = store.connect(config.store.path, create=False)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        (devices,) = conn.execute("SELECT count(*) FROM devices").fetchone()
        (readings,) = conn.execute("SELECT count(*) FROM readings").fetchone()
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
        influx = read_status(conn)
    finally:
        conn.close()
    if args.json:
        out = {
            "store": {"path": str(config.store.path), "schema": version, "devices": devices,
                      "readings": readings, "events": events},
            "influx": msgspec.to_builtins(influx),
        }  # fmt: skip
        print(msgspec.json.encode(out).decode())
        return 0
    print(f"store       {config.store.path} (schema {version}): {devices} devices, {readings} readings, "
          f"{events} events")  # fmt: skip
    if not influx.configured:
        print("influx      not configured (set [influx] enabled = true; docs/influxdb.md)")
        return 0
    now = int(dt.datetime.now().timestamp() * 1000)
    oldest = "-" if influx.oldest_pending_ts is None else f"{_age(now - influx.oldest_pending_ts)} old"
    rows = [
        ("target", influx.target),
        ("state", influx.state + (f" (as of {_when(influx.updated_ms)})" if influx.updated_ms else "")),
        ("last success", _when(influx.last_success_ms) + _ago(now, influx.last_success_ms)),
        ("pending", f"{influx.pending_readings} readings, {influx.pending_events} events; oldest {oldest}"),
        ("sent", f"{influx.sent_readings} readings, {influx.sent_events} events in {influx.batches} batches"
                 " since start"),
        ("retries", f"{influx.retries} now, {influx.total_retries} since start"),
        ("last error", f"{influx.last_error} ({_when(influx.last_error_ms)})" if influx.last_error else "-"),
        ("dead letters", f"{influx.dead_letters}" + (f", {influx.dead_letters_retrying} being resent"
                                                     if influx.dead_letters_retrying else "")
                         + ("  (iotgw deadletters)" if influx.dead_letters else "")),
    ]  # fmt: skip
    for label, value in rows:
        print(f"influx      {label:<13} {value}")
    return 0


def _deadletters(args: argparse.Namespace) -> int:
    from gateway.integrations.forwarder import list_dead_letters, mark_for_retry

    config = config_from_args(args)
    conn = store.connect(config.store.path, create=False)
    try:
        if args.retry is not None:
            count = mark_for_retry(conn, args.retry or None)
            print(f"{count} dead letters marked; the running gateway resends them within seconds "
                  "(see `iotgw deadletters --all`)")  # fmt: skip
            return 0
        letters = list_dead_letters(conn, include_resent=args.all)
    finally:
        conn.close()
    if args.json:
        print(msgspec.json.encode(letters).decode())
        return 0
    if not letters:
        print("no dead letters")
        return 0
    for d in letters:
        print(f"#{d.id} {d.state} {d.kind} {d.row_id} of {d.device} at {_when(d.ts)}, "
              f"HTTP {d.status or '-'}, {d.attempts} attempt(s)")  # fmt: skip
        print(f"    error: {d.error}")
        print(f"    line:  {d.line[:300]!r}")
    return 0


def _age(ms: int) -> str:
    seconds = max(0, ms) / 1000
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _ago(now: int, ms: int | None) -> str:
    return "" if ms is None else f" ({_age(now - ms)} ago)"


def _when(ms: int | None) -> str:
    if ms is None:
        return "never"
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


if __name__ == "__main__":
    sys.exit(main())
