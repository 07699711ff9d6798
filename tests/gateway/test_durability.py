"""Nothing acknowledged is ever lost: SIGKILL the gateway while devices stream."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from tests.support.device import StreamingDevice
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.slow


def test_sigkill_mid_stream_loses_nothing_acked_and_stores_nothing_twice(tmp_path: Path) -> None:
    devices = 4
    frames = 1500
    with GatewayProcess.start(tmp_path) as gw:
        streamers = [
            StreamingDevice(gw.device_url, gw.add_device(f"dev-{i}"), f"dev-{i}", frames, samples_per_frame=3)
            for i in range(devices)
        ]
        kills = []

        async def chaos() -> None:
            # Kill twice while every device is mid-stream, restarting after each kill.
            for _ in range(2):
                while min(s.acked for s in streamers) < (len(kills) + 1) * frames // 4:
                    await asyncio.sleep(0.01)
                for s in streamers:
                    s.mark()
                await asyncio.to_thread(gw.kill)
                kills.append([s.marked_ack for s in streamers])
                # Everything acked before the kill must be in the store already.
                for s in streamers:
                    stored = {seq for seq, _, _ in gw.readings(s.name)}
                    assert set(range(1, s.marked_ack + 1)) <= stored, f"{s.name} lost acked frames"
                await asyncio.sleep(0.3)  # pacing, not waiting: the devices meet a gateway that is down
                await asyncio.to_thread(gw.launch)

        async def main() -> None:
            await asyncio.gather(chaos(), *(s.run(deadline_s=120) for s in streamers))

        asyncio.run(main())

        assert len(kills) == 2
        for s in streamers:
            rows = gw.readings(s.name)
            per_frame = Counter(seq for seq, _, _ in rows)
            # every frame exactly once, each with its 3 samples: no loss, no duplicate
            assert sorted(per_frame) == list(range(1, frames + 1)), s.name
            assert set(per_frame.values()) == {3}, f"{s.name}: a frame stored twice or partly"
            assert all(values["seq"] == seq for seq, _, values in rows)
            assert s.connections >= 3  # it really reconnected after each kill
        assert any(acks[0] < frames for acks in kills)  # the kills really hit mid-stream
