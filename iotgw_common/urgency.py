"""An urgent lane in the asyncio event loop: the command plane's callbacks go first.

On a busy gateway every hop through the event loop (a task waking up, a ``call_soon``, a
socket becoming readable) waits behind every callback already queued: the reads, decodes and
ack flushes of whatever device frames were ready, a millisecond or more at half load. A
command crosses the loop about eight times (HTTP in, its ledger writes, its frame out, the
device's result in, HTTP out), so its round trip was mostly queueing (docs/performance.md,
"Commands: an urgent lane"). :class:`UrgentFirstLoop` runs urgent callbacks before the queued
ones, in the order they were scheduled among themselves; everything else keeps asyncio's order.

What is urgent is said with contexts, as asyncio already carries one with every callback:

* a callback whose context holds an :class:`Urgency` that is on: a task that called
  :func:`mark_urgent` (its wake-ups), a task started with ``context=urgent_context()`` and the
  sockets it opens (an HTTP server started that way: its reads and its requests' tasks), a
  ``call_soon``/``call_soon_threadsafe`` given ``context=urgent_context()``;
* reads of a transport marked with :func:`set_transport_urgent` (a device connection while a
  command waits for its result).

A socket is only seen readable at the loop's next ``select``, after the rest of the current
turn (up to a few milliseconds on a busy gateway): the urgent sockets (those above) are also
watched by a second selector, looked at without waiting between the callbacks of a long turn
(every :data:`POLL_EVERY` callbacks, at most every :data:`POLL_INTERVAL_S`), and one that is
readable is read next. Its read may then run once more at the next ``select`` and find nothing,
which asyncio's transports take in their stride.

Urgent work must stay small and bounded (the command plane is, by its quotas): urgent callbacks
can delay everything else but never reorder it.

This reaches into CPython's ``BaseSelectorEventLoop`` (``_call_soon``, ``_add_callback``,
``_ready``, ``_add_reader``, ``_remove_reader``, ``_process_events``, ``_selector``):
:func:`lane_works` checks the lane on the running interpreter, and the gateway's tests fail if
it does not, so a Python upgrade that changes them is noticed, not silently slower.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import selectors
import threading
import time
from asyncio import events
from collections.abc import Callable
from typing import Any

from .background_lane import BackgroundLaneLoop


class Urgency:
    """A switch held in a context: callbacks in contexts holding it are urgent while ``on``."""

    __slots__ = ("on",)

    def __init__(self, on: bool = True) -> None:
        self.on = on


URGENCY: contextvars.ContextVar[Urgency | None] = contextvars.ContextVar("iotgw_urgency", default=None)
_ALWAYS = Urgency(True)


def mark_urgent(urgency: Urgency = _ALWAYS) -> None:
    """Make the current task's later wake-ups (and the tasks it starts) urgent (or ``urgency``'s)."""
    URGENCY.set(urgency)


def mark_ordinary() -> None:
    """Make the current task's later wake-ups ordinary again (a long-lived stream in an urgent server)."""
    URGENCY.set(None)


def urgent_context() -> contextvars.Context:
    """A copy of the current context in which callbacks are urgent (for ``context=``)."""
    context = contextvars.copy_context()
    context.run(URGENCY.set, _ALWAYS)
    return context


POLL_EVERY = 4
"""Ordinary callbacks between two looks at the urgent sockets within one loop turn."""
POLL_INTERVAL_S = 0.001
"""At most one look per this many seconds (each is an ``epoll_wait`` with no timeout)."""
_MAX_POLLS = 64


def _is_urgent(context: contextvars.Context) -> bool:
    urgency = context.get(URGENCY)
    return urgency is not None and urgency.on


