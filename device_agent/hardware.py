"""Everything the agent reads from: the pin factory, the optional simulation, the sensors.

:func:`open_hardware` is the one place that decides whether to simulate and
builds the sensors in the right order (simulated pins first); the agent and
``iotgw-agent check`` both use it. A sensor that cannot be built is reported in
:attr:`Hardware.failures` and left out; nothing here raises for one bad sensor.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from device_agent.config import AgentConfig
from device_agent.sensors import InputSensor, Sensor, SensorFailure, build_sensors
from device_agent.simulation import Simulation, mock_factory_in_use

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Hardware:
    """Built sensors (and failures) plus the simulation driving them, if any. Close it."""

    sensors: list[Sensor]
    failures: list[SensorFailure]
    pin_factory: Any
    simulation: Simulation | None = None

    @property
    def polled(self) -> list[Sensor]:
        """Sensors read by the sampling loop."""
        return [sensor for sensor in self.sensors if sensor.polled]

    @property
    def inputs(self) -> list[InputSensor]:
        """Sensors reported as events."""
        return [sensor for sensor in self.sensors if isinstance(sensor, InputSensor)]

    def describe_factory(self) -> str:
        """Name of the pin factory class, for hello.info and logs."""
        factory = self.pin_factory
        if factory is None:
            from gpiozero import Device

            factory = Device.pin_factory
        return type(factory).__name__ if factory is not None else "none"

    def close(self) -> None:
        """Stop the simulation's thread, close every sensor (each stops its own reader thread
        first), then close the simulation; safe twice."""
        if self.simulation is not None:
            self.simulation.stop()
        for sensor in self.sensors:
            try:
                sensor.close()
            except Exception:  # closing must go on for the others
                log.warning("closing %s failed", sensor.label, exc_info=True)
        if self.simulation is not None:
            self.simulation.close()


def open_hardware(config: AgentConfig, *, pin_factory: Any = None) -> Hardware:
    """Build the configured sensors, simulated when the config and the pin factory allow it.

    ``pin_factory`` None uses gpiozero's global factory (``GPIOZERO_PIN_FACTORY``).
    When simulating on the global mock factory, a private ``MockFactory`` is
    created, so that several simulated agents can run in one process. Failures
    are logged (one warning per sensor) and returned in ``Hardware.failures``.
    """
    configs = list(config.sensors)
    simulation: Simulation | None = None
    if config.simulation.enabled:
        mock = mock_factory_in_use(pin_factory)
        if mock is None:
            log.warning(
                "[simulation] enabled = true is ignored: the pin factory is not gpiozero's mock "
                "(set GPIOZERO_PIN_FACTORY=mock to simulate)"
            )
        else:
            if pin_factory is None:
                from gpiozero.pins.mock import MockFactory

                pin_factory = MockFactory()
            sim = config.simulation
            simulation = Simulation(
                configs,
                pin_factory,
                seed=sim.seed,
                step=sim.step,
                event_interval=sim.event_interval,
                identity=config.gateway.device or "",
            )
            configs = simulation.sensors
            log.info(
                "simulating %d sensors on gpiozero's mock pins (files in %s)", len(configs), simulation.dir
            )
    try:
        sensors, failures = build_sensors(configs, pin_factory)
    except BaseException:
        if simulation is not None:
            simulation.close()
        raise
    for failure in failures:
        log.warning("sensor sensors[%d] (%s) skipped: %s", failure.position, failure.type, failure.error)
    return Hardware(sensors, failures, pin_factory, simulation)


__all__ = ["Hardware", "open_hardware"]
