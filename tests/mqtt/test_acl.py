"""docs/mqtt/mosquitto.acl in a real Mosquitto with a password file: an integration reads
everything and commands only what the file grants it; the broker refuses the rest, so a
refused command never reaches the gateway (no reply, no ledger entry)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.mqtt.subscriber import Subscriber
from tests.support.commands import AnsweringDevice
from tests.support.gateway import REPO, GatewayProcess
from tests.support.services import Mosquitto
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

ACL = REPO / "docs" / "mqtt" / "mosquitto.acl"
GW = "gw-acl"
BASE = f"iotgw/{GW}"
USERS = {
    "iotgw-gateway": "gw-secret",
    "nodered": "nr-secret",
    "dashboard": "db-secret",
    "homeassistant": "ha",
}


class Client:
    """An MQTT 5 client logged in as ``user`` that records PUBACK reason codes and messages."""

    def __init__(self, port: int, user: str) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-{user}", protocol=paho.MQTTv5)
        self.client.username_pw_set(user, USERS[user])
        self.acks: dict[int, int] = {}  # mid -> reason code
        self.granted: list[int] = []
        self.messages: list[paho.MQTTMessage] = []
        self.lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.port = port

    def __enter__(self) -> Client:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        wait_until(self.client.is_connected, 10, "the client's CONNACK")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self.lock:
            self.acks[mid] = reason.value

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(message)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        with self.lock:
            self.granted.extend(r.value for r in reasons)

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the broker's PUBACK reason code (0x87: not authorized)."""
        mid = self.client.publish(topic, payload, qos=1).mid
        wait_until(lambda: mid in self.acks, 10, "a PUBACK")
        return self.acks[mid]

    def subscribe(self, topic: str) -> int:
        count = len(self.granted)
        self.client.subscribe(topic, qos=1)
        wait_until(lambda: len(self.granted) > count, 10, "a SUBACK")
        return self.granted[-1]

    def on(self, topic: str) -> list[paho.MQTTMessage]:
        with self.lock:
            return [m for m in self.messages if paho.topic_matches_sub(topic, m.topic)]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, GatewayProcess]]:
    directory = tmp_path_factory.mktemp("acl")
    with Mosquitto.start(directory / "broker", acl=ACL.read_text(), passwords=USERS) as mosquitto:
        env = {
            "IOTGW_MQTT_ENABLED": "true", "IOTGW_MQTT_URL": mosquitto.url, "IOTGW_MQTT_GATEWAY": GW,
            "IOTGW_MQTT_USERNAME": "iotgw-gateway", "IOTGW_MQTT_PASSWORD": USERS["iotgw-gateway"],
        }  # fmt: skip
        with GatewayProcess.start(directory / "gw", env=env) as gw:
            yield mosquitto, gw


def ledger_count(gw: GatewayProcess, device: str) -> int:
    conn = gw.connect()
    try:
        row = conn.execute(
            "SELECT count(*) FROM commands c JOIN devices d ON d.id = c.device_id WHERE d.name = ?", (device,)
        ).fetchone()
        return int(row[0])
    finally:
        conn.close()


