"""The same workload over MQTT: paho-mqtt publishers at QoS 1, one counting subscriber.

Each simulated device is a paho-mqtt client publishing the same ``readings``
payloads the WebSocket devices send to ``<topic>/<name>`` at QoS 1, with at
most ``window`` messages waiting for their PUBACK, like a device that keeps
unconfirmed readings. paho's socket is driven by the worker's event loop
(``on_socket_*`` callbacks, as aiomqtt does), so no thread per client.

The subscriber counts PUBLISH packets on ``<topic>/#`` at QoS 0 with a few
lines of MQTT 3.1.1 (a counter, not a consumer: it must not be the bottleneck).
Messages that Mosquitto drops for a slow subscriber show up as acked minus
delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.synchronize
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .mqttraw import packet_bounds
from .workload import DeviceBase, Shared, Worker, readings_payload


class MqttDevice(DeviceBase):
    """One publisher; its ``seq`` maps to paho message ids, acked by PUBACK in order."""

    def __init__(self, worker: Worker, index: int, name: str, token: str) -> None:
        super().__init__(worker, index, name, token)
        self.topic = f"{worker.spec.topic}/{name}"
        self.mids: dict[int, int] = {}
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{name}", protocol=mqtt.MQTTv311)
        client.max_inflight_messages_set(max(worker.spec.window, 1))
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self.client = client
        self.sock: Any = None

    async def connect(self) -> None:
        w = self.worker
        self.t_connect = time.monotonic()
        try:
            async with asyncio.timeout(30):
                self.client.connect(w.spec.host, w.spec.port, keepalive=60, bind_address=w.source or "")
                await self.welcomed.wait()
        except (OSError, TimeoutError) as exc:
            if self.state != "closed":
                self.state = "closed"
                w.failed(type(exc).__name__)

    def close(self) -> None:
        self.closing = True
        self._cancel_timer()
        if self.state == "ready":
            with contextlib.suppress(Exception):
                self.client.disconnect()
        self.state = "closed"
        if self.sock is not None:
            self._on_socket_close(self.client, None, self.sock)

    def tick(self) -> None:
        if self.sock is not None:
            self.client.loop_misc()

    def _writable(self) -> bool:
        return self.sock is not None

    def _write_frames(self, first_seq: int, count: int, ts: int) -> None:
        publish = self.client.publish
        samples = self.samples
        for i in range(count):
            info = publish(self.topic, readings_payload(first_seq + i, ts, samples), qos=1)
            self.mids[info.mid] = first_seq + i

    # -- paho callbacks --------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.state = "closed"
            self.worker.failed(f"connack {reason}")
            self.welcomed.set()
            return
        self._welcomed(0)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        seq = self.mids.pop(mid, None)
        if seq is not None:
            self._ack(seq)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not self.closing and self.state == "ready":
            self.worker.closed(f"mqtt disconnect {reason}")
        self.state = "closed"
        self.welcomed.set()

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.sock = sock
        assert self.worker.loop is not None
        self.worker.loop.add_reader(sock, self._readable)

    def _readable(self) -> None:
        self.client.loop_read()
        if self.worker.sending:
            self._fill()  # once per read: the frames freed by several PUBACKs go out together

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        loop = self.worker.loop
        if loop is not None and self.sock is not None:
            loop.remove_reader(sock)
            loop.remove_writer(sock)
        self.sock = None

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self.worker.loop is not None
        self.worker.loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self.worker.loop is not None
        self.worker.loop.remove_writer(sock)


@dataclass(slots=True)
class SubscriberReport:
    received: int = 0
    window_received: int = 0
    error: str = ""


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def _subscriber_main(
    host: str, port: int, topic: str, shared: Shared, stop: Any, ready: Any, results: Any
) -> None:
    report = SubscriberReport()
    try:
        sock = socket.create_connection((host, port), timeout=10)
        client_id = b"bench-counter"
        # CONNECT (MQTT 3.1.1 section 3.1): protocol name, level 4, clean session, keepalive 600 s
        body = (
            b"\x00\x04MQTT\x04\x02" + struct.pack("!H", 600) + struct.pack("!H", len(client_id)) + client_id
        )
        sock.sendall(bytes([0x10, len(body)]) + body)
        if _read_exact(sock, 4)[0] != 0x20:
            raise ConnectionError("no CONNACK")
        filt = f"{topic}/#".encode()
        body = struct.pack("!H", 1) + struct.pack("!H", len(filt)) + filt + b"\x00"  # QoS 0
        sock.sendall(bytes([0x82, len(body)]) + body)
        if _read_exact(sock, 5)[0] != 0x90:
            raise ConnectionError("no SUBACK")
        ready.set()
        sock.settimeout(0.2)
        buf = b""
        pos = 0
        while not stop.is_set():
            try:
                chunk = sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                break
            buf = buf[pos:] + chunk
            pos = 0
            n = len(buf)
            count = 0
            while n - pos >= 2:
                _, end = packet_bounds(buf, pos, n)
                if end > n:
                    break
                if buf[pos] >> 4 == 3:
                    count += 1
                pos = end
            report.received += count
            if shared.go.is_set() and shared.window[0] <= time.monotonic() <= shared.window[1]:
                report.window_received += count
        sock.close()
    except Exception as exc:
        report.error = repr(exc)
        ready.set()
    results.put(report)


class Subscriber:
    """The counting subscriber in its own process: ``start``, later ``finish``."""

    def __init__(self, host: str, port: int, topic: str, shared: Shared) -> None:
        ctx = multiprocessing.get_context("fork")
        self.stop: multiprocessing.synchronize.Event = ctx.Event()
        self.ready: multiprocessing.synchronize.Event = ctx.Event()
        self.results: Any = ctx.Queue()
        self.proc = ctx.Process(
            target=_subscriber_main, args=(host, port, topic, shared, self.stop, self.ready, self.results),
            name="bench-mqtt-counter", daemon=True,
        )  # fmt: skip

    def start(self) -> None:
        self.proc.start()
        if not self.ready.wait(10):
            raise RuntimeError("the MQTT counting subscriber did not subscribe in 10 s")

    def finish(self, grace_s: float = 1.0) -> dict[str, Any]:
        """Stop counting after ``grace_s`` (messages still on their way); the figures for the results."""
        time.sleep(grace_s)
        self.stop.set()
        try:
            report: SubscriberReport = self.results.get(timeout=10)
        except Exception:
            report = SubscriberReport(error="no report from the subscriber")
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        return {"delivered_window": report.window_received, "delivered_total": report.received,
                "subscriber_error": report.error or None}  # fmt: skip
