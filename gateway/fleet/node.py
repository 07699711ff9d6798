"""This gateway as a member of the fleet: its fleet connection, presence, routing and registry.

``FleetNode(settings, fleet_settings, commands, committer, read_conn)``; register
:meth:`presence` as a presence observer of the device plane, ``await start()``, later
``await stop()``. ``gateway.app`` does this when ``[fleet] enabled`` (docs/scale-out.md).

The node has its own broker connection (client id ``<mqtt client id>-fleet``), so fleet
traffic never waits behind the bridge's backlog of readings, and its last will is a
*non-retained* "offline" on ``<prefix>/fleet/status/<gateway>``. It

* announces the devices it holds (``Presence``, QoS 1, not retained) every
  ``announce_interval`` and at once after a change; it reads the peers' announcements into
  a :class:`~gateway.fleet.peers.PeerTable`;
* gives the command service a :class:`~gateway.fleet.routing.RemoteSession` for each device a
  peer holds and this gateway does not, so queued and new commands go to the holder; a
  local connection always wins (the device server's ``session_ready`` replaces it, and the
  remote one is offered again when the local connection ends);
* serves commands forwarded to it and sends their outcomes back (``CommandRouter``);
* replicates the registry (``RegistrySync``);
* shares what the devices it holds declared in their hello (``DeclaredSync``): it sees their
  metadata through a :class:`~gateway.fleet.declared.MetadataTap` put in front of the group
  committer's listener while the node runs, and writes its peers' into ``devices``.

:meth:`locate` answers "which gateway holds this device" for the API and ``iotgw devices``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from typing import Any

import msgspec
import paho.mqtt.client as paho

from gateway.config import FleetSettings, MqttSettings
from gateway.fleet.declared import DeclaredSync, MetadataTap
from gateway.fleet.peers import PeerTable
from gateway.fleet.registry_sync import RegistrySync
from gateway.fleet.routing import CommandRouter, RemoteSession
from gateway.fleet.wire import (
    Declarations,
    DeviceHeld,
    FleetTopics,
    ForwardedCommand,
    ForwardedResult,
    Presence,
    RegistryUpdate,
    SyncRequest,
    decode,
    encode,
)
from gateway.integrations.mqtt.client import MqttConnection
from gateway.operator.commands import CommandService
from gateway.store import registry
from gateway.store.fleet import FleetEntry
from gateway.store.registry import DeviceRecord
from gateway.store.writer import GroupCommitter
from iotgw_common.clock import now_ms
from iotgw_common.protocol import CommandInfo, Hello

__all__ = ["FleetNode"]

log = logging.getLogger(__name__)

FLEET_LEVEL = "fleet"
"""The topic level of the fleet's topics (``<prefix>/fleet/...``): no gateway may be named so."""
COALESCE_S = 0.02
"""Changes within this long go out in one announcement."""


