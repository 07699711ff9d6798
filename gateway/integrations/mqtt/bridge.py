"""The MQTT bridge: one broker connection, the delivery engine's MQTT sink, presence, discovery.

``MqttBridge(settings, store_path, committer, read_conn)``; ``await start()`` connects in
the background and starts delivering (raises ``DeliveryStartError`` when ``mqtt.required``
and the broker is away); ``await stop()`` publishes "offline" and disconnects cleanly. The
gateway (``gateway.app``) registers :meth:`presence` as a presence observer of the device
plane; the operator plane's command handler (``gateway.operator.mqtt_commands``) adds its
subscriptions with :meth:`subscribe` and publishes output states with :meth:`publish_output`.

What is state, not history, is retained and republished in full at every (re)connection:
the gateway's ``status`` ("online"; the last will says "offline" if the gateway dies),
each device's ``availability``, Home Assistant discovery configs. Readings and events are
history: they go through the delivery engine behind the ``mqtt.*`` cursors.

Removing a device: the registry is polled every ``REGISTRY_POLL_S``; a device that is gone
gets empty retained discovery configs (Home Assistant deletes its entities) and its
retained availability and state are cleared. Retained configs of this gateway that name a
device or an entity it no longer has (a device removed while the gateway was down) are
cleared as they arrive on the discovery subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from gateway.config import MqttSettings
from gateway.integrations.engine import DeliveryEngine
from gateway.integrations.mqtt.client import MqttConnection
from gateway.integrations.mqtt.discovery import device_configs, gateway_configs
from gateway.integrations.mqtt.sink import MqttSink
from gateway.integrations.mqtt.topics import Topics
from gateway.store import registry
from gateway.store.registry import DeviceRecord
from gateway.store.writer import GroupCommitter

__all__ = ["REGISTRY_POLL_S", "MqttBridge"]

log = logging.getLogger(__name__)

REGISTRY_POLL_S = 5.0
"""How often the registry is compared with what was announced (removed devices)."""
Handler = Callable[[paho.MQTTMessage], None]


class MqttBridge:
    """See the module docstring. Call everything from the gateway's event loop."""

    def __init__(self, settings: MqttSettings, store_path: str | Path, committer: GroupCommitter,
                 read_conn: sqlite3.Connection) -> None:  # fmt: skip
        self.settings = settings
        self.topics = Topics(settings.prefix, settings.gateway)
        self.client_id = settings.client_id or f"iotgw-{settings.gateway}"
        self.connection = MqttConnection(
            settings, client_id=self.client_id, will=(self.topics.status, b"offline")
        )
        self.connection.on_message = self._dispatch
        self.connection.on_connected.append(self._connected)
        self._store_path = Path(store_path)
        self._committer = committer
        self._conn = read_conn
        self.engine: DeliveryEngine | None = None
        self._online: dict[int, str] = {}  # device id -> name, online now
        self._announced: dict[str, set[str]] = {}  # device name -> discovery config topics published
        self._outputs: dict[tuple[str, str], bytes] = {}  # (device, output) -> last state payload
        self._handlers: list[tuple[str, Handler]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (in the background) and start the delivery engine."""
        loop = asyncio.get_running_loop()
        if self.settings.discovery:
            self.subscribe(f"{self.settings.discovery_prefix}/+/+/+/config", self._discovery_seen)
        await self.connection.start()
        sink = MqttSink(self.settings, self.connection, self.topics, loop)
        engine = DeliveryEngine(sink, self.settings, self._store_path, self._committer)
        try:
            await engine.start()
        except BaseException:
            await self.connection.stop()
            raise
        self.engine = engine
        self._poller = asyncio.create_task(self._poll_registry(), name="mqtt-registry")

    async def stop(self) -> None:
        """Stop delivering (the backlog stays in the store), say "offline", disconnect. Safe twice."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self.engine is not None:
            await self.engine.stop()
            self.engine = None
        for task in list(self._tasks):
            task.cancel()
        final = [(self.topics.availability(name), b"offline") for name in self._online.values()]
        await self.connection.stop(final=[*final, (self.topics.status, b"offline")])

    @property
    def connected(self) -> bool:
        return self.connection.connected

    def status(self) -> dict[str, Any]:
        """The live part of the bridge's status (the engine's part is in the store)."""
        c = self.connection
        return {
            "broker": str(c.address),
            "client_id": self.client_id,
            "connected": c.connected,
            "connects": c.connects,
            "disconnects": c.disconnects,
            "in_flight": c.in_flight,
            "last_error": c.last_error or None,
            "last_error_ms": c.last_error_ms,
            "devices_online": len(self._online),
        }

    # -- subscriptions -------------------------------------------------------------------

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Subscribe (now and at every reconnection); ``handler(message)`` runs on the loop, must not block."""
        self._handlers.append((topic, handler))
        self.connection.subscriptions.append((topic, 1))

    def _dispatch(self, message: paho.MQTTMessage) -> None:
        for topic, handler in self._handlers:
            if paho.topic_matches_sub(topic, message.topic):
                handler(message)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, properties: Any = None) -> None:
        """Publish without waiting (state, replies); a failure is logged, never raised."""
        future = self.connection.publish_nowait(topic, payload, qos=1, retain=retain, properties=properties)
        future.add_done_callback(_log_failure(topic))

    # -- presence and state -----------------------------------------------------------------

    def presence(self, device_id: int, name: str, online: bool, peer: str | None) -> None:
        """A device-plane presence observer: retained availability, discovery when it comes online."""
        if online:
            self._online[device_id] = name
        else:
            self._online.pop(device_id, None)
        if self.connection.connected:
            self.publish(self.topics.availability(name), b"online" if online else b"offline", retain=True)
            if online and self.settings.discovery:
                self._spawn(self._announce_id(device_id))

    def publish_output(self, device: str, output: str, state: dict[str, Any]) -> None:
        """An output's state after a result (retained: Home Assistant's switches follow it)."""
        payload = json.dumps(state, separators=(",", ":")).encode()
        self._outputs[(device, output)] = payload
        if self.connection.connected:
            self.publish(self.topics.output(device, output), payload, retain=True)

    def find_device(self, name: str) -> DeviceRecord | None:
        return registry.find_by_name(self._conn, name)

    def _connected(self) -> None:
        topics = self.topics
        self.publish(topics.status, b"online", retain=True)
        devices = registry.list_devices(self._conn)
        online = set(self._online)
        for record in devices:
            self.publish(topics.availability(record.name), b"online" if record.id in online else b"offline",
                         retain=True)  # fmt: skip
        for (device, output), payload in self._outputs.items():
            self.publish(topics.output(device, output), payload, retain=True)
        if self.settings.discovery:
            prefix = self.settings.discovery_prefix
            for topic, config in gateway_configs(topics, prefix).items():
                self.publish(topic, json.dumps(config).encode(), retain=True)
            for record in devices:
                self._announce(record)

    # -- discovery --------------------------------------------------------------------------

    async def _announce_id(self, device_id: int) -> None:
        # through the writer thread: after the hello's metadata update is committed
        record = await self._committer.call(lambda conn: registry.find_by_id(conn, device_id))
        if record is not None:
            self._announce(record)

    def _announce(self, record: DeviceRecord) -> None:
        configs = device_configs(record, self.topics, self.settings.discovery_prefix)
        old = self._announced.get(record.name, set())
        for topic in old - configs.keys():  # an entity the device no longer declares
            self.publish(topic, b"", retain=True)
        for topic, payload in configs.items():
            self.publish(topic, json.dumps(payload).encode(), retain=True)
        self._announced[record.name] = set(configs)

    def _forget(self, name: str) -> None:
        log.info("MQTT: device %s removed: clearing its discovery configs and retained topics", name)
        for topic in self._announced.pop(name, set()):
            self.publish(topic, b"", retain=True)
        for topic in (self.topics.availability(name), self.topics.state(name)):
            self.publish(topic, b"", retain=True)
        for key in [key for key in self._outputs if key[0] == name]:
            del self._outputs[key]
            self.publish(self.topics.output(*key), b"", retain=True)

    async def _poll_registry(self) -> None:
        while True:
            await asyncio.sleep(REGISTRY_POLL_S)
            try:
                names = {record.name for record in registry.list_devices(self._conn)}
            except sqlite3.Error:  # busy or locked for a moment: next round
                log.warning("MQTT: reading the registry failed", exc_info=True)
                continue
            if self.connection.connected:
                for name in [name for name in self._announced if name not in names]:
                    self._forget(name)

    def _discovery_seen(self, message: paho.MQTTMessage) -> None:
        """A retained config on the broker: clear it if it is ours and names nothing we have."""
        if not message.payload or not message.retain:
            return
        try:
            identifiers = json.loads(message.payload)["device"]["identifiers"]
        except (ValueError, KeyError, TypeError):
            return  # someone else's config
        mine = f"iotgw_{self.topics.gateway}_"
        ident = identifiers[0] if isinstance(identifiers, list) and identifiers else ""
        if not isinstance(ident, str) or not ident.startswith(mine):
            return
        name = ident[len(mine) :]
        if registry.find_by_name(self._conn, name) is None or (
            name in self._announced and message.topic not in self._announced[name]
        ):
            self.publish(message.topic, b"", retain=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _log_failure(topic: str) -> Callable[[asyncio.Future[Any]], None]:
    def done(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.info("MQTT: publishing to %s failed: %s", topic, future.exception())

    return done
