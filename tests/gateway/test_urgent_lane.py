"""The event loop's urgent lane (iotgw_common.urgency) and a device connection's use of it.

Orders, not times: which callback ran first when both were ready in the same loop turn.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.device.command_urgency import CommandUrgency
from iotgw_common.urgency import (
    UrgentFirstLoop,
    lane_works,
    mark_ordinary,
    mark_urgent,
    urgent_context,
)

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    with asyncio.Runner(loop_factory=UrgentFirstLoop) as runner:
        return runner.run(main())  # type: ignore[arg-type]


def test_the_lane_works_on_this_interpreter() -> None:
    # it reaches into BaseEventLoop's internals: a Python upgrade that changes them fails here
    assert lane_works()


def test_urgent_callbacks_overtake_queued_ones_in_their_own_order() -> None:
    order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        for i in range(3):
            loop.call_soon(order.append, f"queued-{i}")
        loop.call_soon(order.append, "urgent-0", context=urgent_context())
        loop.call_soon(order.append, "urgent-1", context=urgent_context())
        loop.call_soon(done.set_result, None)
        await done

    run(main)
    assert order == ["urgent-0", "urgent-1", "queued-0", "queued-1", "queued-2"]


def test_an_urgent_callback_scheduled_by_a_running_one_goes_before_the_rest_of_the_turn() -> None:
    order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def first() -> None:
            order.append("first")
            loop.call_soon(order.append, "urgent", context=urgent_context())
            loop.call_soon(order.append, "ordinary")

        loop.call_soon(first)
        loop.call_soon(order.append, "queued-before")
        loop.call_soon(lambda: loop.call_soon(done.set_result, None))
        await done

    run(main)
    assert order == ["first", "urgent", "queued-before", "ordinary"]


def test_call_soon_threadsafe_from_another_thread_goes_to_the_front() -> None:
    order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        ready = threading.Event()
        blocker = threading.Event()

        def hold_the_loop() -> None:  # the loop is busy while the other thread schedules
            ready.set()
            assert blocker.wait(30)

        def other_thread() -> None:
            assert ready.wait(30)
            loop.call_soon_threadsafe(order.append, "ordinary-threadsafe")
            loop.call_soon_threadsafe(order.append, "urgent-threadsafe", context=urgent_context())
            blocker.set()

        loop.call_soon(hold_the_loop)
        for i in range(3):
            loop.call_soon(order.append, f"queued-{i}")
        thread = threading.Thread(target=other_thread)
        thread.start()
        loop.call_soon(lambda: loop.call_soon(done.set_result, None))
        await done
        await asyncio.to_thread(thread.join, 30)

    run(main)
    assert order.index("urgent-threadsafe") == 0
    assert order.index("ordinary-threadsafe") > order.index("queued-2")


def test_a_marked_task_wakes_ahead_of_queued_callbacks_until_it_marks_itself_ordinary() -> None:
    order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        urgent_go, ordinary_go = loop.create_future(), loop.create_future()

        async def waiter() -> None:
            mark_urgent()
            await urgent_go
            order.append("urgent task")
            mark_ordinary()
            await ordinary_go
            order.append("ordinary task")

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0)  # it waits on urgent_go now

        def wake(future: asyncio.Future[None], label: str) -> None:
            for i in range(2):
                loop.call_soon(order.append, f"{label}-{i}")
            future.set_result(None)  # schedules the task's wake-up after those

        loop.call_soon(order.append, "queued-first")
        loop.call_soon(wake, urgent_go, "after-urgent")
        await asyncio.sleep(0.01)
        loop.call_soon(wake, ordinary_go, "after-ordinary")
        await task

    run(main)
    assert order[:4] == ["queued-first", "urgent task", "after-urgent-0", "after-urgent-1"]  # overtook
    assert order[4:] == ["after-ordinary-0", "after-ordinary-1", "ordinary task"]  # waited its turn


class _Reader(asyncio.Protocol):
    def __init__(self, label: str, order: list[str]) -> None:
        self.label = label
        self.order = order
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.order.append(self.label)


def _reads_in_order(urgent: str | None) -> list[str]:
    """Two connections readable in the same loop turn; ``urgent`` marked: which is read first."""
    order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, UrgentFirstLoop)
        pairs = [socket.socketpair() for _ in range(2)]
        readers = []
        for label, (ours, _) in zip(("a", "b"), pairs, strict=True):
            _, reader = await loop.create_connection(lambda label=label: _Reader(label, order), sock=ours)
            readers.append(reader)
        for reader in readers:
            if reader.label == urgent:
                assert reader.transport is not None
                loop.set_transport_urgent(reader.transport, True)

        def send_both() -> None:  # both peers write while the loop is busy: one select sees both
            for _, theirs in pairs:
                theirs.send(b"x")
            time.sleep(0.05)

        loop.call_soon(send_both)
        deadline = time.monotonic() + 30
        while len(order) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for reader in readers:
            assert reader.transport is not None
            reader.transport.close()
        for _, theirs in pairs:
            theirs.close()

    run(main)
    return order


def test_reads_of_an_urgent_transport_go_first() -> None:
    plain = _reads_in_order(None)
    assert sorted(plain) == ["a", "b"]
    first, second = plain
    assert _reads_in_order(second) == [second, first]
    assert _reads_in_order(first) == [first, second]


def test_a_connection_is_urgent_from_a_command_until_its_result_or_deadline() -> None:
    seen: dict[str, Any] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, UrgentFirstLoop)
        ours, theirs = socket.socketpair()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
        lane = CommandUrgency(transport)
        seen["idle"] = lane.on
        lane.sent(timeout_s=10)
        lane.sent(timeout_s=10)
        seen["sent"] = (lane.on, transport in loop._urgent_transports)
        lane.answered()
        seen["one answered"] = lane.on
        lane.answered()
        seen["both answered"] = (lane.on, transport in loop._urgent_transports)
        lane.sent(timeout_s=0.05)  # never answered: the deadline ends it
        deadline = time.monotonic() + 30
        while lane.on and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        seen["deadline passed"] = (lane.on, transport in loop._urgent_transports)
        transport.close()
        theirs.close()

    run(main)
    assert seen == {
        "idle": False,
        "sent": (True, True),
        "one answered": True,
        "both answered": (False, False),
        "deadline passed": (False, False),
    }


def test_on_a_plain_loop_everything_keeps_asyncio_order() -> None:
    order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(order.append, "queued")
        loop.call_soon(order.append, "urgent", context=urgent_context())
        loop.call_soon(done.set_result, None)
        await done
        ours, theirs = socket.socketpair()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
        lane = CommandUrgency(transport)  # no lane to mark: only its own flag changes
        lane.sent(timeout_s=10)
        lane.answered()
        transport.close()
        theirs.close()

    asyncio.run(main())
    assert order == ["queued", "urgent"]


def test_an_urgent_socket_that_becomes_readable_mid_turn_is_read_before_the_rest_of_the_turn() -> None:
    order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, UrgentFirstLoop)
        ours, theirs = socket.socketpair()
        reader: _Reader
        _, reader = await loop.create_connection(lambda: _Reader("urgent read", order), sock=ours)
        assert reader.transport is not None
        loop.set_transport_urgent(reader.transport, True)
        done = loop.create_future()

        def ordinary(i: int) -> None:
            order.append(f"ordinary-{i}")
            if i == 0:  # the peer writes while this turn's callbacks run
                theirs.send(b"x")
            time.sleep(0.002)  # each callback takes a while, as a busy turn's do

        def queue_a_turn() -> None:  # many callbacks ready at once: one long turn
            for i in range(40):
                loop.call_soon(ordinary, i)
            loop.call_soon(lambda: loop.call_soon(done.set_result, None))

        loop.call_soon(queue_a_turn)
        await done
        fd = ours.fileno()
        assert fd in loop._urgent_fds
        reader.transport.close()  # a closed socket is no longer looked at
        assert fd not in loop._urgent_fds
        theirs.close()

    run(main)
    assert order.index("urgent read") < order.index("ordinary-39")  # not after the whole turn
    assert order.index("urgent read") > order.index("ordinary-0")  # it was not readable before
