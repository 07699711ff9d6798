"""Operator sub-commands of ``iotgw``: tokens (on the store), and commands, devices and
readings (through the HTTP API, stdlib ``urllib`` only, so it runs on any Pi).

    iotgw token add NAME --role read|control     print a new operator token once
    iotgw token list | iotgw token remove NAME
    iotgw send DEVICE COMMAND [key=value ...] [--no-wait] [--timeout S] [--ttl S]
    iotgw devices
    iotgw readings DEVICE [--metric M] [--since 1h] [--follow]

API sub-commands take ``--api URL`` (``IOTGW_API_URL``, else the ``[api]`` of the config
gateway/cli/common.py finds, else http://127.0.0.1:8080) and ``--token TOKEN``
(``IOTGW_TOKEN``). ``send`` exits 0 when the command succeeded, 1 when it failed or
expired, 3 when it is not final yet (its id is printed: ``iotgw send`` again or GET
/api/v1/commands/ID).
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from gateway.cli.client import ApiClient, ApiError
from gateway.cli.common import DEFAULT_API, api_url, config_from_args, open_store
from gateway.store import operators
from iotgw_common.clock import now_ms


def add_operator_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register the sub-commands on ``iotgw``'s sub-parsers; ``common`` has --config/--store."""
    token = sub.add_parser("token", help="operator tokens for the HTTP API").add_subparsers(
        title="token commands", metavar="ACTION"
    )
    add = token.add_parser("add", parents=[common], help="create an operator token and print it once")
    add.add_argument("name")
    add.add_argument("--role", choices=operators.ROLES, default="read", help="read (default) or control")
    add.set_defaults(func=_token_add)
    lst = token.add_parser("list", parents=[common], help="list operators and their roles")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=_token_list)
    rm = token.add_parser("remove", parents=[common], help="delete an operator; its token stops working")
    rm.add_argument("name")
    rm.set_defaults(func=_token_remove)

    api = argparse.ArgumentParser(add_help=False)
    api.add_argument(
        "--api",
        help=f"operator API URL (IOTGW_API_URL; else the found config's [api]; else {DEFAULT_API})",
    )
    api.add_argument("--config", metavar="FILE", help="the gateway's TOML config (finds its API)")
    api.add_argument("--token", default=os.environ.get("IOTGW_TOKEN"), help="operator token (IOTGW_TOKEN)")
    api.add_argument("--json", action="store_true", help="print the API's JSON")

    send = sub.add_parser("send", parents=[api], help="send a command to a device through the API")
    send.add_argument("device")
    send.add_argument("command")
    send.add_argument(
        "args",
        nargs="*",
        metavar="KEY=VALUE",
        help='arguments; VALUE is JSON if it parses (1, true, "x"), else a string',
    )
    send.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for the result (default) or print the id at once",
    )
    send.add_argument("--timeout", type=float, default=10.0, help="seconds the device has to answer (10)")
    send.add_argument(
        "--ttl", type=float, default=60.0, help="seconds it may wait for an offline device (60)"
    )
    send.set_defaults(func=_send)

    devices = sub.add_parser("devices", parents=[api], help="devices, online or not, through the API")
    devices.set_defaults(func=_devices)

    readings = sub.add_parser(
        "readings", parents=[api], help="a device's latest values or a metric's history"
    )
    readings.add_argument("device")
    readings.add_argument("--metric", help="one metric's history (default: the latest value of each)")
    readings.add_argument("--since", default="1h", help="history start: 30s, 15m, 1h, 2d ago, or ms (1h)")
    readings.add_argument("--limit", type=int, default=1000, help="most points to print (1000)")
    readings.add_argument(
        "--follow", "-f", action="store_true", help="keep printing values as they arrive (the live feed)"
    )
    readings.set_defaults(func=_readings)

    watch = sub.add_parser(
        "watch", parents=[api], help="a live table of devices and their latest readings (the live feed)"
    )
    watch.add_argument("--device", action="append", metavar="NAME", help="only this device (repeatable)")
    watch.set_defaults(func=_watch)


# -- tokens ---------------------------------------------------------------------------------


def _open_store(args: argparse.Namespace, *, adds: bool = False) -> Any:
    return open_store(args, config_from_args(args), adds=adds)


def _token_add(args: argparse.Namespace) -> int:
    conn = _open_store(args, adds=True)
    try:
        token = operators.add_operator(conn, args.name, args.role)
    except operators.OperatorError as exc:
        print(f"iotgw: {exc}", file=sys.stderr)
        return 2
    finally:
        conn.close()
    print(
        f"operator {args.name} ({args.role}) added. Its token (shown only now; the gateway keeps a hash):\n"
    )
    print(f"  {token}\n")
    print("Use it as `Authorization: Bearer <token>`, or export IOTGW_TOKEN=<token> for `iotgw send`.")
    return 0


