"""The live web page in a real headless Chromium, against a real gateway and real agents.

One gateway, one browser and two devices for the module: a real agent (mock pins,
an LED on GPIO27) and a scripted device whose readings the test chooses, so that
a value and its seq can be looked for on the page. Screenshots go to
test-artifacts/ (gitignored): live-page.png (desktop) and live-page-phone.png.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.firmware.mp import Firmware, base_config
from tests.integration.test_agent_gateway import AgentProcess
from tests.support.browser import ARTIFACTS, chromium, wait_until
from tests.support.device import ScriptedDevice
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.slow
T = TypeVar("T")

EXTERNAL = re.compile(r"https?://(?!www\.w3\.org/2000/svg)")
# The forwarder points at a port where no InfluxDB listens: a real outage, a growing backlog.
INFLUX_DOWN = {  # IOTGW_INFLUX_URL is added by the fixture
    "IOTGW_INFLUX_ENABLED": "true",
    "IOTGW_INFLUX_API": "v1",
    "IOTGW_INFLUX_DATABASE": "iotgw",
    "IOTGW_INFLUX_MAX_DELAY": "0.2",
    "IOTGW_INFLUX_RETRY_MAX": "1.0",
    "IOTGW_INFLUX_TIMEOUT": "2",
}
LED = '\n[[actuators]]\ntype = "led"\nname = "led"\npin = 27\n'


def closed_port() -> int:
    """A local port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class LoopThread:
    """An asyncio loop in a thread, for devices that run while selenium blocks the test thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Thermometer:
    """A scripted device: readings on demand, a ``beep`` command, and two outputs.

    It declares a relay ``fan`` whose ``set`` always fails (so the page must show why) and a
    dimmable ``dim`` (pwm_led) that reports back the level it was set to.
    """

    def __init__(self, url: str, token: str) -> None:
        self.device = ScriptedDevice(url, token, stream="thermo")
        self.seq = 0
        self.commands: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.device.__aenter__()
        await self.device.hello(
            sensors=[{"metric": "temp", "unit": "degC"}],
            commands=[
                {"name": "beep", "description": "beep n times", "args": {"times": "how many"}},
                {
                    "name": "set",
                    "description": "set an output",
                    "args": {"target": "output", "value": "level"},
                },
            ],
            info={"outputs": "fan:output,dim:pwm_led"},
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            message = await self.device.next(timeout=3600)
            if message["type"] == "command":
                self.commands.append(message)
                args = message["args"]
                result: dict[str, Any] = {"type": "result", "id": message["id"], "ok": True}
                if message["name"] == "beep":
                    result["value"] = {"beeped": args.get("times")}
                elif args.get("target") == "dim":
                    level = args["value"]
                    result["value"] = {
                        "target": "dim",
                        "type": "pwm_led",
                        "value": level,
                        "pin": 12,
                        "pin_state": level,
                    }
                else:
                    result.update(ok=False, error="set failed: OSError: the fan relay does not answer")
                await self.device.send(json.dumps(result))

    async def send(self, **values: Any) -> int:
        self.seq += 1
        await self.device.readings(self.seq, values)
        return self.seq

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.device.__aexit__()


@dataclass
class Live:
    gw: GatewayProcess
    driver: WebDriver
    loop: LoopThread
    thermo: Thermometer
    agent: AgentProcess
    token: str
    board: Firmware


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("live")
    with GatewayProcess.start(
        tmp / "gw", env={**INFLUX_DOWN, "IOTGW_INFLUX_URL": f"http://127.0.0.1:{closed_port()}"}
    ) as gw:
        token = gw.add_operator("alice", "control")
        agent = AgentProcess(tmp, "pi-kitchen", gw.device_url, gw.add_device("pi-kitchen"), interval=0.2)
        agent.config_path.write_text(agent.config_path.read_text() + LED)
        agent.start()
        loop = LoopThread()
        thermo = Thermometer(gw.device_url, gw.add_device("thermo-1"))
        loop.run(thermo.start())
        # the real firmware (MicroPython unix port) with an LED output, in the shared vocabulary
        board = Firmware(tmp, base_config(gw.device_url, gw.add_device("board-1"), device="board-1", interval_s=1,
                                          trace=False, outputs=[{"name": "led", "type": "led", "pin": 2}]))  # fmt: skip
        board.start()
        try:
            with chromium(tmp / "profile") as driver:
                yield Live(gw, driver, loop, thermo, agent, token, board)
        finally:
            board.stop()
            loop.run(thermo.stop())
            loop.stop()
            agent.stop()


def sign_in(live: Live, token: str) -> None:
    d = live.driver
    d.get(live.gw.api_url + "/")
    d.execute_script("sessionStorage.clear()")
    d.get(live.gw.api_url + "/")
    field = wait_until("the sign-in form", lambda: d.find_element(By.ID, "token"), driver=d)
    field.send_keys(token)
    d.find_element(By.CSS_SELECTOR, "#signin-form button").click()


def text(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def painted(driver: WebDriver, frames: int = 3) -> None:
    """Return once the page has gone through ``frames`` animation frames.

    The page draws its charts in an animation frame (``scheduleDraw`` in app.js), after data or a
    resize: a few frames later that drawing is on screen, on a fast machine or a slow one.
    """
    driver.execute_async_script(
        "let n = arguments[0]; const done = arguments[arguments.length - 1];"
        "const step = () => (--n > 0 ? requestAnimationFrame(step) : done());"
        "requestAnimationFrame(step);",
        frames,
    )


def screenshot(
    driver: WebDriver, name: str, width: int, *, mobile: bool = False, directory: Path = ARTIFACTS
) -> Path:
    """Save the whole page (not only the viewport) to DIRECTORY/NAME (test-artifacts/ by default)."""
    painted(driver)  # the last chart redraw has landed
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 2 if mobile else 1, "mobile": mobile},
    )
    try:
        painted(driver)  # the page has been laid out and its charts redrawn at the new size
        directory.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(directory / name))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return directory / name


def ensure_signed_in(live: Live) -> None:
    """Sign in unless an earlier test left the page signed in with the feed live."""
    d = live.driver
    try:
        live_now = text(d, "#feed-state") == "live"
    except Exception:
        live_now = False
    if not live_now:
        sign_in(live, live.token)
        wait_until("the feed to be live", lambda: text(d, "#feed-state") == "live", driver=d)


def select_device(live: Live, name: str) -> None:
    """Click the device in the list (retrying while the list is being updated), wait for its view."""
    wait_until(f"{name} clicked", lambda: device_button(live, name).click() or True, driver=live.driver)
    wait_until(f"{name} selected", lambda: text(live.driver, "#dv-name") == name, driver=live.driver)


def device_button(live: Live, name: str) -> Any:
    return live.driver.find_element(By.CSS_SELECTOR, f'#device-list button[data-device="{name}"]')


def test_a_wrong_token_is_refused_by_the_page_and_by_the_feed(live: Live) -> None:
    d = live.driver
    sign_in(live, "iotgw_o_" + "A" * 43)
    error = wait_until("the refusal", lambda: text(d, "#signin-error"), driver=d)
    assert "refused" in error
    assert d.find_element(By.ID, "app").is_displayed() is False
    assert d.execute_script("return sessionStorage.getItem('iotgw.token')") is None

    async def feed_with(token: str) -> tuple[int | None, str]:
        async with connect(f"ws://127.0.0.1:{live.gw.api_port}/api/v1/feed") as ws:
            await ws.send(json.dumps({"type": "subscribe", "token": token}))
            try:
                await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed as closed:
                assert closed.rcvd is not None
                return closed.rcvd.code, closed.rcvd.reason
        return None, ""

    assert live.loop.run(feed_with("iotgw_o_wrong"))[0] == 4401
    # The HTTP API refuses it too, and the token never shows up in the gateway's log.
    request = urllib.request.Request(
        live.gw.api_url + "/api/v1/devices", headers={"Authorization": "Bearer iotgw_o_wrong"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401
    assert live.token not in live.gw.log() and "iotgw_o_wrong" not in live.gw.log()


def test_the_page_lists_devices_with_their_state(live: Live) -> None:
    d = live.driver
    sign_in(live, live.token)
    wait_until("the feed to be live", lambda: text(d, "#feed-state") == "live", driver=d)
    assert d.execute_script("return sessionStorage.getItem('iotgw.token')") == live.token
    for name in ("pi-kitchen", "thermo-1", "board-1"):
        wait_until(
            f"{name} online",
            lambda name=name: (
                device_button(live, name).find_element(By.CSS_SELECTOR, ".dot").get_attribute("data-online")
                == "true"
            ),
            timeout=20,
            driver=d,
        )
    agent_line = wait_until(
        "the agent's version", lambda: "iotgw-agent/" in (t := device_button(live, "pi-kitchen").text) and t
    )
    assert "buf" in agent_line and "drop" in agent_line
    wait_until("status strip", lambda: text(d, "#st-devices") == "3 / 3", driver=d)


def test_a_reading_from_a_device_appears_on_the_page(live: Live) -> None:
    d = live.driver
    ensure_signed_in(live)
    select_device(live, "thermo-1")
    wait_until("thermo-1 selected", lambda: text(d, "#dv-name") == "thermo-1", driver=d)
    for value in (21.25, 22.5, 1234.5):
        seq = live.loop.run(live.thermo.send(temp=value))
        # The reading is pushed over the feed; a generous wait, no claim about speed.
        latest = wait_until(
            f"temp {value} (seq {seq}) on the page",
            lambda seq=seq: (
                (e := d.find_element(By.CSS_SELECTOR, '.latest[data-metric="temp"]')).get_attribute(
                    "data-seq"
                )
                == str(seq)
                and e
            ),
            timeout=5,
            driver=d,
        )
        assert latest.text == f"{value:g}"
        assert text(d, "#dv-seq") == str(seq)
    assert d.find_element(By.CSS_SELECTOR, 'figure[data-metric="temp"] .unit').text == "degC"
    # the chart was drawn: some pixels of the canvas are not transparent
    drawn = d.execute_script(
        "const c = document.querySelector('figure[data-metric=\"temp\"] canvas');"
        "const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i]) n++; return n;"
    )
    assert drawn > 100
    # the last hour, from the store's history (downsampled), still shows the newest value
    d.find_element(By.CSS_SELECTOR, '#window button[data-window="1h"]').click()
    wait_until(
        "the 1 hour window",
        lambda: (
            "last hour" in text(d, 'figure[data-metric="temp"] .when')
            and text(d, '.latest[data-metric="temp"]') == "1234.5"
        ),
        driver=d,
    )
    d.find_element(By.CSS_SELECTOR, '#window button[data-window="live"]').click()
    # a scripted command round trip through the page as well (the device answers itself)
    Select(d.find_element(By.ID, "cmd-name")).select_by_value("beep")
    d.find_element(By.ID, "arg-times").send_keys("3")
    d.find_element(By.ID, "cmd-send").click()
    row_text = wait_until("beep succeeded", lambda: succeeded_row(d), driver=d)
    assert "beeped: 3" in row_text and "alice" in row_text  # text for people, not JSON
    assert "{" not in row_text
    assert live.thermo.commands[-1]["name"] == "beep" and live.thermo.commands[-1]["args"] == {"times": 3}


def succeeded_row(d: Any, cell: str | None = None) -> str | None:
    """Text of the newest command row (or one cell of it) once it shows succeeded, else None.

    Read in one probe: the page re-renders the log as states change, so an element found in
    one poll may be gone by the next (wait_until retries a stale read).
    """
    row = d.find_element(By.CSS_SELECTOR, "#command-log tr")
    if row.get_attribute("data-state") != "succeeded":
        return None
    text: str = row.find_element(By.CSS_SELECTOR, cell).text if cell else row.text
    return text


def test_a_command_from_the_page_switches_the_agents_led(live: Live) -> None:
    d = live.driver
    ensure_signed_in(live)
    select_device(live, "pi-kitchen")
    wait_until("pi-kitchen selected", lambda: text(d, "#dv-name") == "pi-kitchen", driver=d)
    wait_until(
        "a live chart of the agent's readings",
        lambda: d.find_element(By.CSS_SELECTOR, '.latest[data-metric="soil_moisture"]').get_attribute(
            "data-seq"
        ),
        driver=d,
    )
    options = wait_until(
        "the declared commands",
        lambda: [o.get_attribute("value") for o in d.find_elements(By.CSS_SELECTOR, "#cmd-name option")],
        driver=d,
    )
    assert {"set", "ping"} <= set(options), options
    Select(d.find_element(By.ID, "cmd-name")).select_by_value("set")
    d.find_element(By.ID, "arg-value").send_keys("true")
    d.find_element(By.ID, "cmd-send").click()
    wait_until("set succeeded", lambda: succeeded_row(d, "td.result"), timeout=15, driver=d)
    cell = d.find_element(By.CSS_SELECTOR, "#command-log tr td.result")
    assert cell.text.startswith("led is on (GPIO27 high)"), cell.text
    result = json.loads(cell.get_attribute("data-value"))
    # read back from the agent's mock pin: the LED on GPIO27 is on
    assert result["target"] == "led" and result["value"] is True and result["pin_state"] in (1, True)
    screenshot(d, "live-page.png", 1280)


def output(d: WebDriver, name: str) -> Any:
    return d.find_element(By.CSS_SELECTOR, f'#controls .output[data-output="{name}"]')


def settled_state(d: WebDriver, name: str) -> str | None:
    """The state an output's control shows, once no command for it is on its way."""
    row = output(d, name)
    return None if row.get_attribute("data-pending") == "true" else str(row.get_attribute("data-state"))


