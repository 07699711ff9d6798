"""A test subscriber: a paho client on its own thread that records every message it gets.

Persistent session (clean_session false, QoS 1) so that messages published while it is
reconnecting after a broker restart wait for it in the broker.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.waiting import wait_until


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Any = None

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """``with Subscriber(port, ["iotgw/#"]) as sub: ... sub.messages``."""

    def __init__(self, port: int, topics: list[str], *, client_id: str = "test-sub", mqtt5: bool = False,
                 username: str | None = None, password: str | None = None) -> None:  # fmt: skip
        self.port = port
        self.topics = topics
        self.lock = threading.Lock()
        self.messages: list[Received] = []
        self.connects = 0
        self.mqtt5 = mqtt5
        if mqtt5:
            self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                      protocol=paho.MQTTv5)  # fmt: skip
        else:
            self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()

    def __enter__(self) -> Subscriber:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscriber did not connect"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connects += 1
        client.subscribe([(t, 1) for t in self.topics])
        self.subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(
                Received(
                    message.topic,
                    bytes(message.payload),
                    bool(message.retain),
                    getattr(message, "properties", None),
                )
            )

    def on(self, topic: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if paho.topic_matches_sub(topic, m.topic)]

    def wait_for(self, topic: str, predicate: Any = None, timeout: float = 20.0) -> Received:
        def found() -> Received | None:
            for m in self.on(topic):
                if predicate is None or predicate(m):
                    return m
            return None

        result: Received = wait_until(found, timeout, f"a message on {topic}")
        return result
