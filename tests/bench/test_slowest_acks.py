"""The bench's record of a window's slowest acks (bench/workload.py): what traces an outlier."""

from __future__ import annotations

import time

from bench.drive import wall_clock
from bench.workload import SLOWEST_KEPT, WorkerReport


def test_a_report_keeps_the_slowest_acks_with_when_they_were_sent_and_merging_keeps_the_slowest() -> None:
    first, second = WorkerReport(), WorkerReport()
    for n, latency in enumerate((0.3, 1.2, 0.2, 0.9, 0.4, 0.25, 1.5)):
        first.note_slow_ack(latency, 1000.0 + n, f"dev-{n}")
    second.note_slow_ack(1.1, 2000.0, "dev-other")

    assert [round(latency, 2) for latency, _, _ in first.slowest_acks] == [1.5, 1.2, 0.9, 0.4, 0.3]
    assert len(first.slowest_acks) == SLOWEST_KEPT
    assert first.slowest_acks[0] == (1.5, 1006.0, "dev-6")  # with its send time

    first.merge(second)
    assert [device for _, _, device in first.slowest_acks] == [
        "dev-6",
        "dev-1",
        "dev-other",
        "dev-3",
        "dev-4",
    ]


def test_wall_clock_writes_the_time_of_day_as_the_gateways_log_does() -> None:
    stamp = time.mktime((2026, 12, 1, 1, 11, 24, 0, 0, -1)) + 0.957
    assert wall_clock(stamp) == "01:11:24,957"
