"""One batch's transaction: what the group committer (writer.py) writes for a batch, and
what it refuses.

``BatchWriter.commit(batch)`` runs in the writer thread, inside no transaction of the
caller's. In submission order it refuses the frames of a device whose earlier commit failed
(until its next session) and of a device removed or re-tokened after its session was
admitted (the revocation log, gateway/store/registry.py, read inside the transaction), then
writes the rest in one transaction. If that transaction fails on something a frame holds
(a value SQLite refuses, a constraint) rather than on the store itself (disk full, I/O
error), it commits the devices apart, halving the set of devices until each failing part is
one device: every device whose rows store alone is stored and acknowledged; only a device
whose rows fail alone fails (docs/architecture.md, "Durability argument"). No I/O but
SQLite, no event loop, no thread: the caller tells the sinks.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from gateway.store import readings, registry
from gateway.store.db import transaction
from iotgw_common.clock import now_ms
from iotgw_common.protocol.messages import Event, Readings

log = logging.getLogger(__name__)


class CommitSink(Protocol):
    """Told, on the event loop, what became of a submitted frame."""

    def on_committed(self, seq: int) -> None: ...

    def on_commit_failed(self, error: BaseException) -> None: ...


@dataclass(slots=True)
class Frame:
    """An accepted data frame waiting for its commit."""

    sink: CommitSink
    device_id: int
    stream: str
    message: Readings | Event
    samples: int


@dataclass(slots=True)
class Meta:
    """Device metadata columns to set."""

    device_id: int
    fields: dict[str, Any]


@dataclass(slots=True)
class Reset:
    """Accept a device's frames again after a failed commit."""

    device_id: int


@dataclass(slots=True)
class Admit:
    """A device's new session, admitted at this revocation watermark."""

    device_id: int
    watermark: int


class DeviceRevoked(Exception):
    """A frame was not stored: its device was removed (``kind`` "removed") or its token rotated
    ("rotated") after the frame's session was admitted; the session must end (4003 / 4005)."""

    def __init__(self, device_id: int, kind: str) -> None:
        super().__init__(f"device {device_id} was {kind}; its frames are no longer stored")
        self.device_id = device_id
        self.kind = kind


_EARLIER_FAILURE = RuntimeError("an earlier commit failed")

# SQLite primary result codes that blame the store, not a frame: the whole batch fails
# (no retry device by device). Every other error is retried apart (docs/architecture.md).
_STORE_ERRORS = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})  # BUSY LOCKED NOMEM READONLY IOERR
# CORRUPT FULL CANTOPEN PROTOCOL NOTADB


def _blames_content(exc: BaseException) -> bool:
    """True if ``exc`` may come from what a frame holds (a value SQLite refuses, a constraint)."""
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF not in _STORE_ERRORS
    return True


@dataclass(slots=True)
class _Plan:
    """What one transaction writes (for one device, in ``_isolate``)."""

    frames: list[Frame] = field(default_factory=list)
    metas: list[Meta] = field(default_factory=list)


@dataclass(slots=True)
class Outcome:
    """What the sinks are told after a batch: stored frames, and failed frames with why."""

    stored: list[Frame] = field(default_factory=list)
    failed: list[tuple[Frame, BaseException]] = field(default_factory=list)


def _by_device(plan: _Plan) -> list[_Plan]:
    """The plan split per device, in order of first appearance (a device's rows stay together)."""
    groups: dict[int, _Plan] = {}
    for frame in plan.frames:
        groups.setdefault(frame.device_id, _Plan()).frames.append(frame)
    for meta in plan.metas:
        groups.setdefault(meta.device_id, _Plan()).metas.append(meta)
    return list(groups.values())


WRITER_CACHE_KIB = 16_384
"""Page cache of the writer's connection (``PRAGMA cache_size``; SQLite's default is 2,000 KiB).

Every group commit inserts into the ``(device_id, ts)`` index at each device's newest leaf:
one page per device in the batch, all over the index. With the default cache a batch of
1,000 devices' frames evicts the leaves the next batch needs again, and SQLite reads them
back from the WAL or the file; 16 MiB holds them (micro-benchmark of ``BatchWriter.commit``,
1,000 devices, 25,000 readings a commit: 4.1 -> 3.5 us per reading; 64 MiB gained nothing
more). Memory is taken only as pages are used; no effect on what is stored."""


