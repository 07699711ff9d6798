"""The firmware (main.py on the unix port, simulated sensors) against a live gateway process.

Every sample the firmware takes is logged as ``SAMPLE <n> <host wall clock ms>``
and carries its number in metric ``n``, so the store can be checked for each
reading exactly once, with the right timestamp.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.firmware.mp import Firmware, base_config
from tests.support.gateway import GatewayProcess


def stored_numbers(rows: list[tuple[int, int, dict[str, Any]]]) -> list[int]:
    return sorted(int(values["n"]) for _, _, values in rows)


def assert_each_sample_once_with_its_time(fw: Firmware, rows: list[tuple[int, int, dict[str, Any]]],
                                          total: int, max_skew_ms: int = 1500) -> None:  # fmt: skip
    assert stored_numbers(rows) == list(range(1, total + 1))
    taken = fw.samples()
    assert len(taken) == total
    skews = [ts - taken[int(values["n"])] for _, ts, values in rows]
    assert max(abs(s) for s in skews) < max_skew_ms, (min(skews), max(skews))
    seqs = [seq for seq, _, _ in rows]
    assert seqs == sorted(seqs)


def test_streams_readings_and_events_into_the_store(tmp_path: Path) -> None:
    total = 40
    with GatewayProcess.start(tmp_path / "gw") as gw:
        token = gw.add_device("board-1")
        config = base_config(
            gw.device_url, token, device="board-1", interval_s=0.05, sample_limit=total,
            exit_when_drained=True, inputs=[{"name": "button", "sim_every_s": 0.5}],
        )  # fmt: skip
        with Firmware(tmp_path, config) as fw:
            assert fw.wait(30) == 0, fw.tail()
        rows = gw.readings("board-1")
        events = gw.events("board-1")
    assert fw.find(r"^DRAINED 40 buffered=0 dropped=0")
    assert_each_sample_once_with_its_time(fw, rows, total)
    assert events, "the simulated button's changes should arrive as events"
    assert {name for _, _, name, _ in events} == {"button"}
    assert all(isinstance(data["value"], bool) for _, _, _, data in events)


@pytest.mark.slow
def test_gateway_killed_mid_stream_every_reading_arrives_exactly_once(tmp_path: Path) -> None:
    total = 300
    with GatewayProcess.start(tmp_path / "gw") as gw:
        token = gw.add_device("board-2")
        config = base_config(gw.device_url, token, device="board-2", interval_s=0.02,
                             sample_limit=total, exit_when_drained=True)  # fmt: skip
        with Firmware(tmp_path, config) as fw:
            fw.wait_line(r"^SAMPLE 80 ", timeout=20)
            gw.kill()
            killed_at = len(fw.snapshot())
            time.sleep(0.5)  # samples keep coming into the RAM ring meanwhile
            gw.launch()
            fw.wait_line(r"^LINK welcome ", start=killed_at, timeout=20)
            assert fw.wait(60) == 0, fw.tail()
        rows = gw.readings("board-2")
    assert len(fw.find(r"^LINK welcome ")) >= 2
    assert fw.find(r"^DRAINED 300 buffered=0 dropped=0")
    assert_each_sample_once_with_its_time(fw, rows, total)


@pytest.mark.slow
def test_free_heap_stays_flat_over_an_hour_of_readings(tmp_path: Path) -> None:
    # An hour at one reading a second, run at 2 ms a reading, in a 256 KB heap.
    total, every = 3600, 100
    with GatewayProcess.start(tmp_path / "gw") as gw:
        token = gw.add_device("board-3")
        config = base_config(gw.device_url, token, device="board-3", interval_s=0.002, sample_limit=total,
                             exit_when_drained=True, trace_mem_every=every)  # fmt: skip
        with Firmware(tmp_path, config) as fw:
            assert fw.wait(90) == 0, fw.tail()
        rows = gw.readings("board-3")
    assert stored_numbers(rows) == list(range(1, total + 1))
    mem = fw.mem()
    assert len(mem) == total // every
    free = [f for _, f, _ in mem]
    quarter = len(free) // 4
    first, last = free[:quarter], free[-quarter:]
    print(f"\nfree heap (bytes, after gc.collect) every {every} samples of {total}:")
    print("  " + " ".join(str(f) for f in free))
    print(f"  first quarter min {min(first)}, last quarter min {min(last)}, overall min {min(free)}, "
          f"max allocated {max(a for _, _, a in mem)}")  # fmt: skip
    assert min(last) >= min(first) - 4096, "free heap shrinks over time: a leak"
