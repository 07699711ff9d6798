"""Every Prometheus metric of the gateway, registered here and nowhere else.

:class:`GatewayMetrics` owns a private ``CollectorRegistry`` (one per API app,
so tests running several gateways in one process never clash). Two kinds:

* instruments updated as things happen: HTTP requests and their latency,
  command round trips (observed by the command service);
* a collector that reads the live state at scrape time: connections, ingest
  counters, open and finished commands, store size, and (:class:`Fleet`, read from the
  store on the read pool) each registered device's online state, last-seen time and
  drop counter, and each sink's backlog and dead letters (docs/api.md, "Metrics").

Labels never carry command ids or anything else a client chooses. The ``device`` label
is a registered device's name, set by an operator: one series per registered device, and
a removed device's series disappear at the next scrape. The ``sink`` label is one of the
gateway's sinks (``influx``, ``mqtt``), shown once the sink has run on the store. An
HTTP method outside :data:`HTTP_METHODS` is counted as ``other`` (:func:`method_label`), a
path no route matches as ``unmatched``, so no request can add a series. :meth:`GatewayMetrics.render`
formats the text on a worker thread, one scrape at a time, never on the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.store import delivery, registry
from gateway.store.readings import store_bytes

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The text exposition format that ``render`` produces."""
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods that get a label value of their own; any other is ``other``."""


def method_label(method: str) -> str:
    """The ``method`` label for a request: the method if it is a standard one, else ``other``."""
    return method if method in HTTP_METHODS else "other"


@dataclass(slots=True)
class LiveState:
    """What the scrape-time collector reads; each callable is cheap and runs on the scraping thread
    (a worker thread, while the event loop goes on): it must only read counters or copy small dicts."""

    connections: Callable[[], int]
    refused_handshakes: Callable[[], int]
    commits: Callable[[], int]
    committed_samples: Callable[[], int]
    pending_samples: Callable[[], int]
    failed_commits: Callable[[], int]
    open_commands: Callable[[], dict[str, int]]
    finished_commands: Callable[[], dict[str, int]]
    store_path: Path
    online_ids: Callable[[], Collection[int]] = frozenset
    """Ids of the devices connected now; called on the event loop, so it may copy a live dict."""
    loop_figures: Callable[[], LoopFigures] | None = None
    """The event loop's background lane and pacing (``iotgw_common/background_lane.py``); None: not shown."""
    fleet: Callable[[], Awaitable[Fleet]] | None = None
    """Reads the :class:`Fleet` off the event loop (``reads.run(...)`` with :func:`read_fleet`);
    None: no per-device or per-sink series (a test's bare state)."""


@dataclass(slots=True, frozen=True)
class LoopFigures:
    """What ``/metrics`` shows of the event loop's lanes (docs/performance.md, "Connection storms")."""

    background_callbacks: int
    """Callbacks run in the background lane since start (the goodbyes of connections going away)."""
    background_queued: int
    """Callbacks waiting in the background lane now."""
    carried_sockets: int
    """Ready sockets carried to later loop turns now (a burst larger than one turn serves)."""


@dataclass(slots=True, frozen=True)
class DeviceFigures:
    """What ``/metrics`` shows of one registered device."""

    id: int
    name: str
    last_seen_ms: int | None
    dropped: int


@dataclass(slots=True, frozen=True)
class Fleet:
    """The store-derived part of a scrape: registered devices and sink backlogs."""

    devices: tuple[DeviceFigures, ...] = ()
    sinks: tuple[delivery.Status, ...] = ()
    online: frozenset[int] = field(default_factory=frozenset)
    """Ids of the devices connected at scrape time (filled in by :meth:`GatewayMetrics.render`)."""


def read_fleet(conn: sqlite3.Connection, sinks: Collection[str]) -> Fleet:
    """The registered devices and the named sinks' status, for a scrape; run it on a read connection
    (a worker thread), never on the event loop. Sinks that never ran on this store are left out."""
    devices = tuple(
        DeviceFigures(d.id, d.name, d.last_seen_ms, d.dropped) for d in registry.list_devices(conn)
    )
    statuses = (delivery.read_status(conn, name) for name in sinks)
    return Fleet(devices=devices, sinks=tuple(s for s in statuses if s.configured))


