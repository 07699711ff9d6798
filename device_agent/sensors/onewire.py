"""DS18B20 thermometers on the 1-wire bus, read from the kernel's w1 sysfs files.

No gpiozero device: the kernel's ``w1-gpio`` overlay (``dtoverlay=w1-gpio`` in
``config.txt``) drives the bus and lists each sensor as a ``28-*`` directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from device_agent.hardware_config import Ds18b20Sensor
from device_agent.sensors.base import Reading, Sensor, SensorError
from iotgw_common.protocol import SensorInfo

log = logging.getLogger(__name__)


class Ds18b20(Sensor):
    """DS18B20 thermometers read from the kernel's w1 sysfs files (no gpiozero device).

    The kernel's ``w1_slave`` file holds two lines: the first ends in ``YES``
    when the CRC is good, the second ends in ``t=<millidegrees>``. Newer
    kernels also offer a ``temperature`` file with the millidegrees alone.
    A read reports every sensor that could be read and logs, once until it
    recovers, each one that could not; it raises only when none could.
    """

    def __init__(self, config: Ds18b20Sensor, pin_factory: Any = None) -> None:
        super().__init__(f"ds18b20 ({config.base_dir})")
        self.config = config
        base = Path(config.base_dir)
        if config.serial:
            if not (base / config.serial).is_dir():
                raise SensorError(
                    f"{self.label}: no 1-wire device {config.serial} under {base} "
                    "(is dtoverlay=w1-gpio enabled and the sensor wired?)"
                )
            self.metrics = {config.serial: config.metric or f"temp_{config.serial}"}
        else:
            serials = sorted(p.name for p in base.glob("28-*")) if base.is_dir() else []
            if not serials:
                raise SensorError(
                    f"{self.label}: no DS18B20 (28-*) found under {base} "
                    "(is dtoverlay=w1-gpio enabled and the sensor wired?)"
                )
            self.metrics = {serial: f"temp_{serial}" for serial in serials}
        self._failing: set[str] = set()

    def declare(self) -> list[SensorInfo]:
        return [
            SensorInfo(metric=metric, unit=self.config.unit, kind="temperature")
            for metric in self.metrics.values()
        ]

    def read(self) -> Reading:
        values: Reading = {}
        errors: list[str] = []
        for serial, metric in self.metrics.items():
            try:
                values[metric] = read_ds18b20(Path(self.config.base_dir) / serial)
            except SensorError as exc:
                errors.append(str(exc))
                if serial not in self._failing:
                    self._failing.add(serial)
                    log.warning("%s", exc)
            else:
                self._failing.discard(serial)
        if not values:
            raise SensorError("; ".join(errors))
        return values


def read_ds18b20(device_dir: Path) -> float:
    """Temperature in °C of one DS18B20 sysfs directory; SensorError on a CRC or read failure."""
    slave = device_dir / "w1_slave"
    try:
        if slave.exists():
            lines = slave.read_text(encoding="ascii").strip().splitlines()
            if len(lines) < 2 or not lines[0].strip().endswith("YES"):
                raise SensorError(f"ds18b20 {device_dir.name}: CRC check failed (noise on the bus?)")
            _, sep, millis = lines[1].rpartition("t=")
            if not sep:
                raise SensorError(f"ds18b20 {device_dir.name}: unexpected w1_slave content")
        else:
            millis = (device_dir / "temperature").read_text(encoding="ascii").strip()
        return round(int(millis) / 1000.0, 3)
    except OSError as exc:
        raise SensorError(f"ds18b20 {device_dir.name}: cannot read: {exc.strerror or exc}") from None
    except ValueError:
        raise SensorError(f"ds18b20 {device_dir.name}: temperature is not a number") from None


__all__ = ["Ds18b20", "read_ds18b20"]