def newest_set_result(d: WebDriver) -> dict[str, Any] | None:
    row = d.find_element(By.CSS_SELECTOR, "#command-log tr")
    if row.get_attribute("data-state") != "succeeded":
        return None
    value = row.find_element(By.CSS_SELECTOR, "td.result").get_attribute("data-value")
    parsed: dict[str, Any] | None = json.loads(value) if value else None
    return parsed if parsed and "pin_state" in parsed else None


def test_the_led_switch_shows_the_state_the_agent_reports(live: Live, tmp_path: Path) -> None:
    d = live.driver
    ensure_signed_in(live)
    select_device(live, "pi-kitchen")
    switch = wait_until(
        "the led switch", lambda: output(d, "led").find_element(By.CSS_SELECTOR, ".switch"), driver=d
    )
    assert output(d, "led").get_attribute("data-kind") == "led"
    # ping (a command without arguments, so a button) reports every actuator: the state is known
    wait_until(
        "the ping button",
        lambda: d.find_element(By.CSS_SELECTOR, 'button.action[data-command="ping"]'),
        driver=d,
    ).click()
    before = wait_until(
        "the led state",
        lambda: settled_state(d, "led") in ("on", "off") and settled_state(d, "led"),
        timeout=15,
        driver=d,
    )
    for expected in ("off", "on") if before == "on" else ("on", "off"):
        switch = output(d, "led").find_element(By.CSS_SELECTOR, ".switch")
        wait_until("the switch enabled", lambda s=switch: s.is_enabled(), driver=d)
        switch.click()
        wait_until(
            f"the led {expected}",
            lambda expected=expected: settled_state(d, "led") == expected,
            timeout=15,
            driver=d,
        )
        # the agent read its mock GPIO27 back: the pin follows, and the switch shows that result
        result = wait_until("the set result", lambda: newest_set_result(d), driver=d)
        assert result["target"] == "led" and result["value"] is (expected == "on")
        assert result["pin_state"] in ((1, True) if expected == "on" else (0, False))
        checked = output(d, "led").find_element(By.CSS_SELECTOR, ".switch").get_attribute("aria-checked")
        assert checked == str(expected == "on").lower()
        assert text(d, '#controls .output[data-output="led"] .out-state') == expected
    shots = [
        screenshot(d, "controls-desktop.png", 1280, directory=tmp_path),
        screenshot(d, "controls-phone.png", 390, mobile=True, directory=tmp_path),
    ]
    assert all(shot.stat().st_size > 10_000 for shot in shots)
    print("screenshots:", *shots)


