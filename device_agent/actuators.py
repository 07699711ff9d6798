"""Actuators of the agent: outputs the ``set``, ``toggle`` and ``blink`` commands drive.

The commands, their arguments, values, kinds, results and errors are the ones the board
firmware speaks too (docs/commands.md, "Actuators: one vocabulary"); the shared vectors in
tests/vectors/actuators.json hold both to it.

Built from ``[[actuators]]`` (device_agent/hardware_config.py) on gpiozero: ``led``
(``LED``), ``pwm_led`` (``PWMLED``), ``output`` (``DigitalOutputDevice``, a
relay), ``buzzer`` (``Buzzer``) and ``servo`` (``Servo``). Every operation
returns :meth:`Actuator.state`, read back from the device and its pin, so a
command's result says what the hardware is doing, not what was asked.

gpiozero calls may block (a pin factory talking to a daemon): the command
handlers call these methods through ``asyncio.to_thread``. Blinking runs on
gpiozero's own background thread; any later ``set`` or ``toggle`` stops it.

With gpiozero's mock pin factory, PWM actuators get their own
``MockFactory(pin_class=MockPWMPin)`` (the shared mock factory hands out
plain pins, which cannot do PWM); everything else uses the agent's factory.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any

from device_agent.config import AgentConfig
from device_agent.hardware_config import (
    ActuatorConfig,
    BuzzerActuator,
    LedActuator,
    OutputActuator,
    PwmLedActuator,
    ServoActuator,
)
from device_agent.simulation import mock_factory_in_use

log = logging.getLogger(__name__)

ON_WORDS = frozenset({"on", "true", "high", "1", "yes"})
OFF_WORDS = frozenset({"off", "false", "low", "0", "no"})
SERVO_WORDS = {"min": -1.0, "mid": 0.0, "max": 1.0}
MAX_BLINKS = 100_000


class ActuatorError(ValueError):
    """A request an actuator cannot do (bad value, unsupported operation); the message says why."""


class Actuator:
    """One configured output. ``kind`` is its config type; ``state()`` what it does now."""

    def __init__(self, config: ActuatorConfig, device: Any) -> None:
        self.config = config
        self.name = config.name
        self.kind: str = type(config).__struct_config__.tag  # type: ignore[assignment]
        self.device = device
        self._lock = threading.Lock()

    # -- what commands call (from worker threads) -----------------------------------------

    def set(self, value: object) -> dict[str, Any]:
        """Set the output to ``value`` (on/off, a number for pwm_led and servo); stops blinking."""
        target = self.parse(value)
        with self._lock:
            if isinstance(self.config, ServoActuator | PwmLedActuator):
                self.device.value = target
            elif target:
                self.device.on()
            else:
                self.device.off()
            return self.state()

    def toggle(self) -> dict[str, Any]:
        """Invert the output (pwm_led: brightness b becomes 1 - b); a servo cannot toggle."""
        if isinstance(self.config, ServoActuator):
            raise ActuatorError(f"{self.name} is a servo: it has no on/off to toggle; use set")
        with self._lock:
            self.device.toggle()
            return self.state()

    def blink(self, on_time: float, off_time: float, n: int | None) -> dict[str, Any]:
        """Blink (beep for a buzzer) ``n`` times, or until the next set/toggle if ``n`` is None."""
        if isinstance(self.config, ServoActuator):
            raise ActuatorError(f"{self.name} is a servo: it cannot blink")
        with self._lock:
            # on first, here: the result then reads the blink's start whenever its thread gets going
            self.device.on()
            if isinstance(self.config, BuzzerActuator):
                self.device.beep(on_time=on_time, off_time=off_time, n=n, background=True)
            else:
                self.device.blink(on_time=on_time, off_time=off_time, n=n, background=True)
            state = self.state()
        state["blinking"] = {"on_time": on_time, "off_time": off_time, "n": n}
        return state

    def state(self) -> dict[str, Any]:
        """``value`` (logical: True = on, or the level) and ``pin_state`` (what the pin reads)."""
        value = self.device.value
        if isinstance(self.config, LedActuator | OutputActuator | BuzzerActuator):
            value = bool(value)
        pin_device = getattr(self.device, "pwm_device", self.device)  # a Servo drives a PWMOutputDevice
        pin = getattr(pin_device, "pin", None)
        pin_state = None if pin is None else pin.state
        return {
            "target": self.name,
            "type": self.kind,
            "value": _plain(value),
            "pin": self.config.pin,
            "pin_state": _plain(pin_state),
        }

    def parse(self, value: object) -> bool | float | None:
        """The device value for a command's ``value``; ActuatorError naming what is accepted."""
        config = self.config
        if isinstance(config, ServoActuator):
            if isinstance(value, str) and value.lower() in SERVO_WORDS:
                return SERVO_WORDS[value.lower()]
            if isinstance(value, str) and value.lower() in ("detach", "none"):
                return None
            number = _number(value)
            if number is None or not -1.0 <= number <= 1.0:
                raise ActuatorError(
                    f"value for servo {self.name} must be a number from -1 to 1, min, mid, max or detach, "
                    f"not {value!r}"
                )
            return number
        if isinstance(config, PwmLedActuator):
            if isinstance(value, str) and value.lower() in ON_WORDS | OFF_WORDS:
                return 1.0 if value.lower() in ON_WORDS else 0.0
            if isinstance(value, bool):
                return 1.0 if value else 0.0
            number = _number(value)
            if number is None or not 0.0 <= number <= 1.0:
                raise ActuatorError(
                    f"value for {self.name} must be a level from 0 to 1 or on/off, not {value!r}"
                )
            return number
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ON_WORDS | OFF_WORDS:
            return value.lower() in ON_WORDS
        raise ActuatorError(f"value for {self.name} must be on or off (true/false, 1/0), not {value!r}")

    def close(self) -> None:
        """Release the pin (safe twice)."""
        self.device.close()


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _plain(value: object) -> bool | float | int | None:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return round(value, 6)
    return float(value)  # type: ignore[arg-type]


