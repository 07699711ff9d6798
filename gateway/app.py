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
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import store
from gateway.config import GatewayConfig
from gateway.device.runtime import RuntimePolicy
from gateway.device.server import DEVICE_PATH, DeviceServer
from gateway.integrations.engine import DeliveryEngine
from gateway.integrations.influx.sink import EVENTS_CURSOR, READINGS_CURSOR, InfluxSink
from gateway.integrations.mqtt.bridge import MqttBridge
from gateway.integrations.mqtt.sink import EVENTS_CURSOR as MQTT_EVENTS_CURSOR
from gateway.integrations.mqtt.sink import READINGS_CURSOR as MQTT_READINGS_CURSOR
from gateway.operator.commands import CommandService
from gateway.operator.feed import Feed
from gateway.operator.mqtt_commands import MqttCommands
from gateway.store import registry
from gateway.store.checkpoints import Checkpointer
from gateway.store.ledger_writer import LedgerWriter
from gateway.store.retention import run_retention
from gateway.store.writer import GroupCommitter
from iotgw_common import tls

if TYPE_CHECKING:
    from gateway.fleet.node import FleetNode
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
        self.ledger_writer: LedgerWriter | None = None
        self.checkpointer: Checkpointer | None = None
        self.devices: DeviceServer | None = None
        self.forwarder: DeliveryEngine | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self.commands: CommandService | None = None
        self.api: OperatorApi | None = None
        self.feed: Feed | None = None
        self.mqtt: MqttBridge | None = None
        self.mqtt_commands: MqttCommands | None = None
        self.fleet: FleetNode | None = None
        """This gateway in a fleet ([fleet], docs/scale-out.md); None when it runs alone."""
        self.tls: ssl.SSLContext | None = None
        """The one server TLS context of both ports ([tls]); None serves clear text."""

    async def start(self) -> None:
        cfg = self.config
        if cfg.tls.enabled:  # first: a bad certificate fails start() before anything opens (TlsError)
            self.tls = tls.server_context(cfg.tls.cert, cfg.tls.key, min_version=cfg.tls.min_version)
        # the ledger file read-only here: the group commits' BEGIN IMMEDIATE would lock it too
        self._write_conn = store.connect(
            self.store_path, synchronous=cfg.store.synchronous, ledger_writable=False
        )
        self._read_conn = store.connect(self.store_path, synchronous=cfg.store.synchronous)
        self.checkpointer = Checkpointer(self.store_path)  # before the writer's first commit
        self.checkpointer.start(self._write_conn)
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
        self.ledger_writer = LedgerWriter(self.store_path, synchronous=cfg.store.synchronous)
        self.ledger_writer.start()  # the command ledger's own file and writer thread
        self.commands = CommandService(  # loads queued commands before devices connect
            self.committer, self.ledger_writer, max_open_per_device=cfg.api.max_open_commands
        )
        await self.commands.start()
        if cfg.mqtt.enabled:  # before the device plane: mqtt.required fails fast (docs/mqtt.md)
            bridge = MqttBridge(cfg.mqtt, self.store_path, self.committer, self._read_conn)
            if cfg.mqtt.commands:
                self.mqtt_commands = MqttCommands(bridge, self.commands, cfg.mqtt)
                self.mqtt_commands.start()
            try:
                await bridge.start()
            except BaseException:
                await self.stop()
                raise
            self.mqtt = bridge
        self.devices = DeviceServer(cfg.device, self._read_conn, self.committer)
        self.devices.observers.append(self.commands)  # session_ready, result_received, session_closed
        self.devices.presence_observers.append(self.feed.presence)  # online/offline in the live feed
        self.devices.removal_observers.append(self.commands.device_removed)  # its open commands fail
        if self.mqtt is not None:  # retained availability, discovery
            self.devices.presence_observers.append(self.mqtt.presence)
        self.commands.state_observers.append(self.feed.command_changed)
        if cfg.fleet.enabled:  # after the command service, before devices connect
            from gateway.fleet.node import FleetNode

            self.fleet = FleetNode(cfg.mqtt, cfg.fleet, self.commands, self.committer, self._read_conn)
            self.devices.presence_observers.append(self.fleet.presence)
            await self.fleet.start()
        await self.devices.start(self.tls)
        if cfg.api.enabled:
            from gateway.operator.api import OperatorApi

            api = OperatorApi(
                cfg.api,
                self.commands,
                self.devices,
                self.committer,
                self.store_path,
                feed=self.feed,
                ssl_context=self.tls,
            )
            if self.mqtt is not None:
                api.live_status["mqtt"] = self.mqtt.status
            if self.fleet is not None:  # which gateway holds each device (/api/v1/devices), status
                api.locate = self.fleet.locate
                api.live_status["fleet"] = self.fleet.status
            try:
                await api.start()
            except BaseException:
                await self.stop()
                raise
            self.api = api
        # rows a sink that is on has not delivered yet stay, however old
        readings_cursors, events_cursors = [], []
        for settings, readings_cursor, events_cursor in (
            (cfg.influx, READINGS_CURSOR, EVENTS_CURSOR),
            (cfg.mqtt, MQTT_READINGS_CURSOR, MQTT_EVENTS_CURSOR),
        ):
            if settings.enabled:
                readings_cursors.append(readings_cursor)
                if settings.events:
                    events_cursors.append(events_cursor)
        retain = run_retention(
            self.committer,
            cfg.store.retention_days,
            readings_cursor=readings_cursors,
            events_cursor=events_cursors,
            command_days=cfg.store.command_days,
            ledger_writer=self.ledger_writer,
            dead_letter_days=cfg.store.dead_letter_days,
        )
        self._housekeeping = asyncio.create_task(retain, name="retention")

    @property
    def device_url(self) -> str:
        assert self.devices is not None
        host = self.config.device.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        scheme = "wss" if self.tls is not None else "ws"
        return f"{scheme}://{shown}:{self.devices.port}{DEVICE_PATH}"

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
        if self.fleet is not None:  # after the devices: peers hear this gateway leave
            await self.fleet.stop()
            self.fleet = None
        if self.mqtt_commands is not None:
            self.mqtt_commands.stop()
            self.mqtt_commands = None
        if self.mqtt is not None:  # after the devices: their "offline" goes out, then the gateway's
            await self.mqtt.stop()
            self.mqtt = None
        if self.commands is not None:  # queued commands stay queued in the store
            await self.commands.stop()
            self.commands = None
        if self.ledger_writer is not None:  # after the command service's last writes
            await self.ledger_writer.stop()
            self.ledger_writer = None
        if self.committer is not None:
            await self.committer.stop()
            self.committer = None
        if self.checkpointer is not None:
            await asyncio.to_thread(self.checkpointer.stop)
            self.checkpointer = None
        for conn in (self._read_conn, self._write_conn):
            if conn is not None:
                conn.close()
        self._read_conn = self._write_conn = None

    def _device_name(self, device_id: int) -> str | None:
        if self._read_conn is None:
            return None
        record = registry.find_by_id(self._read_conn, device_id)
        return None if record is None else record.name

    def _device_connections(self) -> int:
        """Device sessions open now (the runtime policy's count of live connections)."""
        return 0 if self.devices is None else len(self.devices.sessions)

    async def run_until_signalled(self) -> None:
        """Serve until SIGINT or SIGTERM, then shut down gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # process-wide: only where the gateway owns the process
        runtime = RuntimePolicy.from_environment(connections=self._device_connections)
        runtime.start()
        try:
            await stop.wait()
            log.info("shutting down: closing device connections, committing queued readings")
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await runtime.stop()
            await self.stop()
