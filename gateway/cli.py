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

import msgspec

from . import __version__, registry, store
from .config import ConfigError, GatewayConfig, env_names, load_config
from .registry import RegistryError


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
    serve.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    serve.set_defaults(func=_serve)

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
    return parser


def _config(args: argparse.Namespace) -> GatewayConfig:
    config = load_config(args.config)
    if getattr(args, "store", None):
        config.store.path = args.store
    return config


def _serve(args: argparse.Namespace) -> int:
    from .app import Gateway
    from .logs import setup_logging

    config = _config(args)
    if args.host is not None:
        config.device.host = args.host
    if args.port is not None:
        config.device.port = args.port
    if args.print_config:
        print(msgspec.json.format(msgspec.json.encode(config), indent=2).decode())
        print("# environment overrides: " + ", ".join(sorted(env_names())))
        return 0
    setup_logging(config.log.level, config.log.format)

    async def run() -> None:
        gateway = Gateway(config)
        await gateway.start()
        print(f"iotgw {__version__} ready: devices connect to {gateway.device_url}, store {gateway.store_path}",
              flush=True)  # fmt: skip
        await gateway.run_until_signalled()

    asyncio.run(run())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(directory=args.dir, agents=args.agents, port=args.port, duration=args.duration)


def _device_add(args: argparse.Namespace) -> int:
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RegistryError(f"label {item!r} is not KEY=VALUE")
        labels[key] = value
    config = _config(args)
    conn = store.connect(config.store.path, synchronous=config.store.synchronous)
    try:
        token = registry.add_device(conn, args.name, labels)
    finally:
        conn.close()
    print(f"device {args.name} added. Its token (shown only now; the gateway keeps a hash):\n\n  {token}\n")
    print("Put it in the agent's config ([gateway] token) or the board's config.json (token).")
    return 0


def _device_list(args: argparse.Namespace) -> int:
    config = _config(args)
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
    config = _config(args)
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
    config = _config(args)
    conn = store.connect(config.store.path, create=False)
    token = registry.rotate_token(conn, args.name)
    conn.close()
    print(f"new token for {args.name} (the old one stops working at its next connection):\n\n  {token}\n")
    return 0


def _when(ms: int | None) -> str:
    if ms is None:
        return "never"
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


if __name__ == "__main__":
    sys.exit(main())
