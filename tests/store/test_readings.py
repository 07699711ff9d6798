"""The ``readings`` writes (gateway/store/readings.py): the bulk statements store what the
one-row statements store, byte for byte and in ``readings.id`` order, for every batch size."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import msgspec
import pytest

from gateway import store
from gateway.store import readings
from gateway.store.db import transaction
from iotgw_common.protocol import Readings, Sample, decode_device_message

T0 = 1_764_000_000_000
VALUES: list[dict[str, bool | float | str]] = [
    {"a": 21.5, "b.c": -0.0, "d": 1e16, "e": 5e-324, "f": True, "g": 'é"\\\n\u2028😀\x01', "h": ""},
    {"x": 1.0, "y": False, "z": -123456.789, "big": 1.7976931348623157e308},
    {"only": "text", "nul": "\x00", "quote": "'; DROP TABLE readings; --"},
    {"temp": 21.5, "humidity": 40.25, "pressure": 1013.2},
]


def frames_of(sizes: list[int], seed: int = 1) -> list[readings.ReadingFrame]:
    """Frames of the given sample counts over a few devices, values cycling through VALUES."""
    rng = random.Random(seed)
    frames: list[readings.ReadingFrame] = []
    for seq, size in enumerate(sizes, start=1):
        samples = [
            Sample(ts=T0 + rng.randrange(10**6), values=VALUES[(seq + i) % len(VALUES)]) for i in range(size)
        ]
        frames.append((rng.choice([3, 1, 7, 2]), seq, samples))
    return frames


def stored(conn: sqlite3.Connection) -> list[tuple[int, int, int, int, str, str]]:
    return conn.execute(
        "SELECT id, device_id, ts, seq, data, typeof(data) FROM readings ORDER BY id"
    ).fetchall()


@pytest.mark.parametrize(
    "sizes",
    [
        [1],
        [2, 3],
        [readings.MAX_BULK_ROWS],
        [readings.MAX_BULK_ROWS - 1, 2],
        [500, 500, 1],
        [10] * 77,
        [255, 1, 129, 3],
    ],
    ids=["one", "two-frames", "one-full-statement", "over-by-one", "large", "10x77", "mixed"],
)
def test_bulk_insert_stores_the_rows_the_one_row_statement_stores(tmp_path: Path, sizes: list[int]) -> None:
    frames = frames_of(sizes)
    found = {}
    for mode in ("bulk", "rows"):
        conn = store.connect(tmp_path / f"{mode}.sqlite3", synchronous="NORMAL")
        with transaction(conn):  # an id taken before: the new rows continue after it
            readings.insert_readings(conn, [(9, T0, 1, "{}")])
        with transaction(conn):
            if mode == "bulk":
                readings.insert_readings_bulk(conn, frames)
            else:
                rows = [
                    (d, s.ts, seq, msgspec.json.encode(s.values).decode())
                    for d, seq, ss in frames
                    for s in ss
                ]
                readings.insert_readings(conn, rows)
        found[mode] = stored(conn)
        conn.close()
    assert found["bulk"] == found["rows"]
    assert len(found["bulk"]) == 1 + sum(sizes)
    assert [row[0] for row in found["bulk"]] == list(range(1, 2 + sum(sizes)))  # consecutive ids, in order
    assert {row[5] for row in found["bulk"]} == {"text"}


def test_bulk_insert_of_nothing_writes_nothing(conn: sqlite3.Connection) -> None:
    readings.insert_readings_bulk(conn, [])
    readings.insert_readings_bulk(conn, [(1, 1, [])])
    assert stored(conn) == []


@pytest.mark.parametrize("variables", [250_000, 32_766, 999, 9])
def test_bulk_statements_fit_the_variable_limit_take_few_shapes_and_fail_with_the_transaction(
    conn: sqlite3.Connection, variables: int
) -> None:
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variables)
    frames = frames_of([readings.MAX_BULK_ROWS + 300, 5000, 1])
    executed: list[int] = []
    conn.set_trace_callback(lambda sql: executed.append(sql.count("(")))
    with transaction(conn):
        readings.insert_readings_bulk(conn, frames)
    conn.set_trace_callback(None)
    rows = [count for count in executed if count > 0]  # the INSERTs: one "(" per row plus the columns'
    assert sum(rows) - len(rows) == readings.MAX_BULK_ROWS + 5301
    assert max(rows) - 1 <= min(readings.MAX_BULK_ROWS, variables // 4)
    shapes = {readings.MAX_BULK_ROWS >> i for i in range(readings.MAX_BULK_ROWS.bit_length())}
    assert {count - 1 for count in rows} <= shapes and len(shapes) <= 15
    before = stored(conn)
    assert [row[2:5] for row in before] == [
        (s.ts, seq, msgspec.json.encode(s.values).decode()) for _, seq, ss in frames for s in ss
    ]
    # a NULL device_id (NOT NULL) in the last row: the last of the statements fails
    bad = [*frames_of([300]), (None, 1, [Sample(ts=T0, values={"x": 1.0})])]
    with pytest.raises(sqlite3.IntegrityError), transaction(conn):
        readings.insert_readings_bulk(conn, bad)  # type: ignore[arg-type]
    assert stored(conn) == before


def test_decoded_frames_are_stored_as_their_values_reencoded(conn: sqlite3.Connection) -> None:
    """What a device sends is stored as msgspec's minified encoding of the decoded values (as before)."""
    frame = b'{"type":"readings","seq":5,"samples":[{"ts":%d,"values":{ "t" : 2.50, "n":1, "e":1E3, "s":"\\u0041"}}]}'
    message = decode_device_message(frame % T0)
    assert isinstance(message, Readings)
    with transaction(conn):
        readings.insert_readings_bulk(conn, [(4, message.seq, message.samples)])
    assert [row[1:5] for row in stored(conn)] == [(4, T0, 5, '{"t":2.5,"n":1.0,"e":1000.0,"s":"A"}')]


def test_the_probe_says_yes_on_this_sqlite() -> None:
    assert readings.bulk_insert_works()


@pytest.mark.parametrize("count", [1, readings.MAX_BULK_ROWS + 3])
def test_bulk_event_insert_stores_the_rows_the_one_row_statement_stores(tmp_path: Path, count: int) -> None:
    rows: list[readings.EventInsert] = [
        (i % 3 + 1, T0 + i, i + 1, f"e{i % 4}", msgspec.json.encode(VALUES[i % len(VALUES)]).decode())
        for i in range(count)
    ]
    found = {}
    for bulk in (True, False):
        conn = store.connect(tmp_path / f"{bulk}.sqlite3", synchronous="NORMAL")
        with transaction(conn):
            readings.insert_events(conn, rows, bulk=bulk)
        found[bulk] = conn.execute(
            "SELECT id, device_id, ts, seq, name, data FROM events ORDER BY id"
        ).fetchall()
        conn.close()
    assert found[True] == found[False] == [(i + 1, *row) for i, row in enumerate(rows)]
