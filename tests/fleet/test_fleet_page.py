"""The live web page of a fleet gateway in a real headless Chromium (docs/scale-out.md).

Two real gateways (gw-a, gw-b) on a real two-node RabbitMQ cluster, as in test_rabbitmq_fleet.py,
started once for the module. Two devices added on A only ever connect to B at first: a real
agent (mock pins, an LED on GPIO22) and a scripted device. B shares what they declared in
their hello (commands, outputs, agent) with A. The browser opens **A's** page and sees:

* the fleet in the status strip: this gateway's name, connected, its peer gw-b;
* each device held by B tagged "via gw-b" (list and device view);
* the agent's LED switch enabled, though the agent never connected to A; a click runs ``set``
  on the agent connected to B (routed by A's API through the broker) and the switch shows the
  pin state the agent read back;
* the scripted device's commands and agent, as B received them;
* the tag follows the agent to A and back to B while the page is open;
* a gateway alone (no ``fleet`` in its status): none of it.

Screenshots: test-artifacts/fleet-page.png (desktop) and fleet-page-phone.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from tests.fleet.test_rabbitmq_fleet import device, gateway_env, holder
from tests.integration.test_agent_commands import CommandAgent
from tests.integration.test_live_page import (
    LoopThread,
    newest_set_result,
    output,
    screenshot,
    settled_state,
    text,
)
from tests.support.browser import chromium, wait_until
from tests.support.device import ScriptedDevice
from tests.support.gateway import GatewayProcess
from tests.support.rabbitmq import RabbitCluster
from tests.support.waiting import wait_until as wait_for

pytestmark = pytest.mark.slow

AGENT = "pi-roams"  # connects to B; later to A and back (the tag follows it)
ONLY_B = "thermo-b"  # never connects to A


@dataclass
class FleetPage:
    a: GatewayProcess
    b: GatewayProcess
    api_a: httpx.Client
    api_b: httpx.Client
    token_a: str
    agent: CommandAgent
    driver: WebDriver


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetPage]:
    directory = tmp_path_factory.mktemp("fleet-page")
    with RabbitCluster.start(directory) as cluster:
        node1, node2 = cluster.nodes
        with GatewayProcess.start(directory / "a", env=gateway_env("gw-a", node1.mqtt_url)) as a, \
                GatewayProcess.start(directory / "b", env=gateway_env("gw-b", node2.mqtt_url)) as b:  # fmt: skip
            token_a = a.add_operator("alice", "control")
            api_a = httpx.Client(
                base_url=a.api_url, timeout=30, headers={"Authorization": f"Bearer {token_a}"}
            )
            token_b = b.add_operator("bob", "control")
            api_b = httpx.Client(
                base_url=b.api_url, timeout=30, headers={"Authorization": f"Bearer {token_b}"}
            )
            loop = LoopThread()
            scripted = None
            # devices added on A that connect to B: A never receives their hello
            agent = CommandAgent(directory, AGENT, b.device_url, a.add_device(AGENT))
            try:
                wait_for(lambda: device(api_b, AGENT), 30, f"{AGENT} replicated to B")
                agent.start()
                token = a.add_device(ONLY_B)
                wait_for(lambda: device(api_b, ONLY_B), 30, f"{ONLY_B} replicated to B")
                scripted = ScriptedDevice(b.device_url, token, stream="thermo-b")
                loop.run(scripted.__aenter__())
                hello = scripted.hello(
                    sensors=[{"metric": "temp", "unit": "degC"}],
                    commands=[{"name": "beep", "args": {}}],
                    info={"outputs": "fan:output"},
                )
                loop.run(hello)
                wait_for(
                    lambda: holder(api_a, AGENT) == "gw-b" and holder(api_a, ONLY_B) == "gw-b",
                    60,
                    "A to see both devices held by gw-b",
                )
                # B shares their hello: A's API lists their commands and outputs
                wait_for(lambda: declares(api_a, AGENT, "led:") and declares(api_a, ONLY_B, "fan:"), 60,
                         "A to show what both devices declared to B")  # fmt: skip
                with chromium(directory / "profile") as driver:
                    yield FleetPage(a, b, api_a, api_b, token_a, agent, driver)
            finally:
                if scripted is not None:
                    loop.run(scripted.__aexit__())
                loop.stop()
                if agent.proc is not None:
                    agent.stop()
                api_a.close()
                api_b.close()


def declares(api: httpx.Client, name: str, output: str) -> bool:
    """The gateway lists the device's commands and an output named ``output``."""
    d = device(api, name)
    return bool(d and d["commands"] and output in d["info"].get("outputs", ""))


def signed_in(p: FleetPage) -> None:
    d = p.driver
    if d.current_url.startswith(p.a.api_url):
        try:
            if text(d, "#feed-state") == "live":
                return
        except Exception:
            pass
    d.get(p.a.api_url + "/")
    field = wait_until("the sign-in form", lambda: d.find_element(By.ID, "token"), driver=d)
    field.send_keys(p.token_a)
    d.find_element(By.CSS_SELECTOR, "#signin-form button").click()
    wait_until("the feed to be live", lambda: text(d, "#feed-state") == "live", driver=d)


