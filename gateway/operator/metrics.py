"""Every Prometheus metric of the gateway, registered here and nowhere else.

:class:`GatewayMetrics` owns a private ``CollectorRegistry`` (one per API app,
so tests running several gateways in one process never clash). Two kinds:

* instruments updated as things happen: HTTP requests and their latency,
  command round trips (observed by the command service);
* a collector that reads the live state at scrape time: connections, ingest
  counters, open and finished commands, store size.

Labels never carry device names, command ids, or anything else a client chooses: an
HTTP method outside :data:`HTTP_METHODS` is counted as ``other`` (:func:`method_label`), a
path no route matches as ``unmatched``, so no request can add a series. :meth:`GatewayMetrics.render`
formats the text on a worker thread, one scrape at a time, never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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

    def collect(self) -> Iterator[Metric]:
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
        self.command_round_trip = Histogram(
            "iotgw_command_round_trip_seconds",
            "From a command's sent to its result arriving",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(state, rate))
        self._rendering: asyncio.Lock | None = None

    def render_now(self) -> bytes:
        """The text exposition format of every metric, formatted in the calling thread."""
        return generate_latest(self.registry)

    async def render(self) -> bytes:
        """:meth:`render_now` on a worker thread, one scrape at a time; call from the event loop."""
        if self._rendering is None:
            self._rendering = asyncio.Lock()
        async with self._rendering:
            return await asyncio.to_thread(self.render_now)


__all__ = ["CONTENT_TYPE", "HTTP_METHODS", "GatewayMetrics", "IngestRate", "LiveState", "method_label"]
