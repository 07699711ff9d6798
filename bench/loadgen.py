"""Simulated devices, many per process, several processes: the load generator.

Each device speaks protocol v1 as an agent does (docs/protocol.md): opening
handshake with ``Authorization: Bearer <token>``, ``hello`` with a fresh
stream, ``welcome``, then ``readings`` frames with increasing ``seq``, at most
``window`` unacknowledged; cumulative acks free the window; a ``command`` is
answered with a ``result``; pings are answered with pongs.

The client side of the WebSocket (RFC 6455) is a lean ``asyncio.Protocol``
rather than the ``websockets`` client: the generator shares the machine with
the server under test, and a frame it sends must cost it much less than the
server pays to receive it. Frames are masked with a fresh key each (section
5.3; the server unmasks every frame whatever the key, so its cost is the same
as with any client), text frames only, never fragmented. The bare-library
server and Mosquitto are driven by the same scheduling code (``Worker``), so a
scenario and its peers differ only in the device class.

Phases are shared through ``multiprocessing`` values (``Shared``): the runner
waits until every device is welcomed (``connected``), then sets the
measurement window and ``go``. Devices send only inside ``[go, t_end]``,
figures are counted for acks arriving in ``[t_start, t_end]``, and after
``t_end`` every device waits (bounded by ``drain_s``) for the acks of what it
sent, so ``samples_acked`` can be compared with the rows in the store.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import multiprocessing
import multiprocessing.synchronize
import os
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .stats import Histogram

try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - the pure-Python fallback of websockets

    def _apply_mask(data: bytes | bytearray | memoryview, mask: bytes | bytearray) -> bytes:
        n = len(data)
        key = int.from_bytes((bytes(mask) * (n // 4 + 1))[:n], "little")
        return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ACK_PREFIX = b'{"type":"ack","seq":'
_ACK_PREFIX_LEN = len(_ACK_PREFIX)
_generic = msgspec.json.Decoder()


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


def readings_payload(seq: int, ts: int, samples: int) -> bytes:
    """One ``readings`` frame as a device sends it: ``samples`` samples, three metrics each."""
    body = b",".join(
        b'{"ts":%d,"values":{"temp":21.5,"humidity":40.25,"pressure":1013.2}}' % (ts + i)
        for i in range(samples)
    )
    return b'{"type":"readings","seq":%d,"samples":[%s]}' % (seq, body)


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked, final client frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = random.randbytes(4)
    return header + mask + _apply_mask(payload, mask)


class Worker:
    """One process's devices, their schedule and the figures; runs inside ``asyncio.run``."""

    def __init__(self, spec: LoadSpec, index: int, first: int, devices: list[tuple[str, str]],
                 shared: Shared) -> None:  # fmt: skip
        self.spec = spec
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
        factory: Callable[..., Any] = WsDevice
        if spec.kind == "mqtt":
            from .mqttgen import MqttDevice  # paho-mqtt is needed only here

            factory = MqttDevice
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