def via(d: WebDriver, name: str) -> str | None:
    """The gateway tag of a device in the list (its text), None while hidden."""
    tag = d.find_element(By.CSS_SELECTOR, f'#device-list button[data-device="{name}"] .via')
    return None if tag.get_attribute("hidden") is not None else str(tag.text)


def tagged(d: WebDriver, name: str, tag: str) -> bool:
    return via(d, name) == tag


def shows(d: WebDriver, output_name: str, state: str) -> bool:
    return settled_state(d, output_name) == state


def list_button(d: WebDriver, name: str) -> WebElement:
    return d.find_element(By.CSS_SELECTOR, f'#device-list button[data-device="{name}"]')


def clicked(element: WebElement) -> bool:
    element.click()
    return True


def select(d: WebDriver, name: str) -> None:
    wait_until(f"{name} clicked", lambda: clicked(list_button(d, name)), driver=d)
    wait_until(f"{name} selected", lambda: text(d, "#dv-name") == name, driver=d)


def test_a_fleet_gateways_page_shows_the_fleet_and_who_holds_each_device(page: FleetPage) -> None:
    d = page.driver
    signed_in(page)
    wait_until("the fleet tile", lambda: text(d, "#st-fleet") == "gw-a", driver=d)
    assert d.find_element(By.ID, "st-fleet").get_attribute("data-state") == "connected"
    assert text(d, "#gw-name") == "gw-a" and d.title == "iotgw · gw-a · live"
    wait_until("gw-b among the peers", lambda: "peers gw-b" in text(d, "#st-fleet-detail"), driver=d)
    assert text(d, "#st-fleet-detail") == "connected · peers gw-b"
    # online anywhere in the fleet, as the list says; where, below
    wait_until("the devices tile", lambda: text(d, "#st-devices") == "2 / 2", driver=d)
    assert text(d, "#st-devices-detail") == "0 here · 2 on peers"
    for name in (AGENT, ONLY_B):
        wait_until(f"{name} via gw-b", partial(tagged, d, name, "via gw-b"), timeout=15, driver=d)
        dot = list_button(d, name).find_element(By.CSS_SELECTOR, ".dot")
        assert dot.get_attribute("data-online") == "true"
    # the device that never connected to A: what it declared to B, shared by B
    select(d, ONLY_B)
    assert text(d, "#dv-via") == "via gw-b" and text(d, "#dv-gateway") == "gw-b (routed)"
    wait_until("the command form", lambda: not d.find_element(By.ID, "command-form").get_attribute("hidden"),
               driver=d)  # fmt: skip
    names = [o.get_attribute("value") for o in d.find_elements(By.CSS_SELECTOR, "#cmd-name option")]
    assert names == ["beep"], names
    assert d.find_element(By.ID, "cmd-note").get_attribute("hidden") is not None
    wait_until("the readings note", lambda: "gw-b holds this device" in text(d, "#no-readings"), driver=d)
    assert "scripted/1" in list_button(d, ONLY_B).find_element(By.CSS_SELECTOR, ".sub").text


def test_the_led_of_a_device_held_by_b_switches_from_as_page(page: FleetPage) -> None:
    d = page.driver
    signed_in(page)
    select(d, AGENT)
    wait_until("the device view tagged via gw-b", lambda: text(d, "#dv-via") == "via gw-b", driver=d)
    assert text(d, "#dv-online") == "online" and text(d, "#dv-gateway") == "gw-b (routed)"
    ping = 'button.action[data-command="ping"]'
    wait_until("the ping button", lambda: clicked(d.find_element(By.CSS_SELECTOR, ping)), driver=d)
    wait_until(
        "the led state from ping", lambda: settled_state(d, "led") in ("on", "off"), timeout=30, driver=d
    )
    before = settled_state(d, "led")
    for expected in ("off", "on") if before == "on" else ("on", "off"):
        switch = output(d, "led").find_element(By.CSS_SELECTOR, ".switch")
        wait_until("the switch enabled (the device is online elsewhere)", switch.is_enabled, driver=d)
        switch.click()
        wait_until(f"the led {expected}", partial(shows, d, "led", expected), timeout=30, driver=d)
        result = wait_until("the set result", lambda: newest_set_result(d), driver=d)
        # the agent on B drove its mock GPIO22 and read it back; the switch shows that result
        on = expected == "on"
        assert result == {"target": "led", "type": "led", "value": on, "pin": 22, "pin_state": on}, result
        checked = output(d, "led").find_element(By.CSS_SELECTOR, ".switch").get_attribute("aria-checked")
        assert checked == str(expected == "on").lower()
    # A routed it: its ledger says sent to gateway gw-b; B ran it for fleet:gw-a
    command_id = d.find_element(By.CSS_SELECTOR, "#command-log tr").get_attribute("data-command-id")
    history = page.api_a.get(f"/api/v1/commands/{command_id}").json()["history"]
    assert any(h["state"] == "sent" and "gateway gw-b" in (h.get("detail") or "") for h in history), history
    on_b = page.api_b.get(f"/api/v1/devices/{AGENT}/commands").json()["commands"]
    assert any(c["sender"] == "fleet:gw-a" and c["name"] == "set" and c["state"] == "succeeded" for c in on_b)
    assert "alice" in text(d, "#command-log tr")  # A's record, A's operator


