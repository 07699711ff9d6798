"""The live feed: what the gateway made durable, fanned out to subscribers as it happens.

Publishers call the hub on the event loop, and never wait:

* the group committer hands it each batch of frames **after** their
  transaction committed (``Feed.committed``), so a subscriber never sees a
  reading that could still be lost;
* device metadata (hello, status frames) arrives through
  ``Feed.device_meta``, presence through ``Feed.presence`` (a presence
  observer of the device plane, registered in gateway/app.py), command state
  changes through ``Feed.command``.

Every message gets an ``id``, consecutive within one gateway run (``epoch``).
Subscribers (``Feed.subscribe``) receive the messages that match their filter
in id order, through a bounded queue. The slow-subscriber policy
(docs/live.md): a subscriber whose queue is full when a message arrives is
dropped at once (its queue freed, ``Subscription.get`` raises
:class:`SubscriberTooSlow`); publishing never blocks and never grows memory
past ``queue_size`` per subscriber. The newest messages, up to
``replay_samples`` samples in all (an event or a device or command message
counts as one), are kept, so a client that reconnects with ``after=<last id it handled>`` misses
nothing if it comes back in time; otherwise it is told to reload history.

Messages are kept as the objects the gateway already holds (decoded frames)
and encoded to JSON only for a subscriber that receives them, so an idle feed
costs ingest one deque append per frame.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from iotgw_common.clock import now_ms
from iotgw_common.protocol.messages import Event, Readings

if TYPE_CHECKING:
    from gateway.store.ledger import CommandRecord

log = logging.getLogger(__name__)

Kind = Literal["readings", "event", "device", "command"]
KINDS: frozenset[str] = frozenset({"readings", "event", "device", "command"})
DEFAULT_QUEUE_SIZE = 1000
DEFAULT_REPLAY_SAMPLES = 20_000
"""Samples the hub keeps for resuming subscribers: bounded by samples, not messages, because
one readings frame may carry up to 500 of them."""

_encoder = msgspec.json.Encoder()


class DurableFrame(Protocol):
    """A committed frame as the group committer hands it over."""

    @property
    def device_id(self) -> int: ...

    @property
    def message(self) -> Readings | Event: ...


class SubscriberTooSlow(Exception):
    """The subscriber's queue overflowed; it was dropped (docs/live.md, slow subscribers)."""


class SubscriptionClosed(Exception):
    """The subscription was closed (the gateway is stopping, or the caller closed it)."""


class SubscriptionRevoked(SubscriptionClosed):
    """The subscriber's credentials were revoked (its operator token was removed): ``str()`` says so."""


@dataclass(slots=True, frozen=True)
class FeedFilter:
    """Which messages a subscriber wants; ``None`` means all. ``metrics`` narrows readings only."""

    devices: frozenset[str] | None = None
    metrics: frozenset[str] | None = None
    kinds: frozenset[str] | None = None

    def wants(self, kind: str, device: str) -> bool:
        return (self.kinds is None or kind in self.kinds) and (self.devices is None or device in self.devices)


# One message: (id, kind, device_id, gateway time in ms, payload). ``payload`` is the
# committed Readings / Event, or a dict of fields for device and command messages.
Entry = tuple[int, str, int, int, Any]