class WsDevice(DeviceBase, asyncio.Protocol):
    """One device over a hand-rolled RFC 6455 client; see the module docstring."""

    def __init__(self, worker: Worker, index: int, name: str, token: str) -> None:
        super().__init__(worker, index, name, token)
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.key = b""
        self.pings: dict[bytes, float] = {}
        self.ping_counter = 0

    # -- connection ------------------------------------------------------------------

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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.state = "handshake"
        self.key = base64.b64encode(os.urandom(16))
        spec = self.worker.spec
        request = (
            f"GET {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {self.token}\r\nUser-Agent: iotgw-bench/1\r\n\r\n"
        )
        transport.write(request.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == "closed":
            return
        if self.state != "ready":
            self.worker.failed("lost during handshake")
        elif not self.closing:
            self.worker.closed("lost")
        self.state = "closed"
        self._cancel_timer()
        self.welcomed.set()

    def close(self) -> None:
        self.closing = True
        self._cancel_timer()
        if self.transport is not None and not self.transport.is_closing():
            if self.state == "ready":
                self.transport.write(client_frame(struct.pack("!H", 1000), 0x8))
            self.transport.close()

    # -- receiving -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if self.state == "handshake":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head, buf = buf[:end], buf[end + 4 :]
            if not self._handshake_ok(head):
                return
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            header = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                header = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                header = 10
            end = pos + header + length
            if end > n:
                break
            payload = buf[pos + header : end]
            pos = end
            opcode = b0 & 0x0F
            if opcode == 0x1 or opcode == 0x2:
                self._message(payload)
            elif opcode == 0x9:
                self.worker.report.server_pings += 1
                if self.transport is not None:
                    self.transport.write(client_frame(payload, 0xA))
            elif opcode == 0xA:
                sent = self.pings.pop(payload, None)
                if sent is not None and self.worker.t_start <= time.monotonic() <= self.worker.t_end:
                    self.worker.report.pong_hist.record(time.monotonic() - sent)
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not self.closing:
                    self.worker.closed(f"close {code}")
                    self.closing = True
                if self.transport is not None:
                    self.transport.write(client_frame(payload[:2], 0x8))
                    self.transport.close()
                return
            if self.state == "closed":
                return
        self.buf = buf[pos:] if pos < n else b""
        if self.worker.sending:
            self._fill()

    def _handshake_ok(self, head: bytes) -> bool:
        status_line, _, headers = head.partition(b"\r\n")
        expected = base64.b64encode(hashlib.sha1(self.key + _WS_GUID).digest())
        if b" 101 " not in status_line + b" " or expected not in headers:
            code = status_line.split(b" ")[1].decode() if b" " in status_line else "?"
            self.state = "closed"
            self.worker.failed(f"http {code}")
            self.welcomed.set()
            assert self.transport is not None
            self.transport.close()
            return False
        self.state = "hello"
        hello = {"type": "hello", "stream": f"bench-{os.getpid()}-{self.index}", "agent": "iotgw-bench/1",
                 "device": self.name, "sensors": [{"metric": "temp", "unit": "degC"},
                 {"metric": "humidity", "unit": "%"}, {"metric": "pressure", "unit": "hPa"}],
                 "commands": [{"name": "ping"}]}  # fmt: skip
        assert self.transport is not None
        self.transport.write(client_frame(msgspec.json.encode(hello)))
        return True

    def _message(self, payload: bytes) -> None:
        if payload[:_ACK_PREFIX_LEN] == _ACK_PREFIX:
            self._ack(int(payload[_ACK_PREFIX_LEN:-1]))
            return
        message = _generic.decode(payload)
        kind = message.get("type")
        if kind == "ack":
            self._ack(int(message["seq"]))
        elif kind == "welcome" and self.state == "hello":
            self._welcomed(int(message.get("last_seq", 0)))
        elif kind == "command":
            self.worker.report.commands += 1
            result = {"type": "result", "id": message.get("id", ""), "ok": True, "value": None}
            assert self.transport is not None
            self.transport.write(client_frame(msgspec.json.encode(result)))
        elif kind == "error":
            self.worker.error(str(message.get("code")))

    def _writable(self) -> bool:
        return self.transport is not None and self.transport.get_write_buffer_size() < 1 << 20

    def _write_frames(self, first_seq: int, count: int, ts: int) -> None:
        samples = self.samples
        assert self.transport is not None
        self.transport.write(
            b"".join(client_frame(readings_payload(first_seq + i, ts, samples)) for i in range(count))
        )

    def ping(self) -> None:
        if self.state != "ready" or self.transport is None or not self.worker.sending:
            return
        self.ping_counter += 1
        payload = struct.pack("!I", self.ping_counter)
        self.pings[payload] = time.monotonic()
        self.transport.write(client_frame(payload, 0x9))


def _worker_main(spec: LoadSpec, index: int, first: int, devices: list[tuple[str, str]], shared: Shared,
                 results: Any) -> None:  # fmt: skip
    with contextlib.suppress(ValueError, OSError):
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    worker = Worker(spec, index, first, devices, shared)
    try:
        report = asyncio.run(worker.run())
    except BaseException as exc:  # report the failure instead of hanging the runner
        report = worker.report
        report.closes[f"worker crashed: {exc!r}"[:200]] = 1
    results.put(report)


class LoadRun:
    """The generator as the runner sees it: ``start``, ``wait_connected``, ``go``, ``finish``."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.ctx = multiprocessing.get_context("fork")
        self.shared = Shared(self.ctx)
        self.results: Any = self.ctx.Queue()
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.started_at = 0.0

    def start(self) -> None:
        spec = self.spec
        if not ipaddress.ip_address(spec.host).is_loopback:
            raise ValueError(f"the load generator only targets loopback addresses, not {spec.host}")
        n = max(1, min(spec.processes, len(spec.devices)))
        # contiguous chunks keep the ramp simple: device i of worker k is global device first_k + i
        per = -(-len(spec.devices) // n)
        chunks = [spec.devices[k * per : (k + 1) * per] for k in range(n)]
        first = 0
        self.started_at = time.monotonic()
        for k, chunk in enumerate(chunks):
            proc = self.ctx.Process(target=_worker_main, args=(spec, k, first, chunk, self.shared, self.results),
                                    name=f"bench-loadgen-{k}", daemon=True)  # fmt: skip
            proc.start()
            self.procs.append(proc)
            first += len(chunk)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def wait_connected(self, timeout: float) -> tuple[int, int, float]:
        """Wait until every device is welcomed or refused; (connected, failed, seconds taken)."""
        deadline = time.monotonic() + timeout
        total = len(self.spec.devices)
        while time.monotonic() < deadline:
            done = self.shared.connected.value + self.shared.failed.value
            if done >= total or not any(p.is_alive() for p in self.procs):
                break
            time.sleep(0.02)
        return self.shared.connected.value, self.shared.failed.value, time.monotonic() - self.started_at

    def go(self, warmup_s: float, measure_s: float) -> tuple[float, float]:
        """Start sending now; figures count from ``warmup_s`` on, for ``measure_s``."""
        t_start = time.monotonic() + warmup_s
        t_end = t_start + measure_s
        self.shared.window[0] = t_start
        self.shared.window[1] = t_end
        self.shared.go.set()
        return t_start, t_end

    def finish(self, timeout: float) -> WorkerReport:
        """Collect every worker's report (aborting those still running at ``timeout``)."""
        merged = WorkerReport()
        deadline = time.monotonic() + timeout
        received = 0
        while received < len(self.procs):
            try:
                report = self.results.get(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:
                if time.monotonic() > deadline:
                    self.shared.abort.set()
                    deadline = time.monotonic() + 5
                    if not any(p.is_alive() for p in self.procs):
                        break
                continue
            merged.merge(report)
            received += 1
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        return merged

    def abort(self) -> None:
        self.shared.abort.set()
