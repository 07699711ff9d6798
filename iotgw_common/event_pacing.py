"""Ready sockets at most 128 a turn, the devices still talking first: a burst cannot hold the loop.

asyncio runs, in one turn, the callback of every socket its ``select`` found ready. When
10,000 devices close at once their close frames come out of one or two ``select`` calls, and
even at ~30 us a read (the read, and handing the goodbye to the background lane:
``gateway/device/leaving.py``) that turn holds the loop for ~0.3 s: every device that stayed
connected waits for it (docs/performance.md, "Connection storms: leaving").

:class:`EventPacingLoop` takes at most :data:`EVENTS_PER_TURN` ready sockets per turn and
*carries* the rest to the next turns. Of one ``select``'s sockets, those served most recently go
first, and those of connections already going away (``_is_leaving``) last: in a storm of
goodbyes, the devices still talking are read before the thousands that were silent until their
close frame, and before the ends of stream that follow those. Each turn serves the sockets that
became ready since the last ``select`` first, then at least :data:`CARRIED_PER_TURN` carried
ones: by the same priority, so that a talking device's socket carried in a busy turn does not
wait behind 10,000 silent ones carried before it (it did, FIFO: a 1.5-1.9 s ack in the storm
bench), and at least :data:`CARRIED_OLDEST_PER_TURN` of those carried longest, so the backlog
always drains, however many talking sockets keep coming. A carried socket keeps its place, and
is looked up again at its turn (closed meanwhile: dropped). With epoll, a carried socket is
muted (``EPOLL_CTL_MOD`` to no events) until its turn: the selector is level-triggered, and each
``select`` would otherwise report all of them again (~20 ms a turn for 10,000). Nothing changes
while no ``select`` returns more than :data:`EVENTS_PER_TURN` sockets.

This overrides CPython's ``BaseSelectorEventLoop._process_events`` (3.11-3.13):
:func:`event_pacing_works` checks it on the running interpreter, and the gateway's tests fail
if it does not.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import heapq
import operator
import select
import selectors
import socket
from collections.abc import Callable
from typing import Any

from .accept_pacing import AcceptPacingLoop

EVENTS_PER_TURN = 128
"""Ready sockets served per turn of the loop (a few ms of reads; 64 and 256 were slower in the storm bench)."""
CARRIED_PER_TURN = 64
"""Carried sockets served per turn at least, however many newcomers there are."""
CARRIED_OLDEST_PER_TURN = 16
"""Of those, how many at least are the ones carried longest (the rest go by priority)."""
_BY_PRIORITY = operator.itemgetter(0, 1)  # (leaving, -last served turn, ...): talking, then recent first


class EventPacingLoop(AcceptPacingLoop):
    """A selector event loop that serves at most :data:`EVENTS_PER_TURN` ready sockets a turn."""

    events_per_turn = EVENTS_PER_TURN
    carried_per_turn = CARRIED_PER_TURN
    carried_oldest_per_turn = CARRIED_OLDEST_PER_TURN

    def __init__(self, selector: Any = None) -> None:
        super().__init__(selector)
        # carried sockets: fd -> (events, its carry number), in the order they were carried ...
        self._carried: collections.OrderedDict[int, tuple[int, int]] = collections.OrderedDict()
        # ... and by priority: (leaving, -last served turn, carry number, fd); stale entries skipped
        self._carried_by_priority: list[tuple[bool, int, int, int]] = []
        self._carries = 0
        self._served: dict[int, int] = {}  # fd -> the turn it was last served in
        self._turn = 0
        # epoll: a carried socket is muted until its turn, or every select would report it again
        selector = self._selector  # type: ignore[attr-defined]
        self._epoll = selector._selector if isinstance(selector, selectors.EpollSelector) else None  # type: ignore[attr-defined]

    @property
    def carried_sockets(self) -> int:
        """Ready sockets carried to later turns now (safe to read from another thread)."""
        return len(self._carried)

    def _process_events(self, event_list: Any) -> None:
        self._turn = turn = self._turn + 1
        served = self._served
        carried = self._carried
        limit = self.events_per_turn
        if not carried and len(event_list) <= limit:
            for key, _ in event_list:
                served[key.fd] = turn
            super()._process_events(event_list)  # type: ignore[misc]
            return
        fresh = []
        for key, mask in event_list:
            fd = key.fd
            entry = carried.get(fd)
            if entry is not None:
                carried[fd] = (entry[0] | mask, entry[1])  # keeps its place
            else:
                fresh.append((key, mask))
        if len(fresh) <= limit:
            take, overflow = fresh, []
        else:
            # the sockets that talked last first: in a storm of goodbyes, those of devices silent
            # for long (their goodbye is most likely what is ready) wait, and those already
            # saying goodbye (the end of their stream) wait last
            leaving = self._is_leaving
            ranked = [(leaving(key), -served.get(key.fd, 0), key, mask) for key, mask in fresh]
            ranked.sort(key=_BY_PRIORITY)
            take = [(key, mask) for _, _, key, mask in ranked[:limit]]
            overflow = ranked[limit:]
        room = max(self.carried_per_turn, limit - len(take))
        if carried:
            take += self._take_carried(room)
        if overflow:
            self._carry(overflow)
        for key, _ in take:
            served[key.fd] = turn
        super()._process_events(take)  # type: ignore[misc]

    def _carry(self, overflow: list[tuple[bool, int, Any, int]]) -> None:
        """Carry ``overflow`` (leaving, -last served turn, key, events) to later turns, muted."""
        carried, by_priority = self._carried, self._carried_by_priority
        number = self._carries
        entries = []
        for leaving, recency, key, mask in overflow:
            number += 1
            fd = key.fd
            carried[fd] = (mask, number)
            entries.append((leaving, recency, number, fd))
        self._carries = number
        if len(entries) < len(by_priority) // 8:
            for entry in entries:
                heapq.heappush(by_priority, entry)
        else:
            by_priority.extend(entries)
            heapq.heapify(by_priority)
        epoll = self._epoll
        if epoll is not None:  # a muted socket's hang-up or error is still reported: deduplicated
            modify = epoll.modify
            for entry in entries:
                try:  # noqa: SIM105 (not contextlib.suppress: thousands a turn, ~1 us each)
                    modify(entry[3], 0)
                except OSError:
                    pass

    def _take_carried(self, room: int) -> list[tuple[Any, int]]:
        """Up to ``room`` carried sockets, unmuted: most by the priority of fresh ones, and at
        least :data:`CARRIED_OLDEST_PER_TURN` of those carried longest, so none waits for ever."""
        carried, by_priority = self._carried, self._carried_by_priority
        get_key = self._selector.get_key  # type: ignore[attr-defined]
        taken: list[tuple[Any, int]] = []
        oldest = min(self.carried_oldest_per_turn, room)
        while carried and len(taken) < room:
            if len(taken) < room - oldest and by_priority:
                *_, number, fd = heapq.heappop(by_priority)
                entry = carried.get(fd)
                if entry is None or entry[1] != number:  # taken by age, or carried again since
                    continue
                del carried[fd]
            else:
                fd, entry = carried.popitem(last=False)
            try:
                key = get_key(fd)
            except (KeyError, ValueError):  # closed meanwhile
                continue
            self._unmute(key)
            taken.append((key, entry[0] & key.events))
        if not carried:
            by_priority.clear()
        elif len(by_priority) > 4 * len(carried) + 64:  # stale entries: rebuild
            self._carried_by_priority = [e for e in by_priority if carried.get(e[3], (0, -1))[1] == e[2]]
            heapq.heapify(self._carried_by_priority)
        return taken

    def _unmute(self, key: Any) -> None:
        if self._epoll is not None:
            events = (select.EPOLLIN if key.events & selectors.EVENT_READ else 0) | (
                select.EPOLLOUT if key.events & selectors.EVENT_WRITE else 0
            )
            try:  # noqa: SIM105 (as in _carry)
                self._epoll.modify(key.fd, events)
            except OSError:
                pass

    def _is_leaving(self, key: Any) -> bool:
        """Whether the socket of selector key ``key`` belongs to a connection going away."""
        return False


def event_pacing_works(loop_factory: Callable[[], asyncio.AbstractEventLoop] = EventPacingLoop) -> bool:
    """Whether a loop of ``loop_factory`` reads more ready sockets than a turn serves over several
    turns, each once, and reads a newcomer before the carried ones, on this interpreter."""
    ready = 2 * EVENTS_PER_TURN + CARRIED_PER_TURN  # three turns' worth, the last one short
    reads: list[str] = []

    class Reader(asyncio.Protocol):
        def __init__(self, label: str) -> None:
            self.label = label

        def data_received(self, data: bytes) -> None:
            reads.append(self.label)

    async def probe() -> bool:
        loop = asyncio.get_running_loop()
        pairs = [socket.socketpair() for _ in range(ready + 1)]
        transports = []
        try:
            for n, (ours, _) in enumerate(pairs):
                transport, _ = await loop.create_connection(functools.partial(Reader, str(n)), sock=ours)
                transports.append(transport)
            for _, theirs in pairs[:ready]:
                theirs.send(b"x")
            # the next turn's select finds them all ready; this task runs first in that turn and
            # first in the one after, when the first turn's reads are done
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            first_turn = len(reads)
            pairs[ready][1].send(b"x")  # a newcomer, while some are still carried
            for _ in range(16 * ready):
                await asyncio.sleep(0)
                if len(reads) > ready:
                    break
            newcomer = reads.index(str(ready)) if str(ready) in reads else len(reads)
            return (
                first_turn == EVENTS_PER_TURN
                and newcomer < ready
                and sorted(reads) == sorted(str(n) for n in range(ready + 1))
            )
        finally:
            for transport in transports:
                transport.close()
            for ours, theirs in pairs:
                ours.close()
                theirs.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(probe())


__all__ = [
    "CARRIED_OLDEST_PER_TURN",
    "CARRIED_PER_TURN",
    "EVENTS_PER_TURN",
    "EventPacingLoop",
    "event_pacing_works",
]
