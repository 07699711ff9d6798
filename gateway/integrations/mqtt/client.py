"""One MQTT connection kept up by a supervisor task, paho-mqtt driven by the asyncio loop.

As in aiomqtt, there is no paho thread: paho's socket is registered with the loop
(``add_reader`` -> ``loop_read``, ``add_writer`` -> ``loop_write`` while paho has bytes to
send) and a small task calls ``loop_misc`` for keep-alives. Every paho callback therefore
runs on the loop. Only ``Client.connect`` (DNS, TCP, TLS handshake) runs in a worker
thread; the socket is handed to the loop once it returns.

Each connection attempt uses a fresh paho ``Client``: what was in flight when a
connection dropped is failed (:class:`ConnectionLost`) and resent by the caller, never
replayed a second time by paho itself, so the caller knows exactly what may be duplicated.

Usage (from the event loop)::

    conn = MqttConnection(settings, will=("iotgw/gw/status", b"offline"))
    conn.on_connected.append(callback)            # (re)subscribe, republish retained state
    conn.on_message = handler                     # paho MQTTMessage, on the loop, must not block
    await conn.start()
    reason = await conn.publish("t", b"x", qos=1) # waits for PUBACK; raises ConnectionLost
    await conn.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import MqttSettings
from iotgw_common.clock import now_ms

__all__ = ["BrokerAddress", "ConnectionLost", "MqttConnection", "PublishRefused", "parse_url"]

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 15.0
MISC_INTERVAL_S = 1.0


class ConnectionLost(ConnectionError):
    """Not connected, or the connection dropped before the broker confirmed a publish."""


class PublishRefused(RuntimeError):
    """The broker answered a QoS 1 publish with a failure reason code (MQTT 5, >= 0x80)."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(f"broker refused the message: {reason} (0x{code:02x})")
        self.reason = reason
        self.code = code


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_url(url: str) -> BrokerAddress:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]``; ValueError otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"mqtt.url must be mqtt://host[:port] or mqtts://host[:port], not {url!r}")
    if parts.username or parts.password:
        raise ValueError("put the broker credentials in mqtt.username / mqtt.password, not in mqtt.url")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, parts.port or (8883 if tls else 1883), tls)


def _reason_failed(reason: Any) -> bool:
    return isinstance(reason, ReasonCode) and reason.is_failure


