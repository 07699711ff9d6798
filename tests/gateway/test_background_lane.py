"""The event loop's background lane and its pacing of ready sockets (iotgw_common/background_lane.py,
iotgw_common/event_pacing.py): what a fleet closing at once may cost the devices that stay."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from iotgw_common.background_lane import BackgroundLaneLoop, background_lane_works
from iotgw_common.event_pacing import EVENTS_PER_TURN, EventPacingLoop, event_pacing_works
from iotgw_common.urgency import UrgentFirstLoop
from tests.support.waiting import async_wait_until


def test_the_background_lane_works_on_this_interpreter() -> None:
    # if this fails after a Python upgrade, the loop internals the lane overrides have changed
    assert background_lane_works()
    assert background_lane_works(UrgentFirstLoop)


def test_the_check_fails_on_a_loop_without_the_lane_or_without_slices() -> None:
    class Unsliced(BackgroundLaneLoop):
        background_slice_s = 60.0

    assert not background_lane_works(asyncio.SelectorEventLoop)
    assert not background_lane_works(Unsliced)


def test_an_owners_callbacks_run_in_order_a_slice_per_turn_and_the_tasks_it_starts_stay_ordinary() -> None:
    seen: dict[str, Any] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, UrgentFirstLoop)
        order: list[int] = []
        ordinary_turns = 0

        async def child() -> None:
            for _ in range(5):
                await asyncio.sleep(0)

        async def owner_task() -> None:
            await asyncio.sleep(0)  # sent to the background meanwhile
            before = loop.background_callbacks
            await asyncio.create_task(child())
            seen["child steps in the background"] = loop.background_callbacks - before - 1  # own wake-up
            for n in range(30):
                order.append(n)
                time.sleep(0.0005)  # 30 x 0.5 ms: more than one 2 ms slice
                await asyncio.sleep(0)

        task = asyncio.create_task(owner_task())
        loop.send_to_background(task)
        while not task.done():
            ordinary_turns += 1
            await asyncio.sleep(0)
        loop.release_from_background(task)
        seen["order"] = order
        seen["ordinary turns"] = ordinary_turns
        seen["owners left"] = len(loop._background_owners)
        seen["background"] = loop.background_callbacks

    with asyncio.Runner(loop_factory=UrgentFirstLoop) as runner:
        runner.run(main())
    assert seen["order"] == list(range(30))
    assert seen["child steps in the background"] == 0
    assert seen["background"] >= 30
    # the main task (ordinary) ran a turn for every slice: it was never held behind the lane
    assert seen["ordinary turns"] >= 30
    assert seen["owners left"] == 0


def test_ready_sockets_are_paced_newcomers_first_and_each_is_read_once() -> None:
    # if this fails after a Python upgrade, the loop internals the pacing overrides have changed
    class Unpaced(EventPacingLoop):
        events_per_turn = 1_000_000

    assert event_pacing_works()
    assert event_pacing_works(UrgentFirstLoop)
    assert not event_pacing_works(asyncio.SelectorEventLoop)
    assert not event_pacing_works(Unpaced)


def test_a_carried_socket_closed_before_its_turn_is_dropped_quietly() -> None:
    ready = EVENTS_PER_TURN + 40
    seen: dict[str, Any] = {"errors": [], "read": []}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: seen["errors"].append(context))
        transports: list[asyncio.Transport] = []

        class Reader(asyncio.Protocol):
            def __init__(self, n: int) -> None:
                self.n = n

            def data_received(self, data: bytes) -> None:
                seen["read"].append(self.n)
                if len(seen["read"]) == 1:  # in the first turn: close the ones likely carried
                    for transport in transports[-40:]:
                        transport.close()

        pairs = [socket.socketpair() for _ in range(ready)]
        for n, (ours, _) in enumerate(pairs):
            transport, _ = await loop.create_connection(lambda n=n: Reader(n), sock=ours)  # type: ignore[misc]
            assert isinstance(transport, asyncio.Transport)
            transports.append(transport)
        for _, theirs in pairs:
            theirs.send(b"x")
        await async_wait_until(
            lambda: len(set(seen["read"])) >= ready - 40, timeout=30, what="the open ones read"
        )
        await asyncio.sleep(0.05)
        for transport in transports:
            transport.close()
        for _, theirs in pairs:
            theirs.close()

    with asyncio.Runner(loop_factory=EventPacingLoop) as runner:
        runner.run(main())
    read = seen["read"]
    assert len(read) == len(set(read))  # none read twice
    assert set(range(ready - 40)) <= set(read)  # every open one read
    assert seen["errors"] == []


class _Pairs:
    """Socket pairs whose near ends are read by the loop, each read recorded as ``(label, n)``."""

    def __init__(self, reads: list[tuple[str, int]]) -> None:
        self.reads = reads
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.transports: list[asyncio.BaseTransport] = []

    async def open(self, label: str, count: int) -> list[socket.socket]:
        loop = asyncio.get_running_loop()
        reads = self.reads
        far = []

        class Reader(asyncio.Protocol):
            def __init__(self, n: int) -> None:
                self.n = n

            def data_received(self, data: bytes) -> None:
                reads.append((label, self.n))

        for n in range(count):
            ours, theirs = socket.socketpair()
            self.pairs.append((ours, theirs))
            transport, _ = await loop.create_connection(lambda n=n: Reader(n), sock=ours)  # type: ignore[misc]
            self.transports.append(transport)
            far.append(theirs)
        return far

    def close(self) -> None:
        for transport in self.transports:
            transport.close()
        for ours, theirs in self.pairs:
            ours.close()
            theirs.close()


def test_a_device_still_talking_is_not_carried_behind_silent_ones() -> None:
    # the storm bench's 1.5-1.9 s ack: a steady device's socket, carried in a turn with more ready
    # sockets than it serves, waited behind 10,000 silent ones carried earlier
    silent_count, talking_count = 4 * EVENTS_PER_TURN, EVENTS_PER_TURN + 20
    reads: list[tuple[str, int]] = []

    async def main() -> None:
        pairs = _Pairs(reads)
        try:
            talking = await pairs.open("talking", talking_count)
            silent = await pairs.open("silent", silent_count)
            for sock in talking:  # each talks once: served recently
                sock.send(b"x")
            await async_wait_until(lambda: len(reads) == talking_count, timeout=30, what="the first reads")
            reads.clear()
            for sock in silent:  # one turn serves some of them; the rest are carried
                sock.send(b"x")
            # the next turn's select finds them ready; this task runs first in that turn and first
            # in the one after, when that turn's reads are done
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            for sock in talking:  # more than a turn's worth: some are carried, behind silent ones
                sock.send(b"x")
            await async_wait_until(
                lambda: len(reads) == silent_count + talking_count, timeout=30, what="every socket read"
            )
        finally:
            pairs.close()

    with asyncio.Runner(loop_factory=UrgentFirstLoop) as runner:
        runner.run(main())
    last_talking = max(i for i, (label, _) in enumerate(reads) if label == "talking")
    silent_after = sum(1 for label, _ in reads[last_talking:] if label == "silent")
    # every talking socket was read while a good part of the silent ones still waited (FIFO
    # carrying read the carried talking ones last of all)
    assert silent_after >= EVENTS_PER_TURN, reads[last_talking - 5 : last_talking + 5]
    assert sorted(n for label, n in reads if label == "silent") == list(range(silent_count))


def test_silent_carried_sockets_are_served_while_talking_ones_keep_coming() -> None:
    # priority must not starve: a share of each turn goes to the sockets carried longest
    class Small(UrgentFirstLoop):
        events_per_turn = 4
        carried_per_turn = 2
        carried_oldest_per_turn = 1

    class NoShare(Small):
        carried_oldest_per_turn = 0

    def run(loop_factory: type[UrgentFirstLoop]) -> int:
        reads: list[tuple[str, int]] = []

        async def main() -> int:
            pairs = _Pairs(reads)
            try:
                talking = await pairs.open("talking", 30)
                silent = await pairs.open("silent", 12)
                for sock in talking:  # each talks once: served recently
                    sock.send(b"x")
                await async_wait_until(lambda: len(reads) == 30, timeout=30, what="the first reads")
                for sock in silent:
                    sock.send(b"x")
                for _ in range(100):  # 100 turns; more talking sockets ready in each than it serves
                    for sock in talking:
                        sock.send(b"x")
                    await asyncio.sleep(0)
                return len({n for label, n in reads if label == "silent"})
            finally:
                pairs.close()

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main())

    assert run(Small) == 12
    assert run(NoShare) < 12  # the share is what served them
