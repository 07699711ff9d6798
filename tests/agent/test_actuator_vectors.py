"""The real agent against tests/vectors/actuators.json, the vectors the firmware passes too.

The whole agent runs (its link, its command registry, gpiozero devices on MockFactory pins)
against a hand-played gateway over a real WebSocket; each output's history is its mock pin's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory

from device_agent.agent import Agent
from device_agent.config import parse_config
from tests.vectors.actuators import (
    OUTPUTS,
    VECTORS,
    HandGateway,
    check_hello,
    check_outputs,
    declared_args,
    logical,
    run_vectors,
)


def agent_config(url: str, tmp_path: Path) -> str:
    text = f"""
[gateway]
url = "{url}"
token = "iotgw_d_vectors"
device = "vectors"
[agent]
interval = 1.0
buffer_path = "{tmp_path / "agent.sqlite3"}"
backoff_base = 0.01
backoff_max = 0.05
status_interval = 0.5
"""
    for output in OUTPUTS:
        text += (
            f'[[actuators]]\ntype = "{output["kind"]}"\nname = "{output["name"]}"\npin = {output["pin"]}\n'
            f"active_high = {str(output['active_high']).lower()}\n"
        )
    return text


class AgentDevice:
    def __init__(self, agent: Agent, gateway: HandGateway) -> None:
        self.agent = agent
        self.gateway = gateway

    async def command(self, cid: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
        return await self.gateway.command(cid, name, args)

    def changes(self, output: str) -> list[Any]:
        assert self.agent.actuators is not None
        pin = self.agent.actuators.by_name[output].device.pin  # a MockPin, or a MockPWMPin for pwm_led
        config = next(o for o in OUTPUTS if o["name"] == output)
        return [logical(config, change.state) for change in pin.states]


def test_the_agent_passes_the_shared_actuator_vectors(tmp_path: Path) -> None:
    async def main() -> list[str]:
        async with HandGateway() as gateway:
            agent = Agent(parse_config(agent_config(gateway.url, tmp_path)), pin_factory=MockFactory())
            task = asyncio.create_task(agent.run())
            try:
                hello = await gateway.connected()
                check_hello(declared_args(hello), hello["info"])
                done = await run_vectors(AgentDevice(agent, gateway))
                check_outputs((await gateway.status())["info"])
                return done
            finally:
                agent.stop()
                await asyncio.wait_for(task, 10)

    done = asyncio.run(asyncio.wait_for(main(), 120))
    assert done == [v["name"] for v in VECTORS["vectors"]]
