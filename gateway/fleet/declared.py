"""What devices declared in their hello, shared with the peers (docs/scale-out.md, "Declarations").

A device says hello to the gateway it connects to; the others never see it. This module gives
every gateway of the fleet the declarations (``agent``, ``sensors``, ``commands``, ``info``) of
the devices its peers hold, so ``GET /api/v1/devices``, ``iotgw devices``, the web page's
controls and the command service's checks work on any gateway as on the holder.

The holder's side: a :class:`MetadataTap` in front of the group committer's listener shows
it each device's metadata as the device plane submits it (the hello before the session is
ready, each status frame's ``info``). When the session is ready (:meth:`DeclaredSync.held`)
the device's :class:`~gateway.fleet.wire.DeviceDeclared` is due at once; a status that changes
``info`` makes it due again, at most every ``INFO_REFRESH_S`` per device (health figures move
with every status frame; the outputs a page needs come with the hello). ``FleetNode``'s
announcement loop publishes what is due (:meth:`due`) on ``<prefix>/fleet/declared``, after
the presence announcement; a joining gateway's sync request is answered with every held
device's declarations on ``<prefix>/fleet/gateway/<joiner>/declared`` (:meth:`answer`).

The peers' side (:meth:`received`): a declaration is written to the local ``devices`` row
(``agent``, ``sensors``, ``commands``, ``info``: the columns a local hello sets) through the
group committer, unless this gateway holds the device itself or already applied a newer
session's (``since_ms``). The store, not memory, because the row is where every reader already
looks (the API and CLI listing, the command service's declared-commands check for a device
that is offline, the live feed that tells open pages), and a device that left the fleet keeps
its last declarations on every gateway, as it keeps them on the one it left. A declaration for
a device not in this registry yet (its row is still on the way) waits for it (:meth:`retry`).

Call everything from the gateway's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from gateway.fleet.wire import Declarations, DeviceDeclared, FleetTopics, encode
from gateway.store.registry import DeviceRecord
from gateway.store.writer import CommitListener, GroupCommitter
from iotgw_common.clock import now_ms

__all__ = ["CHUNK_BYTES", "INFO_REFRESH_S", "DeclaredSync", "MetadataTap", "chunks"]

log = logging.getLogger(__name__)

INFO_REFRESH_S = 30.0
"""A held device's declarations go out again at most this often when only status ``info`` moved."""
CHUNK_BYTES = 65_536
"""Declarations per message up to about this many bytes (a device's alone may be larger: it is
bounded by its hello frame, at most 64 KiB of JSON, and goes in a message of its own)."""
PENDING_KEPT = 10_000
"""Declarations kept for devices not in this registry yet (their rows arrive within seconds)."""

Publish = Callable[[str, bytes], Awaitable[Any]]
_WRITTEN = ("agent", "sensors", "commands", "info")
"""The ``devices`` columns a declaration sets (what a local hello sets, besides its counters)."""


class MetadataTap:
    """The group committer's listener, passed on, with device metadata shown to ``observe``."""

    def __init__(self, inner: CommitListener | None, observe: Callable[[int, dict[str, Any]], None]) -> None:
        self.inner = inner
        self._observe = observe

    def committed(self, frames: list[Any]) -> None:
        if self.inner is not None:
            self.inner.committed(frames)

    def device_meta(self, device_id: int, fields: dict[str, Any]) -> None:
        if self.inner is not None:
            self.inner.device_meta(device_id, fields)
        self._observe(device_id, fields)


