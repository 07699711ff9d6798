"""Commands over MQTT and Home Assistant entities, end to end against a real Mosquitto.

MQTT client -> Mosquitto -> real gateway -> real agent (subprocess, gpiozero mock pins) and
back (docs/mqtt.md, "Commands over MQTT"): an MQTT 5 request with a response topic and
correlation data drives the agent's LED and its result comes back with the same correlation
data; an MQTT 3.1.1 request is answered on the documented reply topic; refused requests get
a coded reply; the ledger names the sender ``mqtt:<client>``. Home Assistant: ``ON`` on a
switch's command topic flips the mock pin and the retained state follows; removing a device
empties its retained discovery configs.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.store import registry
from tests.integration.test_agent_commands import CommandAgent
from tests.mqtt.subscriber import Received, Subscriber
from tests.support.device import ScriptedDevice
from tests.support.gateway import GatewayProcess, repo_env
from tests.support.services import Mosquitto
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

GW = "gw-cmd"
BASE = f"iotgw/{GW}"
AGENT = "pi-mqtt"


class Setup:
    def __init__(self, broker: Mosquitto, gw: GatewayProcess, agent: CommandAgent, api: httpx.Client) -> None:
        self.broker = broker
        self.gw = gw
        self.agent = agent
        self.api = api


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("mqttcmd")
    env = {"IOTGW_MQTT_ENABLED": "true", "IOTGW_MQTT_GATEWAY": GW}
    with Mosquitto.start(directory / "broker") as broker, \
            GatewayProcess.start(directory / "gw", env={**env, "IOTGW_MQTT_URL": broker.url}) as gw:  # fmt: skip
        agent = CommandAgent(directory, AGENT, gw.device_url, gw.add_device(AGENT))
        agent.start()
        api = httpx.Client(
            base_url=gw.api_url,
            headers={"Authorization": f"Bearer {gw.add_operator('ops', 'read')}"},
            timeout=30,
        )
        try:
            wait_until(lambda: "set" in declared(api, AGENT), 30, "the agent's hello")
            yield Setup(broker, gw, agent, api)
        finally:
            api.close()
            agent.stop()


def declared(api: httpx.Client, name: str) -> list[str]:
    r = api.get(f"/api/v1/devices/{name}")
    return [c["name"] for c in r.json()["commands"]] if r.status_code == 200 else []


def ledger(api: httpx.Client, command_id: str) -> dict[str, Any]:
    r = api.get(f"/api/v1/commands/{command_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def mqtt5_request(port: int, client: str, topic: str, payload: bytes, response_topic: str,
                  correlation: bytes) -> Received:  # fmt: skip
    """Publish one MQTT 5 request and wait for the message on ``response_topic``."""
    with Subscriber(port, [response_topic], client_id=f"{client}-5", mqtt5=True) as sub:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = response_topic
        props.CorrelationData = correlation
        sub.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(10)
        return sub.wait_for(response_topic, timeout=30)


def test_mqtt5_request_drives_the_led_and_the_reply_carries_the_correlation_data(setup: Setup) -> None:
    reply = mqtt5_request(
        setup.broker.port, "alice", f"{BASE}/request/alice/{AGENT}/set",
        json.dumps({"args": {"target": "led", "value": "on"}, "id": "req-1"}).encode(),
        f"{BASE}/reply/alice/inbox-1", b"\x00corr\xff",
    )  # fmt: skip
    assert reply.properties is not None and reply.properties.CorrelationData == b"\x00corr\xff"
    body = reply.json()
    assert body["ok"] is True and body["state"] == "succeeded" and body["correlation"] == "req-1"
    # the agent read its mock pin back after driving it
    assert body["value"] == {"target": "led", "type": "led", "value": True, "pin": 22, "pin_state": True}
    record = ledger(setup.api, body["id"])
    assert record["sender"] == "mqtt:alice" and record["args"] == {"target": "led", "value": "on"}
    assert [h["state"] for h in record["history"]] == ["queued", "sent", "succeeded"]


def test_mqtt311_request_is_answered_on_the_documented_reply_topic(setup: Setup) -> None:
    reply_topic = f"{BASE}/reply/bob/{AGENT}/set"
    with Subscriber(setup.broker.port, [reply_topic], client_id="bob-311") as sub:
        payload = json.dumps({"args": {"target": "relay", "value": True}, "id": 42}).encode()
        sub.client.publish(f"{BASE}/request/bob/{AGENT}/set", payload, qos=1).wait_for_publish(10)
        body = sub.wait_for(reply_topic, timeout=30).json()
    assert body["ok"] is True and body["correlation"] == 42 and body["device"] == AGENT
    assert body["value"]["value"] is True and body["value"]["pin_state"] is False  # an active-low relay
    assert ledger(setup.api, body["id"])["sender"] == "mqtt:bob"


def test_refused_requests_get_a_coded_reply_and_leave_no_command(setup: Setup) -> None:
    before = setup.api.get(f"/api/v1/devices/{AGENT}/commands", params={"limit": 100}).json()["commands"]
    cases = [
        ("launch_rockets", b'{"id": "u"}', "command_refused"),  # not declared by the agent
        ("set", b'{"args": {"target": "led", ', "invalid_json"),
        ("set", b'{"args": [1, 2]}', "bad_request"),
        ("set", b'{"timeout": -1}', "bad_request"),
    ]
    with Subscriber(setup.broker.port, [f"{BASE}/reply/carol/#"], client_id="carol-311") as sub:
        for command, payload, _ in cases:
            sub.client.publish(f"{BASE}/request/carol/{AGENT}/{command}", payload, qos=1).wait_for_publish(10)
        for command, _, code in cases:
            topic = f"{BASE}/reply/carol/{AGENT}/{command}"
            reply = sub.wait_for(topic, lambda m, code=code: m.json().get("code") == code, timeout=30).json()
            assert reply["ok"] is False and reply["state"] == "refused" and reply["error"]
        # an unknown device, asked over MQTT 5: the refusal keeps the correlation data
    refusal = mqtt5_request(
        setup.broker.port, "carol", f"{BASE}/request/carol/no-such-device/ping", b"",
        f"{BASE}/reply/carol/inbox", b"c-7",
    )  # fmt: skip
    assert refusal.properties.CorrelationData == b"c-7" and refusal.json()["code"] == "unknown_device"
    # a response topic outside the requester's reply tree is not used: the default one is
    with Subscriber(setup.broker.port, [f"{BASE}/reply/carol/#", f"{BASE}/reply/mallory/#"],
                    client_id="carol-5b", mqtt5=True) as sub:  # fmt: skip
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{BASE}/reply/mallory/stolen"
        sub.client.publish(
            f"{BASE}/request/carol/{AGENT}/ping", b"{}", qos=1, properties=props
        ).wait_for_publish(10)
        reply = sub.wait_for(f"{BASE}/reply/carol/{AGENT}/ping", timeout=30).json()
        assert reply["code"] == "bad_response_topic"
        assert sub.on(f"{BASE}/reply/mallory/#") == []
    after = setup.api.get(f"/api/v1/devices/{AGENT}/commands", params={"limit": 100}).json()["commands"]
    assert len(after) == len(before)  # nothing refused reached the ledger


def test_home_assistant_switch_flips_the_mock_pin_and_its_state_follows(setup: Setup) -> None:
    switches = "homeassistant/switch/+/+/config"
    with Subscriber(setup.broker.port, [switches], client_id="ha-probe", mqtt5=True) as probe:
        led = probe.wait_for(switches, lambda m: m.payload and m.json()["name"] == "led").json()
    assert led["device"]["name"] == AGENT and led["state_topic"] == f"{BASE}/device/{AGENT}/output/led"
    with Subscriber(setup.broker.port, [led["state_topic"]], client_id="ha-state", mqtt5=True) as sub:
        # OFF, then ON: whatever was retained before arrives first (the SUBSCRIBE went out first),
        # so the last state seen is the one our command produced
        for payload, pin in ((b"OFF", False), (b"ON", True)):
            sub.client.publish(led["command_topic"], payload, qos=1).wait_for_publish(10)

            def last_is(pin: bool = pin) -> bool:
                states = sub.on(led["state_topic"])
                return bool(states) and states[-1].json()["pin_state"] is pin

            wait_until(last_is, 30, f"the state after {payload!r}")
            assert sub.on(led["state_topic"])[-1].json()["value"] is pin
    # the retained state is what a Home Assistant starting now reads
    with Subscriber(setup.broker.port, [led["state_topic"]], client_id="ha-late", mqtt5=True) as late:
        retained = late.wait_for(led["state_topic"])
        assert retained.retain and retained.json()["pin_state"] is True
    log = setup.api.get(f"/api/v1/devices/{AGENT}/commands", params={"limit": 1}).json()["commands"]
    assert log[0]["sender"] == "mqtt:homeassistant" and log[0]["args"] == {"target": "led", "value": "on"}


def test_removing_a_device_publishes_empty_retained_discovery_configs(setup: Setup) -> None:
    token = setup.gw.add_device("doomed")

    async def say_hello() -> None:
        async with ScriptedDevice(setup.gw.device_url, token, stream="doomed-1") as dev:
            await dev.hello(
                sensors=[{"metric": "temp", "unit": "°C"}, {"metric": "door", "kind": "event"}],
                commands=[{"name": "reboot"}],
            )

    asyncio.run(say_hello())
    mine = f"homeassistant/+/iotgw_{GW}_doomed/+/config"
    with Subscriber(setup.broker.port, [mine], client_id="ha-watch", mqtt5=True) as sub:
        wait_until(
            lambda: len({m.topic for m in sub.on(mine) if m.payload}) == 3, 30, "doomed's three configs"
        )
        announced = {m.topic for m in sub.on(mine) if m.payload}
        assert {t.split("/")[1] for t in announced} == {"sensor", "binary_sensor", "button"}
        conn = setup.gw.connect()
        try:
            registry.remove_device(conn, "doomed")
        finally:
            conn.close()
        wait_until(lambda: {m.topic for m in sub.on(mine) if not m.payload} == announced, 30, "empty configs")
    # nothing of doomed is retained any more: a fresh subscriber gets the gateway's status only
    status = f"{BASE}/status"
    with Subscriber(setup.broker.port, [mine, status], client_id="ha-fresh", mqtt5=True) as fresh:
        fresh.wait_for(status)
        assert fresh.on(mine) == []


def test_status_shows_the_bridge_like_the_influx_forwarder(setup: Setup) -> None:
    def mqtt_status() -> dict[str, Any] | None:
        forwarders = setup.api.get("/api/v1/status").json()["forwarders"]
        found = [f for f in forwarders if f["name"] == "mqtt"]
        return found[0] if found and found[0]["sent_readings"] > 0 else None

    status = wait_until(mqtt_status, 30, "the MQTT sink in /api/v1/status")
    assert status["state"] == "ok" and status["target"] == setup.broker.url and status["dead_letters"] == 0
    connection = status["connection"]
    assert connection["connected"] is True and connection["broker"] == setup.broker.url
    assert connection["devices_online"] >= 1 and connection["client_id"] == f"iotgw-{GW}"
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", "--store", str(setup.gw.store_path)],
        env=repo_env(), capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = [line for line in out.splitlines() if line.startswith("mqtt ")]
    assert any(f"target        {setup.broker.url}" in line for line in lines), out
    assert any("state         ok" in line for line in lines), out
    assert any(line.split()[1] == "sent" for line in lines), out