def _token_list(args: argparse.Namespace) -> int:
    conn = _open_store(args)
    try:
        found = operators.list_operators(conn)
    finally:
        conn.close()
    if args.json:
        rows = [
            {"name": o.name, "role": o.role, "created_ms": o.created_ms, "last_used_ms": o.last_used_ms}
            for o in found
        ]
        print(json.dumps(rows))
        return 0
    if not found:
        print("no operator tokens yet: iotgw token add NAME --role read|control")
        return 0
    print(f"{'NAME':<24} {'ROLE':<8} {'CREATED':<20} LAST USED")
    for o in found:
        print(f"{o.name:<24} {o.role:<8} {_when(o.created_ms):<20} {_when(o.last_used_ms)}")
    return 0


def _token_remove(args: argparse.Namespace) -> int:
    conn = _open_store(args)
    try:
        operators.remove_operator(conn, args.name)
    except operators.OperatorError as exc:
        print(f"iotgw: {exc}", file=sys.stderr)
        return 2
    finally:
        conn.close()
    print(f"operator {args.name} removed; its token no longer works")
    return 0


# -- through the API --------------------------------------------------------------------------


def _api_call(fn: Any, args: argparse.Namespace) -> int:
    args.api = api_url(args)
    try:
        result: int = fn(ApiClient(args.api, args.token), args)
    except ApiError as exc:
        print(f"iotgw: {exc}", file=sys.stderr)  # an undeclared command's detail lists what is declared
        return 2
    return result