def test_the_documented_acl_lets_an_integration_read_all_and_command_only_its_grants(broker) -> None:
    mosquitto, gw = broker
    tokens = {name: gw.add_device(name) for name in ("greenhouse-1", "office-2")}

    async def run() -> None:
        async with AnsweringDevice(gw.device_url, tokens["greenhouse-1"], ["set", "ping"], stream="g"), \
                AnsweringDevice(gw.device_url, tokens["office-2"], ["set", "ping"], stream="o") as office:  # fmt: skip
            await asyncio.to_thread(check, office)

    def check(office: AnsweringDevice) -> None:
        with Client(mosquitto.port, "nodered") as nodered, Client(mosquitto.port, "dashboard") as dashboard:
            # reading: availability of both devices, its own replies; not someone else's replies
            for reader in (nodered, dashboard):
                assert reader.subscribe(f"{BASE}/device/#") == 1
            assert nodered.subscribe(f"{BASE}/reply/nodered/#") == 1
            for name in tokens:
                topic = f"{BASE}/device/{name}/availability"
                wait_until(lambda t=topic: any(m.payload == b"online" for m in nodered.on(t)), 30, topic)
                wait_until(lambda t=topic: dashboard.on(t), 30, topic)
            # commanding what it is granted: the request reaches the device, the reply comes back
            set_args = json.dumps({"args": {"target": "pump", "value": "on"}, "id": "g1"}).encode()
            assert nodered.publish(f"{BASE}/request/nodered/greenhouse-1/set", set_args) == 0
            reply = wait_until(lambda: nodered.on(f"{BASE}/reply/nodered/greenhouse-1/set"), 30, "the reply")
            body = json.loads(reply[0].payload)
            assert body["ok"] is True and body["sender"] == "mqtt:nodered" and body["correlation"] == "g1"
            # not granted: the broker refuses the PUBLISH itself (PUBACK 0x87), nothing reaches the gateway
            before = ledger_count(gw, "office-2")
            assert nodered.publish(f"{BASE}/request/nodered/office-2/set", set_args) == 0x87
            impersonation = f"{BASE}/request/homeassistant/office-2/set"
            assert nodered.publish(impersonation, set_args) == 0x87
            assert dashboard.publish(f"{BASE}/request/dashboard/office-2/ping", b"{}") == 0x87
            assert nodered.publish(f"{BASE}/ha/office-2/output_x/set", b"ON") == 0x87
            assert nodered.publish(f"{BASE}/device/office-2/availability", b"offline") == 0x87  # no spoofing
            # ... while what it is granted on office-2 (ping) goes through: after its reply, the ledger
            # holds exactly that one command, so the refused ones never arrived
            assert nodered.publish(f"{BASE}/request/nodered/office-2/ping", b'{"id": "p"}') == 0
            wait_until(lambda: nodered.on(f"{BASE}/reply/nodered/office-2/ping"), 30, "the ping's reply")
            assert ledger_count(gw, "office-2") == before + 1
            assert [c["name"] for c in office.received] == ["ping"]  # the device got the ping only
            assert nodered.on(f"{BASE}/reply/nodered/office-2/set") == []
            # another client's replies: Mosquitto grants the subscription but delivers nothing. A marker
            # published after the reply reaches the dashboard on the same connection, so had the
            # reply been delivered it would be there before the marker.
            assert dashboard.subscribe(f"{BASE}/reply/nodered/#") == 1
            count = len(nodered.on(f"{BASE}/reply/nodered/#"))
            assert nodered.publish(f"{BASE}/request/nodered/office-2/ping", b'{"id": "p2"}') == 0
            wait_until(lambda: len(nodered.on(f"{BASE}/reply/nodered/#")) > count, 30, "the second reply")
            with Client(mosquitto.port, "iotgw-gateway") as marker:
                assert marker.publish(f"{BASE}/device/marker/availability", b"online") == 0
            wait_until(lambda: dashboard.on(f"{BASE}/device/marker/availability"), 30, "the marker")
            assert dashboard.on(f"{BASE}/reply/#") == []

    asyncio.run(run())


def test_the_gateway_logs_in_and_anonymous_clients_are_refused(broker) -> None:
    mosquitto, _ = broker
    with Subscriber(mosquitto.port, [f"{BASE}/status"], client_id="acl-dash", username="dashboard",
                    password=USERS["dashboard"]) as sub:  # fmt: skip
        assert sub.wait_for(f"{BASE}/status").payload == b"online"
    anonymous = paho.Client(CallbackAPIVersion.VERSION2, client_id="acl-anon", protocol=paho.MQTTv5)
    codes: list[int] = []
    anonymous.on_connect = lambda c, u, f, reason, p: codes.append(reason.value)
    anonymous.connect("127.0.0.1", mosquitto.port)
    anonymous.loop_start()
    try:
        wait_until(lambda: codes, 10, "a CONNACK")
        assert codes[0] == 0x87  # not authorized
    finally:
        anonymous.loop_stop()
