"""The serving process's runtime policy (gateway/device/runtime.py): what it changes, and that
``stop()`` puts the process back as it found it (tests run gateways inside their own process)."""

from __future__ import annotations

import asyncio
import gc
import sys

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