@dataclass
class Actuators:
    """The built actuators by name, plus the configs that failed to build. Close it."""

    by_name: dict[str, Actuator] = field(default_factory=dict)
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    """(position in [[actuators]], name, error) of each actuator that could not be built."""
    _factories: list[Any] = field(default_factory=list)

    def get(self, name: object) -> Actuator:
        """The actuator named ``name``; ActuatorError listing the names otherwise."""
        if not isinstance(name, str) or name not in self.by_name:
            known = ", ".join(sorted(self.by_name)) or "none configured"
            raise ActuatorError(f"unknown target {name!r}; actuators: {known}")
        return self.by_name[name]

    def states(self) -> dict[str, Any]:
        return {name: actuator.state()["value"] for name, actuator in sorted(self.by_name.items())}

    def close(self) -> None:
        for actuator in self.by_name.values():
            try:
                actuator.close()
            except Exception:  # closing goes on for the others
                log.warning("closing actuator %s failed", actuator.name, exc_info=True)
        for factory in self._factories:
            factory.close()
        self._factories.clear()


def open_actuators(config: AgentConfig, *, pin_factory: Any = None) -> Actuators:
    """Build every configured actuator; one that fails is logged and left out (see ``failures``)."""
    result = Actuators()
    if not config.actuators:
        return result
    mock = mock_factory_in_use(pin_factory)
    pwm_factory: Any = None
    for position, actuator in enumerate(config.actuators):
        factory = pin_factory
        if mock is not None and isinstance(actuator, PwmLedActuator | ServoActuator):
            if pwm_factory is None:
                from gpiozero.pins.mock import MockFactory, MockPWMPin

                pwm_factory = MockFactory(pin_class=MockPWMPin)
                result._factories.append(pwm_factory)
            factory = pwm_factory
        try:
            device = _build(actuator, factory)
        except Exception as exc:
            log.warning("actuator actuators[%d] %s skipped: %s", position, actuator.name, exc)
            result.failures.append((position, actuator.name, str(exc) or type(exc).__name__))
            continue
        result.by_name[actuator.name] = Actuator(actuator, device)
    return result


def _build(config: ActuatorConfig, factory: Any) -> Any:
    import gpiozero

    if isinstance(config, LedActuator):
        return gpiozero.LED(
            config.pin, active_high=config.active_high, initial_value=config.initial, pin_factory=factory
        )
    if isinstance(config, PwmLedActuator):
        return gpiozero.PWMLED(
            config.pin, active_high=config.active_high, initial_value=config.initial,
            frequency=config.frequency, pin_factory=factory,
        )  # fmt: skip
    if isinstance(config, OutputActuator):
        return gpiozero.DigitalOutputDevice(
            config.pin, active_high=config.active_high, initial_value=config.initial, pin_factory=factory
        )
    if isinstance(config, BuzzerActuator):
        return gpiozero.Buzzer(
            config.pin, active_high=config.active_high, initial_value=config.initial, pin_factory=factory
        )
    return gpiozero.Servo(
        config.pin, initial_value=config.initial, min_pulse_width=config.min_pulse_width,
        max_pulse_width=config.max_pulse_width, frame_width=config.frame_width, pin_factory=factory,
    )  # fmt: skip


__all__ = ["Actuator", "ActuatorError", "Actuators", "open_actuators"]
