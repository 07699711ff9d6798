"""The agent: sample sensors on an interval, buffer frames on disk, stream them through the link.

Use::

    agent = Agent(load_config("agent.toml"))
    await agent.run()          # until agent.stop() or cancellation

:meth:`Agent.run` builds the hardware (:mod:`device_agent.hardware`), opens
the buffer, and runs three tasks: the link (:mod:`device_agent.link`), the
sampling loop and the status loop. Input sensors append ``event`` frames as
they change. On the way out, samples not yet in a frame are flushed to the
buffer, so the next run sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from device_agent.actuators import Actuators, open_actuators
from device_agent.buffer import FrameBuffer
from device_agent.commands import CommandRegistry, register_builtins, register_custom
from device_agent.config import AgentConfig
from device_agent.hardware import Hardware, open_hardware
from device_agent.link import Link, LinkSettings
from device_agent.sensors import Reading, SensorError
from iotgw_common._version import __version__
from iotgw_common.clock import now_ms
from iotgw_common.protocol import (
    PROTOCOL_VERSION,
    Hello,
    Readings,
    Sample,
    SensorInfo,
    Status,
    Welcome,
    encode,
)
from iotgw_common.protocol.messages import (
    MAX_FRAME_BYTES,
    MAX_STRING_LENGTH,
    MAX_VALUES,
    MIN_TIMESTAMP_MS,
    Value,
)

log = logging.getLogger(__name__)

AGENT_NAME = f"iotgw-agent/{__version__}"


class Agent:
    """One device's agent, built from an :class:`~device_agent.config.AgentConfig`.

    ``pin_factory``: a gpiozero pin factory for this agent's devices, or None
    for gpiozero's global one. ``link_settings`` overrides the connection
    parameters derived from the config (tests shorten delays with it).
    Everything but :meth:`stop` must be called from the event loop running
    :meth:`run`; :meth:`stop` may also be called through
    ``loop.call_soon_threadsafe``.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        pin_factory: Any = None,
        link_settings: LinkSettings | None = None,
    ) -> None:
        self.config = config
        self.interval = config.agent.interval
        self.commands = CommandRegistry()
        self._pin_factory = pin_factory
        self._link_settings = link_settings or LinkSettings(
            url=config.gateway.url,
            token=config.gateway.token,
            max_in_flight=config.agent.max_in_flight,
            backoff_base=config.agent.backoff_base,
            backoff_max=config.agent.backoff_max,
            ca_file=config.gateway.ca_file,
            tls_verify=config.gateway.tls_verify,
        )
        self.hardware: Hardware | None = None
        self.actuators: Actuators | None = None
        self.buffer: FrameBuffer | None = None
        self.link: Link | None = None
        self._batch: list[Sample] = []
        self._failing: set[str] = set()
        self._clock_warned = False
        self._stopping: asyncio.Event | None = None
        self._started = time.monotonic()
        self._info: dict[str, bool | int | float | str] = {}
        self.ready = asyncio.Event()
        """Set once the hardware and the buffer are open (tests and the demo wait on it)."""

    # -- public ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop` or cancellation; closes sensors and the buffer on the way out."""
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._started = time.monotonic()
        hardware = self.hardware = open_hardware(self.config, pin_factory=self._pin_factory)
        tasks: list[asyncio.Task[Any]] = []
        try:
            self._setup_commands(hardware)
            settings = self.config.agent
            buffer = self.buffer = FrameBuffer(
                settings.buffer_path,
                max_frames=settings.buffer_max_frames,
                synchronous=settings.buffer_synchronous,
            )
            stats = buffer.stats()
            log.info(
                "%s starting: device %s, %d sensors (%d skipped), buffer %s (stream %s, %d frames, %d dropped)",
                AGENT_NAME,
                self.config.gateway.device or "(from token)",
                len(hardware.sensors),
                len(hardware.failures),
                settings.buffer_path,
                buffer.stream,
                stats.buffered,
                stats.dropped,
            )
            self._info = self._describe(hardware)
            if self.actuators is not None and self.actuators.by_name:
                # "name:type,..." lets the gateway offer the outputs to Home Assistant (docs/mqtt.md)
                outputs = ",".join(f"{a.name}:{a.kind}" for a in self.actuators.by_name.values())
                self._info["outputs"] = outputs[:MAX_STRING_LENGTH]
            link = self.link = Link(
                self._link_settings, buffer, self._hello, self.commands, on_welcome=self._welcomed
            )
            for sensor in hardware.inputs:
                sensor.subscribe(loop, self._input_changed)
            if hardware.simulation is not None:
                hardware.simulation.start()
            self.ready.set()
            tasks = [
                asyncio.create_task(link.run(), name="iotgw-agent-link"),
                asyncio.create_task(self._sample_loop(), name="iotgw-agent-sampling"),
                asyncio.create_task(self._status_loop(), name="iotgw-agent-status"),
            ]
            stopper = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            tasks.append(stopper)
            for task in done:
                error = None if task is stopper or task.cancelled() else task.exception()
                if error is not None:
                    raise error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.actuators is not None:
                self.actuators.close()
            hardware.close()
            if self.buffer is not None:
                with contextlib.suppress(Exception):
                    self._flush()
                # Input callbacks already handed to the loop may still run: they see no buffer.
                buffer, self.buffer = self.buffer, None
                buffer.close()
            log.info("%s stopped", AGENT_NAME)

    def stop(self) -> None:
        """Ask :meth:`run` to return (after flushing pending samples to the buffer)."""
        if self._stopping is not None:
            self._stopping.set()

    async def read_now(self) -> Reading:
        """Sample every polled sensor now, buffer the sample at once; return the values.

        The ``read_now`` command calls it; requires :meth:`run` to be running.
        """
        values = await self._sample()
        self._flush()
        return values

    def _setup_commands(self, hardware: Hardware) -> None:
        """Build the actuators and register the built-in and configured commands (docs/commands.md)."""
        self.actuators = open_actuators(self.config, pin_factory=hardware.pin_factory)
        self.commands = CommandRegistry()
        register_builtins(
            self.commands,
            read_now=self.read_now,
            get_interval=lambda: self.interval,
            set_interval=self._set_interval,
            actuators=self.actuators,
        )
        register_custom(self.commands, self.config.commands)

    def _set_interval(self, seconds: float) -> None:
        log.info("sampling interval set to %g s by a command", seconds)
        self.interval = seconds

    # -- sampling ----------------------------------------------------------------------------

    async def _sample_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self._sample()
            if len(self._batch) >= self.config.agent.samples_per_frame:
                self._flush()
            next_at += self.interval
            delay = next_at - loop.time()
            if delay < 0:  # reads took longer than the interval: skip, do not burst
                next_at = loop.time()
                delay = 0.0
            await asyncio.sleep(delay)

    async def _sample(self) -> Reading:
        ts = now_ms()
        values = await asyncio.to_thread(self._read_polled)
        if not values:
            return values
        if ts < MIN_TIMESTAMP_MS:
            if not self._clock_warned:
                self._clock_warned = True
                log.warning(
                    "the system clock is not set (before 2000); samples are skipped until NTP sets it"
                )
            return values
        self._batch.append(Sample(ts=ts, values=values))
        return values

    def _read_polled(self) -> Reading:
        """Read every polled sensor (worker thread); a failing sensor is logged once, not fatal."""
        assert self.hardware is not None
        values: Reading = {}
        for sensor in self.hardware.polled:
            try:
                values.update(sensor.read())
            except SensorError as exc:
                if sensor.label not in self._failing:
                    self._failing.add(sensor.label)
                    log.warning("cannot read %s: %s (will keep trying, logged once)", sensor.label, exc)
            else:
                if sensor.label in self._failing:
                    self._failing.discard(sensor.label)
                    log.info("%s reads again", sensor.label)
        return values

    def _flush(self) -> None:
        """Turn the batched samples into readings frames in the buffer and wake the link."""
        if not self._batch or self.buffer is None:
            return
        samples, self._batch = self._batch, []
        for chunk in split_samples(samples):
            self.buffer.append_readings(chunk)
        if self.link is not None:
            self.link.notify()

    def _input_changed(self, name: str, data: dict[str, Value], ts: int) -> None:
        """An input sensor changed (runs on the loop, handed over by the sensor)."""
        if self.buffer is None or ts < MIN_TIMESTAMP_MS:
            return
        seq = self.buffer.append_event(name, ts, data)
        log.info("event %s %s (seq %d)", name, data, seq)
        if self.link is not None:
            self.link.notify()

    # -- status, hello ----------------------------------------------------------------------

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.agent.status_interval)
            assert self.buffer is not None and self.link is not None
            stats = self.buffer.stats()
            info: dict[str, bool | int | float | str] = {
                "uptime_s": int(time.monotonic() - self._started),
                "sessions": self.link.sessions,
                "sensors_failing": len(self._failing),
                "interval_s": self.interval,
            }
            if "outputs" in self._info:  # a status's info replaces hello's in the gateway's registry
                info["outputs"] = self._info["outputs"]
            await self.link.send_status(Status(buffered=stats.buffered, dropped=stats.dropped, info=info))

    def _hello(self) -> Hello:
        assert self.buffer is not None and self.hardware is not None
        stats = self.buffer.stats()
        sensors: list[SensorInfo] = [info for sensor in self.hardware.sensors for info in sensor.declare()]
        if len(sensors) > MAX_VALUES:
            log.warning("declaring only the first %d of %d metrics in hello", MAX_VALUES, len(sensors))
            sensors = sensors[:MAX_VALUES]
        return Hello(
            stream=self.buffer.stream,
            agent=AGENT_NAME,
            protocol=PROTOCOL_VERSION,
            device=self.config.gateway.device,
            last_acked=self.buffer.last_acked,
            sensors=sensors,
            commands=self.commands.declare(),
            buffered=stats.buffered,
            dropped=stats.dropped,
            info={**self._info, "interval_s": self.interval},
        )

    def _welcomed(self, welcome: Welcome) -> None:
        interval = welcome.settings.get("interval_s")
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
            if interval != self.interval:
                log.info("gateway sets the sampling interval to %s s", interval)
            self.interval = float(interval)

    def _describe(self, hardware: Hardware) -> dict[str, bool | int | float | str]:
        info: dict[str, bool | int | float | str] = {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "hostname": socket.gethostname(),
            "pin_factory": hardware.describe_factory(),
            "simulated": hardware.simulation is not None,
            "sensors_skipped": len(hardware.failures),
        }
        model = Path("/proc/device-tree/model")
        with contextlib.suppress(OSError):
            info["model"] = model.read_text(encoding="ascii", errors="replace").strip("\x00\n ")
        return {
            key: value[:MAX_STRING_LENGTH] if isinstance(value, str) else value for key, value in info.items()
        }


def split_samples(samples: list[Sample], max_bytes: int = MAX_FRAME_BYTES) -> Iterable[list[Sample]]:
    """Split samples into frames the gateway accepts: <= MAX_VALUES values each, <= max_bytes encoded."""
    flat: list[Sample] = []
    for sample in samples:
        items = list(sample.values.items())
        if len(items) <= MAX_VALUES:
            flat.append(sample)
        else:
            flat.extend(
                Sample(ts=sample.ts, values=dict(items[i : i + MAX_VALUES]))
                for i in range(0, len(items), MAX_VALUES)
            )
    pending = [flat]
    while pending:
        chunk = pending.pop(0)
        if len(chunk) > 1 and len(encode(Readings(seq=2**53 - 1, samples=chunk))) > max_bytes:
            middle = len(chunk) // 2
            pending[0:0] = [chunk[:middle], chunk[middle:]]
            continue
        yield chunk


__all__ = ["AGENT_NAME", "Agent", "split_samples"]
