"""Sensors of the agent, built from config on top of gpiozero (and sysfs for DS18B20).

Two kinds:

* polled sensors (:attr:`Sensor.polled` true) are read by the sampling loop;
  :meth:`Sensor.read` returns ``{metric: value}``. Reads block (files, SPI,
  pulse timing): call them from a worker thread, not the event loop.
* input sensors (:class:`InputSensor`: buttons, digital inputs) report changes
  as ``event`` messages. gpiozero fires their callbacks on its own threads;
  :meth:`InputSensor.subscribe` hands every change to the event loop with
  ``loop.call_soon_threadsafe``, so the caller's callback runs on the loop.

Every sensor is built by :func:`build_sensor`, which raises :class:`SensorError`
with a clear message when the source is missing (no thermal file, no 1-wire
device, no pin factory); :func:`build_sensors` collects those failures so the
agent can warn once and go on without the sensor. ``close()`` is safe twice.

gpiozero uses its global pin factory (``GPIOZERO_PIN_FACTORY``, or tests set
``Device.pin_factory``); with the mock factory, build the simulation first
(:mod:`device_agent.simulation`) so that pins get the right mock classes.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from iotgw_common.protocol import SensorInfo
from iotgw_common.protocol.messages import Value

from .config import (
    ButtonSensor,
    CpuTemperatureSensor,
    DigitalInputSensor,
    DiskUsageSensor,
    DistanceSensorConfig,
    Ds18b20Sensor,
    LightSensorConfig,
    LoadAverageSensor,
    Mcp3008Sensor,
    SensorConfig,
)

log = logging.getLogger(__name__)

Reading = dict[str, Value]
EventCallback = Callable[[str, Reading, int], None]
"""Called on the event loop with (event name, data, ts in ms) for each input change."""

#: How long a smoothed sensor (distance, light) may take to produce its first sample.
FIRST_SAMPLE_TIMEOUT = 2.0


class SensorError(RuntimeError):
    """A sensor could not be built or read (missing file, no echo, bad wiring)."""


def now_ms() -> int:
    """Wall-clock time in milliseconds since the Unix epoch, as the protocol wants."""
    return time.time_ns() // 1_000_000


class Sensor(abc.ABC):
    """A configured sensor. ``label`` names it for people (logs, the check table)."""

    polled: ClassVar[bool] = True

    def __init__(self, label: str) -> None:
        self.label = label
        self._closed = False

    @abc.abstractmethod
    def declare(self) -> list[SensorInfo]:
        """Metrics (or event names, kind ``event``) this sensor reports, for ``hello``."""

    @abc.abstractmethod
    def read(self) -> Reading:
        """Read now; blocking. Raises SensorError when the source cannot be read."""

    def close(self) -> None:
        """Release pins and threads; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._close()

    def _close(self) -> None:  # noqa: B027 - optional hook, most sensors hold a device
        """Release what the sensor holds; called once by :meth:`close`."""

    def __enter__(self) -> Sensor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"


class _GpiozeroSensor(Sensor):
    """A sensor wrapping one gpiozero device."""

    def __init__(self, label: str, device: Any) -> None:
        super().__init__(label)
        self.device = device

    def _close(self) -> None:
        self.device.close()


# -- polled sensors ------------------------------------------------------------------------


class CpuTemperature(_GpiozeroSensor):
    """SoC temperature in °C from the thermal zone file."""

    def __init__(self, config: CpuTemperatureSensor, pin_factory: Any = None) -> None:
        from gpiozero import CPUTemperature

        self.config = config
        device = _build(
            f"cpu_temperature ({config.sensor_file})", pin_factory, CPUTemperature, config.sensor_file
        )
        super().__init__(f"cpu_temperature ({config.sensor_file})", device)

    def declare(self) -> list[SensorInfo]:
        return [SensorInfo(metric=self.config.metric, unit=self.config.unit, kind="temperature")]

    def read(self) -> Reading:
        return {self.config.metric: round(_read(self.label, lambda: self.device.temperature), 2)}