def test_a_boards_led_switch_shows_the_state_the_firmware_reports(live: Live) -> None:
    d = live.driver
    ensure_signed_in(live)
    select_device(live, "board-1")
    wait_until(
        "the board's led switch", lambda: output(d, "led").find_element(By.CSS_SELECTOR, ".switch"), driver=d
    )
    assert output(d, "led").get_attribute("data-kind") == "led"  # from the board's hello info.outputs
    wait_until("the ping button", lambda: d.find_element(By.CSS_SELECTOR, 'button.action[data-command="ping"]'),
               driver=d).click()  # fmt: skip
    before = wait_until("the led state", lambda: settled_state(d, "led") in ("on", "off") and settled_state(d, "led"),
                        timeout=15, driver=d)  # fmt: skip
    expected = "off" if before == "on" else "on"
    switch = output(d, "led").find_element(By.CSS_SELECTOR, ".switch")
    wait_until("the switch enabled", lambda: switch.is_enabled(), driver=d)
    switch.click()
    wait_until(
        f"the board's led {expected}", lambda: settled_state(d, "led") == expected, timeout=15, driver=d
    )
    result = wait_until("the set result", lambda: newest_set_result(d), driver=d)
    assert result == {"target": "led", "type": "led", "value": expected == "on", "pin": 2,
                      "pin_state": expected == "on"}  # fmt: skip
    level = "high" if expected == "on" else "low"
    assert text(d, "#command-log tr td.result") == f"led is {expected} (GPIO2 {level})"
    live.board.wait_line(rf"^OUTPUT led {expected == 'on'}$", timeout=5)  # the simulated pin was driven