def move_agent(p: FleetPage, to: GatewayProcess) -> None:
    """Restart the agent pointed at ``to`` (same token, buffer and stream)."""
    p.agent.stop()
    config = p.agent.config_path.read_text()
    old = config.split('url = "', 1)[1].split('"', 1)[0]
    p.agent.config_path.write_text(config.replace(old, to.device_url))
    p.agent.start()


def test_the_tag_follows_the_device_while_the_page_is_open(page: FleetPage) -> None:
    """To A: this gateway's feed says so at once. Back to B: A's feed only hears it leave, and
    the page re-reads where it went."""
    d = page.driver
    signed_in(page)
    select(d, AGENT)
    move_agent(page, page.a)
    wait_until("the tag to say gw-a (here)", partial(tagged, d, AGENT, "gw-a"), timeout=30, driver=d)
    assert list_button(d, AGENT).find_element(By.CSS_SELECTOR, ".via").get_attribute("data-here") == "true"
    assert text(d, "#dv-gateway") == "gw-a (this one)"
    wait_until("the devices tile", lambda: text(d, "#st-devices-detail") == "1 here · 1 on peers", driver=d)
    move_agent(page, page.b)
    wait_until("the tag to say via gw-b again", partial(tagged, d, AGENT, "via gw-b"), timeout=30, driver=d)
    assert text(d, "#dv-via") == "via gw-b" and text(d, "#dv-online") == "online"
    dot = list_button(d, AGENT).find_element(By.CSS_SELECTOR, ".dot")
    assert dot.get_attribute("data-online") == "true"


def test_the_fleet_page_fits_desktop_and_phone(page: FleetPage) -> None:
    d = page.driver
    signed_in(page)
    if text(d, "#dv-name") != AGENT:
        select(d, AGENT)
    wait_until("the led state shown", lambda: settled_state(d, "led") in ("on", "off"), timeout=30, driver=d)
    wait_until("the status of now", lambda: text(d, "#st-devices-detail") == "0 here · 2 on peers", driver=d)
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": False})  # fmt: skip
    try:
        wide = d.execute_script(
            "const w = document.documentElement.clientWidth; const out = [];"
            "for (const e of document.querySelectorAll('body *')) {"
            "  const r = e.getBoundingClientRect();"
            "  if (r.width && r.right > w + 1 && !e.closest('.table-wrap')) out.push(e.tagName + '.' + e.className);"
            "} return [document.documentElement.scrollWidth - w, out.slice(0, 5)];"
        )
        assert wide[0] <= 0 and not wide[1], f"wider than a phone screen: {wide}"
    finally:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    shots: list[Path] = [
        screenshot(d, "fleet-page.png", 1280),
        screenshot(d, "fleet-page-phone.png", 390, mobile=True),
    ]
    assert all(shot.stat().st_size > 10_000 for shot in shots)


def test_a_gateway_alone_shows_no_fleet(page: FleetPage, tmp_path: Path) -> None:
    """Nothing of the fleet on the page of a gateway that is not in one (``fleet`` absent)."""
    d = page.driver
    with GatewayProcess.start(tmp_path / "alone") as gw:
        gw.add_device("pi-alone")
        token = gw.add_operator("carol", "control")
        d.get(gw.api_url + "/")
        d.execute_script("sessionStorage.clear()")
        d.get(gw.api_url + "/")
        wait_until("the sign-in form", lambda: d.find_element(By.ID, "token"), driver=d).send_keys(token)
        d.find_element(By.CSS_SELECTOR, "#signin-form button").click()
        wait_until("the feed to be live", lambda: text(d, "#feed-state") == "live", driver=d)
        select(d, "pi-alone")
        wait_until("the status", lambda: text(d, "#st-devices") == "0 / 1", driver=d)
        hidden = d.execute_script(
            "return ['st-fleet-tile', 'gw-name', 'dv-via', 'dv-gateway-fact']"
            ".map((id) => document.getElementById(id).hidden)"
            ".concat([...document.querySelectorAll('#device-list .via')].map((e) => e.hidden));"
        )
        assert hidden == [True] * 5, hidden
        assert text(d, "#st-devices-detail") == "" and d.title == "iotgw · live"
        assert text(d, "#cmd-note") == "This device declares no commands."
        assert "never connected" in list_button(d, "pi-alone").text
        d.get("about:blank")  # the next test signs in on A again
