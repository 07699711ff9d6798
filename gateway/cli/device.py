"""``iotgw device``, ``iotgw status`` and ``iotgw deadletters``: the store, read and changed directly.

These commands open the SQLite store named by the settings (``--config``,
``--store``) and need no running gateway: ``device add/list/remove/rotate-token``
manage the registry (gateway/store/registry.py), ``status`` shows the store and
the InfluxDB delivery state as persisted, ``deadletters`` lists what InfluxDB
refused or marks it for the running gateway to resend.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.cli.common import config_from_args, open_store
from gateway.integrations.influx.lineprotocol import LineError, check_label
from gateway.store import registry
from gateway.store.readings import reading_counts
from gateway.store.registry import RegistryError
from iotgw_common.clock import now_ms

if TYPE_CHECKING:
    from gateway.store.delivery import Status


def add_device_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``device``, ``status`` and ``deadletters`` on ``iotgw``'s sub-parsers.

    ``common`` has --config/--store. A handler raises ``RegistryError`` (or ``ConfigError``,
    ``FileNotFoundError`` for a missing store) for ``main`` to print; it returns the exit status.
    """
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
    dead.add_argument("--sink", choices=("influx", "mqtt"), default="influx",
                      help="whose dead letters: InfluxDB's (default) or the MQTT bridge's (docs/mqtt.md)")  # fmt: skip
    dead.add_argument("--all", action="store_true", help="include dead letters already resent")
    dead.add_argument(
        "--retry",
        nargs="*",
        type=int,
        metavar="ID",
        help="mark these dead letters (all if no ID is given) for the running gateway to resend",
    )
    dead.set_defaults(func=_deadletters)


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
    conn = open_store(args, config, adds=True)
    try:
        token = registry.add_device(conn, args.name, labels)
    finally:
        conn.close()
    print(f"device {args.name} added. Its token (shown only now; the gateway keeps a hash):\n\n  {token}\n")
    print("Put it in the agent's config ([gateway] token) or the board's config.json (token).")
    return 0


def _device_list(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    conn = open_store(args, config)
    devices = registry.list_devices(conn)
    counts = reading_counts(conn)
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
    conn = open_store(args, config)
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
    conn = open_store(args, config)
    token = registry.rotate_token(conn, args.name)
    conn.close()
    print(
        f"new token for {args.name} (the old one stops working now: a running gateway ends its session, 4005):\n\n  {token}\n"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from gateway.integrations.influx.sink import NAME as INFLUX
    from gateway.integrations.mqtt.sink import NAME as MQTT
    from gateway.store import readings as stored
    from gateway.store.delivery import read_status
    from gateway.store.schema import schema_version

    config = config_from_args(args)
    conn = open_store(args, config)
    try:
        version = schema_version(conn)
        devices = registry.count_devices(conn)
        readings, events = stored.totals(conn)
        influx = read_status(conn, INFLUX)
        mqtt = read_status(conn, MQTT)
    finally:
        conn.close()
    if args.json:
        out = {
            "store": {"path": str(config.store.path), "schema": version, "devices": devices,
                      "readings": readings, "events": events},
            "influx": msgspec.to_builtins(influx),
            "mqtt": msgspec.to_builtins(mqtt),
        }  # fmt: skip
        print(msgspec.json.encode(out).decode())
        return 0
    print(f"store       {config.store.path} (schema {version}): {devices} devices, {readings} readings, "
          f"{events} events")  # fmt: skip
    _print_sink("influx", influx, "set [influx] enabled = true; docs/influxdb.md")
    _print_sink("mqtt", mqtt, "set [mqtt] enabled = true; docs/mqtt.md")
    return 0


def _print_sink(label: str, status: Status, hint: str) -> None:
    """The lines of one delivery sink in ``iotgw status``."""
    if not status.configured:
        print(f"{label:<11} not configured ({hint})")
        return
    now = now_ms()
    oldest = "-" if status.oldest_pending_ts is None else f"{_age(now - status.oldest_pending_ts)} old"
    rows = [
        ("target", status.target),
        ("state", status.state + (f" (as of {_when(status.updated_ms)})" if status.updated_ms else "")),
        ("last success", _when(status.last_success_ms) + _ago(now, status.last_success_ms)),
        ("pending", f"{status.pending_readings} readings, {status.pending_events} events; oldest {oldest}"),
        ("sent", f"{status.sent_readings} readings, {status.sent_events} events in {status.batches} batches"
                 " since start"),
        ("retries", f"{status.retries} now, {status.total_retries} since start"),
        ("last error", f"{status.last_error} ({_when(status.last_error_ms)})" if status.last_error else "-"),
        ("dead letters", f"{status.dead_letters}" + (f", {status.dead_letters_retrying} being resent"
                                                     if status.dead_letters_retrying else "")
                         + (f"  (iotgw deadletters --sink {label})" if status.dead_letters else "")),
    ]  # fmt: skip
    for name, value in rows:
        print(f"{label:<11} {name:<13} {value}")


def _deadletters(args: argparse.Namespace) -> int:
    from gateway.store.delivery import list_dead_letters, mark_for_retry

    sink = args.sink  # the sinks' NAMEs: "influx", "mqtt"

    config = config_from_args(args)
    conn = open_store(args, config)
    try:
        if args.retry is not None:
            count = mark_for_retry(conn, sink, args.retry or None)
            print(f"{count} dead letters marked; the running gateway resends them within seconds "
                  "(see `iotgw deadletters --all`)")  # fmt: skip
            return 0
        letters = list_dead_letters(conn, sink, include_resent=args.all)
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