def test_a_failed_output_says_why_and_a_slider_shows_the_reported_level(live: Live) -> None:
    d = live.driver
    ensure_signed_in(live)
    select_device(live, "thermo-1")
    fan = wait_until(
        "the fan switch", lambda: output(d, "fan").find_element(By.CSS_SELECTOR, ".switch"), driver=d
    )
    fan.click()
    error = wait_until(
        "the fan's error",
        lambda: text(d, '#controls .output[data-output="fan"] .out-error'),
        timeout=15,
        driver=d,
    )
    assert "the fan relay does not answer" in error and error.startswith("set failed")
    assert settled_state(d, "fan") == "unknown"  # nothing was reported: the click is not taken as the state
    assert output(d, "fan").find_element(By.CSS_SELECTOR, ".switch").get_attribute("aria-checked") == "false"
    row = d.find_element(By.CSS_SELECTOR, '#command-log tr[data-state="failed"] td.result')
    assert row.text.startswith("failed: set failed: OSError")
    slider = output(d, "dim").find_element(By.CSS_SELECTOR, 'input[type="range"]')
    d.execute_script("arguments[0].value = '0.35'; arguments[0].dispatchEvent(new Event('change'));", slider)
    wait_until("dim at 35 %", lambda: settled_state(d, "dim") == "35 %", timeout=15, driver=d)
    assert live.thermo.commands[-1]["args"] == {"target": "dim", "value": 0.35}
    assert text(d, "#command-log tr td.result") == "dim is at 35 % (GPIO12 0.35)"


