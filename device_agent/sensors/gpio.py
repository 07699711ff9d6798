"""Polled sensors on the GPIO header: an MCP3008 ADC on SPI, an HC-SR04, a light-dependent resistor.

The distance and light sensors time pulses: gpiozero measures them on its own thread
into a queue (a "smoothed" device), so :meth:`read` first waits, up to
:data:`FIRST_SAMPLE_TIMEOUT`, for a first measurement rather than report the queue's
empty value as a reading. Closing stops that thread *before* the device lets go of its
pins: gpiozero's ``DistanceSensor.close`` drops the trigger pin first and only then
stops the queue, so a measurement in flight on a slow CPU ended in
``AttributeError: 'NoneType' object has no attribute 'pin'`` on the reader thread.
"""

from __future__ import annotations

import time
from typing import Any

from device_agent.hardware_config import DistanceSensorConfig, LightSensorConfig, Mcp3008Sensor
from device_agent.sensors.base import GpiozeroSensor, Reading, SensorError, gpiozero_device, guarded_read
from iotgw_common.protocol import SensorInfo

#: How long a smoothed sensor (distance, light) may take to produce its first sample.
FIRST_SAMPLE_TIMEOUT = 2.0


class Mcp3008Channel(GpiozeroSensor):
    """One MCP3008 channel: fraction of Vref * scale + offset."""

    def __init__(self, config: Mcp3008Sensor, pin_factory: Any = None) -> None:
        from gpiozero import MCP3008

        self.config = config
        self.metric = config.metric or f"adc{config.spi_device}_ch{config.channel}"
        label = f"mcp3008 channel {config.channel} (SPI CE{config.spi_device})"
        device = gpiozero_device(
            label, pin_factory, MCP3008, channel=config.channel, device=config.spi_device
        )
        super().__init__(label, device)

    def declare(self) -> list[SensorInfo]:
        return [SensorInfo(metric=self.metric, unit=self.config.unit, kind="adc")]

    def read(self) -> Reading:
        fraction = float(guarded_read(self.label, lambda: self.device.value))
        return {self.metric: round(fraction * self.config.scale + self.config.offset, 4)}


#: How long closing waits for a smoothed device's reader thread (one measurement at most).
READER_STOP_TIMEOUT = 5.0


class _SmoothedSensor(GpiozeroSensor):
    """gpiozero smoothed devices fill a queue on a thread; wait for its first sample, and stop
    the thread before closing the device."""

    def _close(self) -> None:
        reader = getattr(self.device, "_queue", None)
        if reader is not None and reader.is_alive():
            reader.stopping.set()
            reader.join(READER_STOP_TIMEOUT)  # gpiozero's join raises ZombieThread if still alive
        super()._close()

    def _wait_first_sample(self) -> None:
        # gpiozero has no public "has a sample" flag: with partial=True, an empty
        # queue reads as 0.0, which would be a plausible but false reading.
        queue = getattr(getattr(self.device, "_queue", None), "queue", None)
        if queue is None:
            return
        deadline = time.monotonic() + FIRST_SAMPLE_TIMEOUT
        while not queue:
            if time.monotonic() > deadline:
                raise SensorError(f"{self.label}: no measurement yet (check the wiring)")
            time.sleep(0.01)


class Distance(_SmoothedSensor):
    """HC-SR04 distance in metres (median of recent pings)."""

    def __init__(self, config: DistanceSensorConfig, pin_factory: Any = None) -> None:
        from gpiozero import DistanceSensor

        self.config = config
        label = f"distance (trigger GPIO{config.trigger_pin}, echo GPIO{config.echo_pin})"
        device = gpiozero_device(
            label,
            pin_factory,
            DistanceSensor,
            echo=config.echo_pin,
            trigger=config.trigger_pin,
            max_distance=config.max_distance,
            partial=True,
        )
        super().__init__(label, device)

    def declare(self) -> list[SensorInfo]:
        return [SensorInfo(metric=self.config.metric, unit=self.config.unit, kind="distance")]

    def read(self) -> Reading:
        self._wait_first_sample()
        return {self.config.metric: round(guarded_read(self.label, lambda: self.device.distance), 3)}


class Light(_SmoothedSensor):
    """LDR light level, 0 (dark) .. 1 (bright)."""

    def __init__(self, config: LightSensorConfig, pin_factory: Any = None) -> None:
        from gpiozero import LightSensor

        self.config = config
        label = f"light (GPIO{config.pin})"
        device = gpiozero_device(
            label,
            pin_factory,
            LightSensor,
            config.pin,
            charge_time_limit=config.charge_time_limit,
            partial=True,
        )
        super().__init__(label, device)

    def declare(self) -> list[SensorInfo]:
        return [SensorInfo(metric=self.config.metric, unit=self.config.unit, kind="light")]

    def read(self) -> Reading:
        self._wait_first_sample()
        return {self.config.metric: round(guarded_read(self.label, lambda: self.device.value), 3)}


__all__ = ["FIRST_SAMPLE_TIMEOUT", "READER_STOP_TIMEOUT", "Distance", "Light", "Mcp3008Channel"]