class BatchWriter:
    """Writes batches on one connection (the writer thread's); keeps what spans batches."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        self._bulk = readings.bulk_insert_works() and registry.bulk_update_works()
        """Write a batch with multi-row statements (readings, events) and one JSON statement
        (stream positions) instead of executemany (the same rows)."""
        # devices whose commit failed; revocation log cursor, the newest revocation per device
        # and the watermark each device's session was admitted at; the stream each device's
        # position was last written for in this run
        self._failed_devices: set[int] = set()
        self._revocation_cursor = 0
        self._revoked: dict[int, tuple[int, str]] = {}
        self._admitted: dict[int, int] = {}
        self._known_streams: dict[int, str] = {}
        self.commits = 0
        self.committed_samples = 0
        self.failed_commits = 0

    def commit(self, batch: Sequence[object]) -> Outcome:
        """Store what ``batch`` holds (Frame, Meta, Reset, Admit; anything else is skipped);
        say which frames were stored and which failed, with why."""
        outcome = Outcome()
        self._commit(batch, outcome)
        return outcome

    def _commit(self, batch: Sequence[object], outcome: Outcome) -> None:
        """Store the batch in one transaction; if that fails on a frame's content, store
        every device's part that succeeds alone (bisecting by device) and fail only the rest."""
        plan: _Plan | None = None
        try:
            with transaction(self._conn, immediate=True):
                self._read_revocations()
                plan = self._plan(batch, outcome)
                moved = self._write(plan.frames, plan.metas) if plan.frames or plan.metas else {}
        except Exception as exc:
            self.failed_commits += 1
            if plan is None or not _blames_content(exc):  # the disk, not a frame: everyone fails
                log.error("commit of %d items failed: %s", len(batch), exc)
                frames = plan.frames if plan is not None else [i for i in batch if isinstance(i, Frame)]
                self._fail(frames, exc, outcome)
                return
            self._isolate(_by_device(plan), exc, outcome)
            return
        self._stored(plan.frames, moved, outcome)

    def _stored(self, frames: list[Frame], moved: dict[int, str], outcome: Outcome) -> None:
        self._known_streams.update(moved)
        if frames:
            self.commits += 1
            self.committed_samples += sum(f.samples for f in frames)
            outcome.stored.extend(frames)

    def _plan(self, batch: Sequence[object], outcome: Outcome) -> _Plan:
        """In submission order: what to write, and which frames to refuse (their device's
        commit failed earlier, or the device was revoked after its session was admitted)."""
        plan = _Plan()
        failed = self._failed_devices
        revoked = self._revoked
        for item in batch:  # isinstance: the hot path runs through here once per frame
            if isinstance(item, Frame):
                device_id = item.device_id
                if failed and device_id in failed:
                    outcome.failed.append((item, _EARLIER_FAILURE))
                elif revoked and device_id in revoked and self._is_revoked(device_id):
                    outcome.failed.append((item, DeviceRevoked(device_id, revoked[device_id][1])))
                else:
                    plan.frames.append(item)
            elif isinstance(item, Meta):
                if not (revoked and item.device_id in revoked and self._is_revoked(item.device_id)):
                    plan.metas.append(item)
            elif isinstance(item, Reset):
                failed.discard(item.device_id)
            elif isinstance(item, Admit):
                failed.discard(item.device_id)
                self._admitted[item.device_id] = item.watermark
        return plan

    def _is_revoked(self, device_id: int) -> bool:
        return self._revoked[device_id][0] > self._admitted.get(device_id, 0)

    def _read_revocations(self) -> bool:
        """Learn removals and rotations logged since the last look (inside the transaction)."""
        found = registry.revocations_after(self._conn, self._revocation_cursor)
        for log_id, device_id, kind in found:
            self._revoked[device_id] = (log_id, kind)
            self._revocation_cursor = log_id
        return bool(found)

    def _isolate(self, groups: list[_Plan], first: BaseException, outcome: Outcome) -> None:
        """After a shared commit failed: commit halves of the devices until each failing part
        is one device; a device whose frames fail alone fails, the others are stored."""
        log.error("commit of %d devices' frames failed (%s); retrying them apart", len(groups), first)
        parts = [groups] if len(groups) > 1 else []
        if len(groups) == 1:
            self._isolate_one(groups[0], first, outcome)
        while parts:
            part = parts.pop()
            frames = [f for g in part for f in g.frames]
            metas = [m for g in part for m in g.metas]
            try:
                with transaction(self._conn, immediate=True):
                    if self._read_revocations():
                        frames = self._drop_revoked(frames, outcome)
                    moved = self._write(frames, metas)
            except Exception as exc:
                if not _blames_content(exc):
                    rest = frames + [f for p in parts for g in p for f in g.frames]
                    self._fail(rest, exc, outcome)
                    return
                if len(part) == 1:
                    self._isolate_one(part[0], exc, outcome)
                else:
                    half = len(part) // 2
                    parts += [part[half:], part[:half]]
                continue
            self._stored(frames, moved, outcome)

    def _isolate_one(self, group: _Plan, error: BaseException, outcome: Outcome) -> None:
        """One device's part failed: without its metadata, then its frames fail."""
        if group.metas:
            log.error("device %d: metadata not stored: %s", group.metas[0].device_id, error)
            if group.frames:
                try:
                    with transaction(self._conn, immediate=True):
                        frames = group.frames
                        if self._read_revocations():
                            frames = self._drop_revoked(frames, outcome)
                        moved = self._write(frames, [])
                except Exception as exc:
                    error = exc
                else:
                    self._stored(frames, moved, outcome)
                    return
        if group.frames:
            self._fail(group.frames, error, outcome)

    def _drop_revoked(self, frames: list[Frame], outcome: Outcome) -> list[Frame]:
        kept: list[Frame] = []
        for frame in frames:
            device_id = frame.device_id
            if device_id in self._revoked and self._is_revoked(device_id):
                outcome.failed.append((frame, DeviceRevoked(device_id, self._revoked[device_id][1])))
            else:
                kept.append(frame)
        return kept

    def _fail(self, frames: list[Frame], error: BaseException, outcome: Outcome) -> None:
        if frames:
            log.error(
                "%d frames of devices %s not stored: %s",
                len(frames),
                sorted({f.device_id for f in frames}),
                error,
            )
        self._failed_devices.update(frame.device_id for frame in frames)
        outcome.failed.extend((frame, error) for frame in frames)

    def _write(self, frames: list[Frame], metas: list[Meta]) -> dict[int, str]:
        """The rows of ``frames`` and ``metas``, inside the caller's transaction; returns the
        devices whose stream it wrote for the first time (for ``_known_streams``, once committed)."""
        encode = msgspec.json.encode
        bulk = self._bulk
        reading_rows: list[readings.ReadingRow] = []
        reading_frames: list[readings.ReadingFrame] = []
        events: list[readings.EventInsert] = []
        streams: dict[int, tuple[str, int]] = {}
        for frame in frames:
            message = frame.message
            device_id = frame.device_id
            if type(message) is Readings:
                seq = message.seq
                if bulk:
                    reading_frames.append((device_id, seq, message.samples))
                else:
                    reading_rows.extend(
                        (device_id, sample.ts, seq, encode(sample.values).decode())
                        for sample in message.samples
                    )
            else:
                assert type(message) is Event
                events.append(
                    (device_id, message.ts, message.seq, message.name, encode(message.data).decode())
                )
            streams[device_id] = (frame.stream, message.seq)
        conn = self._conn
        if reading_frames:
            readings.insert_readings_bulk(conn, reading_frames)
        if reading_rows:
            readings.insert_readings(conn, reading_rows)
        if events:
            readings.insert_events(conn, events, bulk=bulk)
        if streams:
            now = now_ms()
            known = self._known_streams
            moved = {d: s for d, (s, _) in streams.items() if known.get(d) != s}
            if moved:  # the first commit of a device this run, or it changed streams
                registry.archive_streams(conn, moved, now)
            registry.record_stream_positions(conn, streams, now, bulk=bulk)
        else:
            moved = {}
        for meta in metas:
            registry.update_metadata(conn, meta.device_id, meta.fields)
        return moved