def clipped_tiles(d: WebDriver) -> list[str]:
    """Ids of gateway-strip values whose text does not fit their tile."""
    found: list[str] = d.execute_script(
        "return [...document.querySelectorAll('#gateway .value')].filter((e) => {"
        "  const tile = e.closest('.stat').getBoundingClientRect(); const r = e.getBoundingClientRect();"
        "  return e.scrollWidth > e.clientWidth + 1 || r.right > tile.right + 1;"
        "}).map((e) => e.id);"
    )
    return found


def test_the_forwarder_tiles_say_what_is_wrong_and_fit(live: Live) -> None:
    d = live.driver
    ensure_signed_in(live)
    forwarder = wait_until(
        "the forwarder retrying",
        lambda: (t := text(d, "#st-forwarder")) != "starting" and t,
        timeout=20,
        driver=d,
    )
    assert forwarder == "retrying", forwarder  # the state, and below it what went wrong
    assert "unreachable" in text(d, "#st-forwarder-detail")
    backlog = wait_until(
        "a backlog",
        lambda: (t := text(d, "#st-backlog")) != "0 readings" and "oldest" in t and t,
        timeout=20,
        driver=d,
    )
    assert re.fullmatch(r"[\d,]+ readings · oldest [\d.]+ (s|min|h)", backlog), backlog
    for width in (390, 1280):
        d.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 844, "deviceScaleFactor": 1, "mobile": False},
        )
        try:
            painted(d)
            assert not clipped_tiles(d), f"cut off at {width} px: {clipped_tiles(d)}"
        finally:
            d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_page_fits_a_phone_screen(live: Live) -> None:
    d = live.driver
    # mobile=False: a mobile viewport would widen itself to fit content that overflows
    d.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": False},
    )
    try:
        ensure_signed_in(live)
        if not d.find_element(By.ID, "device-view").is_displayed():
            select_device(live, "pi-kitchen")
        wide = d.execute_script(
            "const w = document.documentElement.clientWidth; const out = [];"
            "for (const e of document.querySelectorAll('body *')) {"
            "  const r = e.getBoundingClientRect();"
            "  if (r.width && r.right > w + 1 && !e.closest('.table-wrap')) out.push(e.tagName + '.' + e.className);"
            "} return [document.documentElement.scrollWidth - w, out.slice(0, 5)];"
        )
        assert wide[0] <= 0 and not wide[1], f"wider than a phone screen: {wide}"
        screenshot(d, "live-page-phone.png", 390, mobile=True)
    finally:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_assets_are_served_by_the_gateway_itself(live: Live) -> None:
    page = urllib.request.urlopen(live.gw.api_url + "/", timeout=5)
    assert not EXTERNAL.search(page.read().decode())  # no CDN: works on a Pi offline
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for asset, kind in (
        ("app.js", "javascript"),
        ("controls.js", "javascript"),
        ("style.css", "css"),
        ("icon.svg", "svg"),
    ):
        response = urllib.request.urlopen(f"{live.gw.api_url}/ui/{asset}", timeout=5)
        assert kind in response.headers["Content-Type"]
        assert not EXTERNAL.search(response.read().decode()), asset
