"""The MQTT bridge against a real Mosquitto: every stored reading arrives, in order per device,
across a 2-minute broker outage and two SIGKILLs of the gateway; duplicates are whole replays, counted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mqtt.subscriber import Subscriber
from tests.support.device import StreamingDevice
from tests.support.gateway import GatewayProcess
from tests.support.services import Mosquitto
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

GW = "gw-test"


def mqtt_env(broker: Mosquitto, **extra: str) -> dict[str, str]:
    return {
        "IOTGW_MQTT_ENABLED": "true",
        "IOTGW_MQTT_URL": broker.url,
        "IOTGW_MQTT_GATEWAY": GW,
        "IOTGW_MQTT_BATCH_SIZE": "200",
        **extra,
    }


@pytest.mark.timeout(480)
def test_outage_and_two_kills_lose_nothing_and_keep_order(tmp_path: Path) -> None:
    """Paced devices stream for ~2.5 minutes; the broker is down for 2 of them, the gateway is
    SIGKILLed once during the outage and once while the backlog drains afterwards."""
    devices, frames, interval_s, outage_s = 3, 900, 0.15, 120.0
    with Mosquitto.start(tmp_path / "broker") as broker, \
            Subscriber(broker.port, [f"iotgw/{GW}/device/+/readings", f"iotgw/{GW}/status"]) as sub, \
            GatewayProcess.start(tmp_path / "gw", env=mqtt_env(broker)) as gw:  # fmt: skip
        sub.wait_for(f"iotgw/{GW}/status", lambda m: m.payload == b"online")
        streamers = [
            StreamingDevice(
                gw.device_url,
                gw.add_device(f"dev-{i}"),
                f"dev-{i}",
                frames,
                samples_per_frame=2,
                interval_s=interval_s,
            )
            for i in range(devices)
        ]
        disruptions: list[str] = []
        acked_during_outage: list[int] = []

        async def until(predicate: Callable[[], bool]) -> None:
            while not predicate():
                await asyncio.sleep(0.05)

        async def chaos() -> None:
            await until(lambda: min(s.acked for s in streamers) >= frames // 9)
            await asyncio.to_thread(broker.stop)
            outage_ends = asyncio.get_running_loop().time() + outage_s
            acked_at_stop = sum(s.acked for s in streamers)
            disruptions.append("broker down")
            await until(lambda: min(s.acked for s in streamers) >= frames * 4 // 9)
            await asyncio.to_thread(gw.kill)  # a kill while the broker is away
            await asyncio.to_thread(gw.launch)
            disruptions.append("kill")
            await asyncio.sleep(max(0.0, outage_ends - asyncio.get_running_loop().time()))
            acked_during_outage.append(sum(s.acked for s in streamers) - acked_at_stop)
            received_before = len(sub.on(f"iotgw/{GW}/device/+/readings"))
            await asyncio.to_thread(broker.launch)
            disruptions.append("broker up")
            await until(lambda: len(sub.on(f"iotgw/{GW}/device/+/readings")) > received_before)
            await asyncio.to_thread(gw.kill)  # a kill while the backlog drains
            await asyncio.to_thread(gw.launch)
            disruptions.append("kill")

        async def main() -> None:
            await asyncio.gather(chaos(), *(s.run(deadline_s=270) for s in streamers))

        asyncio.run(main())
        assert disruptions == ["broker down", "kill", "broker up", "kill"]
        # The gateway went on storing and acking while the broker was away.
        assert acked_during_outage[0] > devices * frames // 3, acked_during_outage

        stored = {s.name: [(v["seq"], v["i"]) for _, _, v in gw.readings(s.name)] for s in streamers}
        for s in streamers:
            assert len(stored[s.name]) == frames * 2  # the gateway's own guarantee

        def arrived() -> dict[str, list[tuple[int, int]]]:
            out: dict[str, list[tuple[int, int]]] = {s.name: [] for s in streamers}
            for message in sub.on(f"iotgw/{GW}/device/+/readings"):
                body = message.json()
                out[body["device"]].extend((sm["values"]["seq"], sm["values"]["i"]) for sm in body["samples"])
            return out

        wait_until(
            lambda: all(set(arrived()[n]) >= set(stored[n]) for n in stored), 120, "every stored reading"
        )
        got = arrived()
        duplicates = 0
        for name, samples in got.items():
            seen: set[tuple[int, int]] = set()
            first: list[tuple[int, int]] = []
            for sample in samples:
                if sample in seen:
                    duplicates += 1
                else:
                    seen.add(sample)
                    first.append(sample)
            assert first == sorted(first), f"{name}: out of order"
            assert seen == set(stored[name]), f"{name}: something arrived that is not stored"
        # Duplicates come only from replays after the kills and the outage: at most the batches
        # in flight at each disruption (batch_size 200 rows, every device's rows in one batch).
        print(f"duplicates: {duplicates} of {sum(len(v) for v in got.values())} samples")
        assert duplicates <= 3 * 2 * 200 * 2
        assert "lost the connection" in gw.log()
