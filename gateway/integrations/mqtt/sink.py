"""The MQTT sink of the delivery engine: stored readings and events published at QoS 1.

``DeliveryEngine(MqttSink(settings, connection, topics), settings, store_path, committer)``
is the bridge's delivery half (``gateway.integrations.mqtt.bridge`` builds it). The
engine reads rows above the cursors ``mqtt.readings`` / ``mqtt.events``, this sink encodes
each row as ``<topic>\\n<json>`` (what a dead letter shows), and ``write`` publishes a batch:

- readings: one message per device per batch on ``.../device/<device>/readings``,
  ``{"device", "gateway", "samples": [{"ts", "values"}, ...]}``, samples in stored order;
- the device's latest values, merged over its metrics, retained on ``.../state``;
- each event on ``.../device/<device>/event/<name>``: ``{"device", "ts", "seq", "name", "data"}``.

``write`` returns only when the broker acknowledged every message (PUBACK, QoS 1), so
the engine moves its cursors past confirmed rows only. Up to ``mqtt.max_inflight``
messages await their PUBACK at once (the broker's Receive Maximum can lower it). The
connection dropping mid-batch fails the batch as retryable: the engine sends it again
once the broker is back, so a subscriber may get a batch's messages twice, in the same
order (docs/mqtt.md, "Delivery guarantees": at least once, in order per device, every
duplicate a replay of a whole earlier message). A broker refusing a message (MQTT 5
reason code >= 0x80, e.g. 0x87 not authorized) makes it a dead letter.

``write`` and ``check`` run in the engine's worker thread and hand the publishing to
the connection's event loop; ``encode_*`` run there too, with the engine's read connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import msgspec

from gateway.config import MqttSettings
from gateway.integrations.mqtt.client import ConnectionLost, MqttConnection, PublishRefused
from gateway.integrations.mqtt.topics import Topics
from gateway.integrations.sink import DeliveryError, EncodeError
from gateway.store import registry
from gateway.store.delivery import cursor_name

__all__ = ["EVENTS_CURSOR", "NAME", "READINGS_CURSOR", "MqttSink"]

NAME = "mqtt"
READINGS_CURSOR = cursor_name(NAME, "readings")
EVENTS_CURSOR = cursor_name(NAME, "events")
NAME_CACHE_S = 30.0
"""How long a device id -> name lookup is reused."""

_decode_values = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.encode


class MqttSink:
    """Publishes the engine's batches through an :class:`MqttConnection`; see the module docstring."""

    name = NAME
    title = "MQTT"

    def __init__(self, settings: MqttSettings, connection: MqttConnection, topics: Topics,
                 loop: asyncio.AbstractEventLoop) -> None:  # fmt: skip
        self.settings = settings
        self.connection = connection
        self.topics = topics
        self.loop = loop
        self.target = str(connection.address)
        self._names: dict[int, str] = {}
        self._names_at = 0.0
        self._state: dict[str, dict[str, Any]] = {}  # device -> latest values (only the worker thread)
        self.published_messages = 0

    # -- encoding (worker thread) --------------------------------------------------------------

    def prepare(self, conn: sqlite3.Connection, *, resend: bool = False) -> None:
        if resend or time.monotonic() - self._names_at > NAME_CACHE_S:
            self._names.clear()
            self._names_at = time.monotonic()

    def _device(self, conn: sqlite3.Connection, device_id: int) -> str:
        name = self._names.get(device_id)
        if name is None:
            record = registry.find_by_id(conn, device_id)
            name = f"removed-{device_id}" if record is None else record.name
            self._names[device_id] = name
        return name

    def encode_reading(self, conn: sqlite3.Connection, device_id: int, ts: int, data: str) -> str:
        if "\n" in data:  # stored JSON is compact; a raw newline would split the item
            raise EncodeError("stored reading holds a raw newline")
        return f'{self.topics.readings(self._device(conn, device_id))}\n{{"ts":{ts},"values":{data}}}'

    def encode_event(self, conn: sqlite3.Connection, device_id: int, ts: int, seq: int, name: str,
                     data: str) -> str:  # fmt: skip
        device = self._device(conn, device_id)
        if "\n" in data:
            raise EncodeError("stored event holds a raw newline")
        payload = f'{{"device":"{device}","ts":{ts},"seq":{seq},"name":"{name}","data":{data}}}'
        return f"{self.topics.event(device, name)}\n{payload}"

    # -- delivery (worker thread -> the loop) ---------------------------------------------------

    def messages(self, items: list[str]) -> list[tuple[str, bytes, bool]]:
        """The (topic, payload, retain) messages for ``items``, in publishing order."""
        groups: dict[str, list[str]] = {}
        out: list[tuple[str, bytes, bool]] = []
        suffix = "/readings"
        for item in items:
            topic, _, payload = item.partition("\n")
            if topic.endswith(suffix):
                groups.setdefault(topic, []).append(payload)
            else:
                out.append((topic, payload.encode(), False))
        gateway = self.topics.gateway
        states: list[tuple[str, bytes, bool]] = []
        for topic, samples in groups.items():
            device = topic[: -len(suffix)].rsplit("/", 1)[1]
            body = f'{{"device":"{device}","gateway":"{gateway}","samples":[{",".join(samples)}]}}'
            out.append((topic, body.encode(), False))
            state = self._state.setdefault(device, {})
            last_ts = 0
            for sample in samples:
                decoded = _decode_values(sample)
                state.update(decoded["values"])
                last_ts = decoded["ts"]
            states.append(
                (self.topics.state(device), _encode({"device": device, "ts": last_ts, "values": state}), True)
            )
        return out + states

    def write(self, items: list[str]) -> None:
        messages = self.messages(items)
        timeout = self.settings.timeout
        future = asyncio.run_coroutine_threadsafe(self._publish_all(messages, timeout), self.loop)
        try:
            future.result(timeout + 5)
        except ConnectionLost as exc:
            raise DeliveryError(str(exc), retryable=True, summary=f"broker unreachable: {exc}") from None
        except TimeoutError:
            future.cancel()
            raise DeliveryError(
                f"no PUBACK within {timeout:g} s", retryable=True, summary="broker does not acknowledge"
            ) from None
        except PublishRefused as exc:
            raise DeliveryError(str(exc), retryable=False, status=exc.code, summary=str(exc),
                                needs_operator=exc.code in (0x87, 0x90)) from None  # fmt: skip
        self.published_messages += len(messages)

    async def _publish_all(self, messages: list[tuple[str, bytes, bool]], timeout: float) -> None:
        qos = self.settings.qos
        publish = self.connection.publish_nowait
        futures = [publish(topic, payload, qos=qos, retain=retain) for topic, payload, retain in messages]
        try:
            async with asyncio.timeout(timeout):
                for future in futures:
                    await future  # raises the first failure; the rest are retrieved below
        finally:
            for future in futures:
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: no "never retrieved" warnings
                else:
                    future.cancel()

    def check(self) -> None:
        wait = self.connection.wait_connected(self.settings.timeout)
        if not asyncio.run_coroutine_threadsafe(wait, self.loop).result(self.settings.timeout + 5):
            error = self.connection.last_error or "no answer"
            refused = "authori" in error.lower() or "user name" in error.lower()
            raise DeliveryError(error, retryable=True, summary=error, needs_operator=refused)

    def close(self) -> None:
        """The connection belongs to the bridge, which closes it."""