class Subscription:
    """One subscriber's bounded queue; ``await get()`` the next message, ``close()`` when done."""

    def __init__(self, feed: Feed, flt: FeedFilter, maxsize: int, owner: str | None = None) -> None:
        self.feed = feed
        self.filter = flt
        self.maxsize = maxsize
        self.owner = owner
        """Whose credentials hold it (the operator token); :meth:`Feed.revoke` ends it with them."""
        self.delivered = 0
        self.last_id = 0
        """id of the last message returned by ``get``: what to resume ``after``."""
        self._queue: deque[Entry] = deque()
        self._wakeup = asyncio.Event()
        self._failure: Exception | None = None

    def _offer(self, entry: Entry) -> None:
        if self._failure is not None:
            return
        if len(self._queue) >= self.maxsize:
            self._queue.clear()
            self._fail(SubscriberTooSlow(f"more than {self.maxsize} messages waiting; dropped"))
            return
        self._queue.append(entry)
        self._wakeup.set()

    def _fail(self, failure: Exception) -> None:
        self._failure = failure
        self.feed._subscribers.discard(self)
        self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def get(self) -> Entry:
        """The next message; raises SubscriberTooSlow or SubscriptionClosed once dropped/closed."""
        while not self._queue:
            if self._failure is not None:
                raise self._failure
            self._wakeup.clear()
            await self._wakeup.wait()
        entry = self._queue.popleft()
        self.last_id = entry[0]
        self.delivered += 1
        return entry

    def encode(self, entry: Entry) -> bytes | None:
        """The message as JSON for this subscriber (metrics filtered); None if nothing is left."""
        return self.feed.encode(entry, self.filter.metrics)

    def close(self) -> None:
        """Stop receiving; safe to call twice."""
        if self._failure is None:
            self._fail(SubscriptionClosed("closed"))
        self._queue.clear()


