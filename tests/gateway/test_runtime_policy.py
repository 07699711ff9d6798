"""The serving process's runtime policy (gateway/device/runtime.py): what it changes, and that
``stop()`` puts the process back as it found it (tests run gateways inside their own process)."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time

import pytest

from gateway.device.runtime import RuntimePolicy


def test_start_freezes_and_raises_threshold0_stop_restores_everything() -> None:
    before_threshold, before_switch = gc.get_threshold(), sys.getswitchinterval()

    async def main() -> None:
        policy = RuntimePolicy(
            freeze_every_s=0.01, full_every_s=0.02, switch_interval_s=0.002, threshold0=5000
        )
        policy.start()
        try:
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold()[0] == 5000
            assert sys.getswitchinterval() == 0.002
            _ = [[i] for i in range(1000)]  # something to collect
            # several freezes and at least one scheduled full collection; polled: a busy machine
            # can starve the loop past any fixed sleep
            deadline = asyncio.get_running_loop().time() + 30
            while not (policy.full_collections >= 1 and policy.lag[0] >= 1):
                assert asyncio.get_running_loop().time() < deadline, (policy.full_collections, policy.lag)
                await asyncio.sleep(0.01)
            assert policy.last_full_s is not None  # the loop-lag probe ran, a full collection was timed
        finally:
            await policy.stop()
        assert "gen2" in policy.summary()

    asyncio.run(main())
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before_threshold
    assert sys.getswitchinterval() == before_switch


def test_off_changes_nothing_but_still_measures() -> None:
    before_threshold, before_switch = gc.get_threshold(), sys.getswitchinterval()

    async def main() -> None:
        policy = RuntimePolicy(switch_interval_s=None, freeze=False)
        policy.start()
        try:
            assert gc.get_freeze_count() == 0 and gc.get_threshold() == before_threshold
            gc.collect(0)
            assert policy.pauses[0][0] >= 1  # collections are still timed
        finally:
            await policy.stop()

    asyncio.run(main())
    assert gc.get_threshold() == before_threshold and sys.getswitchinterval() == before_switch


def _hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # blocks the event loop: what a stall is


def test_a_stall_is_counted_named_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> RuntimePolicy:
        policy = RuntimePolicy(freeze=False)
        assert policy.stall_watch is not None
        policy.start()
        try:
            await asyncio.sleep(0.05)  # the lag probe ticks at least once
            _hold_the_loop(0.6)
            deadline = asyncio.get_running_loop().time() + 30
            while not any("stalled" in r.getMessage() for r in caplog.records):
                assert asyncio.get_running_loop().time() < deadline, policy.stall_watch.report()
                await asyncio.sleep(0.02)
        finally:
            await policy.stop()
        return policy

    with caplog.at_level(logging.INFO, logger="gateway.device.runtime"):
        policy = asyncio.run(main())
    watch = policy.stall_watch
    assert watch is not None and watch.stalls >= 1
    assert watch.longest >= 0.3
    assert any("_hold_the_loop" in where for where in watch.samples), watch.samples
    warning = next(r.getMessage() for r in caplog.records if "stalled" in r.getMessage())
    assert "_hold_the_loop" in warning
    assert any("event loop stalls over" in r.getMessage() for r in caplog.records)


def test_a_growing_peak_rss_triggers_a_full_collection_the_schedule_would_not() -> None:
    peak = [100 * 1024]  # KiB; the process's real peak depends on every test before this one

    async def main() -> tuple[int, int, int]:
        policy = RuntimePolicy(freeze_every_s=0.01, full_every_s=3600, rss_growth=1.5, rss_slack_kb=16 * 1024,
                               peak_rss_kb=lambda: peak[0])  # fmt: skip
        policy.start()
        try:
            await asyncio.sleep(0.2)  # many freezes, no reason for a full collection yet
            before = policy.full_collections
            peak[0] = 100 * 1024 * 3 // 2 + 16 * 1024 + 1  # just past 1.5x + slack
            deadline = asyncio.get_running_loop().time() + 30
            while policy.full_collections == before:
                assert asyncio.get_running_loop().time() < deadline, "no full collection after the RSS grew"
                await asyncio.sleep(0.01)
            after = policy.full_collections
            # that one found no garbage: the next needs twice the growth, so 1.5x more is not enough
            peak[0] = peak[0] * 3 // 2 + 16 * 1024 + 1
            await asyncio.sleep(0.2)
            return before, after, policy.full_collections
        finally:
            await policy.stop()

    before, after, later = asyncio.run(main())
    assert before == 0 and after == 1 and later == 1


def test_the_peak_rss_is_read_from_the_process() -> None:
    assert RuntimePolicy().peak_rss_kb() > 1024  # KiB: any Python process is past 1 MiB


def test_connections_opened_since_the_last_full_collection_do_not_trigger_one_nor_their_leaving() -> None:
    peak = [100 * 1024]  # KiB
    open_connections = [0]

    async def main() -> tuple[int, int]:
        policy = RuntimePolicy(freeze_every_s=0.01, full_every_s=3600, rss_growth=1.5, rss_slack_kb=16 * 1024,
                               peak_rss_kb=lambda: peak[0], connections=lambda: open_connections[0],
                               connection_kb=32)  # fmt: skip
        policy.start()
        try:
            await asyncio.sleep(0.05)
            # a fleet of 10,000 connects: its 312 MiB at 32 KB each are live, not frozen garbage
            open_connections[0] = 10_000
            peak[0] = 100 * 1024 * 3 // 2 + 16 * 1024 + 10_000 * 32  # exactly what they explain
            await asyncio.sleep(0.2)  # many checks: none may collect
            open_connections[0] = 0  # the fleet leaves: the peak RSS stays what it was
            await asyncio.sleep(0.2)
            during_the_storm = policy.full_collections
            peak[0] += 1  # one KiB more than the connections explain
            deadline = asyncio.get_running_loop().time() + 30
            while policy.full_collections == during_the_storm:
                assert asyncio.get_running_loop().time() < deadline, "no full collection past the bound"
                await asyncio.sleep(0.01)
            return during_the_storm, policy.full_collections
        finally:
            await policy.stop()

    during_the_storm, after = asyncio.run(main())
    assert during_the_storm == 0 and after == 1
