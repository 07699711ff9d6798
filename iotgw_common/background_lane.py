"""A background lane in the asyncio event loop: connections going away cannot stall the others.

When thousands of devices close at once (a fleet-wide agent update, a proxy restarting), their
close frames arrive within a fraction of a second, and every one of them costs the loop
~0.3 ms: the close frame's echo, the half-close, the session's end, ``connection_lost``, the
socket's ``close``. All of it ran in the loop's ordinary order, so the devices that stayed
connected waited 1-2.5 s behind 10,000 goodbyes for their acks (docs/performance.md,
"Connection storms: leaving").

:class:`BackgroundLaneLoop` runs the callbacks of *background owners* in a lane of their own: one
slice of at most :data:`BACKGROUND_SLICE_S` (and one callback past it) per loop turn, in the order
they were scheduled. Everything else keeps asyncio's order and waits for at most one slice of
the background per turn. The lane drains as fast as the loop has time left, and is never starved:
a slice runs every turn while it holds anything.

What runs in the background is said explicitly, never inherited:

* :meth:`~BackgroundLaneLoop.call_in_background`: one callback;
* :meth:`~BackgroundLaneLoop.send_to_background`: every callback that is a bound method of one
  of the given objects: a task's steps and wake-ups (``callback.__self__`` is the task), a
  transport's own callbacks (``_call_connection_lost``). Tasks the owner starts, and callbacks
  it schedules on other objects (the store writer's hand-over, the ack flusher), stay ordinary,
  so a connection going away cannot slow the machinery everyone shares.

Reads (a socket becoming readable) are never background: the selector is level-triggered, and a
read that waits is seen again at every ``select``. A connection that must not be read meanwhile
pauses its reading (``gateway/device/leaving.py`` does).

This reaches into CPython's ``BaseEventLoop`` (``_call_soon``, ``_ready``):
:func:`background_lane_works` checks the lane on the running interpreter, and the gateway's
tests fail if it does not, so a Python upgrade that changes them is noticed.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from asyncio import events
from collections.abc import Callable
from typing import Any

from .event_pacing import EventPacingLoop

BACKGROUND_SLICE_S = 0.002
"""The background lane's time per loop turn: what it may add to any other callback's wait."""


class BackgroundLaneLoop(EventPacingLoop):
    """A selector event loop with a background lane (see the module's docstring).

    It also serves ready sockets and accepts new connections a few per turn
    (``iotgw_common/event_pacing.py``, ``iotgw_common/accept_pacing.py``). Call the lane's
    methods from the loop's thread.
    """

    background_slice_s = BACKGROUND_SLICE_S

    def __init__(self, selector: Any = None) -> None:
        super().__init__(selector)
        self._background: collections.deque[events.Handle] = collections.deque()
        self._background_owners: dict[int, object] = {}  # id -> owner, kept alive while listed
        self._pump_queued = False
        self._pump = events.Handle(self._run_background, (), self, None)
        self.background_callbacks = 0
        """Callbacks that ran in the background lane (for tests and the bench)."""

    def send_to_background(self, *owners: object) -> None:
        """From now on, callbacks that are bound methods of ``owners`` run in the background lane.

        The caller must :meth:`release_from_background` them when they are done: the loop keeps
        them alive while they are listed.
        """
        for owner in owners:
            self._background_owners[id(owner)] = owner

    def release_from_background(self, *owners: object) -> None:
        """Forget ``owners`` (their callbacks already queued in the background still run there)."""
        for owner in owners:
            if self._background_owners.get(id(owner)) is owner:
                del self._background_owners[id(owner)]

    def call_in_background(self, callback: Callable[..., object], *args: Any) -> events.Handle:
        """Schedule ``callback(*args)`` in the background lane (like ``call_soon``)."""
        self._check_closed()  # type: ignore[attr-defined]
        handle = events.Handle(callback, args, self, None)
        self._to_background(handle)
        return handle

    @property
    def background_queued(self) -> int:
        """Callbacks waiting in the background lane now (safe to read from another thread)."""
        return len(self._background)

    def close(self) -> None:
        self._background.clear()
        self._background_owners.clear()
        super().close()

    def _is_leaving(self, key: Any) -> bool:
        # a socket whose transport is a background owner: its connection is going away
        reader = key.data[0]
        owner = None if reader is None else getattr(reader._callback, "__self__", None)
        return owner is not None and id(owner) in self._background_owners

    # -- BaseEventLoop internals (CPython 3.11-3.13) ------------------------------------

    def _call_soon(self, callback: Callable[..., object], args: Any, context: Any) -> events.Handle:
        handle = events.Handle(callback, args, self, context)
        if handle._source_traceback:  # type: ignore[attr-defined]
            del handle._source_traceback[-1]  # type: ignore[attr-defined]
        self._queue(handle)
        return handle

    def _queue(self, handle: events.Handle) -> None:
        """Queue a callback that is not urgent: in the background lane if its owner is listed."""
        owners = self._background_owners
        if owners and id(getattr(handle._callback, "__self__", None)) in owners:  # type: ignore[attr-defined]
            self._to_background(handle)
        else:
            self._ready.append(handle)  # type: ignore[attr-defined]

    def _to_background(self, handle: events.Handle) -> None:
        self._background.append(handle)
        if not self._pump_queued:
            self._pump_queued = True
            self._ready.append(self._pump)  # type: ignore[attr-defined]

    def _run_background(self) -> None:
        """One slice of the background lane; queues the next slice for the next turn if needed."""
        self._pump_queued = False
        background = self._background
        deadline = time.monotonic() + self.background_slice_s
        # only what was queued before this slice: callbacks it schedules wait for the next turn
        for _ in range(len(background)):
            handle = background.popleft()
            if not handle.cancelled():
                self.background_callbacks += 1
                handle._run()
            if time.monotonic() >= deadline:
                break
        if background and not self._pump_queued:
            # in _ready, the next turn's select does not wait, and the slice runs first in it
            self._pump_queued = True
            self._ready.append(self._pump)  # type: ignore[attr-defined]


def background_lane_works(loop_factory: Callable[[], asyncio.AbstractEventLoop] = BackgroundLaneLoop) -> bool:
    """Whether a loop of ``loop_factory`` runs a background owner's callbacks a slice per turn, in
    order and all of them, letting an ordinary callback scheduled after them overtake, on this
    interpreter's asyncio."""
    order: list[str] = []
    turns: list[int] = []

    class Owner:
        def __init__(self, n: int) -> None:
            self.n = n

        def work(self) -> None:
            order.append(f"background {self.n}")
            time.sleep(BACKGROUND_SLICE_S / 2)

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        if not isinstance(loop, BackgroundLaneLoop):
            return
        owners = [Owner(n) for n in range(8)]
        loop.send_to_background(*owners)
        for owner in owners:
            loop.call_soon(owner.work)
        loop.call_soon(order.append, "ordinary")
        for _ in range(64):
            turns.append(len(order))
            await asyncio.sleep(0)  # one turn of the loop
            if len(order) == len(owners) + 1:
                break
        loop.release_from_background(*owners)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(probe())
    background = [entry for entry in order if entry.startswith("background")]
    most_in_a_turn = max((b - a for a, b in itertools.pairwise(turns)), default=0)
    return (
        "ordinary" in order[:-1]  # it overtook the background's last ones
        and background == [f"background {n}" for n in range(8)]
        and most_in_a_turn < len(order)  # the eight took more than one turn
    )


__all__ = ["BACKGROUND_SLICE_S", "BackgroundLaneLoop", "background_lane_works"]
