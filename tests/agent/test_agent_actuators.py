"""Actuators, built-in and custom commands of the agent, on gpiozero's MockFactory."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from device_agent.actuators import ActuatorError, open_actuators
from device_agent.commands import CommandRegistry, register_builtins, register_custom, run_program
from device_agent.config import ConfigError, parse_config
from iotgw_common.protocol import Command
from tests.support.waiting import wait_until

BASE = '[gateway]\nurl = "ws://gw/v1/device"\ntoken = "t"\n'
ACTUATORS = """
[[actuators]]
type = "led"
name = "led"
pin = 5

[[actuators]]
type = "output"
name = "relay"
pin = 6
active_high = false

[[actuators]]
type = "pwm_led"
name = "lamp"
pin = 12
initial = 0.5

[[actuators]]
type = "buzzer"
name = "beeper"
pin = 16

[[actuators]]
type = "servo"
name = "vent"
pin = 13
"""


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_actuators_and_custom_commands_parse() -> None:
    config = parse_config(
        BASE + ACTUATORS + '[[commands]]\nname = "hi"\nargv = ["echo", "hi"]\ntimeout = 2\n'
    )
    assert [type(a).__struct_config__.tag for a in config.actuators] == [
        "led",
        "output",
        "pwm_led",
        "buzzer",
        "servo",
    ]
    assert config.actuators[1].active_high is False
    assert config.commands[0].argv == ["echo", "hi"] and config.commands[0].timeout == 2


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            '[[actuators]]\ntype = "led"\nname = "a"\npin = 5\n',
            "actuators[5]: GPIO5 is already used by actuators[0]",
        ),
        ('[[actuators]]\ntype = "led"\nname = "led"\npin = 7\n', "actuator name 'led' is already used"),
        ('[[sensors]]\ntype = "button"\npin = 5\n', "actuators[0]: GPIO5 is already used by sensors[0]"),
        ('[[actuators]]\ntype = "laser"\nname = "x"\npin = 7\n', "actuators[5]"),
        ('[[commands]]\nname = "ping"\nargv = ["true"]\n', "commands[0].name: 'ping' is a built-in command"),
        ('[[commands]]\nname = "x"\nargv = []\n', "commands[0].argv"),
        ('[[commands]]\nname = "x"\nargv = ["a"]\n[[commands]]\nname = "x"\nargv = ["b"]\n', "already used"),
    ],
)
def test_config_errors_name_the_entry(extra: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + ACTUATORS + extra)
    assert expected in str(info.value)


def test_each_actuator_type_drives_its_mock_pin(mock_factory: MockFactory) -> None:
    actuators = open_actuators(parse_config(BASE + ACTUATORS), pin_factory=mock_factory)
    try:
        assert actuators.failures == [] and sorted(actuators.by_name) == [
            "beeper",
            "lamp",
            "led",
            "relay",
            "vent",
        ]
        led = actuators.get("led")
        assert led.set("on") == {"target": "led", "type": "led", "value": True, "pin": 5, "pin_state": True}
        assert mock_factory.pin(5).state is True
        assert led.toggle()["pin_state"] is False and mock_factory.pin(5).state is False
        relay = actuators.get("relay")  # active low: on drives the pin low
        assert relay.set(1)["pin_state"] is False and relay.set(False)["pin_state"] is True
        lamp = actuators.get("lamp")
        assert lamp.state()["value"] == 0.5
        assert lamp.set("0.75")["pin_state"] == 0.75 and lamp.set("off")["value"] == 0.0
        assert lamp.toggle()["value"] == 1.0
        vent = actuators.get("vent")
        assert vent.set("max")["value"] == 1.0 and vent.set(-0.5)["value"] == -0.5
        with pytest.raises(ActuatorError, match="servo"):
            vent.toggle()
        with pytest.raises(ActuatorError, match="from -1 to 1"):
            vent.set(2)
        with pytest.raises(ActuatorError, match="on or off"):
            led.set(0.5)
        with pytest.raises(
            ActuatorError, match="unknown target 'nope'; actuators: beeper, lamp, led, relay, vent"
        ):
            actuators.get("nope")
        blinking = actuators.get("beeper").blink(0.01, 0.01, 2)
        assert blinking["blinking"] == {"on_time": 0.01, "off_time": 0.01, "n": 2}
        beeper_pin = mock_factory.pin(16)
        wait_until(lambda: [s.state for s in beeper_pin.states].count(True) == 2 and not beeper_pin.state,
                   what="the beeper's two beeps, then off")  # fmt: skip
        assert actuators.get("beeper").state()["value"] is False  # two beeps, then off
        assert actuators.states() == {
            "beeper": False,
            "lamp": 1.0,
            "led": False,
            "relay": False,
            "vent": -0.5,
        }
    finally:
        actuators.close()
        actuators.close()  # safe twice


def registry_with(mock_factory: MockFactory, interval: list[float]) -> CommandRegistry:
    actuators = open_actuators(parse_config(BASE + ACTUATORS), pin_factory=mock_factory)
    registry = CommandRegistry()

    async def read_now() -> dict[str, Any]:
        return {"temp": 21.5}

    register_builtins(
        registry, read_now=read_now, get_interval=lambda: interval[0],
        set_interval=lambda s: interval.__setitem__(0, s), actuators=actuators,
    )  # fmt: skip
    register_custom(
        registry, parse_config(BASE + '[[commands]]\nname = "hi"\nargv = ["echo", "hi"]\n').commands
    )
    return registry


def handle(registry: CommandRegistry, name: str, **args: Any) -> Any:
    return run(registry.handle(Command(id="c", name=name, args=args)))


def test_builtin_commands_and_their_argument_errors(mock_factory: MockFactory) -> None:
    interval = [5.0]
    registry = registry_with(mock_factory, interval)
    assert [c.name for c in registry.declare()] == [
        "ping",
        "read_now",
        "set_interval",
        "set",
        "toggle",
        "blink",
        "hi",
    ]
    assert all(len(v) <= 256 for c in registry.declare() for v in c.args.values())
    assert handle(registry, "set", target="led", value="on").value["pin_state"] is True
    pong = handle(registry, "ping").value
    assert pong["pong"] is True and pong["actuators"]["led"] is True and pong["interval_s"] == 5.0
    assert handle(registry, "read_now").value["values"] == {"temp": 21.5}
    assert handle(registry, "set_interval", seconds="2.5").value == {"interval_s": 2.5, "previous_s": 5.0}
    assert interval == [2.5]
    assert handle(registry, "hi").value == {"exit_code": 0, "stdout": "hi\n", "stderr": ""}
    errors = {
        ("set", (("value", 1),)): "bad arguments: missing argument 'target'; set needs: target, value",
        ("set", (("target", "led"), ("value", 1), ("x", 1))): "bad arguments: unknown argument 'x'",
        ("set_interval", (("seconds", True),)): "bad arguments: seconds must be a number from 0.05 to 86400",
        ("blink", (("target", "led"), ("n", 1.5))): "bad arguments: n must be a whole number",
        ("toggle", (("target", "vent"),)): "bad arguments: vent is a servo",
        ("hi", (("x", 1),)): "bad arguments: unknown argument 'x'; hi accepts: no arguments",
        ("reboot", ()): "unknown command: reboot",
    }
    for (name, args), error in errors.items():
        result = handle(registry, name, **dict(args))
        assert result.ok is False and result.error.startswith(error), (name, result.error)


def test_a_raising_handler_becomes_a_failed_result_with_the_exception() -> None:
    registry = CommandRegistry()

    async def broken(args: dict[str, Any]) -> None:
        raise OSError(5, "Input/output error")

    registry.register("broken", broken)
    result = handle(registry, "broken")
    assert result.ok is False and result.error == "broken failed: OSError: [Errno 5] Input/output error"


def test_programs_time_out_fail_with_their_output_and_keep_only_the_tail(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    sleeper = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(30)"
    with pytest.raises(Exception, match=r"did not finish within 0.3 s; killed"):
        run(run_program([sys.executable, "-c", sleeper], 0.3))
    with pytest.raises(ProcessLookupError):  # the program was killed and reaped, not left running
        os.kill(int(pid_file.read_text()), 0)
    from device_agent.commands import OUTPUT_CHARS, CommandFailed

    with pytest.raises(CommandFailed) as info:
        run(run_program([sys.executable, "-c", "import sys; print('x' * 9000); sys.exit('bad thing')"], 5))
    assert str(info.value).endswith("exited with code 1: bad thing")
    assert info.value.value["exit_code"] == 1 and len(info.value.value["stdout"]) == OUTPUT_CHARS
