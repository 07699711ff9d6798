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
