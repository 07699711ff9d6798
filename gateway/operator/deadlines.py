"""The command service's timetable: which open command falls due next, without scanning them all.

A queued command is due at its ``expires_ms`` (its TTL ran out before delivery), a sent one at
its ``deadline_ms`` (no result within its timeout). :class:`Deadlines` keeps one heap entry per
(command, state) and hands back, on each sweep, only the entries whose time has come: a sweep
costs O(k log n) for k due commands instead of O(n) for n open ones, so thousands of long-TTL
commands cost no idle CPU.

Entries are not removed when a command finishes early (a heap cannot delete in the middle):
:meth:`Deadlines.due` skips those whose command is no longer in that state, and the heap is
rebuilt from the live entries when stale ones outnumber them, so its size stays within a small
factor of the open commands.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import NamedTuple

COMPACT_MIN = 1024
"""Rebuild only heaps at least this large (below it, stale entries cost nothing worth saving)."""


class Due(NamedTuple):
    """One timetable entry: ``command_id`` in ``state`` is due at ``at_ms``."""

    at_ms: int
    order: int  # tie-breaker: submission order among entries due at the same ms
    command_id: str
    state: str


class Deadlines:
    """A min-heap of (time, command, state); call everything from one thread (the event loop)."""

    def __init__(self) -> None:
        self._heap: list[Due] = []
        self._order = 0

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, command_id: str, state: str, at_ms: int) -> None:
        """Remember that ``command_id`` is due at ``at_ms`` if it is still in ``state`` then."""
        self._order += 1
        heapq.heappush(self._heap, Due(at_ms, self._order, command_id, state))

    def due(self, now_ms: int, current: Callable[[str], str | None]) -> Iterator[Due]:
        """Take out and yield the entries due at or before ``now_ms`` whose command is still open in
        the entry's state; ``current(command_id)`` returns its state now (None: no longer open).

        The caller acts on each entry it gets (expire, fail); entries of commands that moved on
        are dropped silently.
        """
        heap = self._heap
        while heap and heap[0].at_ms <= now_ms:
            entry = heapq.heappop(heap)
            if current(entry.command_id) == entry.state:
                yield entry

    def compact(self, current: Callable[[str], str | None]) -> None:
        """Drop stale entries (commands no longer in the entry's state) once they are the majority."""
        heap = self._heap
        if len(heap) < COMPACT_MIN:
            return
        live = [entry for entry in heap if current(entry.command_id) == entry.state]
        if len(live) * 2 < len(heap):
            heapq.heapify(live)
            self._heap = live


__all__ = ["COMPACT_MIN", "Deadlines", "Due"]
