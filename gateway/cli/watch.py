"""Terminal clients of the live feed: ``iotgw watch`` and ``iotgw readings DEVICE --follow``.

:func:`feed_messages` is the feed client (docs/live.md): it subscribes with the operator
token in its first message, yields every message, and when the connection drops it
reconnects with ``after=<last id>`` so that nothing is missed while the gateway keeps
the messages (it yields a ``{"type": "gap"}`` message when it could not resume).
``watch`` draws a table of devices and their latest values with ``rich.live.Live``,
updated in place as messages arrive.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from iotgw_common.clock import now_ms

FEED_PATH = "/api/v1/feed"
UNAUTHORIZED = 4401


class FeedError(RuntimeError):
    """The feed refused us for good (bad token, bad request); retrying would not help."""


def feed_url(api_url: str) -> str:
    """``http://host:8080`` -> ``ws://host:8080/api/v1/feed`` (https -> wss)."""
    base = api_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + FEED_PATH
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + FEED_PATH
    return base + FEED_PATH


async def feed_messages(
    api_url: str,
    token: str,
    *,
    devices: list[str] | None = None,
    metrics: list[str] | None = None,
    types: list[str] | None = None,
    on_state: Callable[[str], None] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Every feed message, in order, across reconnects. Raises FeedError on a refused token."""
    url = feed_url(api_url)
    after: int | None = None
    epoch: str | None = None
    backoff = 0.25
    while True:
        try:
            async with connect(url, open_timeout=10, compression=None, max_size=2**22) as ws:
                subscribe: dict[str, Any] = {"type": "subscribe", "token": token}
                for key, value in (("devices", devices), ("metrics", metrics), ("types", types)):
                    if value:
                        subscribe[key] = value
                if after is not None:
                    subscribe.update(after=after, epoch=epoch)
                await ws.send(json.dumps(subscribe))
                async for raw in ws:
                    message = json.loads(raw)
                    if message.get("type") == "subscribed":
                        backoff = 0.25
                        if on_state is not None:
                            on_state("live")
                        if after is not None and not message["resumed"]:
                            yield {"type": "gap", "after": after}
                        epoch = message["epoch"]
                        if after is None or not message["resumed"]:
                            after = message["last_id"]
                        yield message
                        continue
                    after = message.get("id", after)
                    yield message
                code = ws.close_code
                reason = ws.close_reason
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            reason = exc.rcvd.reason if exc.rcvd is not None else ""
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            code, reason = None, str(exc) or type(exc).__name__
        except InvalidURI as exc:
            raise FeedError(f"bad API URL {api_url!r}: {exc}") from None
        if code == UNAUTHORIZED:
            raise FeedError(f"the live feed refused the token ({reason})")
        if code is not None and 4400 <= code < 4500 and code != 4429:
            raise FeedError(f"the live feed closed the connection: {code} {reason}")
        if on_state is not None:
            on_state(f"reconnecting ({code or reason})")
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)


# -- iotgw readings DEVICE --follow --------------------------------------------------------------


async def follow_readings(
    api_url: str,
    token: str,
    device: str,
    metric: str | None,
    show: Callable[[int, str, Any], None],
    shown: dict[str, int],
    catch_up: Callable[[dict[str, int]], list[tuple[int, str, Any]]],
) -> None:
    """Call ``show(ts, metric, value)`` for every value of ``device`` as it is committed.

    ``shown`` maps each metric to the newest ts already printed; once subscribed (and after
    every reconnect) ``catch_up(shown)`` (blocking, from the API's history) returns what was
    committed since, so nothing falls between the history printed before and the feed. Feed
    values stamped at or before what history showed are taken as already printed.
    """
    boundary = dict(shown)
    async for message in feed_messages(
        api_url, token, devices=[device], metrics=[metric] if metric else None, types=["readings"]
    ):
        if message["type"] == "gap":
            print("(the live feed lost track while disconnected: newest values only until now)",
                  file=sys.stderr, flush=True)  # fmt: skip
            continue
        if message["type"] == "subscribed":
            before = dict(boundary)
            for ts, name, value in await asyncio.to_thread(catch_up, before):
                if ts > before.get(name, -1):
                    show(ts, name, value)
                    boundary[name] = max(ts, boundary.get(name, -1))
            continue
        for sample in message["samples"]:
            for name, value in sample["values"].items():
                if sample["ts"] > boundary.get(name, -1):
                    show(sample["ts"], name, value)


# -- iotgw watch ----------------------------------------------------------------------------------


@dataclass(slots=True)
class DeviceRow:
    name: str
    online: bool = False
    last_seen_ms: int | None = None
    seq: int = 0
    agent: str = ""
    buffered: int = 0
    dropped: int = 0
    values: dict[str, Any] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    changed_ms: int = 0


class WatchState:
    """What the table shows; ``apply`` folds in one feed message."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceRow] = {}
        self.feed = "connecting"
        self.last_event = ""
        self.messages = 0

    def load(self, devices: list[dict[str, Any]], latest: dict[str, dict[str, Any]]) -> None:
        for d in devices:
            row = self.devices.setdefault(d["name"], DeviceRow(d["name"]))
            row.online = d["online"]
            row.last_seen_ms = d["last_seen_ms"]
            row.seq = d.get("last_seq", 0)
            row.agent = d["agent"]
            row.buffered, row.dropped = d["buffered"], d["dropped"]
            row.units = {s["metric"]: s.get("unit", "") for s in d.get("sensors", [])}
            row.values.update({m: p["value"] for m, p in latest.get(d["name"], {}).items()})

    def apply(self, m: dict[str, Any]) -> None:
        self.messages += 1
        if m["type"] in ("gap", "subscribed"):
            return
        row = self.devices.setdefault(m["device"], DeviceRow(m["device"]))
        kind = m["type"]
        if kind == "readings":
            row.seq = m["seq"]
            row.last_seen_ms = m["at"]
            for sample in m["samples"]:
                row.values.update(sample["values"])
            row.changed_ms = m["at"]
        elif kind == "event":
            row.seq = m["seq"]
            row.last_seen_ms = m["at"]
            data = " ".join(f"{k}={_value(v)}" for k, v in m.get("data", {}).items())
            self.last_event = f"{_clock(m['ts'])} {m['device']}: {m['name']} {data}".rstrip()
        elif kind == "device":
            if "online" in m:
                row.online = m["online"]
                row.last_seen_ms = m["at"]
            for key in ("agent", "buffered", "dropped", "last_seen_ms"):
                if key in m:
                    setattr(row, key, m[key])
            if "sensors" in m:
                row.units = {s["metric"]: s.get("unit", "") for s in m["sensors"]}
        elif kind == "command":
            c = m["command"]
            outcome = c.get("error") or (json.dumps(c.get("value")) if c["state"] == "succeeded" else "")
            self.last_event = (
                f"{_clock(m['at'])} {m['device']}: command {c['name']} {c['state']} {outcome}".rstrip()
            )

    def render(self, api_url: str) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        now = now_ms()
        online = sum(1 for r in self.devices.values() if r.online)
        table = Table(expand=True, header_style="bold", pad_edge=False, show_edge=False)
        table.add_column("device", style="bold", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("last seen", justify="right", no_wrap=True)
        table.add_column("seq", justify="right", no_wrap=True)
        table.add_column("buf/drop", justify="right", no_wrap=True)
        table.add_column("latest readings", ratio=1)
        for row in sorted(self.devices.values(), key=lambda r: (not r.online, r.name)):
            state = Text("● online", style="green") if row.online else Text("○ offline", style="dim")
            fresh = row.changed_ms and now - row.changed_ms < 1500
            values = Text()
            for i, (metric, value) in enumerate(sorted(row.values.items())):
                if i:
                    values.append("  ")
                values.append(f"{metric} ", style="dim")
                unit = row.units.get(metric) or ""
                values.append(
                    _value(value) + (f" {unit}" if unit else ""), style="bold cyan" if fresh else ""
                )
            table.add_row(row.name, state, _ago(now, row.last_seen_ms), str(row.seq or "-"),
                          f"{row.buffered}/{row.dropped}", values)  # fmt: skip
        feed_style = "green" if self.feed == "live" else "yellow"
        head = Text.assemble(
            ("iotgw watch ", "bold"), (api_url, "dim"), "  feed ", (self.feed, feed_style),
            f"  {online}/{len(self.devices)} online  ", (dt.datetime.now().strftime("%H:%M:%S"), "dim"),
        )  # fmt: skip
        parts: list[Any] = [head, table]
        if self.last_event:
            parts.append(Text(self.last_event, style="dim"))
        parts.append(Text("Ctrl-C to quit", style="dim"))
        return Group(*parts)


async def watch(api_url: str, token: str, devices: list[str] | None, load: Callable[[], Any]) -> None:
    """Run the live table until Ctrl-C. ``load()`` (blocking) returns (devices, latest per device)."""
    from rich.console import Console
    from rich.live import Live

    state = WatchState()
    listed, latest = await asyncio.to_thread(load)
    state.load(listed, latest)

    def on_state(text: str) -> None:
        state.feed = text

    console = Console()
    with Live(state.render(api_url), console=console, refresh_per_second=8, transient=False) as live:
        dirty = asyncio.Event()

        async def consume() -> None:
            async for message in feed_messages(api_url, token, devices=devices, on_state=on_state):
                if message["type"] == "gap":
                    reloaded, latest_now = await asyncio.to_thread(load)
                    state.load(reloaded, latest_now)
                state.apply(message)
                dirty.set()

        consumer = asyncio.create_task(consume())
        try:
            while not consumer.done():
                with_timeout = asyncio.ensure_future(dirty.wait())
                await asyncio.wait({consumer, with_timeout}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                with_timeout.cancel()
                dirty.clear()
                live.update(state.render(api_url))
                await asyncio.sleep(0.1)  # at most ~10 redraws a second, however fast readings come
            consumer.result()
        finally:
            consumer.cancel()


def cli_watch(args: Any) -> int:
    """``iotgw watch``: args has api, token, device (list or None), json."""
    import urllib.parse

    from gateway.cli.client import ApiClient, ApiError

    client = ApiClient(args.api, args.token)

    def load() -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        listed = client.get("/api/v1/devices")
        if args.device:
            listed = [d for d in listed if d["name"] in args.device]
        latest = {
            d["name"]: client.get(
                f"/api/v1/devices/{urllib.parse.quote(d['name'], safe='')}/readings/latest"
            )["values"]
            for d in listed
        }
        return listed, latest

    async def raw() -> None:  # --json: every feed message as one JSON line, for scripts and jq
        async for message in feed_messages(args.api, args.token or "", devices=args.device):
            print(json.dumps(message), flush=True)

    try:
        asyncio.run(raw() if args.json else watch(args.api, args.token or "", args.device, load))
    except KeyboardInterrupt:
        return 0
    except (ApiError, FeedError) as exc:
        print(f"iotgw watch: {exc}", file=sys.stderr)
        return 2
    return 0


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _clock(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S")


def _ago(now: float, ms: int | None) -> str:
    if ms is None:
        return "never"
    seconds = max(0.0, (now - ms) / 1000)
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


__all__ = ["FeedError", "WatchState", "cli_watch", "feed_messages", "feed_url", "follow_readings", "watch"]
