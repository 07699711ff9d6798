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
server and Mosquitto are driven by the same scheduling code (``Worker`` in
bench/workload.py), so a scenario and its peers differ only in the device
class.

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
from typing import Any

import msgspec

from .workload import DeviceFactory, LoadSpec, ProtocolDevice, Shared, Worker, WorkerReport, readings_payload

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


class WsDevice(ProtocolDevice):
    """One device over a hand-rolled RFC 6455 client; see the module docstring."""

    def __init__(self, worker: Worker, index: int, name: str, token: str) -> None:
        super().__init__(worker, index, name, token)
        self.buf = b""
        self.key = b""
        self.pings: dict[bytes, float] = {}
        self.ping_counter = 0

    # -- connection ------------------------------------------------------------------

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
    factory: DeviceFactory = WsDevice
    if spec.kind == "mqtt":
        from .mqttgen import MqttDevice  # paho-mqtt is needed only here

        factory = MqttDevice
    elif spec.kind == "mqtt-raw":
        from .mqttraw import RawMqttDevice

        factory = RawMqttDevice
    worker = Worker(spec, index, first, devices, shared, factory)
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
