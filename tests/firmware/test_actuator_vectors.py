"""The real firmware (main.py, MicroPython unix port) against tests/vectors/actuators.json.

The same vectors as the agent's (tests/agent/test_actuator_vectors.py), over a real WebSocket
from a hand-played gateway; each output's history is what its simulated driver logged
(``OUTPUT name value``, one line per write). What the board declares in hello is also fed to
the gateway's Home Assistant discovery, which must offer every output.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.integrations.mqtt.discovery import device_configs
from gateway.integrations.mqtt.topics import Topics
from gateway.store.registry import DeviceRecord
from tests.firmware.mp import Firmware, base_config
from tests.vectors.actuators import (
    OUTPUTS,
    VECTORS,
    HandGateway,
    check_hello,
    check_outputs,
    declared_args,
    run_vectors,
    same,
)


def board_outputs() -> list[dict[str, Any]]:
    """The vectors' outputs in the firmware's config: type = kind, active low = invert."""
    return [
        {"name": o["name"], "type": o["kind"], "pin": o["pin"], "invert": not o["active_high"]}
        for o in OUTPUTS
    ]


class BoardDevice:
    def __init__(self, fw: Firmware, gateway: HandGateway) -> None:
        self.fw = fw
        self.gateway = gateway
        self.syncs = 0

    async def command(self, cid: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
        result = await self.gateway.command(cid, name, args)
        # A barrier for the log: a ping's COMMAND line is printed when it starts, after every
        # OUTPUT line the command above wrote before its result; once it is read, so are they.
        self.syncs += 1
        sync = f"sync{self.syncs}"
        await self.gateway.command(sync, "ping", {})
        await self.fw.await_line(rf"^COMMAND {sync} ", timeout=10)
        return result

    def changes(self, output: str) -> list[Any]:
        values: list[Any] = []
        last: Any = next(0.0 if o["kind"] == "pwm_led" else False for o in OUTPUTS if o["name"] == output)
        for match in self.fw.find(rf"^OUTPUT {output} (\S+)$"):
            text = match.group(1)
            value = text == "True" if text in ("True", "False") else float(text)
            if not same(value, last):  # a write of the value it has is no change of the pin
                values.append(value)
                last = value
        return values


def test_the_firmware_passes_the_shared_actuator_vectors(tmp_path: Path) -> None:
    async def main() -> tuple[list[str], dict[str, Any]]:
        async with HandGateway() as gateway:
            config = base_config(gateway.url, interval_s=1, outputs=board_outputs(), log_level=1)
            fw = Firmware(tmp_path, config).start()
            try:
                hello = await gateway.connected()
                check_hello(declared_args(hello), hello["info"])
                done = await run_vectors(BoardDevice(fw, gateway))
                check_outputs((await gateway.status())["info"])
                return done, hello
            finally:
                fw.stop()

    done, hello = asyncio.run(asyncio.wait_for(main(), 180))
    assert done == [v["name"] for v in VECTORS["vectors"]]
    # what the board declared offers its outputs to Home Assistant: switches and a slider
    record = DeviceRecord(id=1, name="board", agent=hello["agent"], sensors=hello["sensors"],
                          commands=hello["commands"], info=hello["info"])  # fmt: skip
    components = {
        topic.split("/")[3]: topic.split("/")[1]
        for topic in device_configs(record, Topics("iotgw", "gw"), "homeassistant")
        if "/output_" in topic
    }
    assert components == {"output_led": "switch", "output_relay": "switch", "output_fan": "number"}


def test_older_output_types_keep_working_as_the_shared_kinds(tmp_path: Path) -> None:
    """A deployed config's digital and pwm outputs are declared as output and pwm_led."""

    async def main() -> dict[str, Any]:
        async with HandGateway() as gateway:
            outputs = [{"name": "led", "pin": 2}, {"name": "fan", "type": "pwm", "pin": 15}]
            fw = Firmware(tmp_path, base_config(gateway.url, interval_s=1, outputs=outputs)).start()
            try:
                hello = await gateway.connected()
                on = await gateway.command("c1", "set", {"output": "led", "value": "on"})  # the old name
                half = await gateway.command("c2", "set", {"target": "fan", "value": 0.5})
                return {"hello": hello, "on": on, "half": half}
            finally:
                fw.stop()

    got = asyncio.run(asyncio.wait_for(main(), 60))
    assert got["hello"]["info"]["outputs"] == "led:output,fan:pwm_led"
    assert got["on"]["value"] == {
        "target": "led",
        "type": "output",
        "value": True,
        "pin": 2,
        "pin_state": True,
    }
    assert got["half"]["value"] == {
        "target": "fan",
        "type": "pwm_led",
        "value": 0.5,
        "pin": 15,
        "pin_state": 0.5,
    }
