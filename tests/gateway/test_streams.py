"""``StreamState``: the seq rule, what is durable, what is in flight (docs/protocol.md, section 5).

In-process: the test plays the group committer (``on_committed``,
``on_commit_failed``) and the connection (an ``AckTarget``).
"""

from __future__ import annotations

import asyncio

from gateway.device.streams import StreamState


class Target:
    def __init__(self) -> None:
        self.acks: list[int] = []
        self.failures: list[BaseException] = []

    def send_ack(self, seq: int) -> None:
        self.acks.append(seq)

    def commit_failed(self, error: BaseException) -> None:
        self.failures.append(error)


def stream(committed: int = 0) -> tuple[StreamState, Target]:
    state = StreamState(7, "s1", committed)
    target = Target()
    state.target = target
    return state, target


# -- accept: the seq rule ----------------------------------------------------------------


def test_a_new_stream_starts_at_what_the_store_holds() -> None:
    state, _ = stream(committed=12)
    assert (state.device_id, state.stream) == (7, "s1")
    assert (state.committed, state.high, state.inflight) == (12, 12, 0)
    assert state.drained and not state.failed


def test_accept_needs_seq_above_high_and_gaps_are_allowed() -> None:
    state, _ = stream(committed=3)
    assert not state.accept(3)
    assert not state.accept(1)
    assert state.accept(4)
    assert state.accept(10)
    assert not state.accept(10)
    assert not state.accept(9)
    assert (state.high, state.inflight, state.committed) == (10, 2, 3)
    assert not state.drained


def test_a_refused_seq_does_not_move_high() -> None:
    state, _ = stream()
    assert state.accept(5)
    assert not state.accept(5)
    assert state.high == 5
    assert state.inflight == 1


# -- commits: committed, acks to the target ------------------------------------------------


def test_each_commit_moves_committed_and_acks_the_target() -> None:
    state, target = stream()
    for seq in (1, 2, 3):
        state.accept(seq)
    state.on_committed(1)
    state.on_committed(2)
    assert (state.committed, state.inflight) == (2, 1)
    state.on_committed(3)
    assert target.acks == [1, 2, 3]
    assert (state.committed, state.high, state.inflight) == (3, 3, 0)
    assert state.drained


def test_acks_go_to_whichever_target_holds_the_device_now() -> None:
    state, first = stream()
    state.accept(1)
    state.accept(2)
    state.on_committed(1)
    second = Target()
    state.target = second  # a reconnect took over
    state.on_committed(2)
    assert (first.acks, second.acks) == ([1], [2])
    state.target = None  # no connection: commits still count
    state.accept(3)
    state.on_committed(3)
    assert state.committed == 3


def test_committed_never_moves_back() -> None:
    state, target = stream(committed=5)
    state.accept(6)
    state.on_committed(4)  # a stale completion
    assert state.committed == 5
    assert target.acks == []


# -- failures ------------------------------------------------------------------------------


def test_a_failed_commit_tells_the_target_once_and_stops_the_stream() -> None:
    state, target = stream()
    for seq in (1, 2, 3):
        state.accept(seq)
    error = OSError("disk full")
    state.on_commit_failed(error)
    state.on_commit_failed(error)
    assert state.failed
    assert target.failures == [error]
    assert not state.accept(4)
    state.on_committed(3)  # a late success of the same stream is not acked any more
    assert target.acks == []
    assert state.committed == 0
    assert state.drained


# -- drained ------------------------------------------------------------------------------


def test_when_drained_runs_at_once_when_nothing_is_in_flight() -> None:
    state, _ = stream()
    calls: list[str] = []
    state.when_drained(lambda: calls.append("now"))
    assert calls == ["now"]


def test_when_drained_runs_once_after_the_last_frame_settles() -> None:
    state, _ = stream()
    state.accept(1)
    state.accept(2)
    calls: list[str] = []
    state.when_drained(lambda: calls.append("a"))
    state.when_drained(lambda: calls.append("b"))
    state.on_committed(1)
    assert calls == []
    state.on_commit_failed(RuntimeError("x"))
    assert calls == ["a", "b"]
    state.accept(3)  # refused: failed
    assert calls == ["a", "b"]


def test_drain_callbacks_do_not_fire_again_for_later_frames() -> None:
    state, _ = stream()
    state.accept(1)
    calls: list[int] = []
    state.when_drained(lambda: calls.append(1))
    state.on_committed(1)
    state.accept(2)
    state.on_committed(2)
    assert calls == [1]


def test_a_waiter_on_the_event_loop_wakes_when_the_stream_drains() -> None:
    """How the device server waits for the previous connection's frames (open_stream)."""

    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        state, _ = stream()
        state.accept(1)
        drained: asyncio.Future[None] = loop.create_future()
        state.when_drained(lambda: drained.set_result(None))
        loop.call_later(0.01, state.on_committed, 1)
        await asyncio.wait_for(drained, 5)
        return [f"committed {state.committed}"]

    assert asyncio.run(scenario()) == ["committed 1"]