class LoadAverage(_GpiozeroSensor):
    """System load average over 1, 5 or 15 minutes."""

    def __init__(self, config: LoadAverageSensor, pin_factory: Any = None) -> None:
        from gpiozero import LoadAverage as GZLoadAverage

        self.metric = config.metric or f"load_{config.minutes}m"
        self.config = config
        label = f"load_average ({config.load_average_file})"
        device = _build(
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
        return {self.metric: round(_read(self.label, lambda: self.device.load_average), 2)}


class DiskUsage(_GpiozeroSensor):
    """Used space of a file system, in percent."""

    def __init__(self, config: DiskUsageSensor, pin_factory: Any = None) -> None:
        from gpiozero import DiskUsage as GZDiskUsage

        self.config = config
        label = f"disk_usage ({config.path})"
        super().__init__(label, _build(label, pin_factory, GZDiskUsage, config.path))

    def declare(self) -> list[SensorInfo]:
        return [SensorInfo(metric=self.config.metric, unit=self.config.unit, kind="disk")]

    def read(self) -> Reading:
        return {self.config.metric: round(_read(self.label, lambda: self.device.usage), 2)}


class Mcp3008Channel(_GpiozeroSensor):
    """One MCP3008 channel: fraction of Vref * scale + offset."""

    def __init__(self, config: Mcp3008Sensor, pin_factory: Any = None) -> None:
        from gpiozero import MCP3008

        self.config = config
        self.metric = config.metric or f"adc{config.spi_device}_ch{config.channel}"
        label = f"mcp3008 channel {config.channel} (SPI CE{config.spi_device})"
        device = _build(label, pin_factory, MCP3008, channel=config.channel, device=config.spi_device)
        super().__init__(label, device)

    def declare(self) -> list[SensorInfo]:
        return [SensorInfo(metric=self.metric, unit=self.config.unit, kind="adc")]

    def read(self) -> Reading:
        fraction = float(_read(self.label, lambda: self.device.value))
        return {self.metric: round(fraction * self.config.scale + self.config.offset, 4)}


class _SmoothedSensor(_GpiozeroSensor):
    """gpiozero smoothed devices fill a queue on a thread; wait for its first sample."""

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
        device = _build(
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
        return {self.config.metric: round(_read(self.label, lambda: self.device.distance), 3)}


class Light(_SmoothedSensor):
    """LDR light level, 0 (dark) .. 1 (bright)."""

    def __init__(self, config: LightSensorConfig, pin_factory: Any = None) -> None:
        from gpiozero import LightSensor

        self.config = config
        label = f"light (GPIO{config.pin})"
        device = _build(
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
        return {self.config.metric: round(_read(self.label, lambda: self.device.value), 3)}


class Ds18b20(Sensor):
    """DS18B20 thermometers read from the kernel's w1 sysfs files (no gpiozero device).

    The kernel's ``w1_slave`` file holds two lines: the first ends in ``YES``
    when the CRC is good, the second ends in ``t=<millidegrees>``. Newer
    kernels also offer a ``temperature`` file with the millidegrees alone.
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


# -- input sensors -------------------------------------------------------------------------


class InputSensor(_GpiozeroSensor):
    """A digital input reported as ``event`` messages named :attr:`name` on each change."""

    polled = False
    data_key: ClassVar[str] = "active"

    def __init__(self, label: str, name: str, device: Any) -> None:
        super().__init__(label, device)
        self.name = name

    def declare(self) -> list[SensorInfo]:
        return [SensorInfo(metric=self.name, kind="event")]

    def read(self) -> Reading:
        return {self.name: bool(_read(self.label, lambda: self.device.is_active))}

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
        device = _build(
            label, pin_factory, GZButton, config.pin, pull_up=config.pull_up, bounce_time=config.bounce_time
        )
        super().__init__(label, config.name or f"button_{config.pin}", device)


class DigitalInput(InputSensor):
    """A digital input (PIR, reed switch); events carry ``{"active": bool}``."""

    def __init__(self, config: DigitalInputSensor, pin_factory: Any = None) -> None:
        from gpiozero import DigitalInputDevice

        label = f"digital_input (GPIO{config.pin})"
        device = _build(
            label,
            pin_factory,
            DigitalInputDevice,
            config.pin,
            pull_up=config.pull_up,
            bounce_time=config.bounce_time,
        )
        super().__init__(label, config.name or f"input_{config.pin}", device)


# -- building --------------------------------------------------------------------------------

_BUILDERS: dict[type[Any], Callable[[Any, Any], Sensor]] = {
    CpuTemperatureSensor: CpuTemperature,
    LoadAverageSensor: LoadAverage,
    DiskUsageSensor: DiskUsage,
    Mcp3008Sensor: Mcp3008Channel,
    DistanceSensorConfig: Distance,
    LightSensorConfig: Light,
    Ds18b20Sensor: Ds18b20,
    ButtonSensor: Button,
    DigitalInputSensor: DigitalInput,
}


@dataclasses.dataclass(frozen=True)
class SensorFailure:
    """A configured sensor that could not be built: which one (``sensors[position]``) and why."""

    position: int
    type: str
    error: str


#: Sensors that need no GPIO pins (gpiozero uses the factory only for its clock, or none at all).
PINLESS = (CpuTemperatureSensor, LoadAverageSensor, DiskUsageSensor, Ds18b20Sensor)


def build_sensor(config: SensorConfig, pin_factory: Any = None) -> Sensor:
    """Build one sensor; raises SensorError naming the sensor and the cause.

    ``pin_factory``: a gpiozero pin factory, or None for the global ``Device.pin_factory``.
    """
    _quiet_gpiozero()
    return _BUILDERS[type(config)](config, pin_factory)


def build_sensors(
    configs: Iterable[SensorConfig], pin_factory: Any = None
) -> tuple[list[Sensor], list[SensorFailure]]:
    """Build every sensor that can be built; return them and the failures (not raised).

    ``pin_factory`` None resolves gpiozero's global factory once. If no factory
    can be loaded (not a Pi, no GPIOZERO_PIN_FACTORY), sensors on pins fail
    with one clear reason while the pinless ones (CPU temperature, load, disk,
    DS18B20) still work. The caller owns the returned sensors and must close them.
    """
    no_pins: str | None = None
    pinless_factory = pin_factory
    if pin_factory is None:
        pin_factory, no_pins = resolve_pin_factory()
        if pin_factory is None:
            from gpiozero.pins.mock import MockFactory

            pinless_factory = MockFactory()  # only its clock is used by pinless devices
        else:
            pinless_factory = pin_factory
    sensors: list[Sensor] = []
    failures: list[SensorFailure] = []
    for index, config in enumerate(configs):
        kind = str(type(config).__struct_config__.tag)
        pinless = isinstance(config, PINLESS)
        if no_pins is not None and not pinless:
            failures.append(SensorFailure(index, kind, no_pins))
            continue
        try:
            sensors.append(build_sensor(config, pinless_factory if pinless else pin_factory))
        except SensorError as exc:
            failures.append(SensorFailure(index, kind, str(exc)))
    return sensors, failures


def resolve_pin_factory() -> tuple[Any, str | None]:
    """gpiozero's global pin factory, loading it if needed: (factory, None) or (None, reason)."""
    from gpiozero import Device

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one PinFactoryFallback per candidate: the reason says enough
        try:
            Device.ensure_pin_factory()
        except Exception as exc:
            return None, (
                f"no GPIO pin factory ({exc}); not a Raspberry Pi? "
                "Set GPIOZERO_PIN_FACTORY=mock to run without hardware"
            )
    return Device.pin_factory, None


def _build(label: str, pin_factory: Any, factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Construct a gpiozero device, turning any failure into a SensorError naming ``label``.

    ``pin_factory`` None means gpiozero's global ``Device.pin_factory``.
    """
    if pin_factory is not None:
        kwargs["pin_factory"] = pin_factory
    try:
        return factory(*args, **kwargs)
    except FileNotFoundError as exc:
        raise SensorError(f"{label}: {exc.filename or exc}: no such file (not a Raspberry Pi?)") from None
    except Exception as exc:
        raise SensorError(f"{label}: {type(exc).__name__}: {exc}") from None


def _read(label: str, getter: Callable[[], Any]) -> Any:
    try:
        return getter()
    except SensorError:
        raise
    except FileNotFoundError as exc:
        raise SensorError(f"{label}: {exc.filename or exc}: no such file") from None
    except Exception as exc:
        raise SensorError(f"{label}: {type(exc).__name__}: {exc}") from None


_quieted = False


def _quiet_gpiozero() -> None:
    """gpiozero warns that software timing is imprecise for every DistanceSensor: noise for us."""
    global _quieted
    if not _quieted:
        _quieted = True
        from gpiozero.exc import PWMSoftwareFallback

        warnings.filterwarnings("ignore", category=PWMSoftwareFallback)


__all__ = [
    "PINLESS",
    "Button",
    "CpuTemperature",
    "DigitalInput",
    "DiskUsage",
    "Distance",
    "Ds18b20",
    "EventCallback",
    "InputSensor",
    "Light",
    "LoadAverage",
    "Mcp3008Channel",
    "Reading",
    "Sensor",
    "SensorError",
    "SensorFailure",
    "build_sensor",
    "build_sensors",
    "now_ms",
    "read_ds18b20",
    "resolve_pin_factory",
]
