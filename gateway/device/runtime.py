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
4 ms (docs/performance.md). What is long-lived here is known: the modules and the store at
start-up, then the connections. So:

- after start-up everything alive is moved out of the collector's sight (``gc.freeze()``);
- every ``freeze_every_s`` the young generations are collected (cheap: they are small) and the
  survivors frozen as well: connections opened since the last look stop costing full
  collections, and the collections the allocator still triggers walk only what is young;
- generation 0 is collected every ``threshold0`` net allocations (20,000) instead of 700: fewer
  objects in flight (queued frames, decoded messages) are promoted, so the full collections that
  promotions trigger stay away (none after start-up in the 10,000-device runs, against 15-17 of up
  to 0.5 s of CPU at 700), and GC costs less CPU at the ceiling; the price is larger young
  collections (generation 1 up to ~0.2 s of CPU around a connection ramp). A/B in
  docs/performance.md, "Latency under load"; ``None`` keeps CPython's threshold;
- frozen objects that become garbage in a cycle (a closed connection) are reclaimed by one full
  collection every ``full_every_s`` (unfreeze, collect, freeze again): that is the one pause left,
  once an hour by default instead of every half minute, and it is logged with its duration.

Reference counting frees frozen objects as usual; only cycles wait for the hourly collection.
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
import time

log = logging.getLogger(__name__)


class RuntimePolicy:
    """``start()`` on the event loop after start-up, ``await stop()`` at shutdown."""

    def __init__(self, *, freeze_every_s: float = 10.0, full_every_s: float = 3600.0,
                 threshold0: int | None = 20_000, threshold1: int | None = None, switch_interval_s: float | None = None, freeze: bool = True) -> None:  # fmt: skip
        self.switch_interval_s = switch_interval_s
        self.freeze = freeze
        self._saved_switch: float | None = None
        self.freeze_every_s = freeze_every_s
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
        self.lag = [0, 0, 0, 0.0]
        """Event-loop lag probes (every 20 ms): taken, later than 10 ms, later than 50 ms, longest s."""
        self._lag_task: asyncio.Task[None] | None = None

    @classmethod
    def from_environment(cls) -> RuntimePolicy:
        """The defaults, or for A/B runs of the bench: ``IOTGW_RUNTIME=off`` (CPython's defaults),
        ``IOTGW_SWITCH_INTERVAL_S`` (seconds), ``IOTGW_GC_FREEZE=0`` (no freezing, thresholds kept),
        ``IOTGW_GC_THRESHOLD0`` / ``IOTGW_GC_THRESHOLD1`` (generation 0's and 1's thresholds)."""
        if os.environ.get("IOTGW_RUNTIME") == "off":
            return cls(switch_interval_s=None, freeze=False)
        switch = os.environ.get("IOTGW_SWITCH_INTERVAL_S")
        thresholds = {
            name: int(value)
            for name, value in (
                ("threshold0", os.environ.get("IOTGW_GC_THRESHOLD0")),
                ("threshold1", os.environ.get("IOTGW_GC_THRESHOLD1")),
            )
            if value
        }
        return cls(
            switch_interval_s=float(switch) if switch else None,
            freeze=os.environ.get("IOTGW_GC_FREEZE", "1") != "0",
            **thresholds,
        )

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # CPU time of the collecting thread, not wall time: on a shared machine a collection that
        # is preempted half way would otherwise be blamed for the wait
        if phase == "start":
            self._gc_started = time.thread_time()
            return
        took = time.thread_time() - self._gc_started
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
        while True:
            due = loop.time() + 0.02
            await asyncio.sleep(0.02)
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
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None
            n, over10, over50, longest = self.lag
            log.info("event loop lag: %d probes, %d late > 10 ms, %d > 50 ms, longest %.1f ms", n, over10, over50,
                     longest * 1000)  # fmt: skip
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
        while True:
            await asyncio.sleep(self.freeze_every_s)
            now = time.monotonic()
            if now - last_full >= self.full_every_s:
                last_full = now
                gc.unfreeze()
                freed = gc.collect()
                self.last_full_s = time.monotonic() - now
                self.full_collections += 1
                log.info("full garbage collection: %d objects freed in %.0f ms", freed,
                         self.last_full_s * 1000)  # fmt: skip
            else:
                gc.collect(1)
            gc.freeze()


__all__ = ["RuntimePolicy"]