class UrgentFirstLoop(BackgroundLaneLoop):
    """A selector event loop that runs urgent callbacks before the ones already queued.

    It also accepts new connections a few per turn (``iotgw_common/accept_pacing.py``) and has a
    background lane for connections going away (``iotgw_common/background_lane.py``).

    Use as ``asyncio.Runner(loop_factory=UrgentFirstLoop)``. Thread-safe where asyncio is:
    ``call_soon_threadsafe`` with an urgent context from another thread goes to the front too.
    """

    def __init__(self, selector: Any = None) -> None:
        super().__init__(selector)
        self._urgent_queued: collections.deque[events.Handle] = collections.deque()
        self._urgent_lock = threading.Lock()
        self._urgent_transports: set[asyncio.BaseTransport] = set()
        self._urgent_selector = selectors.DefaultSelector()
        self._urgent_fds: set[int] = set()
        self._last_poll = 0.0
        self._poller = events.Handle(self._poll_urgent, (), self, None)
        self.urgent_callbacks = 0
        """Callbacks that went to the front (for tests and the bench)."""

    def set_transport_urgent(self, transport: asyncio.BaseTransport, on: bool) -> None:
        """While ``on``, the callback that reads ``transport`` when it is readable is urgent."""
        sock = transport.get_extra_info("socket")
        fd = -1 if sock is None else sock.fileno()
        if on:
            self._urgent_transports.add(transport)
            if fd >= 0:
                self._watch(fd)
        else:
            self._urgent_transports.discard(transport)
            if fd >= 0:
                self._unwatch(fd)

    def close(self) -> None:
        super().close()
        self._urgent_selector.close()

    # -- urgent sockets, looked at between callbacks ------------------------------------

    def _watch(self, fd: int) -> None:
        if fd not in self._urgent_fds:
            try:
                self._urgent_selector.register(fd, selectors.EVENT_READ)
            except (KeyError, ValueError, OSError):
                return
            self._urgent_fds.add(fd)

    def _unwatch(self, fd: int) -> None:
        if fd in self._urgent_fds:
            self._urgent_fds.discard(fd)
            with contextlib.suppress(KeyError, ValueError, OSError):  # closed meanwhile
                self._urgent_selector.unregister(fd)

    def _add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> events.Handle:
        handle: events.Handle = super()._add_reader(fd, callback, *args)  # type: ignore[misc]
        if _is_urgent(handle._context):  # type: ignore[attr-defined]
            self._watch(fd if isinstance(fd, int) else fd.fileno())
        return handle

    def _remove_reader(self, fd: Any) -> bool:
        self._unwatch(fd if isinstance(fd, int) else fd.fileno())
        removed: bool = super()._remove_reader(fd)  # type: ignore[misc]
        return removed

    def _process_events(self, event_list: Any) -> None:
        super()._process_events(event_list)
        ready: collections.deque[events.Handle] = self._ready  # type: ignore[attr-defined]
        if not self._urgent_fds or len(ready) <= POLL_EVERY:
            return
        # a socket that becomes readable during this turn would wait for the next select():
        # look at the urgent ones between the callbacks of this turn
        step = max(POLL_EVERY, len(ready) // _MAX_POLLS)
        handles = list(ready)
        ready.clear()
        first = len(self._urgent_queued) + step
        for i, handle in enumerate(handles):
            if i >= first and (i - first) % step == 0:
                ready.append(self._poller)
            ready.append(handle)

    def _poll_urgent(self) -> None:
        now = time.monotonic()
        if now - self._last_poll < POLL_INTERVAL_S:
            return
        self._last_poll = now
        for key, _ in self._urgent_selector.select(0):
            try:
                reader = self._selector.get_key(key.fd).data[0]  # type: ignore[attr-defined]
            except (KeyError, ValueError):
                continue
            if reader is not None and not reader._cancelled:
                self._put_first(reader)

    # -- BaseEventLoop internals (CPython 3.11-3.13) ------------------------------------

    def _call_soon(self, callback: Callable[..., object], args: Any, context: Any) -> events.Handle:
        handle = events.Handle(callback, args, self, context)
        if handle._source_traceback:  # type: ignore[attr-defined]
            del handle._source_traceback[-1]  # type: ignore[attr-defined]
        if _is_urgent(handle._context):  # type: ignore[attr-defined]
            self._put_first(handle)
        else:
            self._queue(handle)
        return handle

    def _add_callback(self, handle: events.Handle) -> None:  # I/O readiness
        if handle._cancelled:
            return
        reader: Any = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
        if _is_urgent(handle._context) or (  # type: ignore[attr-defined]
            self._urgent_transports and reader in self._urgent_transports
        ):
            self._put_first(handle)
        else:
            self._ready.append(handle)  # type: ignore[attr-defined]

    def _put_first(self, handle: events.Handle) -> None:
        """Queue ``handle`` after the urgent handles still queued, before everything else.

        The loop pops ``_ready`` from the left, so the urgent handles not yet run are its first
        ones, in the order they came: forget those already run, insert behind the rest. If the
        loop thread pops one meanwhile (a ``call_soon_threadsafe`` from another thread), the
        handle lands one place later: still ahead of nearly everything, never lost.
        """
        ready: collections.deque[events.Handle] = self._ready  # type: ignore[attr-defined]
        with self._urgent_lock:
            queued = self._urgent_queued
            while queued and not (ready and ready[0] is queued[0]):
                queued.popleft()
            ready.insert(len(queued), handle)
            queued.append(handle)
            self.urgent_callbacks += 1


def set_transport_urgent(transport: asyncio.BaseTransport | None, on: bool) -> None:
    """Mark ``transport``'s reads urgent (or not) if the running loop has an urgent lane."""
    if transport is None:
        return
    loop = asyncio.get_running_loop()
    if isinstance(loop, UrgentFirstLoop):
        loop.set_transport_urgent(transport, on)


def lane_works() -> bool:
    """Whether urgent callbacks overtake queued ones on this interpreter's asyncio."""
    order: list[str] = []

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(order.append, "queued")
        loop.call_soon(order.append, "urgent", context=urgent_context())
        loop.call_soon(done.set_result, None)
        await done

    with asyncio.Runner(loop_factory=UrgentFirstLoop) as runner:
        runner.run(probe())
    return order == ["urgent", "queued"]


__all__ = [
    "URGENCY",
    "Urgency",
    "UrgentFirstLoop",
    "lane_works",
    "mark_ordinary",
    "mark_urgent",
    "set_transport_urgent",
    "urgent_context",
]
