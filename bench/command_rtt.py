"""Command round trip through the operator HTTP API while ingest runs at half its ceiling (issue #5).

``python -m bench command_rtt`` (after ``ingest`` in the same run it reuses that
ceiling; alone it measures a short one first). One extra device, the responder,
declares ``ping`` and answers each command at once; an operator client sends
``POST /api/v1/devices/<responder>/commands {"name": "ping"}`` with ``wait``,
one after another, through the measurement window, over a keep-alive HTTP
connection. The round trip is the client's: HTTP request -> command logged
(durably) -> sent -> device result -> logged -> HTTP response. The gateway's
own ``sent -> result`` histogram (``/metrics``) is reported beside it.

Registered with ``@scenario`` (``bench/registry.py``); ``bench/runner.py`` imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from .drive import (
    AGENT_WINDOW,
    Measurement,
    Sizes,
    check_durability,
    drive,
    fmt_ms,
    load_spec,
    sizes,
    start_gateway,
)
from .registry import Context, Result, scenario
from .stats import Histogram
from .targets import GatewayTarget, RelayTarget
from .workload import Shared

RESPONDER = "rtt-responder"
COMMAND_INTERVAL_S = 0.05
"""One command every 50 ms at most: 200-300 round trips in a 10-15 s window, enough for a p99."""


class Responder:
    """A device on its own thread and loop: hello with ``ping`` declared, then answers every command."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.answered = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._run()), name="rtt-responder", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the responder device did not get its welcome")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _run(self) -> None:
        from websockets.asyncio.client import connect

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        headers = {"Authorization": f"Bearer {self.token}"}
        async with connect(self.url, additional_headers=headers, compression=None) as ws:
            hello = {
                "type": "hello",
                "stream": "rtt",
                "agent": "bench-responder/1",
                "commands": [{"name": "ping"}],
            }
            await ws.send(json.dumps(hello))
            welcome = json.loads(await ws.recv())
            assert welcome["type"] == "welcome", welcome
            self._ready.set()

            async def answer() -> None:
                async for raw in ws:
                    message = json.loads(raw)
                    if message.get("type") == "command":
                        self.answered += 1
                        await ws.send(
                            json.dumps({"type": "result", "id": message["id"], "ok": True, "value": "pong"})
                        )

            task = asyncio.create_task(answer())
            await self._stop.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class CommandClient:
    """The companion of ``drive``: sends commands through the measurement window, one at a time,
    at most one every ``interval_s`` (a steady trickle, so that the commands do not become the load)."""

    def __init__(
        self, shared: Shared | None, port: int, token: str, interval_s: float = COMMAND_INTERVAL_S
    ) -> None:
        self.shared = shared
        self.port = port
        self.token = token
        self.interval_s = interval_s
        self.hist = Histogram()
        self.states: dict[str, int] = {}
        self.http_errors = 0
        self._thread = threading.Thread(target=self._run, name="rtt-client", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> dict[str, Any]:
        if self._thread.ident is not None:  # idle(): run in the caller's thread
            self._thread.join(120)
        return {"commands": self.hist.count, "states": self.states, "http_errors": self.http_errors,
                "command_rtt": self.hist.to_dict()}  # fmt: skip

    def _run(self) -> None:
        shared = self.shared
        assert shared is not None
        if not shared.go.wait(600):
            return
        t_start, t_end = shared.window[0], shared.window[1]
        while time.monotonic() < t_start:
            time.sleep(0.001)
        self.run_until(t_end, shared.abort.is_set)

    def run_until(self, t_end: float, aborted: Any = lambda: False) -> None:
        """Send commands until ``time.monotonic()`` reaches ``t_end`` (in this thread)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        body = json.dumps({"name": "ping", "timeout": 10})
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        path = f"/api/v1/devices/{RESPONDER}/commands"
        next_at = time.monotonic()
        while time.monotonic() < t_end and not aborted():
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += self.interval_s
            started = time.perf_counter()
            try:
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                payload = json.loads(response.read())
            except (OSError, http.client.HTTPException, ValueError):
                self.http_errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                continue
            elapsed = time.perf_counter() - started
            state = payload.get("state", f"http {response.status}")
            self.states[state] = self.states.get(state, 0) + 1
            if state == "succeeded":
                self.hist.record(elapsed)
        conn.close()


class CommandProbe:
    """Commands beside a load: an operator and the responder device in a running gateway (or the
    relay of ``bench.relay``, the round trip's floor).

    ``probe = CommandProbe.of_gateway(gw)`` (after ``start_gateway``), ``probe.start()`` before
    ``drive`` with ``companion=probe.companion``, ``probe.stop()`` before the gateway stops,
    then ``probe.add(result, key, m)`` for the figures and checks. ``probe.idle(seconds)``
    measures the round trip with nothing else running.
    """

    def __init__(self, device_url: str, device_token: str, api_port: int, operator_token: str) -> None:
        self.api_port = api_port
        self.token = operator_token
        self.responder = Responder(device_url, device_token)
        self.clients: list[CommandClient] = []
        self._server_before: dict[str, float] = {}
        self.server_after: dict[str, float] = {}

    @classmethod
    def of_gateway(cls, gw: Any) -> CommandProbe:
        """A control operator and the responder device added to ``gw``'s store."""
        operator_token, device_token = gw.store_call(
            f"[operators.add_operator(conn, 'bench', 'control'), registry.add_device(conn, {RESPONDER!r})]"
        )
        device_url = f"ws://127.0.0.1:{gw.port}/v1/device"
        return cls(device_url, device_token, _api_port(gw.log_path.read_text()), operator_token)

    @classmethod
    def of_relay(cls, relay: Any) -> CommandProbe:
        """The responder on ``bench.relay`` (a ``targets.RelayTarget``; no tokens checked)."""
        return cls(f"ws://127.0.0.1:{relay.port}/", "unused", relay.api_port, "unused")

    def start(self) -> None:
        self.responder.start()
        self._server_before = _server_rtt(self.api_port)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server_after = _server_rtt(self.api_port)
        self.responder.stop()

    def companion(self, shared: Shared) -> CommandClient:
        client = CommandClient(shared, self.api_port, self.token)
        self.clients.append(client)
        return client

    def idle(self, seconds: float) -> CommandClient:
        client = CommandClient(None, self.api_port, self.token)
        self.clients.append(client)
        client.run_until(time.monotonic() + seconds)
        return client

    def add(
        self, result: Result, key: str, client: CommandClient | None = None, window_s: float = 0.0
    ) -> None:
        """Figures ``command RTT p50/p99, <key>`` and the checks of ``client`` (default: the last)."""
        client = client or self.clients[-1]
        hist = client.hist
        p50, p99 = hist.percentile(50), hist.percentile(99)
        print(f"  commands, {key}: {hist.count}, round trip p50 {fmt_ms(p50)} p99 {fmt_ms(p99)}", flush=True)
        rate = f", {hist.count / window_s:.1f}/s" if window_s else ""
        server = self.server_mean_ms()
        inside = (
            "" if server is None else f"; of which sent -> result {server:.1f} ms (mean, the gateway's own)"
        )
        breakdown = self.server_breakdown()
        if breakdown:
            print(f"  commands, {key}: {breakdown}", flush=True)
            inside += f"; {breakdown}"
        result.add(f"command RTT p50, {key}", None if p50 is None else p50 * 1000, "ms",
                   note=f"{hist.count} commands{rate}, HTTP POST with wait -> final state{inside}")  # fmt: skip
        result.add(f"command RTT p99, {key}", None if p99 is None else p99 * 1000, "ms", "< 10 ms",
                   None if p99 is None else p99 * 1000 < 10)  # fmt: skip
        result.checks[f"{key}: every command succeeded"] = (
            set(client.states) <= {"succeeded"} and client.http_errors == 0 and hist.count > 0
        )

    def server_mean_ms(self, key: str = "") -> float | None:
        """The gateway's own mean in the window, ms: sent -> result, or ``key`` (``http``, or a phase)."""
        count, total = (f"{key}_count", f"{key}_sum") if key else ("count", "sum")
        n = self.server_after.get(count, 0) - self._server_before.get(count, 0)
        if not n:
            return None
        return 1000 * (self.server_after.get(total, 0) - self._server_before.get(total, 0)) / n

    def server_breakdown(self) -> str:
        """Where the gateway's part of a command went (means): its HTTP handling, and inside it
        accepted -> sent, sent -> result read, result -> stored."""
        parts = [(label, self.server_mean_ms(key)) for label, key in (
            ("HTTP in the gateway", "http"), ("accepted -> sent", "to_sent"),
            ("sent -> result", "sent_to_result"), ("result -> stored", "result_to_stored"))]  # fmt: skip
        shown = [f"{label} {value:.1f}" for label, value in parts if value is not None]
        return ("gateway means, ms: " + ", ".join(shown)) if shown else ""


def paced_with_commands(ctx: Context, result: Result, key: str, sz: Sizes, rate: float, why: str,
                        probe_for: Callable[[GatewayTarget], CommandProbe] = CommandProbe.of_gateway,
                        ) -> tuple[Measurement, CommandProbe]:  # fmt: skip
    """Paced devices at ``rate`` each, commands beside them: through the gateway's HTTP API, or
    where ``probe_for(gateway)`` sends them (the relay's probe)."""
    gw, devices = start_gateway(ctx, f"ingest-{key.replace(' ', '-')}", sz.devices)
    probe = probe_for(gw)
    try:
        probe.start()
        try:
            m = drive(ctx, f"gateway, 1 sample/frame at {key} ({why})", gw.pid,
                      load_spec(ctx, gw.port, devices, samples=1, rate=rate, window=AGENT_WINDOW),
                      warmup_s=sz.warmup_s, measure_s=sz.measure_s, companion=probe.companion)  # fmt: skip
        finally:
            probe.stop()
    finally:
        gw.stop()
    check_durability(result, m, gw.count_rows(), key)
    ctx.done(gw.directory)
    return m, probe


def _api_port(log_text: str) -> int:
    match = re.search(r"operator API at http://[^:\s]+:(\d+)", log_text)
    if match is None:
        raise RuntimeError("the gateway printed no operator API address")
    return int(match.group(1))


def _server_rtt(port: int) -> dict[str, float]:
    """count and sum of the gateway's iotgw_command_round_trip_seconds (sent -> result), of each
    iotgw_command_phase_seconds phase (``<phase>_count``...) and of the commands route's
    iotgw_http_request_seconds (``http_count``, ``http_sum``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    found = dict(re.findall(r"^iotgw_command_round_trip_seconds_(count|sum) (\S+)$", text, re.M))
    for kind, phase, value in re.findall(
        r'^iotgw_command_phase_seconds_(count|sum)\{phase="(\w+)"\} (\S+)$', text, re.M
    ):
        found[f"{phase}_{kind}"] = value
    for kind, value in re.findall(
        r'^iotgw_http_request_seconds_(count|sum)\{route="/api/v1/devices/\{name\}/commands"\} (\S+)$',
        text,
        re.M,
    ):
        found[f"http_{kind}"] = value
    return {key: float(value) for key, value in found.items()}


@scenario(
    "command_rtt",
    "Command round trip through the HTTP API: idle, the figures of ingest and connections, and the floor",
)
def command_rtt(ctx: Context) -> Result:
    """Idle here; at half load and with 10,000 devices the round trip is measured inside ``ingest``
    and ``connections`` (a command client beside their paced runs) and repeated in this table.

    The peer: the same client and responder through ``bench.relay`` (uvicorn and websockets, no
    auth, no ledger), idle and, after ``ingest`` in the same run, beside a gateway carrying
    ingest's half load: the round trip the machine allows at that moment, and the gateway's
    figures over it."""
    sz = sizes(ctx)
    result = Result()
    gw, _ = start_gateway(ctx, "command-rtt-idle", 0)
    probe = CommandProbe.of_gateway(gw)
    try:
        probe.start()
        try:
            client = probe.idle(sz.measure_s)
        finally:
            probe.stop()
    finally:
        gw.stop()
    ctx.done(gw.directory)
    probe.add(result, "idle", client, window_s=sz.measure_s)
    result.add("gateway sent -> result, mean (idle)", probe.server_mean_ms(), "ms",
               note="iotgw_command_round_trip_seconds")  # fmt: skip
    for scenario_name in ("ingest", "connections"):
        other = ctx.results.get(scenario_name)
        if other is None or other.error:
            continue
        for figure in other.figures:
            if figure.name.startswith("command RTT"):
                result.figures.append(figure)
    result.details = {"idle": client.finish()}
    floors = _floor(ctx, result, _half_rate(ctx))
    for key, floor in floors.items():
        result.details[f"relay, {key}"] = floor.finish()
        gateway = next((f.value for f in result.figures if f.name == f"command RTT p99, {key}"), None)
        relay = floor.hist.percentile(99)
        if gateway is not None and relay:
            result.add(f"command RTT p99 over the relay's, {key}", gateway / (relay * 1000), "x",
                       note=f"gateway {gateway:.1f} ms / relay {relay * 1000:.1f} ms, same run")  # fmt: skip
    return result


def _half_rate(ctx: Context) -> float | None:
    """The per-device rate of ``ingest``'s half-load run in this bench run, if it ran."""
    ingest = ctx.results.get("ingest")
    if ingest is None or ingest.error or not isinstance(ingest.details, dict):
        return None
    rate = ingest.details.get("runs", {}).get("half", {}).get("rate_per_device")
    return float(rate) if isinstance(rate, int | float) else None


def _floor(ctx: Context, result: Result, half_rate: float | None) -> dict[str, CommandClient]:
    """The relay's round trip, idle and (``half_rate``) beside a gateway at that paced load."""
    sz = sizes(ctx)
    relay = RelayTarget(ctx.scratch("command-rtt-relay"))
    relay.start()
    floors: dict[str, CommandClient] = {}
    try:
        probe = CommandProbe.of_relay(relay)
        probe.start()
        try:
            floors["idle"] = probe.idle(sz.measure_s)
        finally:
            probe.stop()
        if half_rate is not None:
            _, probe = paced_with_commands(ctx, result, "relay beside half load", sz, half_rate,
                                           "its commands through the relay", lambda _: CommandProbe.of_relay(relay))  # fmt: skip
            floors["half load"] = probe.clients[-1]
    finally:
        relay.stop()
        ctx.done(relay.directory)
    for key, floor in floors.items():
        p50, p99 = floor.hist.percentile(50), floor.hist.percentile(99)
        print(f"  relay, {key}: {floor.hist.count} commands, round trip p50 {fmt_ms(p50)} p99 {fmt_ms(p99)}",
              flush=True)  # fmt: skip
        result.add(f"relay RTT p50, {key}", None if p50 is None else p50 * 1000, "ms",
                   note="the floor: bench.relay, the same client and responder, no auth, no ledger")  # fmt: skip
        result.add(f"relay RTT p99, {key}", None if p99 is None else p99 * 1000, "ms")
        result.checks[f"relay, {key}: every command succeeded"] = (
            set(floor.states) <= {"succeeded"} and floor.http_errors == 0 and floor.hist.count > 0
        )
    return floors
