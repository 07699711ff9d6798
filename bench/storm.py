"""A connection storm beside steady devices: what the devices that stay connected feel.

A gateway restart elsewhere in the fleet, an access point coming back or a fleet-wide agent
update makes thousands of devices connect, or leave, within a second or two, while the rest of
the fleet keeps sending and operators keep sending commands. The ``storm`` scenario measures
that on one gateway, in three windows of the same steady load (``--devices`` paced devices at
:data:`STEADY_RATE` frames/s each, and the command probe):

1. ``quiet``: nothing else;
2. ``arrive``: :data:`LEAD_S` into the window, ``conn_devices`` more devices connect at once
   (:data:`STORM_CONCURRENCY` handshakes in flight per generator process) and stay;
3. ``leave``: :data:`LEAD_S` into the window, all of them close at once (close frames).

Reported per window: the steady devices' ack p99 and longest ack, the command round trip; and
how long the storm took to connect. Registered with ``@scenario`` (``bench/registry.py``);
``bench/runner.py`` imports this module.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from .command_rtt import CommandClient, CommandProbe
from .drive import (
    AGENT_WINDOW,
    Measurement,
    drive,
    fmt_ms,
    load_spec,
    ms_at,
    sizes,
    start_gateway,
    wall_clock,
)
from .loadgen import LoadRun
from .registry import Context, Result, scenario
from .workload import LoadSpec, Shared

STEADY_RATE = 2.0
"""Frames per second of each steady device (1,000 devices: 2,000 frames/s, a sixth of the paced ceiling)."""
LEAD_S = 3.0
"""Seconds into a window before the storm's devices connect or leave (``--quick``: a tenth)."""
WINDOW_S = 16.0
"""Each window's length, at least (``--quick``: a tenth): room for 10,000 connects."""
STORM_CONCURRENCY = 1024
"""Handshakes in flight per generator process (two processes: the gateway's listen backlog, 2,048)."""
SILENT_RATE = 1e-9
"""The storm's devices send (almost surely) nothing: their first frame is due in ~30 years."""
PHASES = ("quiet", "arrive", "leave")
SESSIONS_END_TIMEOUT_S = 60.0
"""How long ``leave`` follows the gateway for the storm's sessions to end."""
SESSIONS_POLL_S = 0.1
"""How often ``leave`` asks the gateway meanwhile (the figure's resolution)."""


class StormFleet:
    """The storm's devices: ``arrive`` connects them all, ``leave`` closes them all.

    ``leave`` also follows the gateway's ``/api/v1/status`` (on ``api_port``, with an operator
    ``token``) until the storm's sessions have all ended there: how long the goodbyes take. Not
    ``/metrics``: its per-device series for 11,000 devices cost the gateway more than what is
    measured (a poll every 20 ms made the steady devices' ack p99 in the window seconds long).
    """

    def __init__(self, spec: LoadSpec, api_port: int, token: str) -> None:
        self.spec = spec
        self.api_port = api_port
        self.token = token
        self.run: LoadRun | None = None
        self.figures: dict[str, Any] = {"devices": len(spec.devices)}

    def arrive(self) -> None:
        run = self.run = LoadRun(self.spec)
        run.start()
        connected, failed, connect_s = run.wait_connected(120)
        run.go(0.0, 24 * 3600.0)  # connected until leave()
        self.figures.update(connected=connected, failed=failed, connect_s=round(connect_s, 2))

    def leave(self) -> None:
        """Close every storm device at once (the generator's abort closes them cleanly)."""
        run = self.run
        if run is None:
            return
        self.run = None
        connected = self._connected()
        began = time.monotonic()
        self.figures["left_at"] = wall_clock(time.time())  # to match with the gateway's log
        run.abort()
        report = run.finish(timeout=60)
        self.figures.update(
            leave_s=round(time.monotonic() - began, 2), handshake=report.connect_hist.to_dict(),
            samples_acked=report.samples_acked, errors=report.errors, closes=report.closes,
        )  # fmt: skip
        # the gateway's side: until the storm's sessions have ended (its devices are offline)
        remaining = connected - self.figures.get("connected", len(self.spec.devices))
        while time.monotonic() - began < SESSIONS_END_TIMEOUT_S:
            if self._connected() <= remaining:
                self.figures["sessions_ended_s"] = round(time.monotonic() - began, 2)
                break
            time.sleep(SESSIONS_POLL_S)

    def _connected(self) -> int:
        """The gateway's ``devices_connected`` now."""
        conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=10)
        try:
            conn.request("GET", "/api/v1/status", headers={"Authorization": f"Bearer {self.token}"})
            status = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return int(status["devices_connected"])


class AtLead:
    """A companion of ``drive``: runs ``action`` ``lead_s`` into the measurement window."""

    def __init__(self, shared: Shared, lead_s: float, action: Callable[[], None]) -> None:
        self.shared = shared
        self.lead_s = lead_s
        self.action = action
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="storm", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> dict[str, Any]:
        self._thread.join(300)
        if self.error is not None:
            raise RuntimeError(f"the storm failed: {self.error!r}") from self.error
        return {}

    def _run(self) -> None:
        try:
            if not self.shared.go.wait(600):
                return
            at = self.shared.window[0] + self.lead_s
            while time.monotonic() < at:
                time.sleep(0.01)
            self.action()
        except BaseException as exc:  # reported by finish()
            self.error = exc