class Feed:
    """The hub. Create once per gateway; everything is called on the event loop."""

    def __init__(
        self,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        replay_samples: int = DEFAULT_REPLAY_SAMPLES,
        resolve_name: Callable[[int], str | None] | None = None,
    ) -> None:
        self.queue_size = queue_size
        self.epoch = secrets.token_hex(4)
        """Identifies this run: ids restart at 1 when the gateway restarts."""
        self.last_id = 0
        self._ring: deque[Entry] = deque()
        self._ring_weights: deque[int] = deque()
        self._ring_weight = 0
        self._replay_samples = replay_samples
        self._subscribers: set[Subscription] = set()
        self._names: dict[int, str] = {}
        self._resolve = resolve_name
        self.dropped_subscribers = 0
        self.published = 0
        self.watch: asyncio.Task[None] | None = None
        """A task that checks the subscribers' credentials (gateway/operator/api/live.py); cancelled by ``close``."""

    # -- publishing (never waits) ----------------------------------------------------------

    def committed(self, frames: Iterable[DurableFrame]) -> None:
        """Frames whose transaction committed, in commit order (the group committer calls this)."""
        at = now_ms()
        for frame in frames:
            message = frame.message
            self._publish("readings" if type(message) is Readings else "event", frame.device_id, at, message)

    def device_meta(self, device_id: int, fields: Mapping[str, Any]) -> None:
        """Device metadata changed (hello: agent, sensors, commands…; status: buffered, dropped, info)."""
        shown = {k: v for k, v in fields.items() if k in _DEVICE_FIELDS}
        if shown:
            self._publish("device", device_id, now_ms(), shown)

    def presence(self, device_id: int, name: str, online: bool, peer: str | None = None) -> None:
        """A device's session became ready (after welcome) or ended."""
        self._names[device_id] = name
        fields: dict[str, Any] = {"online": online}
        if online:
            fields["peer"] = peer
        self._publish("device", device_id, now_ms(), fields)

    def command(self, device_id: int, name: str, fields: dict[str, Any]) -> None:
        """A command changed state; ``fields`` is the command as the API shows it."""
        self._names.setdefault(device_id, name)
        self._publish("command", device_id, now_ms(), {"command": fields})

    def command_changed(self, record: CommandRecord) -> None:
        """The command service's state observer: publish a snapshot of the record."""
        self.command(
            record.device_id,
            record.device,
            {
                "id": record.id, "name": record.name, "args": record.args, "state": record.state,
                "sender": record.sender, "created_ms": record.created_ms, "updated_ms": record.updated_ms,
                "deadline_ms": record.deadline_ms, "timeout": record.timeout_ms / 1000,
                "value": record.value, "error": record.error,
            },
        )  # fmt: skip

    def _publish(self, kind: str, device_id: int, at: int, payload: Any) -> None:
        self.last_id += 1
        entry: Entry = (self.last_id, kind, device_id, at, payload)
        weight = len(payload.samples) if kind == "readings" else 1
        ring, weights = self._ring, self._ring_weights
        ring.append(entry)
        weights.append(weight)
        self._ring_weight += weight
        while self._ring_weight > self._replay_samples and len(ring) > 1:
            ring.popleft()
            self._ring_weight -= weights.popleft()
        self.published += 1
        if self._subscribers:
            device = self.name(device_id)
            for sub in tuple(self._subscribers):
                if sub.filter.wants(kind, device):
                    sub._offer(entry)
                    if sub._failure is not None:
                        self.dropped_subscribers += 1
                        log.warning("live feed: a subscriber fell %d messages behind; dropped", sub.maxsize)

    # -- subscribing -------------------------------------------------------------------

    def subscribe(
        self,
        flt: FeedFilter | None = None,
        *,
        after: int | None = None,
        epoch: str | None = None,
        owner: str | None = None,
    ) -> tuple[Subscription, bool]:
        """A new subscription and whether it resumed exactly after ``after``.

        Without ``after`` it starts with the next message (True). With it, the
        kept messages with a greater id are queued first, if ``epoch`` is this
        run's and none of them has been forgotten; otherwise (False) the caller
        must reload what it shows from the store's history. ``owner`` names the credentials
        the subscription holds (:meth:`revoke`).
        """
        flt = flt or FeedFilter()
        sub = Subscription(self, flt, self.queue_size, owner)
        resumed = True
        if after is not None:
            oldest = self._ring[0][0] if self._ring else self.last_id + 1
            if epoch != self.epoch or after > self.last_id or after + 1 < oldest:
                resumed = False
            else:
                for entry in self._ring:
                    if entry[0] > after and flt.wants(entry[1], self.name(entry[2])):
                        if len(sub._queue) >= sub.maxsize:
                            sub._queue.clear()
                            resumed = False
                            break
                        sub._queue.append(entry)
                if sub._queue:
                    sub._wakeup.set()
        self._subscribers.add(sub)
        return sub, resumed

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def owners(self) -> set[str]:
        """The credentials the current subscriptions hold."""
        return {sub.owner for sub in self._subscribers if sub.owner is not None}

    def revoke(self, owner: str, reason: str) -> int:
        """End every subscription of ``owner``: their ``get`` raises :class:`SubscriptionRevoked`
        (``reason``). Returns how many ended."""
        ended = [sub for sub in self._subscribers if sub.owner == owner]
        for sub in ended:
            sub._queue.clear()
            sub._fail(SubscriptionRevoked(reason))
        return len(ended)

    def close(self) -> None:
        """End every subscription (gateway shutdown) and the credentials watch."""
        if self.watch is not None:
            self.watch.cancel()
        for sub in tuple(self._subscribers):
            sub.close()

    # -- names and encoding -------------------------------------------------------------

    def name(self, device_id: int) -> str:
        name = self._names.get(device_id)
        if name is None:
            name = (self._resolve(device_id) if self._resolve is not None else None) or f"#{device_id}"
            self._names[device_id] = name
        return name

    def encode(self, entry: Entry, metrics: frozenset[str] | None = None) -> bytes | None:
        """The JSON text of a message (docs/live.md); with ``metrics``, readings keep only those."""
        id_, kind, device_id, at, payload = entry
        head: dict[str, Any] = {"id": id_, "type": kind, "device": self.name(device_id), "at": at}
        if kind == "readings":
            samples = payload.samples
            if metrics is not None:
                samples = [
                    {"ts": s.ts, "values": kept}
                    for s in samples
                    if (kept := {k: v for k, v in s.values.items() if k in metrics})
                ]
                if not samples:
                    return None
            head["seq"] = payload.seq
            head["samples"] = samples
        elif kind == "event":
            head.update(seq=payload.seq, ts=payload.ts, name=payload.name, data=payload.data)
        else:
            head.update(payload)
        return _encoder.encode(head)


_DEVICE_FIELDS = frozenset({"agent", "sensors", "commands", "info", "buffered", "dropped", "last_seen_ms"})


__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_REPLAY_SAMPLES",
    "KINDS",
    "DurableFrame",
    "Feed",
    "FeedFilter",
    "SubscriberTooSlow",
    "Subscription",
    "SubscriptionClosed",
    "SubscriptionRevoked",
]
