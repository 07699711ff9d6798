"""What every sensor driver is: the :class:`Sensor` interface, its error, and two guards.

A driver subclasses :class:`Sensor` (or :class:`GpiozeroSensor` when it wraps one
gpiozero device) and must:

* set :attr:`Sensor.polled` false if it reports changes as events instead of being read;
* return from :meth:`~Sensor.declare` the metrics (or event names) it reports, for ``hello``;
* make :meth:`~Sensor.read` raise :class:`SensorError`, never anything else, when its source
  fails: build the gpiozero device with :func:`gpiozero_device` and read it through
  :func:`guarded_read`, which turn any failure into a SensorError naming the sensor.

Nothing here imports gpiozero: a driver imports its gpiozero class when it is built.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

from iotgw_common.protocol import SensorInfo
from iotgw_common.protocol.messages import Value

Reading = dict[str, Value]
EventCallback = Callable[[str, Reading, int], None]
"""Called on the event loop with (event name, data, ts in ms) for each input change."""


class SensorError(RuntimeError):
    """A sensor could not be built or read (missing file, no echo, bad wiring)."""


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


class GpiozeroSensor(Sensor):
    """A sensor wrapping one gpiozero device, which :meth:`close` closes."""

    def __init__(self, label: str, device: Any) -> None:
        super().__init__(label)
        self.device = device

    def _close(self) -> None:
        self.device.close()


def gpiozero_device(
    label: str, pin_factory: Any, factory: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """Construct a gpiozero device, turning any failure into a SensorError naming ``label``.

    ``pin_factory`` None means gpiozero's global ``Device.pin_factory``.
    """
    if pin_factory is not None:
        kwargs["pin_factory"] = pin_factory
    try:
        return factory(*args, **kwargs)
    except FileNotFoundError as exc:
        raise SensorError(f"{label}: {exc.filename or exc}: no such file (not a Raspberry Pi?)") from None
    except Exception as exc:  # gpiozero raises many types (pin in use, bad SPI, ...): all mean "cannot build"
        raise SensorError(f"{label}: {type(exc).__name__}: {exc}") from None


def guarded_read(label: str, getter: Callable[[], Any]) -> Any:
    """``getter()``, with any failure turned into a SensorError naming ``label``."""
    try:
        return getter()
    except SensorError:
        raise
    except FileNotFoundError as exc:
        raise SensorError(f"{label}: {exc.filename or exc}: no such file") from None
    except Exception as exc:  # a read may fail in any driver-specific way: the sampler needs one type
        raise SensorError(f"{label}: {type(exc).__name__}: {exc}") from None


__all__ = [
    "EventCallback",
    "GpiozeroSensor",
    "Reading",
    "Sensor",
    "SensorError",
    "gpiozero_device",
    "guarded_read",
]
