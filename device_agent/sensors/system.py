"""The Pi's own health: SoC temperature, load average, disk use (gpiozero's internal devices).

They use no GPIO pin (gpiozero wants a pin factory only for its clock), so they work
on any Linux machine; ``iotgw-agent install`` configures these three by default.
"""

from __future__ import annotations

from typing import Any

from device_agent.hardware_config import CpuTemperatureSensor, DiskUsageSensor, LoadAverageSensor
from device_agent.sensors.base import GpiozeroSensor, Reading, gpiozero_device, guarded_read
from iotgw_common.protocol import SensorInfo


class CpuTemperature(GpiozeroSensor):
    """SoC temperature in °C from the thermal zone file."""

    def __init__(self, config: CpuTemperatureSensor, pin_factory: Any = None) -> None:
        from gpiozero import CPUTemperature

        self.config = config
        label = f"cpu_temperature ({config.sensor_file})"
        super().__init__(label, gpiozero_device(label, pin_factory, CPUTemperature, config.sensor_file))

    def declare(self) -> list[SensorInfo]:
        return [SensorInfo(metric=self.config.metric, unit=self.config.unit, kind="temperature")]

    def read(self) -> Reading:
        return {self.config.metric: round(guarded_read(self.label, lambda: self.device.temperature), 2)}


class LoadAverage(GpiozeroSensor):
    """System load average over 1, 5 or 15 minutes."""

    def __init__(self, config: LoadAverageSensor, pin_factory: Any = None) -> None:
        from gpiozero import LoadAverage as GZLoadAverage

        self.metric = config.metric or f"load_{config.minutes}m"
        self.config = config
        label = f"load_average ({config.load_average_file})"
        device = gpiozero_device(
            label,
            pin_factory,
            GZLoadAverage,
            load_average_file=config.load_average_file,
            minutes=config.minutes,
            max_load_average=1000.0,
            threshold=100.0,
        )
        super().__init__(label, device)

    def declare(self) -> list[SensorInfo]:
        return [SensorInfo(metric=self.metric, unit=self.config.unit, kind="load")]

    def read(self) -> Reading:
        return {self.metric: round(guarded_read(self.label, lambda: self.device.load_average), 2)}


class DiskUsage(GpiozeroSensor):
    """Used space of a file system, in percent."""

    def __init__(self, config: DiskUsageSensor, pin_factory: Any = None) -> None:
        from gpiozero import DiskUsage as GZDiskUsage

        self.config = config
        label = f"disk_usage ({config.path})"
        super().__init__(label, gpiozero_device(label, pin_factory, GZDiskUsage, config.path))

    def declare(self) -> list[SensorInfo]:
        return [SensorInfo(metric=self.config.metric, unit=self.config.unit, kind="disk")]

    def read(self) -> Reading:
        return {self.config.metric: round(guarded_read(self.label, lambda: self.device.usage), 2)}


__all__ = ["CpuTemperature", "DiskUsage", "LoadAverage"]
