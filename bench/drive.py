"""Driving the load generator against one target, and what the scenarios share.

``drive`` runs one measurement: connect every device, warm up, open the
measurement window, read the target's /proc counters at its edges, drain, and
return a ``Measurement``. ``sizes`` scales a scenario to ``--quick`` or a full
run; ``start_gateway``, ``load_spec`` and ``check_durability`` are the steps
every gateway scenario repeats (``bench/scenarios.py``, ``bench/command_rtt.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import procstat
from .loadgen import LoadRun
from .profile import Profiler, top
from .registry import Context, Result
from .targets import GatewayTarget
from .workload import LoadSpec, Shared, WorkerReport

KB = 1024


@dataclass(slots=True)
class Measurement:
    """One drive of the generator against one target."""

    label: str
    spec: LoadSpec
    report: WorkerReport
    connected: int
    connect_failed: int
    connect_s: float
    window_s: float
    before: procstat.Snapshot | None = None
    start: procstat.Snapshot | None = None
    end: procstat.Snapshot | None = None
    peak_rss_kb: int = 0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def frames_per_s(self) -> float:
        return self.report.window_frames_acked / self.window_s

    @property
    def readings_per_s(self) -> float:
        return self.report.window_samples_acked / self.window_s

    @property
    def target_cpu(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return procstat.cpu_percent(self.start, self.end)

    @property
    def target_us_per_frame(self) -> float | None:
        """CPU time the target spent per acked frame: robust to other load on the machine."""
        if self.start is None or self.end is None or not self.report.window_frames_acked:
            return None
        return 1e6 * (self.end.cpu_s - self.start.cpu_s) / self.report.window_frames_acked

    @property
    def generator_cpu(self) -> float:
        return 100.0 * self.report.window_cpu_s / self.window_s

    def summary(self) -> dict[str, Any]:
        r = self.report
        out: dict[str, Any] = {
            "label": self.label,
            "devices": len(self.spec.devices),
            "rate_per_device": self.spec.rate or "as fast as acks allow",
            "samples_per_frame": self.spec.samples,
            "window": self.spec.window,
            "generator_processes": self.spec.processes,
            "connected": self.connected,
            "connect_failed": self.connect_failed,
            "connect_s": round(self.connect_s, 2),
            "connect_latency": r.connect_hist.to_dict(),
            "window_s": round(self.window_s, 2),
            "frames_per_s": round(self.frames_per_s),
            "readings_per_s": round(self.readings_per_s),
            "frames_sent": r.frames_sent,
            "frames_acked": r.frames_acked,
            "samples_sent": r.samples_sent,
            "samples_acked": r.samples_acked,
            "unacked_at_end": r.unacked_at_end,
            "device_backlog_frames": r.backlog,
            "ack_latency": r.ack_hist.to_dict(),
            "slowest_acks": [
                {"ms": round(latency * 1000, 1), "sent_at": wall_clock(sent), "device": device}
                for latency, sent, device in r.slowest_acks
            ],
            "pong_latency": r.pong_hist.to_dict(),
            "server_pings_answered": r.server_pings,
            "commands_answered": r.commands,
            "errors": r.errors,
            "closes": r.closes,
            "generator_cpu_percent": round(self.generator_cpu, 1),
            "target_cpu_percent": None if self.target_cpu is None else round(self.target_cpu, 1),
            "target_cpu_us_per_frame": _round(self.target_us_per_frame, 2),
        }
        if self.start is not None and self.end is not None:
            out["target_threads_cpu_percent"] = procstat.threads_percent(self.start, self.end)
            out["target_rss_kb"] = {"before_connect": self.before.rss_kb if self.before else None,
                                    "window_start": self.start.rss_kb, "window_end": self.end.rss_kb,
                                    "window_peak": self.peak_rss_kb}  # fmt: skip
            out["target_write_bytes_window"] = self.end.write_bytes - self.start.write_bytes
        out.update(self.extra)
        return out


class Companion(Protocol):
    """Something that runs beside the generator (the MQTT counting subscriber)."""

    def start(self) -> None: ...

    def finish(self) -> dict[str, Any]: ...


def drive(ctx: Context, label: str, pid: int, spec: LoadSpec, *, warmup_s: float, measure_s: float,
          connect_timeout: float = 120.0, settle_s: float = 0.0,
          on_connected: Callable[[], dict[str, Any]] | None = None,
          companion: Callable[[Shared], Companion] | None = None) -> Measurement:  # fmt: skip
    """Run the generator against the process ``pid``: connect all, warm up, measure, drain."""
    before = procstat.Snapshot.take(pid)
    run = LoadRun(spec)
    side = companion(run.shared) if companion is not None else None
    if side is not None:
        side.start()
    run.start()
    try:
        connected, failed, connect_s = run.wait_connected(connect_timeout)
        if settle_s:
            time.sleep(settle_s)
        extra: dict[str, Any] = {}
        if on_connected is not None:
            extra = on_connected() or {}
        t_start, t_end = run.go(warmup_s, measure_s)
        _sleep_until(t_start)
        profiler = None
        if ctx.profile_dir is not None:
            name = "".join(c if c.isalnum() else "-" for c in label).strip("-")
            profiler = Profiler(pid, ctx.profile_dir / f"{name}.txt", measure_s)
        start = procstat.Snapshot.take(pid)
        with procstat.Sampler(pid) as sampler:
            _sleep_until(t_end)
            end = procstat.Snapshot.take(pid)
        if profiler is not None:
            print(top(profiler.wait()), flush=True)
        report = run.finish(timeout=spec.drain_s + 60)
    except BaseException:
        run.abort()
        run.finish(timeout=10)
        if side is not None:
            side.finish()
        raise
    if side is not None:
        extra.update(side.finish())
    m = Measurement(label, spec, report, connected, failed, connect_s, t_end - t_start, before, start, end,
                    sampler.peak_kb, sampler.samples, extra)  # fmt: skip
    ack = report.ack_hist
    print(f"  {label}: {m.frames_per_s:,.0f} frames/s, {m.readings_per_s:,.0f} readings/s, "
          f"ack p50 {fmt_ms(ack.percentile(50))} p99 {fmt_ms(ack.percentile(99))}, "
          f"target CPU {m.target_cpu or 0:.0f} % ({m.target_us_per_frame or 0:.1f} us/frame), "
          f"generator CPU {m.generator_cpu:.0f} % "
          f"({connected} connected in {connect_s:.1f} s, {failed} failed)", flush=True)  # fmt: skip
    return m


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def ms_at(hist: Any, p: float) -> float | None:
    value = hist.percentile(p)
    return None if value is None else value * 1000


# -- sizes --------------------------------------------------------------------------------


@dataclass(slots=True)
class Sizes:
    devices: int
    warmup_s: float
    measure_s: float
    conn_devices: int
    conn_rate: float
    conn_measure_s: float
    overload_s: float


def sizes(ctx: Context) -> Sizes:
    if ctx.quick:
        sz = Sizes(devices=50, warmup_s=0.5, measure_s=2.0, conn_devices=200, conn_rate=1.0,
                   conn_measure_s=2.0, overload_s=2.0)  # fmt: skip
    else:
        sz = Sizes(devices=1000, warmup_s=3.0, measure_s=15.0, conn_devices=10_000, conn_rate=0.1,
                   conn_measure_s=30.0, overload_s=30.0)  # fmt: skip
    if ctx.devices:
        sz.devices = ctx.devices
    if ctx.measure_s:
        sz.measure_s = sz.conn_measure_s = sz.overload_s = ctx.measure_s
    return sz


CEILING_WINDOW = 16
AGENT_WINDOW = 64  # device_agent's max_in_flight


def load_spec(ctx: Context, port: int, devices: list[tuple[str, str]], **kw: Any) -> LoadSpec:
    spec = LoadSpec(host="127.0.0.1", port=port, devices=devices, processes=ctx.processes,
                    window=CEILING_WINDOW, drain_s=15.0, source_ips=ctx.processes)  # fmt: skip
    for key, value in kw.items():
        setattr(spec, key, value)
    return spec


def start_gateway(ctx: Context, name: str, devices: int, env: dict[str, str] | None = None
             ) -> tuple[GatewayTarget, list[tuple[str, str]]]:  # fmt: skip
    gw = GatewayTarget(ctx.scratch(name), env)
    t = time.monotonic()
    tokens = gw.provision(devices)
    provision_s = time.monotonic() - t
    gw.start()
    gw.provision_s = provision_s  # type: ignore[attr-defined]
    return gw, tokens


def check_durability(result: Result, m: Measurement, rows: int, key: str) -> None:
    """rows vs acks: every acked reading is stored; nothing stored twice; all settled."""
    r = m.report
    result.checks[f"{key}: every acked reading is in the store"] = rows >= r.samples_acked
    result.checks[f"{key}: rows == acked readings"] = rows == r.samples_acked
    result.checks[f"{key}: no error frames, no unexpected closes"] = not r.errors and not r.closes
    m.extra["store_rows"] = rows


def wall_clock(wall: float) -> str:
    """``time.time()`` as the local time of day to the millisecond, as the gateway's log writes it."""
    return time.strftime("%H:%M:%S", time.localtime(wall)) + f",{int(wall % 1 * 1000):03d}"
