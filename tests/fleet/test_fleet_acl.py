"""The fleet topics under the documented ACL (docs/mqtt/mosquitto.acl, docs/scale-out.md).

A real Mosquitto loads the very ACL file; a fleet gateway logs in as ``iotgw-gateway``. The
gateway's user sees the replicated registry (token hashes) on ``iotgw/fleet/#``; Node-RED, a
dashboard and Home Assistant, subscribed to ``iotgw/#``, receive none of it, and a command
they forge on a gateway's fleet command topic is refused by the broker (PUBACK 0x87) and never
reaches the ledger.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from gateway.tokens import hash_token
from tests.mqtt.test_acl import ACL, USERS, Client, ledger_count
from tests.support.gateway import GatewayProcess
from tests.support.services import Mosquitto
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

GW = "gw-acl-fleet"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, GatewayProcess]]:
    directory = tmp_path_factory.mktemp("fleetacl")
    with Mosquitto.start(directory / "broker", acl=ACL.read_text(), passwords=USERS) as mosquitto:
        env = {
            "IOTGW_MQTT_ENABLED": "true", "IOTGW_MQTT_URL": mosquitto.url, "IOTGW_MQTT_GATEWAY": GW,
            "IOTGW_MQTT_USERNAME": "iotgw-gateway", "IOTGW_MQTT_PASSWORD": USERS["iotgw-gateway"],
            "IOTGW_FLEET_ENABLED": "true", "IOTGW_FLEET_REGISTRY_INTERVAL": "0.2",
        }  # fmt: skip
        with GatewayProcess.start(directory / "gw", env=env) as gw:
            yield mosquitto, gw


def test_only_gateways_read_or_write_the_fleet_topics(broker: tuple[Mosquitto, GatewayProcess]) -> None:
    mosquitto, gw = broker
    with Client(mosquitto.port, "iotgw-gateway") as peer, Client(mosquitto.port, "nodered") as nodered, \
            Client(mosquitto.port, "dashboard") as dashboard, \
            Client(mosquitto.port, "homeassistant") as ha:  # fmt: skip
        peer.subscribe("iotgw/fleet/#")
        for outsider in (nodered, dashboard, ha):
            outsider.subscribe("iotgw/#")
        token = gw.add_device("pi-secret")
        registry = wait_until(lambda: peer.on("iotgw/fleet/registry"), 30, "the registry change")
        rows = [e for m in registry for e in json.loads(m.payload)["entries"]]
        assert [(e["name"], e["token_hash"]) for e in rows] == [("pi-secret", hash_token(token))]
        assert token not in b"".join(m.payload for m in registry).decode()  # the hash, never the token
        wait_until(lambda: peer.on("iotgw/fleet/presence"), 30, "a presence announcement")

        forged = json.dumps({"type": "command", "origin": "evil", "id": "x1", "device": "pi-secret",
                             "name": "ping", "timeout_ms": 5000}).encode()  # fmt: skip
        for outsider in (nodered, dashboard, ha):
            assert outsider.publish(f"iotgw/fleet/gateway/{GW}/command", forged) == 0x87
            assert outsider.publish("iotgw/fleet/registry", b"{}") == 0x87
        # what the gateway's user publishes after the outsiders' attempts arrives; theirs did not
        peer.publish("iotgw/fleet/sync", json.dumps({"type": "sync", "gateway": "probe"}).encode())
        wait_until(lambda: peer.on("iotgw/fleet/gateway/probe/registry"), 30, "the answer to a sync request")
        assert ledger_count(gw, "pi-secret") == 0
        for outsider in (nodered, dashboard, ha):
            assert outsider.on("iotgw/fleet/#") == []
