"""A lean MQTT 3.1.1 publisher for the Mosquitto peer, so that the generator is not the bottleneck.

paho-mqtt costs its clients more per message than Mosquitto costs the broker (132-142 % of the
generator's CPU against 41-44 % for Mosquitto on two cores, docs/performance.md): the broker's
figure was the generator's. ``RawMqttDevice`` is to MQTT what ``WsDevice`` (bench/loadgen.py) is
to protocol v1: an ``asyncio.Protocol`` that writes CONNECT and QoS 1 PUBLISH packets by hand
and reads CONNACK/PUBACK, the same payloads, the same window of messages awaiting PUBACK.
``LoadSpec.kind = "mqtt-raw"`` selects it; ``mqtt`` stays paho-mqtt (what a user would run).
"""

from __future__ import annotations

import asyncio
import struct

from .workload import ProtocolDevice, Worker, readings_payload


def _remaining(n: int) -> bytes:
    """MQTT's variable byte integer (section 2.2.3)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet_bounds(buf: bytes, pos: int, n: int) -> tuple[int, int]:
    """The MQTT packet at ``buf[pos]``: (where its variable header starts, where it ends), from
    the remaining length (a variable byte integer, MQTT 3.1.1 section 2.2.3). ``end > n``: the
    packet is not all in ``buf[:n]`` yet."""
    mult, length, i = 1, 0, pos + 1
    while i < n:
        byte = buf[i]
        length += (byte & 0x7F) * mult
        mult <<= 7
        i += 1
        if not byte & 0x80:
            return i, i + length
    return i, n + 1


class RawMqttDevice(ProtocolDevice):
    """One QoS 1 publisher over a hand-written MQTT 3.1.1 client."""

    def __init__(self, worker: Worker, index: int, name: str, token: str) -> None:
        super().__init__(worker, index, name, token)
        self.topic = f"{worker.spec.topic}/{name}".encode()
        self.buf = b""
        self.pids: dict[int, int] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.state = "handshake"
        client_id = f"bench-{self.name}".encode()
        # protocol name, level 4, clean session, keepalive 0 (off: the bench keeps it busy)
        body = b"\x00\x04MQTT\x04\x02\x00\x00" + struct.pack("!H", len(client_id)) + client_id
        transport.write(b"\x10" + _remaining(len(body)) + body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == "closed":
            return
        if self.state != "ready":
            self.worker.failed("lost during connect")
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
                self.transport.write(b"\xe0\x00")  # DISCONNECT
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        pids = self.pids
        while n - pos >= 2:
            b0 = buf[pos]
            if b0 == 0x40 and buf[pos + 1] == 2:  # PUBACK, the common case
                if n - pos < 4:
                    break
                seq = pids.pop((buf[pos + 2] << 8) | buf[pos + 3], None)
                if seq is not None:
                    self._ack(seq)
                pos += 4
                continue
            i, end = packet_bounds(buf, pos, n)
            if end > n:
                break
            if b0 >> 4 == 2 and self.state == "handshake":  # CONNACK
                if buf[i + 1] != 0:
                    self.state = "closed"
                    self.worker.failed(f"connack {buf[i + 1]}")
                    self.welcomed.set()
                    return
                self._welcomed(0)
            pos = end
        self.buf = buf[pos:] if pos < n else b""
        if self.worker.sending:
            self._fill()

    def _writable(self) -> bool:
        return self.transport is not None and self.transport.get_write_buffer_size() < 1 << 20

    def _write_frames(self, first_seq: int, count: int, ts: int) -> None:
        assert self.transport is not None
        topic = struct.pack("!H", len(self.topic)) + self.topic
        samples = self.samples
        parts = []
        for i in range(count):
            seq = first_seq + i
            pid = (seq - 1) % 65535 + 1
            self.pids[pid] = seq
            payload = readings_payload(seq, ts, samples)
            body_len = len(topic) + 2 + len(payload)
            parts.append(b"\x32" + _remaining(body_len) + topic + struct.pack("!H", pid) + payload)
        self.transport.write(b"".join(parts))
