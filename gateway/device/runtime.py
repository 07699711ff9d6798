"""Process-wide runtime policy of a gateway that serves: the garbage collector and the GIL.

**The GIL switch interval** stays CPython's (5 ms) unless ``IOTGW_SWITCH_INTERVAL_S`` sets it:
the group-commit writer releases the GIL inside SQLite for each statement of a commit and
waits up to the interval to take it back while the event loop is busy. Earlier A/B runs showed
no throughput change at 0.5-1 ms (docs/performance.md, "What is left"); the latency effect was
not separated from the shared machine's noise, so the default is unchanged.

**The garbage collector.**

CPython's cyclic collector walks every tracked object of the generations it collects. A full
collection with 10,000 device connections in the heap (each a ``websockets`` connection, its
tasks and buffers, the session) took 0.3-0.6 s of the event loop, and one fell in most 30 s
windows: the ack p99 of 10,000 devices sending one frame every 10 s was 474 ms against a p50 of
4 ms (docs/performance.md). Young collections are not cheap either: every frame a device sends
leaves ~15 tracked objects alive until its next frame (the decoded message, the websocket frame,
the coroutines and future of the pending ``recv``), so with 10,000 devices at one frame every
10 s the young generations held 150,000-200,000 live objects and a collection of them took
0.1-0.6 s. Meanwhile the serving path makes almost no cyclic garbage (a census of what the
young collections freed: nothing from devices; the only source was Starlette's
``BaseHTTPMiddleware``, replaced, see ``gateway/operator/api/request_metrics.py``). So:

- after start-up everything alive is moved out of the collector's sight (``gc.freeze()``), and
  again every ``freeze_every_s`` (1 s): freezing is O(1) (a list splice), so the collections the
  allocator still triggers only ever see objects younger than a second;
- generation 0 is collected every ``threshold0`` net allocations (20,000) instead of 700:
  cyclic garbage made and dropped within a second is still found there;
- frozen objects that become garbage in a cycle are reclaimed by one full collection (unfreeze,
  collect, freeze again), logged with its reason, duration and what it freed: every
  ``full_every_s`` (an hour), or sooner when the process's peak RSS grew by more than
  ``rss_growth`` times plus ``rss_slack_kb`` since the last one (a factor that doubles, up to 4,
  while full collections find next to no garbage). The memory bound is what makes
  freezing without collecting safe whatever makes garbage. Connections opened since the last
  full collection are live memory, not garbage: each may add ``connection_kb`` (32 KB; an idle
  one holds ~23 KB) to the peak without triggering one, counted at the most that were open at
  once (the peak RSS is a high-water mark too). A fleet connecting (10,000 devices:
  56 -> 277 MiB) used to trigger one in the middle of its storm, a 0.25-0.35 s stall for every
  device already connected (docs/performance.md, "Connection storms"); steady serving none. The
  cycles a fleet leaves behind when it disconnects (~7 objects a connection) wait, frozen, for
  the hourly collection or the next growth past the bound.

Reference counting frees frozen objects as usual; only cycles wait for a full collection.
Process-wide, so applied by the process that serves (``Gateway.run_until_signalled``), not by
tests that run a gateway inside their own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)


class StallWatch:
    """Names the code the event loop was running when it stalled.

    A daemon thread looks every ``every_s`` at the lag probe's last tick; when the loop has not
    ticked for ``threshold_s``, it samples the loop thread's Python stack (innermost frames,
    ``module:function``) and counts it. A collection by the garbage collector holds the
    interpreter until it ends, so its stalls show up as samples taken just after a ``gc``
    callback (labelled ``gc``). ``tick()`` must be called by the lag probe on the loop thread;
    ``report()`` gives the most frequent stacks; a stall of ``log_over_s`` or more is logged as a
    warning with its most frequent stack when it ends. Costs one short wake-up every ``every_s``.
    """

    MAX_STACKS = 1000
    """Distinct stacks kept for ``report()`` over a gateway's life (each stall's own are logged)."""

    def __init__(self, *, threshold_s: float = 0.1, every_s: float = 0.025, depth: int = 4,
                 log_over_s: float = 0.25) -> None:  # fmt: skip
        self.threshold_s = threshold_s
        self.log_over_s = log_over_s
        self.longest = 0.0
        self.every_s = every_s
        self.depth = depth
        self.samples: Counter[str] = Counter()
        self.stalls = 0
        self.last_tick = time.monotonic()
        self.gc_ended = 0.0
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-stall-watch", daemon=True)

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self.last_tick = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def _stack(self, frame: FrameType | None) -> str:
        names: list[str] = []
        while frame is not None and len(names) < self.depth:
            code = frame.f_code
            module = frame.f_globals.get("__name__", "?")
            names.append(f"{module}:{code.co_name}")
            frame = frame.f_back
        return " < ".join(names) or "?"

    def _run(self) -> None:
        seen_tick = -1.0
        current: Counter[str] = Counter()
        while not self._stop.wait(self.every_s):
            now = time.monotonic()
            tick = self.last_tick
            if now - tick < self.threshold_s:
                if current:
                    self._ended(seen_tick, current)
                    current = Counter()
                continue
            if tick != seen_tick:
                if current:
                    self._ended(seen_tick, current)
                    current = Counter()
                seen_tick = tick
                self.stalls += 1
            frame = sys._current_frames().get(self._loop_thread)
            where = self._stack(frame)
            if time.monotonic() - self.gc_ended < 0.01:
                where = "gc, then " + where
            if where in self.samples or len(self.samples) < self.MAX_STACKS:
                self.samples[where] += 1
            current[where] += 1

    def _ended(self, since: float, samples: Counter[str]) -> None:
        took = self.last_tick - since
        self.longest = max(self.longest, took)
        if took >= self.log_over_s:
            where, n = samples.most_common(1)[0]
            log.warning("event loop stalled %.0f ms (most often in %s, %d of %d samples)", took * 1000, where, n,
                        sum(samples.values()))  # fmt: skip

    def report(self, top: int = 5) -> str:
        total = sum(self.samples.values())
        if not total:
            return f"{self.stalls} stalls"
        lines = [f"{n} x {where}" for where, n in self.samples.most_common(top)]
        return f"{self.stalls} stalls, {total} samples; " + " | ".join(lines)


class RuntimePolicy:
    """``start()`` on the event loop after start-up, ``await stop()`` at shutdown."""

    def __init__(self, *, freeze_every_s: float = 1.0, full_every_s: float = 3600.0, rss_growth: float = 1.5,
                 rss_slack_kb: int = 32 * 1024, peak_rss_kb: Callable[[], int] | None = None,
                 threshold0: int | None = 20_000, threshold1: int | None = None, switch_interval_s: float | None = None, freeze: bool = True,
                 connections: Callable[[], int] | None = None, connection_kb: int = 32) -> None:  # fmt: skip
        self.switch_interval_s = switch_interval_s
        self.freeze = freeze
        self._saved_switch: float | None = None
        self.freeze_every_s = freeze_every_s
        self.rss_growth = rss_growth
        self.peak_rss_kb = peak_rss_kb or _peak_rss_kb
        """The process's peak RSS in KiB (tests pass their own)."""
        self.little_garbage = 10_000
        """A full collection that frees fewer objects doubles the RSS growth that triggers the next."""
        self.rss_slack_kb = rss_slack_kb
        self.connections = connections
        """Open device connections now (the device server's count); None: not counted."""
        self.connection_kb = connection_kb
        """RSS each connection opened since the last full collection may add without triggering one
        (an idle connection holds ~23 KB: docs/performance.md)."""
        self.full_every_s = full_every_s
        self.threshold0 = threshold0
        self.threshold1 = threshold1
        self.full_collections = 0
        self.last_full_s: float | None = None
        """Duration of the last scheduled full collection (seconds of the event loop)."""
        self._saved: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self.pauses: dict[int, list[float]] = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
        """Per generation: collections, total CPU seconds, longest (logged at stop: the evidence)."""
        self._gc_started = 0.0
        self.long_collections: list[tuple[float, int, float, int]] = []
        """Collections over 20 ms of CPU: (wall time, generation, CPU seconds, objects collected)."""
        self.lag = [0, 0, 0, 0.0]
        """Event-loop lag probes (every 20 ms): taken, later than 10 ms, later than 50 ms, longest s."""
        self._lag_task: asyncio.Task[None] | None = None
        self.stall_watch: StallWatch | None = (
            StallWatch() if os.environ.get("IOTGW_STALL_WATCH", "1") != "0" else None
        )

    @classmethod
    def from_environment(cls, connections: Callable[[], int] | None = None) -> RuntimePolicy:
        """The defaults, or for A/B runs of the bench: ``IOTGW_RUNTIME=off`` (CPython's defaults),
        ``IOTGW_SWITCH_INTERVAL_S`` (seconds), ``IOTGW_GC_FREEZE=0`` (no freezing, thresholds kept),
        ``IOTGW_GC_THRESHOLD0`` / ``IOTGW_GC_THRESHOLD1`` (generation 0's and 1's thresholds),
        ``IOTGW_STALL_WATCH=0`` (no stall watch thread)."""
        if os.environ.get("IOTGW_RUNTIME") == "off":
            return cls(switch_interval_s=None, freeze=False, connections=connections)
        switch = os.environ.get("IOTGW_SWITCH_INTERVAL_S")
        t0, t1 = os.environ.get("IOTGW_GC_THRESHOLD0"), os.environ.get("IOTGW_GC_THRESHOLD1")
        return cls(
            switch_interval_s=float(switch) if switch else None,
            freeze=os.environ.get("IOTGW_GC_FREEZE", "1") != "0",
            threshold0=int(t0) if t0 else 20_000,
            threshold1=int(t1) if t1 else None,
            connections=connections,
        )

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # CPU time of the collecting thread, not wall time: on a shared machine a collection that
        # is preempted half way would otherwise be blamed for the wait
        if phase == "start":
            self._gc_started = time.thread_time()
            return
        took = time.thread_time() - self._gc_started
        if self.stall_watch is not None:
            self.stall_watch.gc_ended = time.monotonic()
        if took > 0.02:
            self.long_collections.append(
                (time.time(), info.get("generation", -1), took, info.get("collected", 0))
            )
        entry = self.pauses.get(info.get("generation", 2))
        if entry is not None:
            entry[0] += 1
            entry[1] += took
            entry[2] = max(entry[2], took)

    def summary(self) -> str:
        return "; ".join(
            f"gen{g} {int(n)} collections, {total * 1000:.0f} ms CPU in all, longest {longest * 1000:.1f} ms"
            for g, (n, total, longest) in self.pauses.items()
        )

    async def _watch_lag(self) -> None:
        loop = asyncio.get_running_loop()
        lag = self.lag
        watch = self.stall_watch
        while True:
            due = loop.time() + 0.02
            await asyncio.sleep(0.02)
            if watch is not None:
                watch.tick()
            late = loop.time() - due
            lag[0] += 1
            if late > 0.01:
                lag[1] += 1
                if late > 0.05:
                    lag[2] += 1
            lag[3] = max(lag[3], late)

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._lag_task = asyncio.get_running_loop().create_task(self._watch_lag(), name="loop-lag")
        if self.stall_watch is not None:
            self.stall_watch.start()
        if self.switch_interval_s is not None:
            self._saved_switch = sys.getswitchinterval()
            sys.setswitchinterval(self.switch_interval_s)
        if not self.freeze:
            return
        gc.collect()
        gc.freeze()
        self._saved = gc.get_threshold()
        t0, t1, t2 = self._saved
        gc.set_threshold(self.threshold0 or t0, self.threshold1 or t1, t2)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gc-policy")

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        log.info("garbage collector while serving: %s", self.summary())
        if self.long_collections:
            log.info("garbage collections over 20 ms: %s", ", ".join(
                f"{time.strftime('%H:%M:%S', time.localtime(at))}.{int(at % 1 * 1000):03d} gen{g} {took * 1000:.0f} ms "
                f"({n} freed)" for at, g, took, n in self.long_collections[-40:]))  # fmt: skip
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None
            n, over10, over50, longest = self.lag
            log.info("event loop lag: %d probes, %d late > 10 ms, %d > 50 ms, longest %.1f ms", n, over10, over50,
                     longest * 1000)  # fmt: skip
        if self.stall_watch is not None:
            self.stall_watch.stop()
            log.info(
                "event loop stalls over %.0f ms: %s",
                self.stall_watch.threshold_s * 1000,
                self.stall_watch.report(),
            )
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None
        gc.unfreeze()
        if self._saved_switch is not None:
            sys.setswitchinterval(self._saved_switch)
            self._saved_switch = None

    async def _run(self) -> None:
        last_full = time.monotonic()
        peak_at_last_full = self.peak_rss_kb()
        connections = self.connections or (lambda: 0)
        connections_at_last_full = most_connections = connections()
        growth = self.rss_growth
        while True:
            await asyncio.sleep(self.freeze_every_s)
            now = time.monotonic()
            peak = self.peak_rss_kb()
            # memory that new connections hold is live, not frozen garbage: a fleet connecting
            # (10,000 devices: ~220 MiB) must not cost a full collection in the middle of its
            # storm. The peak RSS never falls, so neither does what explains it: the most
            # connections open at once since the last full collection, not those open now
            most_connections = max(most_connections, connections())
            opened = most_connections - connections_at_last_full
            reason = None
            if now - last_full >= self.full_every_s:
                reason = f"scheduled every {self.full_every_s:g} s"
            elif peak > peak_at_last_full * growth + self.rss_slack_kb + opened * self.connection_kb:
                reason = f"peak RSS {peak_at_last_full / 1024:.0f} -> {peak / 1024:.0f} MiB, {opened} connections more"
            if reason is not None:
                gc.unfreeze()
                freed = gc.collect()
                self.last_full_s = time.monotonic() - now
                self.full_collections += 1
                last_full = time.monotonic()
                peak_at_last_full = self.peak_rss_kb()
                connections_at_last_full = most_connections = connections()
                # the RSS grew with live objects (connections), not garbage: wait for more growth
                # before the next one (a fleet connecting costs one full collection, not several)
                growth = min(growth * 2, 4.0) if freed < self.little_garbage else self.rss_growth
                log.info("full garbage collection (%s): %d objects freed in %.0f ms", reason, freed,
                         self.last_full_s * 1000)  # fmt: skip
            gc.freeze()


def _peak_rss_kb() -> int:
    """The process's peak resident set in KiB (Linux reports ``ru_maxrss`` in KiB); 0 where unknown."""
    try:
        import resource
    except ImportError:  # not on this platform: only the schedule triggers full collections
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


__all__ = ["RuntimePolicy"]
