"""The gateway process: store, group committer, device server, housekeeping.

``Gateway(config)`` wires the parts; ``await start()`` opens them in order,
``await stop()`` closes them in reverse, uvicorn-style: stop accepting, tell
every device it is going away, commit what is queued, close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import store
from gateway.config import GatewayConfig
from gateway.device.server import DEVICE_PATH, DeviceServer
from gateway.integrations.engine import DeliveryEngine
from gateway.integrations.influx.sink import EVENTS_CURSOR, READINGS_CURSOR, InfluxSink
from gateway.operator.commands import CommandService
from gateway.operator.feed import Feed
from gateway.store import registry
from gateway.store.retention import run_retention
from gateway.store.writer import GroupCommitter

if TYPE_CHECKING:
    from gateway.operator.api import OperatorApi

log = logging.getLogger(__name__)


class Gateway:
    """One gateway process; the caller awaits ``start()`` then ``stop()``."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.store_path = Path(config.store.path)
        self._write_conn: sqlite3.Connection | None = None
        self._read_conn: sqlite3.Connection | None = None
        self.committer: GroupCommitter | None = None
        self.devices: DeviceServer | None = None
        self.forwarder: DeliveryEngine | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self.commands: CommandService | None = None
        self.api: OperatorApi | None = None
        self.feed: Feed | None = None

    async def start(self) -> None:
        cfg = self.config
        self._write_conn = store.connect(self.store_path, synchronous=cfg.store.synchronous)
        self._read_conn = store.connect(self.store_path, synchronous=cfg.store.synchronous)
        self.committer = GroupCommitter(self._write_conn, max_pending_samples=cfg.store.max_pending_samples)
        self.committer.start()
        self.feed = Feed(queue_size=cfg.api.feed_queue, resolve_name=self._device_name)  # docs/live.md
        self.committer.listener = self.feed
        if cfg.influx.enabled:  # before the device plane: influx.required fails fast
            forwarder = DeliveryEngine(InfluxSink(cfg.influx), cfg.influx, self.store_path, self.committer)
            try:
                await forwarder.start()
            except BaseException:
                await self.stop()
                raise
            self.forwarder = forwarder
        self.commands = CommandService(self.committer)  # loads queued commands before devices connect
        await self.commands.start()
        self.devices = DeviceServer(cfg.device, self._read_conn, self.committer)
        self.devices.observers.append(self.commands)  # session_ready, result_received, session_closed
        self.devices.presence_observers.append(self.feed.presence)  # online/offline in the live feed
        self.commands.state_observers.append(self.feed.command_changed)
        await self.devices.start()
        if cfg.api.enabled:
            from gateway.operator.api import OperatorApi

            api = OperatorApi(
                cfg.api, self.commands, self.devices, self.committer, self.store_path, feed=self.feed
            )
            try:
                await api.start()
            except BaseException:
                await self.stop()
                raise
            self.api = api
        influx = cfg.influx
        retain = run_retention(
            self.committer,
            cfg.store.retention_days,
            readings_cursor=READINGS_CURSOR if influx.enabled else None,
            events_cursor=EVENTS_CURSOR if influx.enabled and influx.events else None,
        )
        self._housekeeping = asyncio.create_task(retain, name="retention")

    @property
    def device_url(self) -> str:
        assert self.devices is not None
        host = self.config.device.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        return f"ws://{shown}:{self.devices.port}{DEVICE_PATH}"

    async def stop(self) -> None:
        """Close in reverse order; safe to call twice."""
        if self.feed is not None:  # live feed subscribers are told the gateway is going away
            self.feed.close()
        if self.api is not None:  # operators first: no request runs while the rest closes
            await self.api.stop()
            self.api = None
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
            self._housekeeping = None
        if self.forwarder is not None:  # what it has not confirmed stays in the store
            await self.forwarder.stop()
            self.forwarder = None
        if self.devices is not None:
            await self.devices.stop()
            self.devices = None
        if self.commands is not None:  # queued commands stay queued in the store
            await self.commands.stop()
            self.commands = None
        if self.committer is not None:
            await self.committer.stop()
            self.committer = None
        for conn in (self._read_conn, self._write_conn):
            if conn is not None:
                conn.close()
        self._read_conn = self._write_conn = None

    def _device_name(self, device_id: int) -> str | None:
        if self._read_conn is None:
            return None
        record = registry.find_by_id(self._read_conn, device_id)
        return None if record is None else record.name

    async def run_until_signalled(self) -> None:
        """Serve until SIGINT or SIGTERM, then shut down gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
            log.info("shutting down: closing device connections, committing queued readings")
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.stop()
