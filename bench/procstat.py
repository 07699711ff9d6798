"""What a process costs, read from /proc: CPU time, memory, bytes written.

``Snapshot.take(pid)`` reads /proc/<pid>/stat, status and io at one moment
(io needs the same user or root; missing fields read as 0). ``Sampler`` polls
RSS in a thread to catch the peak during a phase; VmHWM gives the lifetime peak.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(stat_text: str) -> float:
    # fields after the command name, which is in parentheses and may contain spaces
    rest = stat_text.rsplit(")", 1)[1].split()
    utime, stime = int(rest[11]), int(rest[12])
    return (utime + stime) / CLOCK_TICKS


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _kb(status: str, key: str) -> int:
    for line in status.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass(slots=True)
class Snapshot:
    """One reading of a process's counters."""

    at: float
    cpu_s: float
    rss_kb: int
    hwm_kb: int
    write_bytes: int
    threads_cpu_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def take(cls, pid: int) -> Snapshot:
        stat = _read(f"/proc/{pid}/stat")
        status = _read(f"/proc/{pid}/status")
        io = _read(f"/proc/{pid}/io")
        write_bytes = 0
        for line in io.splitlines():
            if line.startswith("write_bytes:"):
                write_bytes = int(line.split()[1])
        threads: dict[str, float] = {}
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            tids = []
        for tid in tids:
            # Python does not name OS threads: tell the main thread (the event loop) from the others
            name = "main" if tid == str(pid) else f"thread-{tid}"
            text = _read(f"/proc/{pid}/task/{tid}/stat")
            if text:
                threads[name] = _cpu_seconds(text)
        return cls(
            at=time.monotonic(),
            cpu_s=_cpu_seconds(stat) if stat else 0.0,
            rss_kb=_kb(status, "VmRSS"),
            hwm_kb=_kb(status, "VmHWM"),
            write_bytes=write_bytes,
            threads_cpu_s=threads,
        )


def cpu_percent(before: Snapshot, after: Snapshot) -> float:
    """CPU use between two snapshots, in % of one core (200 = two cores busy)."""
    wall = after.at - before.at
    return 100.0 * (after.cpu_s - before.cpu_s) / wall if wall > 0 else 0.0


def threads_percent(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU use per thread name between two snapshots, in % of one core."""
    wall = after.at - before.at
    if wall <= 0:
        return {}
    return {
        name: round(100.0 * (cpu - before.threads_cpu_s.get(name, 0.0)) / wall, 1)
        for name, cpu in after.threads_cpu_s.items()
    }


def children_cpu_seconds() -> float:
    """CPU time of this process's reaped children (the load generator workers)."""
    t = os.times()
    return t.children_user + t.children_system


class Sampler:
    """Polls a process's RSS every ``interval`` s in a thread; ``peak_kb`` and ``samples``."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _kb(_read(f"/proc/{self.pid}/status"), "VmRSS")
            self.samples.append((time.monotonic(), rss))
            self.peak_kb = max(self.peak_kb, rss)
            self._stop.wait(self.interval)