class MqttConnection:
    """A supervised connection to the broker; see the module docstring. Call from the loop only."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        will: tuple[str, bytes] | None = None,
        will_retain: bool = True,
    ) -> None:
        self.settings = settings
        self.address = parse_url(settings.url)
        self.client_id = client_id
        self.will = will
        self.will_retain = will_retain
        self.on_connected: list[Callable[[], None]] = []
        """Called on the loop after each CONNACK (subscribe and republish retained state there)."""
        self.on_message: Callable[[paho.MQTTMessage], None] | None = None
        self.subscriptions: list[tuple[str, int]] = []
        """Subscribed again at every connection."""
        self.connected = False
        self.connects = 0
        self.disconnects = 0
        self.last_error = ""
        self.last_error_ms: int | None = None
        self.connected_ms: int | None = None
        self.mqtt5 = settings.protocol == "5"
        self._client: paho.Client | None = None
        self._pending: dict[int, asyncio.Future[ReasonCode | None]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._lost: asyncio.Event = asyncio.Event()
        self._up: asyncio.Event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._misc_task: asyncio.Task[None] | None = None

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start the supervisor; it connects in the background (see ``wait_connected``)."""
        self._loop = asyncio.get_running_loop()
        self._supervisor = asyncio.create_task(self._supervise(), name="mqtt-connection")

    async def wait_connected(self, timeout: float) -> bool:
        """True once connected (CONNACK accepted) within ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._up.wait()
        return self.connected

    async def stop(self, final: list[tuple[str, bytes]] | None = None) -> None:
        """Publish ``final`` (retained, e.g. "offline") if connected, disconnect cleanly. Safe twice."""
        self._stopping = True
        if self.connected and final:
            futures = [self._publish_nowait(t, p, qos=1, retain=True) for t, p in final]
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await asyncio.gather(*futures, return_exceptions=True)
        client = self._client
        if client is not None and self.connected:
            client.disconnect()  # a clean DISCONNECT: the broker does not send the will
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._lost.wait()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        self._drop("the bridge stopped")

    # -- publishing -----------------------------------------------------------------------

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                       properties: Properties | None = None) -> asyncio.Future[ReasonCode | None]:  # fmt: skip
        """Queue one message; the future ends at PUBACK (QoS 1) or once written (QoS 0).

        The future raises ConnectionLost if the connection is down or drops first, and
        PublishRefused if the broker answers with a failure reason code.
        """
        return self._publish_nowait(topic, payload, qos=qos, retain=retain, properties=properties)

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      properties: Properties | None = None) -> ReasonCode | None:  # fmt: skip
        return await self._publish_nowait(topic, payload, qos=qos, retain=retain, properties=properties)

    def _publish_nowait(self, topic: str, payload: bytes, *, qos: int, retain: bool,
                        properties: Properties | None = None) -> asyncio.Future[ReasonCode | None]:  # fmt: skip
        assert self._loop is not None
        future: asyncio.Future[ReasonCode | None] = self._loop.create_future()
        client = self._client
        if client is None or not self.connected:
            future.set_exception(ConnectionLost(f"not connected to {self.address}"))
            return future
        info = client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            future.set_exception(ConnectionLost(f"publish failed: {paho.error_string(info.rc)}"))
        elif qos == 0:
            future.set_result(None)
        else:
            self._pending[info.mid] = future
        return future

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # -- the supervisor ---------------------------------------------------------------------

    async def _supervise(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                await self._connect_once()
                attempt = 0
                await self._lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # DNS, refused, TLS, bad credentials: logged, retried with backoff
                self._note_error(str(exc) or type(exc).__name__)
                self._drop(str(exc))
            if self.stopping:
                return
            attempt += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** min(attempt - 1, 10))
            delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: many gateways, one broker
            await asyncio.sleep(delay)

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        self._lost = asyncio.Event()
        client = self._new_client()
        self._client = client
        s = self.settings
        props = None
        if self.mqtt5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        addr = self.address
        await loop.run_in_executor(
            None,
            lambda: (
                client.connect(
                    addr.host, addr.port, keepalive=s.keepalive, clean_start=True, properties=props
                )
                if self.mqtt5
                else client.connect(addr.host, addr.port, keepalive=s.keepalive)
            ),
        )
        sock = client.socket()
        if sock is None:
            raise ConnectionLost(f"no socket after connecting to {addr}")
        if isinstance(sock, socket.socket):  # paho leaves Nagle on: a small publish after another
            # would wait for the broker's delayed ACK (~40 ms a hop, docs/scale-out.md)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def register_write(c: paho.Client, userdata: Any, sk: Any) -> None:
            loop.add_writer(sk, c.loop_write)

        def unregister_write(c: paho.Client, userdata: Any, sk: Any) -> None:
            loop.remove_writer(sk)

        client.on_socket_register_write = register_write
        client.on_socket_unregister_write = unregister_write
        client.on_socket_close = lambda c, u, sk: self._socket_closed(sk)
        loop.add_reader(sock, client.loop_read)
        if client.want_write():
            loop.add_writer(sock, client.loop_write)
        misc = asyncio.create_task(self._misc(client), name="mqtt-misc")
        self._lost.clear()
        try:
            async with asyncio.timeout(max(10.0, s.timeout)):
                while not self.connected and not self._lost.is_set():
                    await asyncio.sleep(0.01)
        except TimeoutError:
            misc.cancel()
            client.disconnect()
            self._socket_closed(sock)
            raise ConnectionLost(f"no CONNACK from {addr}") from None
        if self._lost.is_set():
            misc.cancel()
            raise ConnectionLost(self.last_error or f"{addr} refused the connection")
        self._misc_task = misc

    def _new_client(self) -> paho.Client:
        s = self.settings
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self.mqtt5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self.mqtt5 else True,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(0)
        if s.username:
            client.username_pw_set(s.username, s.password or None)
        if self.will is not None:
            client.will_set(self.will[0], self.will[1], qos=1, retain=self.will_retain)
        if self.address.tls:
            context = ssl.create_default_context(cafile=s.ca_file or None)
            if s.cert_file:
                context.load_cert_chain(s.cert_file, s.key_file or None)
            if s.insecure:
                context.check_hostname = False
            client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    async def _misc(self, client: paho.Client) -> None:
        while True:
            await asyncio.sleep(MISC_INTERVAL_S)
            if client.loop_misc() != paho.MQTT_ERR_SUCCESS and client is self._client:
                self._socket_closed(client.socket())

    # -- paho callbacks (on the loop) -----------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Properties | None) -> None:  # fmt: skip
        if reason.is_failure:
            self._note_error(f"{self.address} refused the connection: {reason}")
            self._lost.set()
            return
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        if receive_max:  # MQTT 5: the broker says how many QoS 1 messages it takes at once
            # paho's setter refuses on a live connection (it would have to re-sort queued messages);
            # this client is new and has published nothing yet, so setting the window is safe here
            client._max_inflight_messages = min(self.settings.max_inflight, int(receive_max))
        self.connected = True
        self.connects += 1
        self.connected_ms = now_ms()
        log.info("MQTT: connected to %s as %s", self.address, self.client_id)
        if self.subscriptions:
            client.subscribe(self.subscriptions)
        for callback in self.on_connected:
            try:
                callback()
            except Exception:  # one listener's bug must not take the connection down
                log.exception("MQTT on_connected callback failed")
        self._up.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Properties | None) -> None:  # fmt: skip
        if client is self._client:
            if not self._stopping:
                self._note_error(f"connection lost: {reason}")
            self._socket_closed(client.socket())

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Properties | None) -> None:  # fmt: skip
        future = self._pending.pop(mid, None)
        if future is None or future.done():
            return
        if _reason_failed(reason):
            future.set_exception(PublishRefused(str(reason), int(reason.value)))
        else:
            future.set_result(reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        handler = self.on_message
        if handler is not None:
            try:
                handler(message)
            except Exception:  # a bad message must not take the connection down
                log.exception("MQTT message on %s: handler failed", message.topic)

    # -- losing the connection ----------------------------------------------------------------------

    def _socket_closed(self, sock: Any) -> None:
        loop = self._loop
        if loop is not None and sock is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(sock)
            with contextlib.suppress(Exception):
                loop.remove_writer(sock)
        was = self.connected
        self._drop("connection lost")
        if was:
            self.disconnects += 1
            if not self._stopping:
                log.warning(
                    "MQTT: lost the connection to %s (%s); reconnecting", self.address, self.last_error
                )
        self._lost.set()

    def _drop(self, why: str) -> None:
        """Forget the connection; every publish awaiting its PUBACK fails with ConnectionLost."""
        self.connected = False
        self._up.clear()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(why))
        misc, self._misc_task = self._misc_task, None
        if misc is not None and misc is not asyncio.current_task():
            misc.cancel()

    def _note_error(self, text: str) -> None:
        if text != self.last_error:
            log.warning("MQTT %s: %s", self.address, text)
        self.last_error, self.last_error_ms = text, now_ms()
