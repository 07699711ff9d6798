"""The benchmark scenarios (issue #3). Each is ``@scenario(name, title)`` over ``Context -> Result``.

Shared shape: start a target, provision devices, ``drive`` the load generator
through connect -> warm-up -> measurement window -> drain, read the target's
/proc counters at the window's edges, then compare what the devices saw
(acks) with what the target holds (rows). Figures are rates over the window;
checks are behaviour (nothing acked lost, no errors), never times.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from . import procstat
from .drive import (
    AGENT_WINDOW,
    CEILING_WINDOW,
    KB,
    Measurement,
    Sizes,
    check_durability,
    drive,
    fmt_ms,
    load_spec,
    ms_at,
    sizes,
    start_gateway,
)
from .registry import Context, Result, scenario
from .targets import BareTarget, MosquittoTarget, Target


def _per_million(m: Measurement) -> float | None:
    if m.start is None or m.end is None or not m.report.window_samples_acked:
        return None
    return (m.end.write_bytes - m.start.write_bytes) / m.report.window_samples_acked


# -- 1. ingest ceiling ---------------------------------------------------------------------


@scenario("ingest", "Ingest ceiling, local store: devices as fast as acks allow; then half load")
def ingest(ctx: Context) -> Result:
    sz = sizes(ctx)
    result = Result()
    runs: dict[str, Measurement] = {}
    for samples in (1, 10):
        key = f"{samples}x"
        gw, devices = start_gateway(ctx, f"ingest-{key}", sz.devices)
        try:
            m = drive(ctx, f"gateway, {samples} sample(s)/frame", gw.pid, load_spec(ctx, gw.port, devices, samples=samples),
                      warmup_s=sz.warmup_s, measure_s=sz.measure_s)  # fmt: skip
        finally:
            gw.stop()
        check_durability(result, m, gw.count_rows(), f"{key}")
        m.extra["provision_s"] = round(gw.provision_s, 2)  # type: ignore[attr-defined]
        m.extra["store_bytes_end"] = gw.store_bytes()
        runs[key] = m
        ctx.done(gw.directory)
    one, ten = runs["1x"], runs["10x"]
    # half load: a fixed rate per device at half the measured 1-sample ceiling
    half_rate = max(0.1, one.frames_per_s / 2 / sz.devices)
    gw, devices = start_gateway(ctx, "ingest-half", sz.devices)
    try:
        half = drive(ctx, "gateway, 1 sample/frame at half load", gw.pid,
                     load_spec(ctx, gw.port, devices, samples=1, rate=half_rate, window=AGENT_WINDOW),
                     warmup_s=sz.warmup_s, measure_s=sz.measure_s)  # fmt: skip
    finally:
        gw.stop()
    check_durability(result, half, gw.count_rows(), "half load")
    ctx.done(gw.directory)

    result.add("frames/s, 1 sample/frame", one.frames_per_s, "/s", note="committed, then acked")
    result.add("ack p50 / p99 at ceiling, 1 sample", ms_at(one.report.ack_hist, 50), "ms",
               note=f"p99 {fmt_ms(one.report.ack_hist.percentile(99))}, window {CEILING_WINDOW}/device")  # fmt: skip
    result.add("gateway CPU, 1 sample", one.target_cpu, "%", note=_threads(one))
    result.add("gateway CPU per reading, 1 sample", one.target_us_per_frame, "us",
               note="all threads; robust to other load on the machine")  # fmt: skip
    result.add("generator CPU, 1 sample", one.generator_cpu, "%", note=f"{ctx.processes} processes")
    result.add(
        "readings/s, 10 samples/frame", ten.readings_per_s, "/s", "> 150,000", ten.readings_per_s > 150_000
    )
    result.add("ack p99 at ceiling, 10 samples", ms_at(ten.report.ack_hist, 99), "ms")
    result.add("gateway CPU, 10 samples", ten.target_cpu, "%", note=_threads(ten))
    per_reading = None if ten.target_us_per_frame is None else ten.target_us_per_frame / 10
    result.add("gateway CPU per reading, 10 samples", per_reading, "us")
    p99 = ms_at(half.report.ack_hist, 99)
    result.add("ack p99 at half load", p99, "ms", "< 50 ms", None if p99 is None else p99 < 50,
               note=f"{half.frames_per_s:,.0f} frames/s offered by {sz.devices} devices")  # fmt: skip
    result.add("ack p50 at half load", ms_at(half.report.ack_hist, 50), "ms")
    result.add("gateway CPU at half load", half.target_cpu, "%",
               note=f"{half.target_us_per_frame or 0:.0f} us per frame: one read and one ack each")  # fmt: skip
    per_m = _per_million(ten)
    result.add("disk writes per million readings, 10 samples", None if per_m is None else per_m * 1e6 / 2**20,
               "MiB", note="/proc/<pid>/io write_bytes")  # fmt: skip
    per_m1 = _per_million(one)
    result.add("disk writes per million readings, 1 sample", None if per_m1 is None else per_m1 * 1e6 / 2**20,
               "MiB")  # fmt: skip
    result.details = {"runs": {k: m.summary() for k, m in (("1x", one), ("10x", ten), ("half", half))}}
    return result


def _threads(m: Measurement) -> str:
    if m.start is None or m.end is None:
        return ""
    threads = procstat.threads_percent(m.start, m.end)
    main = threads.pop("main", 0.0)
    busiest = max(threads.values(), default=0.0)
    return f"event loop {main:.0f} %, busiest other thread (the writer) {busiest:.0f} %"


# -- 2. bare library ------------------------------------------------------------------------


def _peer(ctx: Context, target: Target, label: str, samples: int, devices: int, sz: Sizes) -> Measurement:
    tokens = [(f"dev-{i:05d}", "unused") for i in range(devices)]
    return drive(ctx, label, target.pid, load_spec(ctx, target.port, tokens, samples=samples),
                 warmup_s=sz.warmup_s, measure_s=sz.measure_s)  # fmt: skip


@scenario("bare", "The same workload through a bare websockets server (the transport ceiling)")
def bare(ctx: Context) -> Result:
    sz = sizes(ctx)
    result = Result()
    runs: dict[str, Measurement] = {}
    for samples in (1, 10):
        target = BareTarget(ctx.scratch("bare"))
        target.start()
        try:
            runs[f"{samples}x"] = _peer(ctx, target, f"bare websockets, {samples} sample(s)/frame", samples,
                                        sz.devices, sz)  # fmt: skip
        finally:
            target.stop()
        ctx.done(target.directory)
    one, ten = runs["1x"], runs["10x"]
    result.add("frames/s, 1 sample/frame", one.frames_per_s, "/s", note="one ack per frame")
    result.add(
        "server CPU, 1 sample", one.target_cpu, "%", note=f"{one.target_us_per_frame or 0:.1f} us per frame"
    )
    result.add("generator CPU, 1 sample", one.generator_cpu, "%")
    result.add("frames/s, 10 samples/frame", ten.frames_per_s, "/s")
    gw = ctx.results.get("ingest")
    if gw is not None and not gw.error:
        g1 = gw.figure("frames/s, 1 sample/frame")
        if g1:
            ratio = g1 / one.frames_per_s
            result.add("gateway / bare, frames/s, 1 sample", ratio * 100, "%", ">= 50 %", ratio >= 0.5)
        g10 = gw.details["runs"]["10x"]["frames_per_s"]
        result.add("gateway / bare, frames/s, 10 samples", 100 * g10 / ten.frames_per_s, "%")
    for key, m in runs.items():
        result.checks[f"{key}: no unexpected closes"] = not m.report.closes and not m.report.errors
    result.details = {"runs": {k: m.summary() for k, m in runs.items()}}
    return result


# -- 3. Mosquitto ---------------------------------------------------------------------------


@scenario("mqtt", "The same workload through Mosquitto: paho-mqtt QoS 1 publishers, one subscriber",
          needs=("mosquitto",))  # fmt: skip
def mqtt(ctx: Context) -> Result:
    from .mqttgen import Subscriber

    sz = sizes(ctx)
    result = Result()
    runs: dict[str, Measurement] = {}
    for samples in (1, 10):
        broker = MosquittoTarget(ctx.scratch("mosquitto"))
        broker.start()
        try:
            tokens = [(f"dev-{i:05d}", "") for i in range(sz.devices)]
            spec = load_spec(ctx, broker.port, tokens, samples=samples, kind="mqtt")
            m = drive(ctx, f"mosquitto QoS 1, {samples} sample(s)/frame", broker.pid, spec,
                      warmup_s=sz.warmup_s, measure_s=sz.measure_s,
                      companion=functools.partial(Subscriber, "127.0.0.1", broker.port, "bench"))  # fmt: skip
        finally:
            broker.stop()
        ctx.done(broker.directory)
        m.extra["delivered_readings_per_s"] = round(m.extra["delivered_window"] * samples / m.window_s)
        print(
            f"    delivered to the subscriber: {m.extra['delivered_readings_per_s']:,} readings/s", flush=True
        )
        result.checks[f"{samples}x: no unexpected disconnects"] = not m.report.closes
        runs[f"{samples}x"] = m
    one, ten = runs["1x"], runs["10x"]
    d1 = one.extra["delivered_readings_per_s"]
    d10 = ten.extra["delivered_readings_per_s"]
    result.add("PUBACKed readings/s, 1 sample/frame", one.readings_per_s, "/s")
    result.add("delivered readings/s, 1 sample/frame", d1, "/s", note="counted by the subscriber")
    result.add(
        "broker CPU, 1 sample", one.target_cpu, "%", note=f"{one.target_us_per_frame or 0:.1f} us per message"
    )
    result.add("generator CPU, 1 sample", one.generator_cpu, "%", note="paho-mqtt publishers")
    result.add("PUBACKed readings/s, 10 samples/frame", ten.readings_per_s, "/s")
    result.add("delivered readings/s, 10 samples/frame", d10, "/s")
    result.add("broker CPU per reading, 10 samples", (ten.target_us_per_frame or 0) / 10, "us")
    gw = ctx.results.get("ingest")
    if gw is not None and not gw.error:
        g1 = gw.details["runs"]["1x"]["readings_per_s"]
        g10 = gw.details["runs"]["10x"]["readings_per_s"]
        m1 = min(one.readings_per_s, d1) or 1
        m10 = min(ten.readings_per_s, d10) or 1
        result.add("gateway / mosquitto, readings/s, 1 sample", g1 / m1, "x", ">= 2x", g1 / m1 >= 2)
        result.add("gateway / mosquitto, readings/s, 10 samples", g10 / m10, "x", ">= 2x", g10 / m10 >= 2)
    result.details = {"runs": {k: m.summary() for k, m in runs.items()}}
    return result


# -- 4. connections -------------------------------------------------------------------------


@scenario("connections", "Many devices connected: idle memory per connection, then slow senders")
def connections(ctx: Context) -> Result:
    sz = sizes(ctx)
    result = Result()
    n = sz.conn_devices
    gw, devices = start_gateway(ctx, "connections", n)
    idle: dict[str, Any] = {}

    def measure_idle() -> dict[str, Any]:
        snap = procstat.Snapshot.take(gw.pid)
        idle["rss_kb"] = snap.rss_kb
        return {"idle_rss_kb": snap.rss_kb}

    try:
        time.sleep(0.5)
        base = procstat.Snapshot.take(gw.pid)
        spec = load_spec(ctx, gw.port, devices, rate=sz.conn_rate, window=AGENT_WINDOW, drain_s=15.0,
                     connect_concurrency=128)  # fmt: skip
        m = drive(ctx, f"gateway, {n:,} devices, one frame every {1 / sz.conn_rate:g} s each", gw.pid, spec,
                  warmup_s=1.0 / sz.conn_rate, measure_s=sz.conn_measure_s, settle_s=2.0,
                  on_connected=measure_idle)  # fmt: skip
    finally:
        gw.stop()
    check_durability(result, m, gw.count_rows(), "slow senders")
    ctx.done(gw.directory)
    per_conn_kb = (idle["rss_kb"] - base.rss_kb) / max(1, m.connected)
    m.extra["rss_before_connect_kb"] = base.rss_kb
    result.add("devices connected", m.connected, "", f"{n:,}", m.connected == n)
    result.add(
        "time to connect all",
        m.connect_s,
        "s",
        note=f"handshake p99 {fmt_ms(m.report.connect_hist.percentile(99))}",
    )
    result.add("gateway memory per idle connection", per_conn_kb, "KB", "< 24 KB", per_conn_kb < 24,
               note=f"RSS {base.rss_kb / KB:.0f} -> {idle['rss_kb'] / KB:.0f} MiB")  # fmt: skip
    p99 = ms_at(m.report.ack_hist, 99)
    result.add("ack p99, slow senders", p99, "ms", note=f"{m.frames_per_s:,.0f} frames/s in all")
    result.add("gateway CPU, slow senders", m.target_cpu, "%")
    result.details = {"runs": {"slow": m.summary()}, "rss_before_connect_kb": base.rss_kb,
                      "rss_idle_kb": idle["rss_kb"], "kb_per_connection": round(per_conn_kb, 2)}  # fmt: skip
    return result


# -- 5. overload ----------------------------------------------------------------------------


@scenario("overload", "Twice the ceiling offered: backpressure, bounded latency and memory, nothing lost")
def overload(ctx: Context) -> Result:
    sz = sizes(ctx)
    result = Result()
    ceiling: float | None = None
    gw_result = ctx.results.get("ingest")
    if gw_result is not None and not gw_result.error:
        ceiling = gw_result.figure("frames/s, 1 sample/frame")
    env = {"IOTGW_DEVICE_PING_INTERVAL": "2", "IOTGW_DEVICE_PING_TIMEOUT": "10"}
    if not ceiling:  # measure it here (shorter)
        gw, devices = start_gateway(ctx, "overload-ceiling", sz.devices)
        try:
            probe = drive(ctx, "gateway ceiling probe", gw.pid, load_spec(ctx, gw.port, devices),
                          warmup_s=sz.warmup_s, measure_s=max(2.0, sz.measure_s / 3))  # fmt: skip
        finally:
            gw.stop()
        ctx.done(gw.directory)
        ceiling = probe.frames_per_s
    offered = 2 * ceiling
    gw, devices = start_gateway(ctx, "overload", sz.devices, env)
    try:
        spec = load_spec(ctx, gw.port, devices, rate=offered / sz.devices, window=AGENT_WINDOW, ping_every_s=0.5,
                     ping_stride=10, drain_s=30.0)  # fmt: skip
        m = drive(ctx, f"gateway, {offered:,.0f} frames/s offered", gw.pid, spec, warmup_s=sz.warmup_s,
                  measure_s=sz.overload_s)  # fmt: skip
    finally:
        gw.stop()
    check_durability(result, m, gw.count_rows(), "overload")
    ctx.done(gw.directory)
    samples = m.rss_samples
    growth_kb = 0
    if len(samples) >= 4:
        half = len(samples) // 2
        growth_kb = max(rss for _, rss in samples[half:]) - max(rss for _, rss in samples[:half])
    result.add("offered frames/s", m.report.window_frames_sent / m.window_s + m.report.backlog / m.window_s,
               "/s", note=f"2x the ceiling of {ceiling:,.0f}")  # fmt: skip
    result.add(
        "acked frames/s under overload",
        m.frames_per_s,
        "/s",
        note=f"{m.frames_per_s / ceiling:.0%} of the ceiling",
    )
    result.add("ack p99 under overload", ms_at(m.report.ack_hist, 99), "ms",
               note=f"p50 {fmt_ms(m.report.ack_hist.percentile(50))}, window {AGENT_WINDOW}/device")  # fmt: skip
    result.add("pong p99 (device pings)", ms_at(m.report.pong_hist, 99), "ms",
               note=f"{m.report.pong_hist.count} pings")  # fmt: skip
    result.add("gateway pings answered", m.report.server_pings, "", note="keepalive every 2 s")
    result.add("peak gateway RSS", m.peak_rss_kb / KB, "MiB",
               note=f"growth over the 2nd half {growth_kb / KB:+.1f} MiB")  # fmt: skip
    result.add(
        "backlog left on devices", m.report.backlog, "frames", note="load shed to the devices' buffers"
    )
    result.checks["overload: the gateway keeps answering pings"] = m.report.pong_hist.count > 0
    result.details = {"ceiling_frames_per_s": ceiling, "runs": {"overload": m.summary()},
                      "rss_growth_second_half_kb": growth_kb}  # fmt: skip
    return result
