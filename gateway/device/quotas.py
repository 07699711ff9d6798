"""What one device may make the gateway hold and do, sans-I/O (docs/operations.md, "Quotas").

Two quotas live here, both per device and both without I/O: the caller passes
the clock in and stores what must be stored.

``NameQuota``: the device's distinct metric names (keys of sample values and of
event ``data``) and event names, each set capped. A frame that would add a name
beyond a cap is refused whole (``too_many_metrics``, ``too_many_event_names``);
frames whose names are all known cost one C-level superset test per sample.
The session machine checks a frame with ``new_metrics``/``new_event``, and only
once the frame is accepted (its seq too) records the new names with ``learn``;
the I/O layer must make them durable *before* it submits the frame, so that the
stored names always cover every stored frame, and call ``forget`` if it cannot.

``RateBucket``: a token bucket of samples per second (a readings frame costs its
samples, any other frame 1). The session machine ``charge``s every frame; the
I/O layer, before it reads the next frame, sleeps ``pause()`` seconds while the
bucket is in debt, so TCP flow control slows the device (back-pressure). Since
reading stops while in debt, a device never gets ahead of the rate by more than
one frame. The only refusal (``rate_limited``) is for a single frame that costs
more than the bucket holds: no pause could pay for it.

``DeviceQuotas`` bundles both for one device; the device server keeps one per
device and shares it between the device's connections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from iotgw_common.protocol import ErrorCode, ProtocolError
from iotgw_common.protocol.messages import Sample


class QuotaSettings(Protocol):
    """The settings the quotas read; ``gateway.config.DeviceSettings`` is one (defaults there)."""

    @property
    def max_metric_names(self) -> int:
        """Distinct metric names per device."""

    @property
    def max_event_names(self) -> int:
        """Distinct event names per device."""

    @property
    def readings_rate(self) -> float:
        """Samples per second per device, sustained."""

    @property
    def readings_burst(self) -> int:
        """Samples the bucket holds: the burst, and the most one frame may cost."""


class NameQuota:
    """The distinct metric and event names of one device, each set capped.

    ``metrics`` and ``events`` start with the names the store holds for the
    device (``gateway.store.names.load``) and must only grow through ``learn``.
    """

    __slots__ = ("events", "max_events", "max_metrics", "metrics")

    def __init__(
        self, max_metrics: int, max_events: int, metrics: Iterable[str] = (), events: Iterable[str] = ()
    ) -> None:
        self.max_metrics = max_metrics
        self.max_events = max_events
        self.metrics: set[str] = set(metrics)
        self.events: set[str] = set(events)

    def new_metrics(self, samples: Iterable[Sample], seq: int | None = None) -> set[str] | None:
        """The metric names of ``samples`` not known yet (None: all known); records nothing.

        Raises ``ProtocolError(too_many_metrics)`` when they would take the
        device past ``max_metrics``. Known names cost one set lookup per key,
        in C (``issuperset`` iterates the keys without building a set; measured
        faster than ``keys() <=`` or one chained iterator over the frame).
        """
        known = self.metrics
        for sample in samples:
            if not known.issuperset(sample.values):
                break
        else:
            return None
        new = {key for sample in samples for key in sample.values if key not in known}
        self._check_metrics(new, seq)
        return new

    def new_event(
        self, name: str, data: Iterable[str], seq: int | None = None
    ) -> tuple[set[str] | None, str | None]:
        """(new metric names among ``data``'s keys, ``name`` if it is a new event name); records nothing.

        Raises ``ProtocolError`` with ``too_many_event_names`` or ``too_many_metrics``.
        """
        new_name: str | None = None
        if name not in self.events:
            if len(self.events) >= self.max_events:
                raise ProtocolError(
                    ErrorCode.TOO_MANY_EVENT_NAMES,
                    f"event name {name!r} is new and the device already has {len(self.events)} event "
                    f"names, its quota ({self.max_events}); events with known names are still stored",
                    seq,
                )
            new_name = name
        known = self.metrics
        new: set[str] | None = None
        if not known.issuperset(data):
            new = {key for key in data if key not in known}
            self._check_metrics(new, seq)
        return new, new_name

    def learn(self, metrics: Iterable[str] | None = None, event: str | None = None) -> None:
        """Record names of an accepted frame (they count from now on)."""
        if metrics is not None:
            self.metrics.update(metrics)
        if event is not None:
            self.events.add(event)

    def forget(self, metrics: Iterable[str] | None = None, event: str | None = None) -> None:
        """Undo ``learn`` for names that could not be stored."""
        if metrics is not None:
            self.metrics.difference_update(metrics)
        if event is not None:
            self.events.discard(event)

    def _check_metrics(self, new: set[str], seq: int | None) -> None:
        if len(self.metrics) + len(new) > self.max_metrics:
            example = min(new)
            raise ProtocolError(
                ErrorCode.TOO_MANY_METRICS,
                f"{len(new)} new metric name(s) (such as {example!r}) would take the device past its "
                f"quota of {self.max_metrics} metric names ({len(self.metrics)} known); frames with "
                "known names are still stored",
                seq,
            )


class RateBucket:
    """A token bucket of samples: ``rate`` per second, holding at most ``burst``.

    ``charge`` only subtracts (no clock read per frame); the refill is counted
    when the reader asks for ``pause()`` because the bucket is in debt, as if
    every charge since the last refill came at its end, so the bucket never
    holds more than ``burst``. ``clock()`` returns seconds from a monotonic
    clock. Not thread-safe.
    """

    __slots__ = ("_base", "_clock", "_last", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float]) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._last = clock()
        self._base = float(burst)  # tokens at the last refill
        self.tokens = float(burst)
        """Samples the device may send now, as of the last refill; negative: in debt, pause."""

    def charge(self, cost: int, seq: int | None = None) -> None:
        """Take ``cost`` samples, going into debt if need be (the reader then pauses).

        Raises ``ProtocolError(rate_limited)``, taking nothing, when ``cost``
        exceeds ``burst``: the frame is refused, no pause could pay for it.
        """
        if cost > self.burst:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"the frame carries {cost} samples, more than this device's burst of {self.burst} at "
                f"{self.rate:g} samples/s; send smaller frames",
                seq,
            )
        self.tokens -= cost

    def pause(self) -> float:
        """Seconds the reader must wait before it reads the next frame (0: read now)."""
        if self.tokens >= 0:
            return 0.0
        self.refill()
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def refill(self) -> None:
        """Count the tokens earned since the last refill (at most up to ``burst``)."""
        now = self._clock()
        earned = min(float(self.burst), self._base + (now - self._last) * self.rate)
        self.tokens = earned - (self._base - self.tokens)
        self._base = self.tokens
        self._last = now


class DeviceQuotas:
    """One device's quotas: the rate bucket always, the name sets while a connection holds them.

    The device server keeps one per device for the life of the process (so a
    reconnect does not refill the bucket), counts the connections using it in
    ``holders`` and drops ``names`` when the last one ends (memory for
    connected devices only; they are loaded again from the store).
    """

    __slots__ = ("holders", "names", "rate")

    def __init__(self, rate: RateBucket, names: NameQuota | None = None) -> None:
        self.rate = rate
        self.names = names
        self.holders = 0


class QuotaBook:
    """Every device's ``DeviceQuotas``, for the device server; ``clock`` is monotonic seconds."""

    def __init__(self, settings: QuotaSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self._clock = clock
        self._devices: dict[int, DeviceQuotas] = {}

    def get(self, device_id: int) -> DeviceQuotas | None:
        return self._devices.get(device_id)

    def hold(
        self, device_id: int, load_names: Callable[[], tuple[Iterable[str], Iterable[str]]]
    ) -> DeviceQuotas:
        """The device's quotas for one more connection; ``load_names()`` -> (metrics, events) if none held them.

        Call ``release`` exactly once per ``hold`` when the connection ends.
        """
        s = self.settings
        quotas = self._devices.get(device_id)
        if quotas is None:
            bucket = RateBucket(s.readings_rate, s.readings_burst, clock=self._clock)
            quotas = self._devices[device_id] = DeviceQuotas(bucket)
        if quotas.names is None:
            metrics, events = load_names()
            quotas.names = NameQuota(s.max_metric_names, s.max_event_names, metrics, events)
        quotas.holders += 1
        return quotas

    def release(self, quotas: DeviceQuotas) -> None:
        """A connection that held ``quotas`` ended; the last one drops the names from memory."""
        quotas.holders -= 1
        if quotas.holders <= 0:
            quotas.holders = 0
            quotas.names = None


def fresh_quotas(settings: QuotaSettings, clock: Callable[[], float]) -> DeviceQuotas:
    """Quotas for a device with no stored names and a full bucket."""
    return DeviceQuotas(
        RateBucket(settings.readings_rate, settings.readings_burst, clock=clock),
        NameQuota(settings.max_metric_names, settings.max_event_names),
    )


QUOTA_CODES = frozenset({ErrorCode.TOO_MANY_METRICS, ErrorCode.TOO_MANY_EVENT_NAMES})
"""Refusals that neither count toward nor reset ``max_refused_in_row`` (docs/protocol.md, section 10)."""


__all__ = [
    "QUOTA_CODES",
    "DeviceQuotas",
    "NameQuota",
    "QuotaBook",
    "QuotaSettings",
    "RateBucket",
    "fresh_quotas",
]
