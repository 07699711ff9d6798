"""Simulated hardware for gpiozero's MockFactory: readings that change plausibly, anywhere.

Honoured only when ``[simulation] enabled = true`` *and* the pin factory is a
``MockFactory`` (``GPIOZERO_PIN_FACTORY=mock``); a real Pi is never simulated.

What it emulates, per configured sensor:

* ``mcp3008``: a ``MockSPIDevice`` subclass speaking the MCP3008 protocol on the
  software SPI pins gpiozero's mock factory uses (SCLK 11, MOSI 10, MISO 9,
  CE0 8 / CE1 7), each channel's voltage drifting;
* ``light``: a ``MockChargingPin`` whose charge time drifts (shorter = brighter);
* ``distance``: a ``MockTriggerPin`` whose echo pulse length drifts;
* ``button`` / ``digital_input``: occasional presses / activations, driven with
  ``pin.drive_high()`` / ``drive_low()`` from the simulation thread, so gpiozero
  fires its callbacks on a foreign thread exactly as on a Pi;
* ``cpu_temperature``, ``load_average``, ``ds18b20``: files in a temporary
  directory standing in for ``/sys/class/thermal``, ``/proc/loadavg`` and
  ``/sys/bus/w1/devices``, rewritten as their values drift.

Use: ``sim = Simulation(config.sensors, factory, ...)`` BEFORE building any
gpiozero device (pins must be created with the right mock class first), build
the sensors from ``sim.sensors`` (configs pointing at the simulated files),
``sim.start()`` for a background thread that calls ``step()``, ``sim.close()``.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from gpiozero.pins.mock import MockChargingPin, MockFactory, MockSPIDevice, MockTriggerPin

from device_agent.hardware_config import (
    ButtonSensor,
    CpuTemperatureSensor,
    DigitalInputSensor,
    DistanceSensorConfig,
    Ds18b20Sensor,
    LightSensorConfig,
    LoadAverageSensor,
    Mcp3008Sensor,
    SensorConfig,
)
from device_agent.sensors import resolve_pin_factory

log = logging.getLogger(__name__)

SPEED_OF_SOUND = 343.26  # m/s, the value gpiozero's DistanceSensor uses
SPI_SELECT_PINS = {0: 8, 1: 7}  # CE0, CE1 (BCM numbers)
SPI_CLOCK, SPI_MOSI, SPI_MISO = 11, 10, 9


def mock_factory_in_use(pin_factory: Any = None) -> MockFactory | None:
    """The MockFactory in use (``pin_factory`` or gpiozero's global one), else None.

    Resolving the global factory may construct it (reading GPIOZERO_PIN_FACTORY);
    a machine with no usable factory yields None instead of an exception.
    """
    if pin_factory is None:
        pin_factory, _ = resolve_pin_factory()
    return pin_factory if isinstance(pin_factory, MockFactory) else None


class Drift:
    """A bounded random walk with a pull back towards the middle of its range."""

    def __init__(
        self, rng: random.Random, low: float, high: float, *, step: float, start: float | None = None
    ):
        self._rng = rng
        self.low = low
        self.high = high
        self.step_size = step
        self.value = (low + high) / 2 if start is None else start

    def step(self) -> float:
        middle = (self.low + self.high) / 2
        self.value += self._rng.gauss(0.0, self.step_size) + (middle - self.value) * 0.02
        self.value = min(self.high, max(self.low, self.value))
        return self.value


class MockMCP3008(MockSPIDevice):  # type: ignore[misc]
    """The slave side of an MCP3008 on gpiozero's mock software SPI.

    Follows the MCP3008 datasheet, section 5 (start bit, SGL/DIFF bit, three
    channel bits, then a null bit and 10 data bits, MSB first), as gpiozero's
    own test suite does. Set ``voltages[channel]`` (0..``vref`` volts).
    """

    rx_buf: list[int]
    tx_buf: list[int]

    def __init__(self, select_pin: int, *, pin_factory: MockFactory, vref: float = 3.3) -> None:
        super().__init__(SPI_CLOCK, SPI_MOSI, SPI_MISO, select_pin, pin_factory=pin_factory)
        self.vref = vref
        self.voltages = [0.0] * 8
        self.state = "idle"

    def on_start(self) -> None:
        super().on_start()
        self.state = "idle"

    def on_bit(self) -> None:
        if self.state == "idle":
            if self.rx_buf[-1]:  # start bit
                self.state = "mode"
                self.rx_buf = []
        elif self.state == "mode":
            self.state = "single" if self.rx_buf[-1] else "diff"
            self.rx_buf = []
        elif self.state in ("single", "diff"):
            if len(self.rx_buf) == 3:
                channel = self.rx_word()
                volts = self.voltages[channel]
                if self.state == "diff":
                    volts -= self.voltages[channel ^ 1]
                code = round(min(self.vref, max(0.0, volts)) / self.vref * 1023)
                self.tx_word(code, 12)  # sample period bit + null bit + 10 data bits
                self.state = "result"
        elif self.state == "result" and not self.tx_buf:
            self.state = "idle"
            self.rx_buf = []


class _Input:
    """A simulated button or digital input: ``active`` until ``release_at``."""

    def __init__(self, pin: Any, active_high: bool, hold: tuple[float, float]) -> None:
        self.pin = pin
        self.active_high = active_high
        self.hold = hold
        self.release_at: float | None = None

    def drive(self, active: bool) -> None:
        if self.pin.function != "input":
            return
        if active == self.active_high:
            self.pin.drive_high()
        else:
            self.pin.drive_low()


class Simulation:
    """Simulated sensors for ``configs`` on ``factory``; see the module docstring for use.

    ``seed`` makes runs reproducible; ``step`` is the tick of the background
    thread in seconds; ``event_interval`` the mean seconds between input events.
    ``identity`` (the device's name) fixes the simulated DS18B20 serials: the same on every
    run of the same device, so its ``temp_28-*`` metrics do not multiply across restarts.
    """

    def __init__(
        self,
        configs: Sequence[SensorConfig],
        factory: MockFactory,
        *,
        seed: int | None = None,
        step: float = 0.5,
        event_interval: float = 30.0,
        identity: str = "",
    ) -> None:
        self.factory = factory
        self.identity = identity
        self.rng = random.Random(seed)
        self.step_seconds = step
        self.event_interval = event_interval
        self.dir = Path(tempfile.mkdtemp(prefix="iotgw-sim-"))
        self._files: list[tuple[Path, Drift, str]] = []  # path, value, kind
        self._adcs: dict[int, MockMCP3008] = {}
        self._adc_drifts: list[tuple[MockMCP3008, int, Drift]] = []
        self._charging: list[tuple[Any, Drift, float]] = []  # pin, light level 0..1, charge time limit
        self._echoes: list[tuple[Any, Drift]] = []  # trigger pin, distance in m
        self._inputs: list[_Input] = []
        self._w1_dirs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.sensors: list[SensorConfig] = [self._prepare(config) for config in configs]
        self.step()

    # -- setup ---------------------------------------------------------------------------

    def ds18b20_serials(self, bus: int, count: int) -> list[str]:
        """``count`` serials (``28-`` + 12 hex digits) for the ``bus``-th ds18b20 entry, derived
        from ``identity``: stable across runs, different between devices."""
        digest = (hashlib.sha256(f"{self.identity}|w1|{bus}|{n}".encode()).hexdigest() for n in range(count))
        return [f"28-{d[:12]}" for d in digest]

    def _prepare(self, config: SensorConfig) -> SensorConfig:
        rng = self.rng
        if isinstance(config, CpuTemperatureSensor):
            path = self.dir / "thermal_zone0" / "temp"
            self._add_file(path, Drift(rng, 38.0, 72.0, step=0.8, start=rng.uniform(42, 55)), "millis")
            return msgspec.structs.replace(config, sensor_file=str(path))
        if isinstance(config, LoadAverageSensor):
            path = self.dir / "loadavg"
            self._add_file(path, Drift(rng, 0.05, 3.5, step=0.1, start=rng.uniform(0.2, 1.0)), "loadavg")
            return msgspec.structs.replace(config, load_average_file=str(path))
        if isinstance(config, Ds18b20Sensor):
            # one directory per configured entry, so that a discovering entry finds only its own
            self._w1_dirs += 1
            base = self.dir / f"w1_devices_{self._w1_dirs}"
            serials = [config.serial] if config.serial else self.ds18b20_serials(self._w1_dirs, 2)
            for serial in serials:
                drift = Drift(rng, 5.0, 35.0, step=0.15, start=rng.uniform(17, 24))
                self._add_file(base / serial / "w1_slave", drift, "w1_slave")
            return msgspec.structs.replace(config, base_dir=str(base))
        if isinstance(config, Mcp3008Sensor):
            adc = self._adcs.get(config.spi_device)
            if adc is None:
                adc = MockMCP3008(SPI_SELECT_PINS[config.spi_device], pin_factory=self.factory)
                self._adcs[config.spi_device] = adc
            self._adc_drifts.append(
                (adc, config.channel, Drift(rng, 0.3, 3.0, step=0.05, start=rng.uniform(0.8, 2.5)))
            )
        elif isinstance(config, LightSensorConfig):
            pin = self.factory.pin(config.pin, pin_class=MockChargingPin)
            self._charging.append((pin, Drift(rng, 0.1, 0.9, step=0.03), config.charge_time_limit))
        elif isinstance(config, DistanceSensorConfig):
            echo = self.factory.pin(config.echo_pin)
            trigger = self.factory.pin(config.trigger_pin, pin_class=MockTriggerPin, echo_pin=echo)
            top = 0.9 * config.max_distance
            self._echoes.append(
                (trigger, Drift(rng, 0.05, top, step=0.02 * top, start=rng.uniform(0.2, top)))
            )
        elif isinstance(config, ButtonSensor):
            pin = self.factory.pin(config.pin)
            self._inputs.append(_Input(pin, active_high=not config.pull_up, hold=(0.1, 0.8)))
        elif isinstance(config, DigitalInputSensor):
            pin = self.factory.pin(config.pin)
            self._inputs.append(_Input(pin, active_high=not config.pull_up, hold=(1.0, 6.0)))
        return config

    def _add_file(self, path: Path, drift: Drift, kind: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._files.append((path, drift, kind))

    # -- running ---------------------------------------------------------------------------

    def step(self) -> None:
        """Advance every simulated value by one tick; may press or release inputs."""
        with self._lock:
            for path, drift, kind in self._files:
                _write_atomically(path, _render(kind, drift.step()))
            for adc, channel, drift in self._adc_drifts:
                adc.voltages[channel] = drift.step()
            for pin, light, limit in self._charging:
                # brighter light: the capacitor charges sooner
                pin.charge_time = (1.0 - light.step()) * limit
            for trigger, distance in self._echoes:
                trigger.echo_time = 2.0 * distance.step() / SPEED_OF_SOUND
            now = time.monotonic()
            chance = self.step_seconds / self.event_interval
            for item in self._inputs:
                if item.release_at is not None:
                    if now >= item.release_at:
                        item.release_at = None
                        item.drive(False)
                elif self.rng.random() < chance:
                    item.release_at = now + self.rng.uniform(*item.hold)
                    item.drive(True)

    def start(self) -> None:
        """Call :meth:`step` every ``step`` seconds on a daemon thread until :meth:`close`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="iotgw-simulation", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.step_seconds):
            try:
                self.step()
            except Exception:  # a closed pin while shutting down; never kill the agent
                log.debug("simulation step failed", exc_info=True)

    def stop(self) -> None:
        """Stop the background thread (no more pin changes); safe twice. Call before closing sensors."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Stop the thread, detach the mock SPI devices, delete the files; safe twice."""
        self.stop()
        for adc in self._adcs.values():
            adc.close()
        self._adcs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _render(kind: str, value: float) -> str:
    if kind == "millis":
        return f"{round(value * 1000)}\n"
    if kind == "loadavg":
        return f"{value:.2f} {value * 0.9:.2f} {value * 0.8:.2f} 1/123 4567\n"
    # w1_slave: two lines, CRC verdict then the temperature in millidegrees
    raw = "4b 01 4b 46 7f ff 05 10 d8"
    return f"{raw} : crc=d8 YES\n{raw} t={round(value * 1000)}\n"


def _write_atomically(path: Path, text: str) -> None:
    """Readers never see a half-written file, as with the kernel's sysfs."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="ascii")
    tmp.replace(path)


__all__ = ["Drift", "MockMCP3008", "Simulation", "mock_factory_in_use"]
