"""device_agent.buffer: frames stored encoded, acked away, persisted, capped with counted drops."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from device_agent.buffer import BufferStats, FrameBuffer
from iotgw_common.protocol import Event, Readings, Sample, decode_device_message

TS = 1_700_000_000_000


def sample(i: int) -> Sample:
    return Sample(ts=TS + i, values={"temp": 20.0 + i, "ok": True})


def fill(buffer: FrameBuffer, n: int) -> list[int]:
    return [buffer.append_readings([sample(i)]) for i in range(n)]


def test_append_pending_ack(tmp_path: Path) -> None:
    with FrameBuffer(tmp_path / "b.sqlite3") as buffer:
        assert buffer.stats() == BufferStats(0, 0)
        assert fill(buffer, 5) == [1, 2, 3, 4, 5]
        assert buffer.stats() == BufferStats(5, 0)
        assert [seq for seq, _ in buffer.pending(0, 3)] == [1, 2, 3]
        assert [seq for seq, _ in buffer.pending(3, 64)] == [4, 5]
        assert buffer.ack(3) == 3
        assert buffer.last_acked == 3
        assert [seq for seq, _ in buffer.pending(0, 64)] == [4, 5]
        assert buffer.stats() == BufferStats(2, 0)
        assert buffer.ack(2) == 0  # an old ack changes nothing
        assert buffer.last_acked == 3
        assert buffer.ack(5) == 2
        assert buffer.pending(0, 64) == []
        assert buffer.next_seq == 6


def test_frames_are_valid_protocol_messages_stored_with_their_seq(tmp_path: Path) -> None:
    with FrameBuffer(tmp_path / "b.sqlite3") as buffer:
        buffer.append_readings([sample(1), sample(2)])
        buffer.append_event("door", TS, {"pressed": True})
        (seq1, body1), (seq2, body2) = buffer.pending(0, 10)
        readings = decode_device_message(body1)
        event = decode_device_message(body2)
        assert isinstance(readings, Readings)
        assert readings.seq == seq1 == 1
        assert [s.values["temp"] for s in readings.samples] == [21.0, 22.0]
        assert isinstance(event, Event)
        assert (event.seq, event.name, event.data, event.ts) == (seq2, "door", {"pressed": True}, TS)
        # a resend is byte-identical
        assert buffer.pending(0, 10) == [(seq1, body1), (seq2, body2)]


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "b.sqlite3"
    with FrameBuffer(path, max_frames=3) as buffer:
        stream = buffer.stream
        fill(buffer, 5)  # 2 dropped by the cap
        buffer.ack(3)
        before = buffer.pending(0, 10)
    with FrameBuffer(path, max_frames=3) as buffer:
        assert buffer.stream == stream
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", stream)
        assert buffer.next_seq == 6
        assert buffer.last_acked == 3
        assert buffer.stats() == BufferStats(2, 2)
        assert buffer.pending(0, 10) == before
        assert buffer.append_readings([sample(9)]) == 6


def test_each_new_buffer_starts_a_new_stream(tmp_path: Path) -> None:
    with FrameBuffer(tmp_path / "a.sqlite3") as a, FrameBuffer(tmp_path / "b.sqlite3") as b:
        assert a.stream != b.stream


def test_cap_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    with FrameBuffer(tmp_path / "b.sqlite3", max_frames=3) as buffer:
        fill(buffer, 3)
        assert buffer.stats() == BufferStats(3, 0)
        fill(buffer, 4)  # seq 4..7
        assert [seq for seq, _ in buffer.pending(0, 10)] == [5, 6, 7]
        assert buffer.stats() == BufferStats(3, 4)
        buffer.ack(7)
        assert buffer.stats() == BufferStats(0, 4)  # drops are never forgotten


def test_forget_through_deletes_stored_frames_and_keeps_numbering(tmp_path: Path) -> None:
    with FrameBuffer(tmp_path / "b.sqlite3") as buffer:
        fill(buffer, 5)
        assert buffer.forget_through(2) == 2
        assert [seq for seq, _ in buffer.pending(0, 10)] == [3, 4, 5]
        assert buffer.next_seq == 6  # the gateway is behind us: keep counting
        assert buffer.forget_through(0) == 0
        assert buffer.next_seq == 6


def test_forget_through_jumps_past_a_gateway_that_is_ahead(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    with FrameBuffer(path) as buffer:
        fill(buffer, 2)
        assert buffer.forget_through(40) == 2
        assert buffer.stats().buffered == 0
        assert buffer.next_seq == 41
        assert buffer.last_acked == 40
        assert buffer.append_readings([sample(1)]) == 41
    with FrameBuffer(path) as buffer:
        assert buffer.next_seq == 42


def test_reject_deletes_one_frame_and_counts_it(tmp_path: Path) -> None:
    with FrameBuffer(tmp_path / "b.sqlite3") as buffer:
        fill(buffer, 3)
        assert buffer.reject(2)
        assert not buffer.reject(2)
        assert [seq for seq, _ in buffer.pending(0, 10)] == [1, 3]
        assert buffer.stats() == BufferStats(2, 1)


def test_synchronous_and_wal_are_applied(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    with FrameBuffer(path, synchronous="NORMAL") as buffer:
        assert buffer._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert buffer._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    with FrameBuffer(path) as buffer:
        assert buffer._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_close_twice_and_bad_cap(tmp_path: Path) -> None:
    buffer = FrameBuffer(tmp_path / "b.sqlite3")
    buffer.close()
    buffer.close()
    with pytest.raises(ValueError):
        FrameBuffer(tmp_path / "c.sqlite3", max_frames=0)
