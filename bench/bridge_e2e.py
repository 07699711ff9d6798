"""Readings/s from devices to an MQTT subscriber through the gateway's bridge, and its latency.

``python -m bench bridge`` (registered as a scenario). One private Mosquitto, one gateway
with ``[mqtt]`` on (QoS 1), one subscriber in its own process (paho-mqtt, QoS 1) that
counts every sample in the ``.../device/+/readings`` messages. Two phases, one run:

1. throughput: devices stream N readings as fast as acks allow (10 samples per frame,
   16 frames in flight); the ingest rate (acked to the devices, first frame sent -> last
   ack) and the bridge rate (first frame sent -> the subscriber holds all N) side by side,
   and the bridge against the ``ingest`` scenario's ceiling when it ran first
   (``python -m bench ingest bridge``): these devices are one Python process, slower than
   the load generator, so the same-run ingest rate is below the gateway's ceiling;
2. latency: devices paced at a fixed total rate (10,000 readings/s in a full run), each
   sample carrying its send time; end-to-end latency per sample = the subscriber's receive
   time - the send time (same machine, same clock), p50/p99.

Checks (behaviour, not time): the subscriber gets every acked reading (duplicates would
only come from a replay, which nothing here provokes), no dead letters.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import multiprocessing.connection
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from . import procstat
from .registry import Context, Result, scenario
from .stats import Histogram
from .targets import GatewayTarget, MosquittoTarget

GATEWAY = "bench"
SPF = 10  # samples per frame
WINDOW = 16


# -- the subscriber (its own process) ----------------------------------------------------------


def _subscriber_main(port: int, control: multiprocessing.connection.Connection) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    lock = threading.Lock()
    state: dict[str, Any] = {"samples": 0, "first": 0.0, "last": 0.0, "hist": Histogram()}

    def on_message(client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        now = time.time()
        samples = json.loads(message.payload)["samples"]
        with lock:
            if not state["samples"]:
                state["first"] = now
            state["samples"] += len(samples)
            state["last"] = now
            hist: Histogram = state["hist"]
            for sample in samples:
                sent = sample["values"].get("sent")
                if sent is not None:
                    hist.record(max(now - sent / 1000.0, 1e-6))

    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-bridge-sub", clean_session=True)
    client.on_message = on_message
    client.on_connect = lambda c, u, f, r, p: c.subscribe(f"iotgw/{GATEWAY}/device/+/readings", qos=1)
    client.on_subscribe = lambda c, u, mid, reasons, p: subscribed.set()
    client.connect("127.0.0.1", port, keepalive=600)
    client.loop_start()
    control.send(subscribed.wait(30))  # the parent waits for the SUBACK
    while True:
        command = control.recv()
        if command == "stop":
            break
        with lock:
            if command == "reset":
                state.update(samples=0, first=0.0, last=0.0, hist=Histogram())
                control.send(None)
            else:  # "report"
                control.send((state["samples"], state["first"], state["last"], state["hist"]))
    client.disconnect()
    client.loop_stop()


class Subscriber:
    """``start()``; ``report()`` -> (samples, first receive, last receive, latency histogram)."""

    def __init__(self, port: int) -> None:
        mp = multiprocessing.get_context("spawn")
        self._control, child = mp.Pipe()
        self._proc = mp.Process(
            target=_subscriber_main, args=(port, child), name="bench-bridge-sub", daemon=True
        )

    def start(self) -> None:
        """Start the process; returns once its subscription is acknowledged by the broker."""
        self._proc.start()
        if not self._control.poll(60) or not self._control.recv():
            raise RuntimeError("the bridge subscriber did not subscribe")

    def reset(self) -> None:
        self._control.send("reset")
        self._control.recv()

    def report(self) -> tuple[int, float, float, Histogram]:
        self._control.send("report")
        samples, first, last, hist = self._control.recv()
        return int(samples), float(first), float(last), hist

    def wait_for(self, samples: int, timeout: float) -> tuple[int, float, float, Histogram]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.report()
            if got[0] >= samples or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def stop(self) -> None:
        self._control.send("stop")
        self._proc.join(10)


# -- the devices -----------------------------------------------------------------------------


async def _open(url: str, token: str, stream: str) -> ClientConnection:
    ws = await connect(url, additional_headers={"Authorization": f"Bearer {token}"}, compression=None,
                       max_size=None)  # fmt: skip
    await ws.send(json.dumps({"type": "hello", "stream": stream, "agent": "bench/1"}))
    json.loads(await ws.recv())
    return ws


async def _stream(
    ws: ClientConnection, name: str, frames: int, interval: float, first_sent: list[float]
) -> int:
    """Send ``frames`` frames (every ``interval`` s, or as acks allow when 0); returns readings acked."""
    acked, seq = 0, 0
    start = time.monotonic()
    ack_seen = asyncio.Event()

    async def read() -> None:
        nonlocal acked
        try:
            while acked < frames:
                message = json.loads(await ws.recv())
                if message["type"] == "ack":
                    acked = message["seq"]
                    ack_seen.set()
                elif message["type"] == "error":
                    raise RuntimeError(f"{name}: {message}")
        finally:
            ack_seen.set()  # the sender never waits on a reader that is gone

    reader = asyncio.create_task(read())
    while seq < frames and not reader.done():
        if seq - acked >= WINDOW:
            ack_seen.clear()
            await ack_seen.wait()
            continue
        if interval:
            delay = start + seq * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        seq += 1
        now = time.time()
        ms = int(now * 1000)
        samples = [
            {"ts": ms, "values": {"temp": 20.5, "i": float(i), "sent": now * 1000.0}} for i in range(SPF)
        ]
        if not first_sent:
            first_sent.append(time.time())
        await ws.send(json.dumps({"type": "readings", "seq": seq, "samples": samples}))
    await reader
    return acked * SPF


async def _run(url: str, creds: list[tuple[str, str]], frames: int, interval: float,
               first_sent: list[float]) -> tuple[int, float]:  # fmt: skip
    phase = f"p{int(interval * 1000)}"  # a stream per phase: seqs start at 1 again
    sockets = await asyncio.gather(*(_open(url, token, f"{name}-{phase}") for name, token in creds))
    try:
        acked = await asyncio.gather(
            *(
                _stream(ws, name, frames, interval, first_sent)
                for ws, (name, _) in zip(sockets, creds, strict=True)
            )
        )
        return sum(acked), time.time()
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))


def _dead_letters(store_path: Path) -> int:
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0])
    finally:
        conn.close()


def measure(workdir: Path, *, quick: bool, ceiling: float | None = None) -> Result:
    """Both phases; ``ceiling``: the ingest scenario's readings/s (10 samples/frame) of this run, if any."""
    devices, frames = (10, 200) if quick else (50, 600)  # throughput: 20k / 300k readings
    rate = 1_000 if quick else 10_000  # latency phase: readings/s in total
    paced_devices, paced_s = (10, 3.0) if quick else (50, 15.0)
    interval = paced_devices * SPF / rate  # seconds between one device's frames
    paced_frames = int(paced_s / interval)
    result = Result()
    broker = MosquittoTarget(workdir / "mosquitto")
    broker.start()
    sub = Subscriber(broker.port)
    env = {"IOTGW_API_ENABLED": "false", "IOTGW_MQTT_ENABLED": "true", "IOTGW_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}",
           "IOTGW_MQTT_GATEWAY": GATEWAY, "IOTGW_MQTT_DISCOVERY": "false"}  # fmt: skip
    gw = GatewayTarget(workdir / "gateway", env)
    try:
        creds = gw.provision(max(devices, paced_devices))
        gw.start()
        sub.start()
        url = f"ws://127.0.0.1:{gw.port}/v1/device"
        # 1. throughput
        first: list[float] = []
        gw_before, broker_before = procstat.Snapshot.take(gw.pid), procstat.Snapshot.take(broker.pid)
        acked, acked_at = asyncio.run(_run(url, creds[:devices], frames, 0.0, first))
        got, _, last, _ = sub.wait_for(acked, 300)
        gw_after, broker_after = procstat.Snapshot.take(gw.pid), procstat.Snapshot.take(broker.pid)
        ingest = acked / (acked_at - first[0])
        bridge = got / (last - first[0]) if got else 0.0
        result.add(
            "ingest: acked to devices", ingest, "readings/s", note=f"{devices} devices, {SPF} samples/frame"
        )
        result.add("bridge: reaching the MQTT subscriber", bridge, "readings/s",
                   note="first frame sent -> subscriber holds all, QoS 1")  # fmt: skip
        result.add(
            "bridge / ingest, same run", bridge / ingest, "ratio", ">= 0.5", met=bridge / ingest >= 0.5
        )
        if ceiling:
            result.add("bridge / ingest ceiling (ingest scenario)", bridge / ceiling, "ratio", ">= 0.5",
                       met=bridge / ceiling >= 0.5, note=f"ceiling {ceiling:,.0f} readings/s")  # fmt: skip
        if got:
            result.add("gateway CPU per reading, stored + published", 1e6 * (gw_after.cpu_s - gw_before.cpu_s) / got,
                       "us", note=f"{procstat.cpu_percent(gw_before, gw_after):.0f} % of a core")  # fmt: skip
            result.add("broker CPU per reading", 1e6 * (broker_after.cpu_s - broker_before.cpu_s) / got, "us")
        result.checks["throughput: every acked reading reached the subscriber"] = got == acked
        # 2. latency at a fixed rate
        sub.reset()
        first = []
        paced, paced_at = asyncio.run(_run(url, creds[:paced_devices], paced_frames, interval, first))
        got2, _, _, hist = sub.wait_for(paced, 120)
        offered = paced / (paced_at - first[0])
        p50, p99 = hist.percentile(50), hist.percentile(99)
        result.add(
            "latency phase: offered rate",
            offered,
            "readings/s",
            note=f"target {rate:,}/s, {paced_devices} devices",
        )
        result.add(
            "end-to-end p50", None if p50 is None else p50 * 1000, "ms", note="device send -> subscriber"
        )
        result.add("end-to-end p99", None if p99 is None else p99 * 1000, "ms", "< 200",
                   met=None if p99 is None else p99 < 0.2)  # fmt: skip
        result.checks["latency: every acked reading reached the subscriber"] = got2 == paced
        result.checks["no dead letters"] = _dead_letters(gw.store_path) == 0
        result.details = {"throughput": {"devices": devices, "acked": acked, "received": got},
                          "latency": {"devices": paced_devices, "acked": paced, "received": got2,
                                      "histogram": hist.to_dict()}}  # fmt: skip
    finally:
        sub.stop()
        gw.stop()
        broker.stop()
    return result


@scenario("bridge", "Readings/s and latency from devices to an MQTT subscriber through the gateway (QoS 1)",
          needs=("mosquitto",))  # fmt: skip
def bridge_scenario(ctx: Context) -> Result:
    directory = ctx.scratch("bridge")
    try:
        ingest = ctx.results.get("ingest")
        ceiling = None if ingest is None or ingest.error else ingest.figure("readings/s, 10 samples/frame")
        return measure(directory, quick=ctx.quick, ceiling=ceiling)
    finally:
        ctx.done(directory)