class DeclaredSync:
    """Both sides of the shared declarations; see the module docstring."""

    def __init__(self, topics: FleetTopics, committer: GroupCommitter, publish: Publish,
                 find_device: Callable[[str], DeviceRecord | None],
                 clock: Callable[[], int] = now_ms) -> None:  # fmt: skip
        self.topics = topics
        self._clock = clock
        self._committer = committer
        self._publish = publish
        self._find = find_device
        # the holder's side
        self._hellos: dict[int, dict[str, Any]] = {}  # device id -> its hello's metadata, until ready
        self._held: dict[int, str] = {}  # device id -> name, for devices held here
        self._mine: dict[str, DeviceDeclared] = {}  # name -> what it declared, devices held here
        self._sent_ms: dict[str, int] = {}  # name -> when its declarations last went out
        self._due: dict[str, int] = {}  # name -> when its declarations are due
        # the peers' side
        self._since: dict[str, int] = {}  # name -> the newest session whose declarations are applied
        self._pending: OrderedDict[str, DeviceDeclared] = OrderedDict()  # not in this registry yet
        self._writing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.published = 0
        self.applied = 0

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # -- the holder's side ------------------------------------------------------------------

    def meta(self, device_id: int, fields: dict[str, Any]) -> None:
        """The device plane stored metadata of a device (through :class:`MetadataTap`)."""
        if self._writing:
            return  # a peer's declarations this module writes
        if "agent" in fields:  # a hello: its session becomes ready next (``held``)
            self._hellos[device_id] = fields
            return
        name = self._held.get(device_id)
        if name is None or "info" not in fields:
            return
        mine = self._mine[name]
        if fields["info"] == mine.info:
            return
        self._mine[name] = msgspec.structs.replace(mine, info=dict(fields["info"]))
        if name not in self._due:
            self._due[name] = self._sent_ms.get(name, 0) + round(INFO_REFRESH_S * 1000)

    def held(self, device_id: int, name: str, since_ms: int, record: DeviceRecord | None) -> None:
        """The device's session here is ready: its declarations are due now."""
        hello = self._hellos.pop(device_id, None)
        if hello is None:  # no hello seen (cannot happen in ``iotgw serve``): the stored row
            hello = {k: getattr(record, k) for k in _WRITTEN} if record is not None else {"agent": ""}
        try:
            declared = msgspec.convert({**hello, "name": name, "since_ms": since_ms}, DeviceDeclared,
                                       strict=False)  # fmt: skip
        except msgspec.ValidationError as exc:  # the device plane checked it; be safe anyway
            log.warning("fleet: %s's declarations are not shareable: %s", name, exc)
            declared = DeviceDeclared(name=name, since_ms=since_ms)
        self._held[device_id] = name
        self._mine[name] = declared
        self._since[name] = max(since_ms, self._since.get(name, 0))  # older peers' copies lose
        self._pending.pop(name, None)
        self._due[name] = 0

    def released(self, device_id: int, name: str) -> None:
        """The device's session here ended."""
        self._hellos.pop(device_id, None)
        if self._held.get(device_id) == name:
            del self._held[device_id]
        self._mine.pop(name, None)
        self._sent_ms.pop(name, None)
        self._due.pop(name, None)

    def rejoined(self) -> None:
        """Back on the broker: what went out while it was away may be lost; everything is due."""
        for name in self._mine:
            self._due[name] = 0

    async def publish_due(self) -> None:
        """Publish the declarations due now on ``<prefix>/fleet/declared``."""
        now = self._clock()
        names = [n for n, at in self._due.items() if at <= now]
        if not names:
            return
        for name in names:
            del self._due[name]
        devices = [self._mine[n] for n in names if n in self._mine]
        try:
            for payload in chunks(self.topics.gateway, devices):
                await self._publish(self.topics.declared, payload)
                self.published += 1
        except BaseException:
            for d in devices:  # the next round tries again
                self._due.setdefault(d.name, 0)
            raise
        for d in devices:
            self._sent_ms[d.name] = now

    def answer(self, gateway: str) -> None:
        """A peer joined (its sync request): send it the declarations of every device held here."""
        devices = list(self._mine.values())
        if devices:
            self._spawn(self._answer(self.topics.declared_of(gateway), devices))

    async def _answer(self, topic: str, devices: list[DeviceDeclared]) -> None:
        try:
            for payload in chunks(self.topics.gateway, devices):
                await self._publish(topic, payload)
                self.published += 1
        except Exception as exc:  # the broker is away: the joiner asks again when it reconnects
            log.info("fleet: answering a sync with declarations failed: %s", exc)

    # -- the peers' side ------------------------------------------------------------------------

    def received(self, message: Declarations) -> None:
        """A peer's declarations: write the newest of each device not held here to its row."""
        for d in message.devices:
            if d.name in self._mine or d.since_ms < self._since.get(d.name, 0):
                continue
            self._since[d.name] = d.since_ms
            self._apply(d)

    def retry(self, names: list[str]) -> None:
        """Rows just arrived in this registry: apply what waited for them."""
        for name in names:
            waiting = self._pending.pop(name, None)
            if waiting is not None and waiting.since_ms >= self._since.get(name, 0):
                self._apply(waiting)

    def _apply(self, d: DeviceDeclared) -> None:
        record = self._find(d.name)
        if record is None:
            self._pending[d.name] = d
            self._pending.move_to_end(d.name)
            while len(self._pending) > PENDING_KEPT:
                self._pending.popitem(last=False)
            return
        self._pending.pop(d.name, None)
        fields = {"agent": d.agent, "sensors": msgspec.to_builtins(d.sensors),
                  "commands": msgspec.to_builtins(d.commands), "info": dict(d.info)}  # fmt: skip
        changed = {k: v for k, v in fields.items() if getattr(record, k) != v}
        if not changed:
            return
        self._writing = True
        try:
            self._committer.submit_meta(record.id, **changed)
        finally:
            self._writing = False
        self.applied += 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def chunks(gateway: str, devices: list[DeviceDeclared]) -> list[bytes]:
    """``Declarations`` messages of about ``CHUNK_BYTES`` at most (one device alone may exceed it)."""
    out: list[bytes] = []
    batch: list[DeviceDeclared] = []
    size = 0
    for d in devices:
        one = len(encode_device(d))
        if batch and size + one > CHUNK_BYTES:
            out.append(encode(Declarations(gateway=gateway, devices=batch)))
            batch, size = [], 0
        batch.append(d)
        size += one + 1
    if batch:
        out.append(encode(Declarations(gateway=gateway, devices=batch)))
    return out


_device_encoder = msgspec.json.Encoder()


def encode_device(d: DeviceDeclared) -> bytes:
    return _device_encoder.encode(d)