class FleetNode:
    """See the module docstring. Call everything from the gateway's event loop."""

    def __init__(self, mqtt: MqttSettings, settings: FleetSettings, commands: CommandService,
                 committer: GroupCommitter, read_conn: sqlite3.Connection) -> None:  # fmt: skip
        if mqtt.gateway == FLEET_LEVEL:
            raise ValueError(f"mqtt.gateway must not be {FLEET_LEVEL!r} in a fleet: its topics live there")
        self.settings = settings
        self.name = mqtt.gateway
        self.topics = FleetTopics(mqtt.prefix, mqtt.gateway)
        client_id = f"{mqtt.client_id or f'iotgw-{mqtt.gateway}'}-fleet"
        self.connection = MqttConnection(
            mqtt, client_id=client_id, will=(self.topics.status, b"offline"), will_retain=False
        )
        self.connection.subscriptions.extend((topic, 1) for topic in self.topics.subscriptions())
        self.connection.on_message = self._message
        self.connection.on_connected.append(self._connected)
        self.commands = commands
        self._conn = read_conn
        self.peers = PeerTable(timeout_ms=round(settings.presence_timeout * 1000))
        self.router = CommandRouter(commands, self.topics, self._publish, self._find)
        self.registry = RegistrySync(self.topics, committer, read_conn, self._publish,
                                     interval=settings.registry_interval)  # fmt: skip
        self._local: dict[str, DeviceHeld] = {}  # devices connected here
        self._remote: dict[str, RemoteSession] = {}  # devices a peer holds, as the service sees them
        self._offered: set[str] = set()  # names whose RemoteSession is the service's ready session
        self.registry.applied_observers.append(self._registry_applied)
        self.declared = DeclaredSync(self.topics, committer, self._publish, self._find)
        self._committer = committer
        self._tap: MetadataTap | None = None
        self._wake = asyncio.Event()
        self._announcer: asyncio.Task[None] | None = None
        self._was_connected = False

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background, start announcing and replicating."""
        self._tap = MetadataTap(self._committer.listener, self.declared.meta)
        self._committer.listener = self._tap
        await self.connection.start()
        self.registry.start()
        self._announcer = asyncio.create_task(self._announce_loop(), name="fleet-presence")

    async def stop(self) -> None:
        """Tell the peers this gateway leaves, disconnect. Safe to call twice."""
        if self._announcer is not None:
            self._announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._announcer
            self._announcer = None
        self.router.stop()
        self.declared.stop()
        tap, self._tap = self._tap, None
        if tap is not None:  # put the feed back alone
            inner = tap.inner
            if self._committer.listener is tap:
                self._committer.listener = inner
        await self.registry.stop()
        if self.connection.connected:
            leaving = Presence(gateway=self.name, interval_ms=0, leaving=True)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._publish(self.topics.presence, encode(leaving))
                    await self._publish(self.topics.status, b"offline")
        await self.connection.stop()

    def status(self) -> dict[str, Any]:
        """The fleet's state for /api/v1/status."""
        return {
            "gateway": self.name,
            "connected": self.connection.connected,
            "peers": self.peers.gateways,
            "devices_here": len(self._local),
            "devices_elsewhere": len(self.peers.held()),
            "commands_forwarded": self.router.forwarded,
            "commands_served": self.router.served,
            "registry_published": self.registry.published,
            "registry_applied": self.registry.applied,
            "declarations_published": self.declared.published,
            "declarations_applied": self.declared.applied,
        }

    def locate(self, name: str) -> str | None:
        """The gateway that holds device ``name`` now (this one's name if it is here), or None."""
        if name in self._local:
            return self.name
        found = self.peers.holder(name)
        return None if found is None else found[0]

    # -- the device plane's presence -------------------------------------------------------------

    def presence(self, device_id: int, name: str, online: bool, peer: str | None) -> None:
        """A device-plane presence observer (after the session observers: its hello is known)."""
        if online:
            record = registry.find_by_id(self._conn, device_id)
            declared = sorted(self.commands.declared_commands(record) or ()) if record else []
            since = now_ms()
            self._local[name] = DeviceHeld(name=name, since_ms=since, commands=declared)
            self._offered.discard(name)  # the local session replaced the remote one
            self.declared.held(device_id, name, since, record)
        else:
            self._local.pop(name, None)
            self.declared.released(device_id, name)
            self._reconcile(name)  # a peer may hold it now
        self._wake.set()

    # -- routing ---------------------------------------------------------------------------------

    def _reconcile(self, name: str) -> None:
        """Make the command service's view of ``name`` match the fleet's."""
        holder = None if name in self._local else self.peers.holder(name)
        current = self._remote.get(name)
        if current is not None and (holder is None or holder[0] != current.gateway):
            del self._remote[name]
            self._offered.discard(name)
            self.router.session_gone(current)
            self.commands.session_closed(current)  # its commands in flight fail
            current = None
        if holder is None:
            return
        gateway, held = holder
        if current is None:
            record = self._find(name)
            if record is None:
                return  # not in this gateway's registry (yet): the next announcement tries again
            current = self._remote[name] = RemoteSession(self.router, record, gateway)
        hello = Hello(stream="fleet", agent=f"fleet:{gateway}",
                      commands=[CommandInfo(name=c) for c in held.commands])  # fmt: skip
        if name not in self._offered or held.commands != current.declared:
            current.declared = held.commands
            self._offered.add(name)
            self.commands.session_ready(current, hello)  # delivers its queue to the holder

    def _registry_applied(self, entries: list[FleetEntry]) -> None:
        """A peer's rows changed ``devices``: a device removed or added again has a new id here."""
        self.declared.retry([e.name for e in entries if not e.removed])
        for e in entries:
            current = self._remote.get(e.name)
            found = self._find(e.name)
            if current is not None and (found is None or found.id != current.record.id):
                del self._remote[e.name]
                self._offered.discard(e.name)
                self.router.session_gone(current)
                self.commands.session_closed(current)
            self._reconcile(e.name)

    def _find(self, name: str) -> DeviceRecord | None:
        return registry.find_by_name(self._conn, name)

    # -- the fleet connection -----------------------------------------------------------------------

    async def _publish(self, topic: str, payload: bytes) -> None:
        await self.connection.publish(topic, payload, qos=1)

    def _connected(self) -> None:
        self._was_connected = True
        self.connection.publish_nowait(self.topics.status, b"online", qos=1)
        self.registry.joined()
        self.declared.rejoined()
        self._wake.set()

    def _message(self, message: paho.MQTTMessage) -> None:
        gateway = self.topics.status_gateway(message.topic)
        if gateway is not None:
            if gateway != self.name and message.payload == b"offline":
                log.info("fleet: gateway %s is offline", gateway)
                self._changed(self.peers.forget(gateway))
            elif gateway != self.name:
                self._wake.set()  # a peer (re)joined: let it know what is here soon
            return
        try:
            body = decode(message.payload)
        except msgspec.DecodeError as exc:  # ValidationError is one too: a peer of another version
            log.warning("fleet: bad message on %s: %s", message.topic, exc)
            return
        if isinstance(body, Presence):
            if body.gateway != self.name:
                changed = self.peers.update(body, now_ms())
                # and the devices not offered yet (not in this registry at the last announcement)
                waiting = {
                    d.name for d in body.devices if d.name not in self._remote and d.name not in self._local
                }
                self._changed(changed | waiting)
        elif isinstance(body, Declarations):
            if body.gateway != self.name:
                self.declared.received(body)
        elif isinstance(body, RegistryUpdate):
            if body.gateway != self.name:
                self.registry.received(body)
        elif isinstance(body, SyncRequest):
            if body.gateway != self.name:
                self.registry.sync_requested(body.gateway)
                self.declared.answer(body.gateway)
                self._wake.set()
        elif isinstance(body, ForwardedCommand):
            self.router.serve(body)
        elif isinstance(body, ForwardedResult):
            self.router.result(body)

    def _changed(self, names: set[str]) -> None:
        for name in sorted(names):
            self._reconcile(name)

    async def _announce_loop(self) -> None:
        interval = self.settings.announce_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            await asyncio.sleep(COALESCE_S)
            self._wake.clear()
            _, names = self.peers.expire(now_ms())
            self._changed(names)
            if not self.connection.connected:
                if self._was_connected:  # the broker is away: nobody can be reached through it
                    self._was_connected = False
                    self._changed(self.peers.clear())
                continue
            presence = Presence(gateway=self.name, interval_ms=round(interval * 1000),
                                devices=list(self._local.values()))  # fmt: skip
            try:
                await self._publish(self.topics.presence, encode(presence))
                await self.declared.publish_due()  # after the claims they belong to
            except Exception as exc:  # lost meanwhile: the next round
                log.info("fleet: announcing presence failed: %s", exc)
