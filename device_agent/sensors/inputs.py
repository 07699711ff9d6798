"""Digital inputs reported as ``event`` messages: push buttons, PIR sensors, reed switches.

gpiozero fires their callbacks on its own threads; :meth:`InputSensor.subscribe` stamps
each change there and hands it to the event loop with ``loop.call_soon_threadsafe``, so
the caller's callback runs on the loop and needs no lock.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from device_agent.hardware_config import ButtonSensor, DigitalInputSensor
from device_agent.sensors.base import EventCallback, GpiozeroSensor, Reading, gpiozero_device, guarded_read
from iotgw_common.clock import now_ms
from iotgw_common.protocol import SensorInfo


class InputSensor(GpiozeroSensor):
    """A digital input reported as ``event`` messages named :attr:`name` on each change."""

    polled = False
    data_key: ClassVar[str] = "active"

    def __init__(self, label: str, name: str, device: Any) -> None:
        super().__init__(label, device)
        self.name = name

    def declare(self) -> list[SensorInfo]:
        return [SensorInfo(metric=self.name, kind="event")]

    def read(self) -> Reading:
        return {self.name: bool(guarded_read(self.label, lambda: self.device.is_active))}

    def subscribe(self, loop: asyncio.AbstractEventLoop, callback: EventCallback) -> None:
        """Call ``callback(name, {data_key: state}, ts_ms)`` on ``loop`` for every change."""

        def changed(state: bool) -> None:
            # Runs on a gpiozero thread: stamp now, run the callback on the loop.
            ts = now_ms()
            try:
                data: Reading = {self.data_key: state}
                loop.call_soon_threadsafe(callback, self.name, data, ts)
            except RuntimeError:  # loop closed while shutting down
                pass

        self.device.when_activated = lambda: changed(True)
        self.device.when_deactivated = lambda: changed(False)


class Button(InputSensor):
    """A push button; events carry ``{"pressed": bool}``."""

    data_key = "pressed"

    def __init__(self, config: ButtonSensor, pin_factory: Any = None) -> None:
        from gpiozero import Button as GZButton

        label = f"button (GPIO{config.pin})"
        device = gpiozero_device(
            label, pin_factory, GZButton, config.pin, pull_up=config.pull_up, bounce_time=config.bounce_time
        )
        super().__init__(label, config.name or f"button_{config.pin}", device)


class DigitalInput(InputSensor):
    """A digital input (PIR, reed switch); events carry ``{"active": bool}``."""

    def __init__(self, config: DigitalInputSensor, pin_factory: Any = None) -> None:
        from gpiozero import DigitalInputDevice

        label = f"digital_input (GPIO{config.pin})"
        device = gpiozero_device(
            label,
            pin_factory,
            DigitalInputDevice,
            config.pin,
            pull_up=config.pull_up,
            bounce_time=config.bounce_time,
        )
        super().__init__(label, config.name or f"input_{config.pin}", device)


__all__ = ["Button", "DigitalInput", "InputSensor"]
