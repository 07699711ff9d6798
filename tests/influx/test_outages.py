"""Every acknowledged reading reaches InfluxDB exactly once: through an InfluxDB outage and gateway crashes."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from tests.support.device import ScriptedDevice, now_ms
from tests.support.gateway import GatewayProcess
from tests.support.services import InfluxDB1

from .conftest import UniqueStreamer, api_status, run, status, v1_env, wait_for

pytestmark = pytest.mark.slow


def points(influx: InfluxDB1, db: str, device: str) -> list[tuple[float, float]]:
    rows = influx.rows(f'SELECT "seq", "i" FROM "iotgw" WHERE "device" = \'{device}\'', db)
    return [(row["seq"], row["i"]) for row in rows]


def total_points(influx: InfluxDB1, db: str) -> int:
    return influx.count("iotgw", "seq", db)


def test_influxdb_outage_while_devices_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    devices, frames, spf = 3, 300, 5
    db = "outage"
    with InfluxDB1.start(tmp_path / "influxd") as influx:
        influx.create_database(db)
        env = v1_env(influx, db, batch_size="400")
        with GatewayProcess.start(tmp_path / "gw", env=env) as gw:
            tokens = [gw.add_device(f"dev-{d}") for d in range(devices)]
            base = now_ms() - 3_600_000
            progress = [0] * devices
            seen: dict[str, object] = {}
            # The devices stop at two gates until the outage has reached its next step, so the
            # test does not depend on how fast a busy machine runs either side (no race between
            # the devices finishing and the status calls returning).
            gates = {80: asyncio.Event(), 230: asyncio.Event()}  # acked seqs, multiples of 10

            async def device(d: int) -> None:
                async with ScriptedDevice(gw.device_url, tokens[d], stream=f"s{d}") as dev:
                    await dev.hello()
                    for seq in range(1, frames + 1):
                        samples = [
                            {"ts": base + seq * spf + i, "values": {"seq": seq, "i": i}} for i in range(spf)
                        ]
                        await dev.send(json.dumps({"type": "readings", "seq": seq, "samples": samples}))
                        if seq % 10 == 0:
                            await dev.wait_ack(seq)
                            progress[d] = seq
                            if seq in gates:
                                await gates[seq].wait()
                        await asyncio.sleep(0.004)  # pacing: a frame every few ms, through the outage
                    await dev.wait_ack(frames)
                    progress[d] = dev.acked
                    assert dev.errors == []

            async def outage() -> None:
                while min(progress) < 80 or total_points(influx, db) == 0:
                    await asyncio.sleep(0.02)
                await asyncio.to_thread(influx.stop)
                seen["stopped_at"] = min(progress)
                gates[80].set()
                # devices keep streaming and keep being acknowledged
                while min(progress) < 230:
                    await asyncio.sleep(0.02)
                seen["status"] = await asyncio.to_thread(status, gw)
                seen["api"] = await asyncio.to_thread(api_status, gw)
                seen["restarted_at"] = min(progress)
                await asyncio.to_thread(influx.launch)
                gates[230].set()

            async def main() -> None:
                await asyncio.gather(outage(), *(device(d) for d in range(devices)))

            run(main())
            assert seen["stopped_at"] < frames * 3 // 4 <= seen["restarted_at"] < frames  # type: ignore[operator]
            during = seen["status"]
            assert isinstance(during, dict)
            assert during["state"] == "retrying" and during["retries"] >= 1 and during["pending_readings"] > 0
            assert "unreachable" in during["last_error"]
            # The operator API (and so the live page) shows the same forwarder state.
            api = seen["api"]
            assert isinstance(api, dict)
            (forwarder,) = api["forwarders"]
            assert forwarder["state"] == "retrying" and forwarder["pending_readings"] > 0
            assert forwarder["oldest_pending_ts"] > 0 and forwarder["dead_letters"] == 0
            assert forwarder["target"] == during["target"]

            expected = devices * frames * spf
            wait_for("InfluxDB to catch up", lambda: total_points(influx, db) >= expected, timeout=60)
            for d in range(devices):
                got = points(influx, db, f"dev-{d}")
                want = {(float(s), float(i)) for s in range(1, frames + 1) for i in range(spf)}
                assert len(got) == len(want) and set(got) == want, f"dev-{d}: gaps or duplicates"
            assert total_points(influx, db) == expected
            final = status(gw)
            assert final["state"] == "ok" and final["pending_readings"] == 0 and final["dead_letters"] == 0
            assert "accepts writes again" in gw.log()


def test_sigkill_during_forwarding_resumes_from_the_cursor_without_duplicates(
    influx1: InfluxDB1, tmp_path: Path
) -> None:
    devices, frames, spf = 3, 1200, 3
    db = "crash"
    influx1.create_database(db)
    with GatewayProcess.start(tmp_path, env=v1_env(influx1, db, batch_size="150")) as gw:
        streamers = [
            UniqueStreamer(
                gw.device_url, gw.add_device(f"dev-{d}"), f"dev-{d}", frames, samples_per_frame=spf
            )
            for d in range(devices)
        ]
        expected = devices * frames * spf
        kills: list[int] = []

        async def chaos() -> None:
            for k in range(2):
                # kill while the forwarder is mid-way: some points in InfluxDB, more waiting
                threshold = (k + 1) * expected // 6
                while total_points(influx1, db) < threshold:
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(gw.kill)
                kills.append(total_points(influx1, db))
                await asyncio.sleep(0.2)  # pacing, not waiting: the devices meet a gateway that is down
                await asyncio.to_thread(gw.launch)

        async def main() -> None:
            await asyncio.gather(chaos(), *(s.run(deadline_s=120) for s in streamers))

        run(main(), timeout=150)
        assert len(kills) == 2 and all(k < expected for k in kills)
        wait_for("InfluxDB to catch up", lambda: total_points(influx1, db) >= expected, timeout=60)
        for s in streamers:
            got = points(influx1, db, s.name)
            assert len(got) == len(s.expected()) and set(got) == s.expected(), f"{s.name}: gaps or duplicates"
        assert total_points(influx1, db) == expected
        # each restart resumed from the persisted cursor, not from the start
        starts = [int(m) for m in re.findall(r"forwarding to InfluxDB .* from reading id (\d+)", gw.log())]
        assert len(starts) == 3 and starts[0] == 0 and 0 < starts[1] < starts[2]
        final = wait_for("status", lambda: (s := status(gw))["pending_readings"] == 0 and s)
        assert final["dead_letters"] == 0
