"""The v2 path (influxdb-client, /api/v2/write) against a real VictoriaMetrics.

VictoriaMetrics stores numbers only: a field becomes the series
``<measurement>_<field>`` with the tags as labels; a bool is stored as 1 or 0,
a string field as 0 (what it shows is tested below and documented in
docs/influxdb.md). Its parser splits the body at newlines before it parses, so
the v2 writer escapes newlines in string values by default (``auto``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.device import ScriptedDevice, now_ms
from tests.support.gateway import GatewayProcess
from tests.support.services import VictoriaMetrics

from .conftest import run, status, wait_for

STRINGS = [
    "plain",
    "line1\nline2",
    'a"\nevil,device=victim temp=99.0 1764000000000\nx s="',
    "cr\r\nlf",
]


def v2_env(vm: VictoriaMetrics, **extra: str) -> dict[str, str]:
    env = {
        "IOTGW_API_ENABLED": "false",
        "IOTGW_INFLUX_ENABLED": "true",
        "IOTGW_INFLUX_API": "v2",
        "IOTGW_INFLUX_URL": vm.url,
        "IOTGW_INFLUX_ORG": "iotgw",
        "IOTGW_INFLUX_BUCKET": "telemetry",
        "IOTGW_INFLUX_TOKEN": "unused-by-victoria",
        "IOTGW_INFLUX_MAX_DELAY": "0.2",
        "IOTGW_INFLUX_RETRY_MAX": "1.0",
        "IOTGW_INFLUX_REQUIRED": "true",
    }
    env.update({f"IOTGW_INFLUX_{k.upper()}": v for k, v in extra.items()})
    return env


def by_series(vm: VictoriaMetrics, measurement: str) -> dict[tuple[str, str], dict[int, float]]:
    """(metric name, device) -> {ts: value}, from /api/v1/export."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    for series in vm.export(f'{{__name__=~"{measurement}_.*"}}'):
        metric = series["metric"]
        key = (metric["__name__"], metric.get("device", ""))
        out.setdefault(key, {}).update(zip(series["timestamps"], series["values"], strict=True))
    return out


def test_readings_reach_victoriametrics_through_influxdb_client(
    victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    with GatewayProcess.start(tmp_path, env=v2_env(victoria, measurement="v2test")) as gw:
        token = gw.add_device("pi-2", {"site": "north wing, bldg=2", "room": "kitchen"})
        base = now_ms() - 60_000

        async def stream() -> None:
            async with ScriptedDevice(gw.device_url, token) as dev:
                await dev.hello()
                for i, text in enumerate(STRINGS):
                    values = {"temp": 21.25 + i, "door": i % 2 == 0, "mode": text, "big": 1e300}
                    await dev.readings(i + 1, values, ts=base + i)
                seq = len(STRINGS) + 1
                await dev.send(json.dumps({"type": "event", "seq": seq, "ts": base + 50,
                                           "name": "door.opened", "data": {"count": 2}}))  # fmt: skip
                await dev.wait_ack(seq)

        run(stream())
        wait_for(
            "the forwarder caught up", lambda: (s := status(gw))["pending_readings"] == 0 and s["batches"]
        )
        series = wait_for(
            "series in VictoriaMetrics", lambda: (s := by_series(victoria, "v2test")) and len(s) >= 5 and s
        )
        n = len(STRINGS)
        # numbers exactly, at the right millisecond; every point arrived, newline or not
        assert series[("v2test_temp", "pi-2")] == {base + i: 21.25 + i for i in range(n)}
        # VictoriaMetrics stores decimal mantissa and exponent: 1e300 comes back as a 301-digit integer
        assert {ts: float(v) for ts, v in series[("v2test_big", "pi-2")].items()} == {
            base + i: pytest.approx(1e300, rel=1e-12) for i in range(n)
        }
        # bools become 1/0; strings become 0 (VictoriaMetrics keeps numbers only)
        assert series[("v2test_door", "pi-2")] == {base + i: float(i % 2 == 0) for i in range(n)}
        assert series[("v2test_mode", "pi-2")] == {base + i: 0.0 for i in range(n)}
        # the event: <measurement>_events_<field>, tagged with its name
        events = victoria.export('{__name__=~"v2test_events_.*"}')
        assert {(e["metric"]["__name__"], e["metric"]["event"]) for e in events} == {
            ("v2test_events_seq", "door.opened"),
            ("v2test_events_count", "door.opened"),
        }
        # tags arrive as labels, hostile ones exact; nothing injected
        labels = {json.dumps(s["metric"], sort_keys=True) for s in victoria.export('{__name__=~"v2test.*"}')}
        assert all('"site": "north wing, bldg=2"' in text for text in labels)
        assert not victoria.export('{device="victim"}')
        assert {name for name, device in series if device == "pi-2"} == {
            "v2test_temp", "v2test_big", "v2test_door", "v2test_mode", "v2test_events_seq", "v2test_events_count"
        }  # fmt: skip
        assert {device for _, device in series} == {"pi-2"}
        assert status(gw)["dead_letters"] == 0
        assert "v2 http://127.0.0.1:" in status(gw)["target"]