class IngestRate:
    """Samples committed per second over the last ``window`` seconds; call ``sample()`` about once a second."""

    def __init__(self, counter: Callable[[], int], window: float = 10.0) -> None:
        self._counter = counter
        self._window = window
        self._points: deque[tuple[float, int]] = deque()

    def sample(self) -> None:
        now = time.monotonic()
        self._points.append((now, self._counter()))
        while len(self._points) > 2 and now - self._points[0][0] > self._window:
            self._points.popleft()

    def per_second(self) -> float:
        if len(self._points) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self._points[0], self._points[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


class _LiveCollector(Collector):
    def __init__(self, state: LiveState, rate: IngestRate) -> None:
        self._state = state
        self._rate = rate
        self.fleet: Fleet | None = None
        """Set by ``GatewayMetrics.render`` before each scrape (renders are serialised)."""

    def collect(self) -> Iterator[Metric]:
        yield from self._live()
        if self.fleet is not None:
            yield from _devices(self.fleet)
            yield from _sinks(self.fleet, time.time())

    def _live(self) -> Iterator[Metric]:
        s = self._state
        yield GaugeMetricFamily("iotgw_device_connections", "Devices connected now", value=s.connections())
        yield CounterMetricFamily(
            "iotgw_refused_handshakes",
            "Device handshakes refused (bad path or token)",
            value=s.refused_handshakes(),
        )
        yield CounterMetricFamily("iotgw_store_commits", "Group commits of the store", value=s.commits())
        yield CounterMetricFamily(
            "iotgw_store_committed_samples", "Samples and events committed", value=s.committed_samples()
        )
        yield CounterMetricFamily(
            "iotgw_store_failed_commits", "Commits that failed", value=s.failed_commits()
        )
        yield GaugeMetricFamily(
            "iotgw_store_pending_samples", "Samples waiting for the next commit", value=s.pending_samples()
        )
        yield GaugeMetricFamily(
            "iotgw_ingest_samples_per_second",
            "Samples committed per second (10 s window)",
            value=self._rate.per_second(),
        )
        yield GaugeMetricFamily(
            "iotgw_store_bytes", "Store size on disk, WAL included", value=store_bytes(s.store_path)
        )
        open_ = GaugeMetricFamily(
            "iotgw_commands_open", "Commands queued or sent, not yet final", labels=["state"]
        )
        for state, count in sorted(s.open_commands().items()):
            open_.add_metric([state], count)
        yield open_
        finished = CounterMetricFamily(
            "iotgw_commands_finished", "Commands that reached a final state since start", labels=["state"]
        )
        for state, count in sorted(s.finished_commands().items()):
            finished.add_metric([state], count)
        yield finished
        if s.loop_figures is not None:
            loop = s.loop_figures()
            yield CounterMetricFamily(
                "iotgw_loop_background_callbacks",
                "Event-loop callbacks run in the background lane (connections going away)",
                value=loop.background_callbacks,
            )
            yield GaugeMetricFamily(
                "iotgw_loop_background_queued",
                "Callbacks waiting in the background lane",
                value=loop.background_queued,
            )
            yield GaugeMetricFamily(
                "iotgw_loop_carried_sockets",
                "Ready sockets carried to later loop turns (a burst larger than a turn)",
                value=loop.carried_sockets,
            )


def _devices(fleet: Fleet) -> Iterator[Metric]:
    online = GaugeMetricFamily(
        "iotgw_device_online", "1 if the device is connected now, else 0", labels=["device"]
    )
    seen = GaugeMetricFamily(
        "iotgw_device_last_seen_seconds",
        "Unix time of the device's last committed frame or hello (absent if it never connected)",
        labels=["device"],
    )
    dropped = GaugeMetricFamily(
        "iotgw_device_dropped_samples",
        "Samples the device reports it dropped (its own counter, from hello/status; may reset)",
        labels=["device"],
    )
    for d in sorted(fleet.devices, key=lambda d: d.name):
        online.add_metric([d.name], 1 if d.id in fleet.online else 0)
        if d.last_seen_ms is not None:
            seen.add_metric([d.name], d.last_seen_ms / 1000)
        dropped.add_metric([d.name], d.dropped)
    yield from (online, seen, dropped)


def _sinks(fleet: Fleet, now_s: float) -> Iterator[Metric]:
    pending = GaugeMetricFamily(
        "iotgw_sink_pending_readings", "Readings stored but not yet delivered to the sink", labels=["sink"]
    )
    dead = GaugeMetricFamily(
        "iotgw_sink_dead_letters",
        "Batches the sink gave up on (dead letters not being retried)",
        labels=["sink"],
    )
    age = GaugeMetricFamily(
        "iotgw_sink_oldest_pending_age_seconds",
        "Age of the oldest reading not yet delivered (by its timestamp); 0 when nothing waits",
        labels=["sink"],
    )
    for s in fleet.sinks:
        pending.add_metric([s.name], s.pending_readings)
        dead.add_metric([s.name], s.dead_letters)
        oldest = s.oldest_pending_ts
        age.add_metric([s.name], 0.0 if oldest is None else max(0.0, now_s - oldest / 1000))
    yield from (pending, dead, age)


class GatewayMetrics:
    """The registry of one gateway's API and the instruments on it."""

    def __init__(self, state: LiveState, rate: IngestRate) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "iotgw_http_requests", "HTTP API requests", ["method", "route", "status"], registry=self.registry
        )
        self.http_seconds = Histogram(
            "iotgw_http_request_seconds", "HTTP API request duration", ["route"], registry=self.registry
        )
        self.command_fast_path = Counter(
            "iotgw_http_command_fast_path",
            "Command requests answered by the command fast path; the others of the route went through FastAPI",
            registry=self.registry,
        )
        self.command_round_trip = Histogram(
            "iotgw_command_round_trip_seconds",
            "From a command's sent to its result arriving",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.command_phases = Histogram(
            "iotgw_command_phase_seconds",
            "Where a command's time goes: to_sent, sent_to_result, result_to_stored",
            ["phase"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self._state = state
        self._collector = _LiveCollector(state, rate)
        self.registry.register(self._collector)
        self._rendering: asyncio.Lock | None = None

    def render_now(self) -> bytes:
        """The text exposition format of every metric, formatted in the calling thread."""
        return generate_latest(self.registry)

    async def render(self) -> bytes:
        """:meth:`render_now` on a worker thread, one scrape at a time; call from the event loop.

        The store-derived figures (:class:`Fleet`) are read first through ``LiveState.fleet``
        (the read pool), and the set of connected devices is copied here on the loop."""
        if self._rendering is None:
            self._rendering = asyncio.Lock()
        async with self._rendering:
            if self._state.fleet is not None:
                fleet = await self._state.fleet()
                online = frozenset(self._state.online_ids())
                self._collector.fleet = Fleet(devices=fleet.devices, sinks=fleet.sinks, online=online)
            return await asyncio.to_thread(self.render_now)


__all__ = [
    "CONTENT_TYPE",
    "HTTP_METHODS",
    "DeviceFigures",
    "Fleet",
    "GatewayMetrics",
    "IngestRate",
    "LiveState",
    "method_label",
    "read_fleet",
]
