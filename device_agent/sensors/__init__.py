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

Modules, one per family of drivers: ``base`` (the :class:`Sensor` interface and what a
driver must do), ``system`` (CPU temperature, load, disk: no pins), ``gpio`` (MCP3008 on
SPI, HC-SR04 distance, LDR light), ``onewire`` (DS18B20), ``inputs`` (buttons and digital
inputs, as events), ``builder`` (config to drivers). Import the names from here.
"""

from __future__ import annotations

from device_agent.sensors.base import EventCallback, Reading, Sensor, SensorError
from device_agent.sensors.builder import (
    PINLESS,
    SensorFailure,
    build_sensor,
    build_sensors,
    resolve_pin_factory,
)
from device_agent.sensors.gpio import Distance, Light, Mcp3008Channel
from device_agent.sensors.inputs import Button, DigitalInput, InputSensor
from device_agent.sensors.onewire import Ds18b20, read_ds18b20
from device_agent.sensors.system import CpuTemperature, DiskUsage, LoadAverage

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
    "read_ds18b20",
    "resolve_pin_factory",
]
