"""The gateway process: store, group committer, device server, housekeeping.

``Gateway(config)`` wires the parts; ``await start()`` opens them in order,
``await stop()`` closes them in reverse, uvicorn-style: stop accepting, tell
every device it is going away, commit what is queued, close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sqlite3
import time
from pathlib import Path

from . import store
from .config import GatewayConfig
from .device_server import DEVICE_PATH, DeviceServer
from .ingest import GroupCommitter

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0


class Gateway:
    """One gateway process; the caller awaits ``start()`` then ``stop()``."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.store_path = Path(config.store.path)
        self._write_conn: sqlite3.Connection | None = None
        self._read_conn: sqlite3.Connection | None = None
        self.committer: GroupCommitter | None = None
        self.devices: DeviceServer | None = None
        self._housekeeping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cfg = self.config
        self._write_conn = store.connect(self.store_path, synchronous=cfg.store.synchronous)
        self._read_conn = store.connect(self.store_path, synchronous=cfg.store.synchronous)
        self.committer = GroupCommitter(self._write_conn, max_pending_samples=cfg.store.max_pending_samples)
        self.committer.start()
        self.devices = DeviceServer(cfg.device, self._read_conn, self.committer)
        await self.devices.start()
        self._housekeeping = asyncio.create_task(self._retention_loop(), name="retention")

    @property
    def device_url(self) -> str:
        assert self.devices is not None
        host = self.config.device.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        return f"ws://{shown}:{self.devices.port}{DEVICE_PATH}"

    async def stop(self) -> None:
        """Close in reverse order; safe to call twice."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
            self._housekeeping = None
        if self.devices is not None:
            await self.devices.stop()
            self.devices = None
        if self.committer is not None:
            await self.committer.stop()
            self.committer = None
        for conn in (self._read_conn, self._write_conn):
            if conn is not None:
                conn.close()
        self._read_conn = self._write_conn = None

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

    async def _retention_loop(self) -> None:
        days = self.config.store.retention_days
        if days <= 0:
            return
        while True:
            assert self.committer is not None
            cutoff = int((time.time() - days * 86400) * 1000)
            deleted = await self.committer.call(functools.partial(delete_older_than, cutoff_ms=cutoff))
            if deleted:
                log.info("retention: deleted %d readings older than %g days", deleted, days)
            await asyncio.sleep(RETENTION_EVERY_S)


def delete_older_than(conn: sqlite3.Connection, cutoff_ms: int) -> int:
    """Delete readings and events stamped before ``cutoff_ms``; returns readings deleted.

    Works device by device through the (device_id, ts) indexes, one short
    transaction each, so ingest is never blocked for long.
    """
    deleted = 0
    device_ids = [row[0] for row in conn.execute("SELECT DISTINCT device_id FROM readings")]
    for device_id in device_ids:
        conn.execute("BEGIN")
        deleted += conn.execute(
            "DELETE FROM readings WHERE device_id = ? AND ts < ?", (device_id, cutoff_ms)
        ).rowcount
        conn.execute("DELETE FROM events WHERE device_id = ? AND ts < ?", (device_id, cutoff_ms))
        conn.execute("COMMIT")
    return deleted