def parse_args(items: list[str]) -> dict[str, Any]:
    """``["target=led", "value=1", "text=\\"on\\""]`` -> {"target": "led", "value": 1, "text": "on"}."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ApiError(0, f"argument {item!r} is not KEY=VALUE")
        try:
            parsed[key] = json.loads(raw)
        except ValueError:
            parsed[key] = raw
    return parsed


def _send(args: argparse.Namespace) -> int:
    def run(client: ApiClient, args: argparse.Namespace) -> int:
        body = {
            "name": args.command,
            "args": parse_args(args.args),
            "timeout": args.timeout,
            "ttl": args.ttl,
            "wait": args.wait,
        }
        path = f"/api/v1/devices/{urllib.parse.quote(args.device, safe='')}/commands"
        _, command = client.request("POST", path, body=body, timeout=args.timeout + 30)
        if args.json:
            print(json.dumps(command))
        else:
            _print_command(command)
        state = command.get("state")
        return 0 if state == "succeeded" else 1 if state in ("failed", "expired") else 3

    return _api_call(run, args)


def _print_command(command: dict[str, Any]) -> None:
    state = command.get("state")
    head = f"{command.get('device')} {command.get('name')}: {state} (id {command.get('id')}, sent by {command.get('sender')})"
    print(head)
    if state == "succeeded":
        print(
            json.dumps(command.get("value"), indent=2)
            if isinstance(command.get("value"), dict | list)
            else json.dumps(command.get("value"))
        )
    elif state in ("failed", "expired"):
        print(f"error: {command.get('error')}")
    else:
        print(f"not final yet: poll GET /api/v1/commands/{command.get('id')}")


def _devices(args: argparse.Namespace) -> int:
    def run(client: ApiClient, args: argparse.Namespace) -> int:
        devices = client.get("/api/v1/devices")
        if args.json:
            print(json.dumps(devices))
            return 0
        if not devices:
            print("no devices yet: add one with `iotgw device add NAME`")
            return 0
        print(
            f"{'NAME':<20} {'STATE':<8} {'GATEWAY':<16} {'LAST SEEN':<20} {'AGENT':<24} {'COMMANDS':<30} LABELS"
        )
        for d in devices:
            commands = ",".join(c["name"] for c in d["commands"])
            labels = ",".join(f"{k}={v}" for k, v in d["labels"].items())
            state = "online" if d["online"] else "offline"
            print(
                f"{d['name']:<20} {state:<8} {(d.get('gateway') or '-')[:16]:<16} {_when(d['last_seen_ms']):<20} "
                f"{d['agent'][:24]:<24} "
                f"{commands[:30]:<30} {labels}"
            )
        return 0

    return _api_call(run, args)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def since_ms(text: str, now_ms: int) -> int:
    """``1h`` -> an hour before ``now_ms``; a plain integer is taken as ms since the epoch."""
    if text.isdigit():
        return int(text)
    match = _DURATION.match(text.strip())
    if not match:
        raise ApiError(0, f"--since {text!r}: use a duration like 30s, 15m, 1h, 2d, or ms since the epoch")
    return max(0, now_ms - int(float(match.group(1)) * _UNIT_MS[match.group(2)]))


def _watch(args: argparse.Namespace) -> int:
    from gateway.cli.watch import cli_watch

    args.api = api_url(args)
    return cli_watch(args)


def _readings(args: argparse.Namespace) -> int:
    def run(client: ApiClient, args: argparse.Namespace) -> int:
        device = urllib.parse.quote(args.device, safe="")
        now = now_ms()
        if args.metric is None:
            seen: dict[str, int] = {}
            while True:
                latest = client.get(f"/api/v1/devices/{device}/readings/latest")
                if args.json:
                    print(json.dumps(latest), flush=True)
                else:
                    for metric, point in latest["values"].items():
                        if seen.get(metric) != point["ts"]:
                            seen[metric] = point["ts"]
                            print(
                                f"{_when(point['ts'], precise=True)}  {metric:<24} {_value(point['value'])}",
                                flush=True,
                            )
                if not args.follow:
                    return 0
                return _follow(client, args, seen)
        known = _known_metrics(client, device)
        if known and args.metric not in known:
            close = difflib.get_close_matches(args.metric, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ApiError(
                0,
                f"no metric {args.metric} on {args.device}{hint}; this device has: {', '.join(sorted(known))}",
            )
        start = since_ms(args.since, now)
        while True:
            page = client.get(
                f"/api/v1/devices/{device}/readings", metric=args.metric, start=start, limit=args.limit
            )
            for point in page["points"]:
                if args.json:
                    print(json.dumps(point), flush=True)
                else:
                    print(
                        f"{_when(point['ts'], precise=True)}  {args.metric:<24} {_value(point['value'])}",
                        flush=True,
                    )
            if page["points"]:
                start = page["points"][-1]["ts"] + 1
            if not args.follow:
                if page["truncated"]:
                    print(f"(more: --since {start})", file=sys.stderr)
                return 0
            if not page["truncated"]:
                return _follow(client, args, {args.metric: start - 1})

    try:
        return _api_call(run, args)
    except KeyboardInterrupt:
        return 0


def _known_metrics(client: ApiClient, device: str) -> set[str]:
    """The metrics a device declared in its hello plus those in its recent samples (empty: none yet)."""
    record = client.get(f"/api/v1/devices/{device}")
    known = {s["metric"] for s in record.get("sensors", []) if isinstance(s, dict) and "metric" in s}
    latest = client.get(f"/api/v1/devices/{device}/readings/latest")
    return known | set(latest.get("values", {}))


def _follow(client: ApiClient, args: argparse.Namespace, shown: dict[str, int]) -> int:
    """Print the device's values as the live feed delivers them (docs/live.md), until Ctrl-C."""
    import asyncio

    from gateway.cli.watch import FeedError, follow_readings

    device = urllib.parse.quote(args.device, safe="")

    def show(ts: int, metric: str, value: Any) -> None:
        if args.json:
            print(json.dumps({"ts": ts, "metric": metric, "value": value}), flush=True)
        else:
            print(f"{_when(ts, precise=True)}  {metric:<24} {_value(value)}", flush=True)

    def catch_up(shown: dict[str, int]) -> list[tuple[int, str, Any]]:
        if args.metric is None:
            latest = client.get(f"/api/v1/devices/{device}/readings/latest")["values"]
            return sorted((p["ts"], m, p["value"]) for m, p in latest.items())
        points: list[tuple[int, str, Any]] = []
        start = shown.get(args.metric, -1) + 1
        while True:
            page = client.get(
                f"/api/v1/devices/{device}/readings", metric=args.metric, start=start, limit=1000
            )
            points += [(p["ts"], args.metric, p["value"]) for p in page["points"]]
            if not page["truncated"] or not page["points"]:
                return points
            start = page["points"][-1]["ts"] + 1

    try:
        asyncio.run(
            follow_readings(args.api, args.token or "", args.device, args.metric, show, shown, catch_up)
        )
    except FeedError as exc:
        print(f"iotgw: {exc}", file=sys.stderr)
        return 2
    return 0


def _value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool | str) else f"{value:g}"


def _when(value: int | None, *, precise: bool = False) -> str:
    if value is None:
        return "never"
    stamp = dt.datetime.fromtimestamp(value / 1000)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if precise else stamp.strftime("%Y-%m-%d %H:%M:%S")


__all__ = ["DEFAULT_API", "ApiClient", "ApiError", "add_operator_commands", "parse_args", "since_ms"]
