"""The replicated registry: every gateway of a fleet knows every device's token hash.

docs/scale-out.md, "Registry sharing". Hashed tokens only (gateway/tokens.py) travel, on the
ACL-protected fleet topics (gateway/fleet/wire.py). The rows and their last-writer-wins rule
are the store's (gateway/store/fleet.py); this module moves them:

* local changes: every ``registry_interval`` a cheap fingerprint of ``devices`` (count,
  largest id, revocation watermark) is read; when it moved, and every ``FULL_CHECK_S``
  anyway (label edits), :func:`gateway.store.fleet.local_changes` runs in the writer
  thread and what it returns is published on ``<prefix>/fleet/registry``;
* anti-entropy on join: at every connection the gateway publishes its whole table (so
  peers learn what changed here while it was away) and a ``SyncRequest``; each peer
  answers with its whole table on ``<prefix>/fleet/gateway/<joiner>/registry``;
* remote rows go through :func:`gateway.store.fleet.apply`, which changes ``devices`` and
  logs the revocations, so removing or re-tokening a device on any gateway ends its live
  session on whichever gateway holds it (gateway/device/revocation.py).

The caller calls :meth:`RegistrySync.received` for each RegistryUpdate, :meth:`sync_requested`
for each SyncRequest, :meth:`joined` after each connection; ``start()`` / ``await stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.fleet.wire import FleetTopics, RegistryUpdate, SyncRequest, encode
from gateway.store import fleet as fleet_store
from gateway.store import registry
from gateway.store.fleet import FleetEntry
from gateway.store.writer import GroupCommitter
from iotgw_common.clock import now_ms

__all__ = ["CHUNK", "FULL_CHECK_S", "RegistrySync"]

log = logging.getLogger(__name__)

CHUNK = 200
"""Rows per RegistryUpdate message (about 200 bytes each)."""
FULL_CHECK_S = 30.0

Publish = Callable[[str, bytes], Awaitable[Any]]


class RegistrySync:
    """See the module docstring. Call from the gateway's event loop."""

    def __init__(self, topics: FleetTopics, committer: GroupCommitter, read_conn: sqlite3.Connection,
                 publish: Publish, *, interval: float) -> None:  # fmt: skip
        self.topics = topics
        self._committer = committer
        self._conn = read_conn
        self._publish = publish
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fingerprint: tuple[int, ...] | None = None
        self.published = 0
        self.applied = 0
        self.applied_observers: list[Callable[[list[FleetEntry]], None]] = []
        """Called on the loop with the peers' rows just applied to ``devices``."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="fleet-registry")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    # -- peers' messages ----------------------------------------------------------------------

    def received(self, update: RegistryUpdate) -> None:
        """Rows from a peer: apply the winners (in the writer thread)."""
        if update.entries:
            self._spawn(self._apply(update.entries, update.gateway))

    def sync_requested(self, gateway: str) -> None:
        """A peer joined: send it the whole table."""
        self._spawn(self._send_all(self.topics.registry_of(gateway)))

    def joined(self) -> None:
        """This gateway (re)connected: publish the whole table, then ask the peers for theirs."""
        self._spawn(self._join())

    async def _join(self) -> None:
        await self.check(force=True)
        await self._send_all(self.topics.registry)
        await self._publish(self.topics.sync, encode(SyncRequest(gateway=self.topics.gateway)))

    async def _apply(self, entries: list[FleetEntry], origin: str) -> None:
        applied = await self._committer.call(lambda conn: fleet_store.apply(conn, entries), urgent=True)
        for observe in self.applied_observers:
            observe(applied)
        for e in applied:
            self.applied += 1
            log.info("fleet: device %s %s (from %s, written by %s)", e.name,
                     "removed" if e.removed else "updated", origin, e.origin)  # fmt: skip

    async def _send_all(self, topic: str) -> None:
        rows = await self._committer.call(fleet_store.entries, urgent=True)
        for start in range(0, len(rows), CHUNK):
            update = RegistryUpdate(gateway=self.topics.gateway, entries=rows[start : start + CHUNK])
            await self._publish(topic, encode(update))

    # -- local changes --------------------------------------------------------------------------

    async def check(self, *, force: bool = False) -> list[FleetEntry]:
        """Publish what changed in the local registry since the last check; returns it."""
        fingerprint = _fingerprint(self._conn)
        if not force and fingerprint == self._fingerprint:
            return []
        me = self.topics.gateway
        changed = await self._committer.call(lambda conn: fleet_store.local_changes(conn, me, now_ms()),
                                             urgent=True)  # fmt: skip
        self._fingerprint = fingerprint
        for start in range(0, len(changed), CHUNK):
            update = RegistryUpdate(gateway=me, entries=changed[start : start + CHUNK])
            await self._publish(self.topics.registry, encode(update))
            self.published += len(update.entries)
        for e in changed:
            log.info("fleet: published device %s (%s)", e.name, "removed" if e.removed else "changed")
        return changed

    async def _watch(self) -> None:
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(self._interval)
            full = time.monotonic() - last_full > FULL_CHECK_S
            try:
                await self.check(force=full)
                if full:
                    last_full = time.monotonic()
            except sqlite3.Error as exc:  # busy for a moment: the next round tries again
                log.warning("fleet: reading the registry failed: %s", exc)
            except Exception as exc:  # the broker is away: the rows are stored, `joined` republishes all
                log.info("fleet: publishing registry changes failed: %s", exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(_finished(self._tasks))


def _fingerprint(conn: sqlite3.Connection) -> tuple[int, ...]:
    count, largest = conn.execute("SELECT count(*), coalesce(max(id), 0) FROM devices").fetchone()
    return int(count), int(largest), registry.revocation_watermark(conn)


def _finished(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            with contextlib.suppress(Exception):
                log.warning("fleet: registry task failed: %s", task.exception())

    return done