class _Pair:
    """Companions run as one (``drive`` takes one)."""

    def __init__(self, *parts: Any) -> None:
        self.parts = parts

    def start(self) -> None:
        for part in self.parts:
            part.start()

    def finish(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in self.parts:
            out.update(part.finish())
        return out


@scenario(
    "storm", "Connection storms (10,000 devices connect, then leave) beside steady devices and commands"
)
def connection_storm(ctx: Context) -> Result:
    sz = sizes(ctx)
    result = Result()
    n_steady, n_storm = sz.devices, sz.conn_devices
    scale = 0.1 if ctx.quick else 1.0
    lead_s, window_s = LEAD_S * scale, max(WINDOW_S * scale, sz.measure_s)
    gw, devices = start_gateway(ctx, "storm", n_steady + n_storm)
    steady_devices, storm_devices = devices[:n_steady], devices[n_steady:]
    commands = CommandProbe.of_gateway(gw)
    fleet = StormFleet(load_spec(ctx, gw.port, storm_devices, rate=SILENT_RATE, window=AGENT_WINDOW,
                                 connect_concurrency=STORM_CONCURRENCY, drain_s=5.0),
                       commands.api_port, commands.token)  # fmt: skip
    actions = {"quiet": None, "arrive": fleet.arrive, "leave": fleet.leave}
    runs: dict[str, Measurement] = {}
    clients: dict[str, CommandClient] = {}
    try:
        commands.start()
        try:
            for phase in PHASES:
                action = actions[phase]

                def companion(shared: Shared, action: Callable[[], None] | None = action) -> Any:
                    client = commands.companion(shared)
                    return client if action is None else _Pair(client, AtLead(shared, lead_s, action))

                spec = load_spec(ctx, gw.port, steady_devices, rate=STEADY_RATE, window=AGENT_WINDOW)
                runs[phase] = drive(ctx, f"{n_steady:,} steady devices, {STEADY_RATE:g} frames/s each: {phase}",
                                    gw.pid, spec, warmup_s=min(1.0, sz.warmup_s), measure_s=window_s,
                                    companion=companion)  # fmt: skip
                clients[phase] = commands.clients[-1]
        finally:
            fleet.leave()  # if a window failed before it
            commands.stop()
    finally:
        gw.stop()
    rows = gw.count_rows()
    ctx.done(gw.directory)
    blast = fleet.figures
    acked = sum(m.report.samples_acked for m in runs.values()) + blast.get("samples_acked", 0)
    result.checks["every acked reading is in the store, none twice"] = rows == acked
    for phase, m in runs.items():
        r = m.report
        result.checks[f"{phase}: no error frames, no unexpected closes"] = not r.errors and not r.closes
    result.checks["storm: every storm device connected"] = blast.get("connected") == n_storm
    result.checks["storm: no error frames, no unexpected closes"] = not blast.get("errors") and not blast.get(
        "closes"
    )
    result.checks["every command succeeded"] = all(
        c.hist.count > 0 and set(c.states) == {"succeeded"} and not c.http_errors for c in clients.values()
    )
    result.add("storm: devices connected", blast.get("connected", 0), "", f"{n_storm:,}",
               blast.get("connected") == n_storm,
               note=f"in {blast.get('connect_s', 0):.2f} s, handshake p99 "
                    f"{blast.get('handshake', {}).get('p99_ms') or 0:.1f} ms")  # fmt: skip
    result.checks["storm: every leaving session ended in the gateway"] = "sessions_ended_s" in blast
    result.add("storm: all closed", blast.get("leave_s", 0), "s")
    result.add("storm: their sessions ended in the gateway", blast.get("sessions_ended_s", 0), "s",
               note=f"polled every {SESSIONS_POLL_S:g} s")  # fmt: skip
    for phase in PHASES:
        hist = runs[phase].report.ack_hist
        result.add(f"steady ack p99, {phase}", ms_at(hist, 99), "ms",
                   note=f"p50 {fmt_ms(hist.percentile(50))}, longest {hist.max * 1000:.1f} ms, "
                        f"{runs[phase].frames_per_s:,.0f} frames/s")  # fmt: skip
    for phase in PHASES:
        hist = clients[phase].hist
        result.add(f"command RTT p99, {phase}", ms_at(hist, 99), "ms",
                   note=f"p50 {fmt_ms(hist.percentile(50))}, longest {hist.max * 1000:.1f} ms, "
                        f"{hist.count} commands")  # fmt: skip
    result.details = {"runs": {k: m.summary() for k, m in runs.items()}, "storm": blast,
                      "commands": {k: c.finish() for k, c in clients.items()}, "window_s": window_s,
                      "lead_s": lead_s}  # fmt: skip
    return result
