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
from typing import Any

from .drive import AGENT_WINDOW, check_durability, drive, fmt_ms, load_spec, sizes, start_gateway
from .registry import Context, Result, scenario
from .stats import Histogram
from .workload import Shared

RESPONDER = "rtt-responder"


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
    """The companion of ``drive``: sends commands one after another through the measurement window."""

    def __init__(self, shared: Shared, port: int, token: str) -> None:
        self.shared = shared
        self.port = port
        self.token = token
        self.hist = Histogram()
        self.states: dict[str, int] = {}
        self.http_errors = 0
        self._thread = threading.Thread(target=self._run, name="rtt-client", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> dict[str, Any]:
        self._thread.join(120)
        return {"commands": self.hist.count, "states": self.states, "http_errors": self.http_errors}

    def _run(self) -> None:
        if not self.shared.go.wait(600):
            return
        t_start, t_end = self.shared.window[0], self.shared.window[1]
        while time.monotonic() < t_start:
            time.sleep(0.001)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        body = json.dumps({"name": "ping", "timeout": 10})
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        path = f"/api/v1/devices/{RESPONDER}/commands"
        while time.monotonic() < t_end and not self.shared.abort.is_set():
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


def _api_port(log_text: str) -> int:
    match = re.search(r"operator API at http://[^:\s]+:(\d+)", log_text)
    if match is None:
        raise RuntimeError("the gateway printed no operator API address")
    return int(match.group(1))


def _server_rtt(port: int) -> dict[str, float]:
    """count and sum of the gateway's iotgw_command_round_trip_seconds (sent -> result)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    found = dict(re.findall(r"^iotgw_command_round_trip_seconds_(count|sum) (\S+)$", text, re.M))
    return {key: float(value) for key, value in found.items()}


@scenario("command_rtt", "Command round trip through the HTTP API while ingest runs at half its ceiling")
def command_rtt(ctx: Context) -> Result:
    from gateway import store
    from gateway.store import operators, registry

    sz = sizes(ctx)
    result = Result()
    ceiling = ctx.results["ingest"].figure("frames/s, 1 sample/frame") if "ingest" in ctx.results else None
    if not ceiling:  # measure a short ceiling here
        gw, devices = start_gateway(ctx, "command-rtt-ceiling", sz.devices, {"IOTGW_API_PORT": "0"})
        try:
            m = drive(ctx, "gateway ceiling (for half load)", gw.pid, load_spec(ctx, gw.port, devices, samples=1),
                      warmup_s=sz.warmup_s, measure_s=max(2.0, sz.measure_s / 3))  # fmt: skip
        finally:
            gw.stop()
        ctx.done(gw.directory)
        ceiling = m.frames_per_s
    half_rate = max(0.1, ceiling / 2 / sz.devices)

    gw, devices = start_gateway(ctx, "command-rtt", sz.devices, {"IOTGW_API_PORT": "0"})
    responder: Responder | None = None
    try:
        api_port = _api_port(gw.log_path.read_text())
        conn = store.connect(gw.store_path)
        try:
            token = operators.add_operator(conn, "bench", "control")
            device_token = registry.add_device(conn, RESPONDER)
        finally:
            conn.close()
        responder = Responder(f"ws://127.0.0.1:{gw.port}/v1/device", device_token)
        responder.start()
        clients: list[CommandClient] = []

        def companion(shared: Shared) -> CommandClient:
            client = CommandClient(shared, api_port, token)
            clients.append(client)
            return client

        before = _server_rtt(api_port)
        m = drive(ctx, "gateway at half load + commands", gw.pid,
                  load_spec(ctx, gw.port, devices, samples=1, rate=half_rate, window=AGENT_WINDOW),
                  warmup_s=sz.warmup_s, measure_s=sz.measure_s, companion=companion)  # fmt: skip
        after = _server_rtt(api_port)
    finally:
        if responder is not None:
            responder.stop()
        gw.stop()
    check_durability(result, m, gw.count_rows(), "half load with commands")
    ctx.done(gw.directory)

    client = clients[0]
    hist = client.hist
    p50, p99 = hist.percentile(50), hist.percentile(99)
    print(
        f"  commands: {hist.count} in {m.window_s:.1f} s, round trip p50 {fmt_ms(p50)} p99 {fmt_ms(p99)}",
        flush=True,
    )
    server_n = after.get("count", 0) - before.get("count", 0)
    server_mean = (after.get("sum", 0) - before.get("sum", 0)) / server_n if server_n else None
    result.add("command round trip p50 (HTTP, wait)", None if p50 is None else p50 * 1000, "ms")
    result.add("command round trip p99 (HTTP, wait)", None if p99 is None else p99 * 1000, "ms", "< 10 ms",
               None if p99 is None else p99 * 1000 < 10)  # fmt: skip
    result.add("commands/s, one client in sequence", hist.count / m.window_s, "/s")
    result.add("gateway sent -> result, mean", None if server_mean is None else server_mean * 1000, "ms",
               note="iotgw_command_round_trip_seconds")  # fmt: skip
    result.add("ingest beside it", m.frames_per_s, "/s", note=f"half of {ceiling:,.0f} frames/s")
    ack_p99 = m.report.ack_hist.percentile(99)
    result.add("ack p99 beside it", None if ack_p99 is None else ack_p99 * 1000, "ms")
    result.checks["every command succeeded"] = set(client.states) <= {"succeeded"} and client.http_errors == 0
    result.checks["the responder answered every command"] = (
        responder is not None and responder.answered >= hist.count
    )
    result.details = {
        "ingest": m.summary(),
        "commands": {"count": hist.count, "states": client.states, "http_errors": client.http_errors},
    }
    return result
