"""The workload every simulated device runs, whatever its transport.

``LoadSpec`` (what to do), ``Shared`` (the phase flags and counters the runner
and the worker processes share), ``Worker`` (one process's devices, their
schedule and figures) and ``DeviceBase`` (window, rate, acks, bookkeeping).
A transport subclasses ``DeviceBase``: ``WsDevice`` (``bench/loadgen.py``, a
lean RFC 6455 client) and ``MqttDevice`` (``bench/mqttgen.py``, paho-mqtt).
This module imports neither, so both import it; ``loadgen`` picks the class.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.synchronize
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .stats import Histogram

DeviceFactory = Callable[["Worker", int, str, str], "DeviceBase"]
"""A device class: ``(worker, global index, name, token) -> device``."""


@dataclass(slots=True)
class LoadSpec:
    """What the generator does; one spec drives every worker process."""

    host: str
    port: int
    devices: list[tuple[str, str]]
    """(name, token) of every device; MQTT ignores the token."""
    kind: str = "ws"
    """``ws`` (protocol v1 over WebSocket, gateway or bare server) or ``mqtt`` (paho-mqtt QoS 1)."""
    path: str = "/v1/device"
    rate: float = 0.0
    """Frames per second per device; 0 sends as fast as acks allow."""
    samples: int = 1
    """Samples per readings frame."""
    window: int = 16
    """Unacknowledged frames a device keeps on the wire (the agent's ``max_in_flight``)."""
    processes: int = 2
    ramp_s: float = 0.0
    """Connections are opened evenly over this time (0: as fast as ``connect_concurrency`` allows)."""
    connect_concurrency: int = 256
    """Handshakes in progress at once, per process."""
    drain_s: float = 10.0
    ping_every_s: float = 0.0
    """Device-initiated pings (to time the gateway's pong), on every ``ping_stride``-th device."""
    ping_stride: int = 10
    source_ips: int = 1
    """Source addresses 127.0.0.2.. used round-robin per process (each has its own port range)."""
    topic: str = "bench"
    """MQTT topic prefix: devices publish to ``<topic>/<name>``."""


SLOWEST_KEPT = 5
"""Slowest acks a report keeps (``WorkerReport.slowest_acks``)."""
SLOW_ACK_S = 0.1
"""Acks slower than this are candidates for ``WorkerReport.slowest_acks``."""


class Shared:
    """Cross-process phase flags and counters, created by the runner before forking."""

    def __init__(self, ctx: Any) -> None:
        self.connected = ctx.Value("q", 0)
        self.failed = ctx.Value("q", 0)
        self.window = ctx.Array("d", 2)  # t_start, t_end (time.monotonic, system-wide on Linux)
        self.go: multiprocessing.synchronize.Event = ctx.Event()
        self.abort: multiprocessing.synchronize.Event = ctx.Event()


@dataclass(slots=True)
class WorkerReport:
    """What one worker process saw; the runner merges them (``merge``)."""

    devices: int = 0
    connected: int = 0
    connect_failed: int = 0
    connect_hist: Histogram = field(default_factory=Histogram)
    last_welcome: float = 0.0
    frames_sent: int = 0
    frames_acked: int = 0
    samples_sent: int = 0
    samples_acked: int = 0
    window_frames_sent: int = 0
    window_frames_acked: int = 0
    window_samples_acked: int = 0
    ack_hist: Histogram = field(default_factory=Histogram)
    pong_hist: Histogram = field(default_factory=Histogram)
    server_pings: int = 0
    commands: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    closes: dict[str, int] = field(default_factory=dict)
    backlog: int = 0
    unacked_at_end: int = 0
    window_cpu_s: float = 0.0
    cpu_s: float = 0.0
    slowest_acks: list[tuple[float, float, str]] = field(default_factory=list)
    """The window's slowest acks, at most :data:`SLOWEST_KEPT`: (latency s, when the frame was sent
    as ``time.time()``, device), to match an outlier with the target's log."""

    def note_slow_ack(self, latency: float, sent_wall: float, device: str) -> None:
        """Keep an ack of ``latency`` s, for a frame ``device`` sent at ``sent_wall``
        (``time.time()``), if it is among the slowest so far."""
        slowest = self.slowest_acks
        if len(slowest) >= SLOWEST_KEPT and latency <= slowest[-1][0]:
            return
        slowest.append((latency, sent_wall, device))
        slowest.sort(reverse=True)
        del slowest[SLOWEST_KEPT:]

    def merge(self, other: WorkerReport) -> None:
        for name in (
            "devices", "connected", "connect_failed", "frames_sent", "frames_acked", "samples_sent",
            "samples_acked", "window_frames_sent", "window_frames_acked", "window_samples_acked",
            "server_pings", "commands", "backlog", "unacked_at_end", "window_cpu_s", "cpu_s",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.last_welcome = max(self.last_welcome, other.last_welcome)
        for mine, theirs in ((self.connect_hist, other.connect_hist), (self.ack_hist, other.ack_hist),
                             (self.pong_hist, other.pong_hist)):  # fmt: skip
            mine.merge(theirs)
        for counts, more in ((self.errors, other.errors), (self.closes, other.closes)):
            for key, n in more.items():
                counts[key] = counts.get(key, 0) + n
        self.slowest_acks = sorted(self.slowest_acks + other.slowest_acks, reverse=True)[:SLOWEST_KEPT]


def readings_payload(seq: int, ts: int, samples: int) -> bytes:
    """One ``readings`` frame as a device sends it: ``samples`` samples, three metrics each."""
    body = b",".join(
        b'{"ts":%d,"values":{"temp":21.5,"humidity":40.25,"pressure":1013.2}}' % (ts + i)
        for i in range(samples)
    )
    return b'{"type":"readings","seq":%d,"samples":[%s]}' % (seq, body)


class Worker:
    """One process's devices, their schedule and the figures; runs inside ``asyncio.run``."""

    def __init__(self, spec: LoadSpec, index: int, first: int, devices: list[tuple[str, str]],
                 shared: Shared, factory: DeviceFactory) -> None:  # fmt: skip
        self.spec = spec
        self.factory = factory  # the transport: WsDevice (bench/loadgen.py) or MqttDevice (bench/mqttgen.py)
        self.index = index
        self.first = first  # global index of this worker's first device (for the ramp)
        self.names = devices
        self.shared = shared
        self.report = WorkerReport(devices=len(devices))
        self.devices: list[Any] = []
        self.sending = False
        self.t_start = float("inf")
        self.t_end = float("inf")
        self.stopped = False
        self._cpu_at_start = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        n_ips = max(1, spec.source_ips)
        self.source = f"127.0.0.{2 + index % n_ips}" if spec.source_ips > 0 else None

    # -- called by devices ---------------------------------------------------------

    def welcomed(self, connect_seconds: float) -> None:
        self.report.connected += 1
        self.report.connect_hist.record(connect_seconds)
        self.report.last_welcome = time.monotonic()
        with self.shared.connected.get_lock():
            self.shared.connected.value += 1

    def failed(self, reason: str) -> None:
        self.report.connect_failed += 1
        self.report.closes[reason] = self.report.closes.get(reason, 0) + 1
        with self.shared.failed.get_lock():
            self.shared.failed.value += 1

    def closed(self, reason: str) -> None:
        self.report.closes[reason] = self.report.closes.get(reason, 0) + 1

    def error(self, code: str) -> None:
        self.report.errors[code] = self.report.errors.get(code, 0) + 1

    # -- the run ---------------------------------------------------------------------

    async def run(self) -> WorkerReport:
        self.loop = asyncio.get_running_loop()
        spec = self.spec
        factory = self.factory
        total = max(1, len(spec.devices))
        start = time.monotonic()
        gate = asyncio.Semaphore(spec.connect_concurrency)
        connects = []
        for i, (name, token) in enumerate(self.names):
            device = factory(self, self.first + i, name, token)
            self.devices.append(device)
            at = start + spec.ramp_s * (self.first + i) / total
            connects.append(asyncio.create_task(self._connect(device, at, gate)))
        misc = asyncio.create_task(self._housekeeping())
        try:
            await self._wait_go()
            if not self.stopped:
                self.sending = True
                for device in self.devices:
                    device.start_sending()
                await self._sleep_until(self.t_end)
                self.sending = False
                cpu = _own_cpu()
                self.report.window_cpu_s = cpu - self._cpu_at_start
                await self._drain()
        finally:
            for task in connects:
                task.cancel()
            misc.cancel()
            for device in self.devices:
                device.close()
            await asyncio.sleep(0.2)  # let close frames go out
        r = self.report
        for device in self.devices:
            device.collect(r)
        r.cpu_s = _own_cpu()
        return r

    async def _connect(self, device: Any, at: float, gate: asyncio.Semaphore) -> None:
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        async with gate:
            await device.connect()

    async def _wait_go(self) -> None:
        shared = self.shared
        while not shared.go.is_set():
            if shared.abort.is_set():
                self.stopped = True
                return
            await asyncio.sleep(0.02)
        self.t_start, self.t_end = shared.window[0], shared.window[1]
        self._cpu_at_start = _own_cpu()
        if time.monotonic() < self.t_start:
            asyncio.get_running_loop().call_at(self.t_start, self._window_opened)
        else:
            self._window_opened()

    def _window_opened(self) -> None:
        self._cpu_at_start = _own_cpu()

    async def _sleep_until(self, when: float) -> None:
        while time.monotonic() < when and not self.shared.abort.is_set():
            await asyncio.sleep(min(0.05, max(0.0, when - time.monotonic())))

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.spec.drain_s
        while time.monotonic() < deadline and not self.shared.abort.is_set():
            if all(d.settled() for d in self.devices):
                return
            await asyncio.sleep(0.05)

    async def _housekeeping(self) -> None:
        """Device-side pings and any per-device periodic work (paho's loop_misc)."""
        spec = self.spec
        every = spec.ping_every_s
        pingers = [d for d in self.devices if d.index % max(1, spec.ping_stride) == 0] if every > 0 else []
        while True:
            await asyncio.sleep(every if every > 0 else 1.0)
            for device in pingers:
                device.ping()
            for device in self.devices:
                device.tick()


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


class DeviceBase:
    """Scheduling and bookkeeping shared by every kind of simulated device.

    A subclass connects (``connect``), calls ``_welcomed`` once its session is
    ready and ``_ack(seq)`` for each cumulative acknowledgement, and implements
    ``_writable`` and ``_write_frames``.
    """

    def __init__(self, worker: Worker, index: int, name: str, token: str) -> None:
        self.worker = worker
        self.index = index
        self.name = name
        self.token = token
        self.state = "connecting"  # connecting, handshake, hello, ready, closed
        self.t_connect = 0.0
        self.next_seq = 1
        self.acked = 0
        self.inflight: deque[tuple[int, float]] = deque()
        self.samples = worker.spec.samples
        self.window = worker.spec.window
        self.rate = worker.spec.rate
        self.rate_start = 0.0
        self.generated = 0  # frames due so far in rate mode (sent or in backlog)
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.welcomed = asyncio.Event()

    async def connect(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def ping(self) -> None:
        """Send a device-initiated ping, if the transport has them."""

    def tick(self) -> None:
        """Periodic work, once a second."""

    def _writable(self) -> bool:
        raise NotImplementedError

    def _write_frames(self, first_seq: int, count: int, ts: int) -> None:
        raise NotImplementedError

    def _welcomed(self, last_seq: int) -> None:
        self.state = "ready"
        self.acked = last_seq
        self.next_seq = last_seq + 1
        self.worker.welcomed(time.monotonic() - self.t_connect)
        self.welcomed.set()
        if self.worker.sending:
            self.start_sending()

    def _ack(self, seq: int) -> None:
        if seq <= self.acked:
            return
        report = self.worker.report
        now = time.monotonic()
        in_window = self.worker.t_start <= now <= self.worker.t_end
        inflight = self.inflight
        frames = 0
        hist = report.ack_hist
        while inflight and inflight[0][0] <= seq:
            _, sent = inflight.popleft()
            frames += 1
            if in_window:
                hist.record(now - sent)
                if now - sent > SLOW_ACK_S:
                    report.note_slow_ack(now - sent, time.time() - (now - sent), self.name)
        self.acked = seq
        report.frames_acked += frames
        report.samples_acked += frames * self.samples
        if in_window:
            report.window_frames_acked += frames
            report.window_samples_acked += frames * self.samples
        # no _fill() here: the transport calls it once per batch of received data, so that the
        # frames freed by several acks go out in one write

    def start_sending(self) -> None:
        if self.state != "ready":
            return
        if self.rate > 0:
            # random phase so that devices do not send in lockstep
            self.rate_start = time.monotonic() - random.random() / self.rate
        self._fill()

    def _fill(self) -> None:
        if not self.worker.sending or self.state != "ready":
            return
        room = self.window - len(self.inflight)
        if room <= 0:
            return
        now = time.monotonic()
        if self.rate > 0:
            due = int((now - self.rate_start) * self.rate) - self.generated
            if due <= 0:
                self._schedule(now)
                return
            room = min(room, due)
        if not self._writable():
            return  # the kernel and the transport are full: wait for acks
        seq = self.next_seq
        append = self.inflight.append
        for i in range(room):
            append((seq + i, now))
        self.next_seq = seq + room
        self.generated += room
        self._write_frames(seq, room, time.time_ns() // 1_000_000)
        report = self.worker.report
        report.frames_sent += room
        report.samples_sent += room * self.samples
        if self.worker.t_start <= now <= self.worker.t_end:
            report.window_frames_sent += room

    def _schedule(self, now: float) -> None:
        if self.timer is not None:
            return
        # the next frame's due time; above 50 frames/s, at most 50 wake-ups a second (frames go in batches)
        due_at = self.rate_start + (self.generated + 1) / self.rate
        when = due_at if self.rate <= 50 else max(due_at, now + 0.02)
        assert self.worker.loop is not None
        self.timer = self.worker.loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self.timer = None
        self._fill()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def settled(self) -> bool:
        return self.state != "ready" or not self.inflight

    def collect(self, report: WorkerReport) -> None:
        report.unacked_at_end += len(self.inflight)
        if self.rate > 0 and self.rate_start:
            end = min(time.monotonic(), self.worker.t_end)
            report.backlog += max(0, int((end - self.rate_start) * self.rate) - self.generated)


class ProtocolDevice(DeviceBase, asyncio.Protocol):
    """A device on its own ``asyncio.Protocol`` connection (the WebSocket and the lean MQTT
    clients): ``connect`` dials from the worker's source address and waits for ``_welcomed``."""

    def __init__(self, worker: Worker, index: int, name: str, token: str) -> None:
        super().__init__(worker, index, name, token)
        self.transport: asyncio.Transport | None = None

    async def connect(self) -> None:
        w = self.worker
        assert w.loop is not None
        self.t_connect = time.monotonic()
        local = (w.source, 0) if w.source else None
        try:
            async with asyncio.timeout(30):
                await w.loop.create_connection(lambda: self, w.spec.host, w.spec.port, local_addr=local)
                await self.welcomed.wait()
        except (OSError, TimeoutError) as exc:
            if self.state != "closed":
                self.state = "closed"
                w.failed(type(exc).__name__)
                if self.transport is not None:
                    self.transport.abort()
