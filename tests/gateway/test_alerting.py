"""The example alert rules (docs/alerting/) and the /metrics series they use.

``promtool`` (Debian package ``prometheus``, installed by .ci/system-deps.sh) checks the
rules file and runs its unit tests; a real gateway, forwarding to an InfluxDB address where
nothing listens (so its backlog grows), shows the per-device and per-sink series the rules
read, for a connected device, after it disconnects, and after it is removed.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.store import registry
from tests.support.device import ScriptedDevice
from tests.support.gateway import GatewayProcess
from tests.support.metrics import Samples, scrape
from tests.support.waiting import wait_until

ALERTING = Path(__file__).resolve().parents[2] / "docs" / "alerting"
RULES = ALERTING / "iotgw.rules.yml"
RULE_TESTS = ALERTING / "iotgw.rules.test.yml"

GATEWAY_ENV = {  # read by the gw fixture: an InfluxDB forwarder that can never deliver
    "IOTGW_INFLUX_ENABLED": "true",
    "IOTGW_INFLUX_API": "v1",
    "IOTGW_INFLUX_URL": "http://127.0.0.1:9/",
    "IOTGW_INFLUX_RETRY_MAX": "1.0",
}


def promtool(*args: str, cwd: Path = ALERTING) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: install the Debian package 'prometheus' (.ci/system-deps.sh)")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_the_rules_file_passes_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_unit_tests_pass_and_would_catch_a_broken_rule(tmp_path: Path) -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    # The same tests against rules whose device threshold is an hour: the silent device no longer fires.
    text = RULES.read_text()
    assert text.count("iotgw_device_last_seen_seconds > 600") == 2
    (tmp_path / RULES.name).write_text(text.replace("iotgw_device_last_seen_seconds > 600", "iotgw_device_last_seen_seconds > 3600"))  # fmt: skip
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    broken = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert broken.returncode != 0
    assert "IotgwDeviceSilent" in broken.stdout + broken.stderr


def scrape_until(gw: GatewayProcess, ok: Callable[[Samples], bool], what: str) -> Samples:
    """Scrape until ``ok(samples)``; the samples of that scrape."""

    def probe() -> Samples | None:
        samples = scrape(gw)
        return samples if ok(samples) else None

    found = wait_until(probe, what=what)
    assert found is not None
    return found


def device(samples: Samples, name: str, dev: str) -> float | None:
    return samples.get((name, (("device", dev),)))


def sink(samples: Samples, name: str, sink: str) -> float | None:
    return samples.get((name, (("sink", sink),)))


def test_metrics_show_the_series_the_rules_use(gw: GatewayProcess) -> None:
    token = gw.add_device("al-live")
    gw.add_device("al-never")  # registered, never connected
    before_s = time.time()

    async def connected_then_gone() -> Samples:
        async with ScriptedDevice(gw.device_url, token) as dev:
            await dev.hello()
            for seq in (1, 2, 3):
                await dev.readings(seq, {"temp": 20 + seq})
            await dev.send(json.dumps({"type": "status", "buffered": 0, "dropped": 4}))
            await dev.wait_ack(3)
            return await asyncio.to_thread(
                scrape_until,
                gw,
                lambda s: device(s, "iotgw_device_dropped_samples", "al-live") == 4,
                "al-live's drop counter on /metrics",
            )

    online = asyncio.run(connected_then_gone())
    after_s = time.time()

    # every metric a rule reads is exposed
    names = {name for name, _ in online}
    used = set(re.findall(r"\biotgw_[a-z_]+", RULES.read_text()))
    assert used and used <= names, used - names

    assert device(online, "iotgw_device_online", "al-live") == 1
    seen = device(online, "iotgw_device_last_seen_seconds", "al-live")
    assert seen is not None and before_s - 1 <= seen <= after_s + 1, (before_s, seen, after_s)
    assert device(online, "iotgw_device_online", "al-never") == 0
    assert device(online, "iotgw_device_last_seen_seconds", "al-never") is None
    assert device(online, "iotgw_device_dropped_samples", "al-never") == 0
    # nothing reaches InfluxDB: all three readings wait, the oldest for as long as it has existed
    assert sink(online, "iotgw_sink_pending_readings", "influx") == 3
    age = sink(online, "iotgw_sink_oldest_pending_age_seconds", "influx")
    assert age is not None and 0 <= age <= time.time() - before_s + 1
    assert sink(online, "iotgw_sink_dead_letters", "influx") == 0
    assert not any(labels and labels[0] == ("sink", "mqtt") for _, labels in online)  # not configured

    # disconnected: online drops to 0, last seen stays, and the backlog age keeps growing
    offline = scrape_until(gw, lambda s: device(s, "iotgw_device_online", "al-live") == 0, "al-live offline")
    assert device(offline, "iotgw_device_last_seen_seconds", "al-live") == seen
    assert device(offline, "iotgw_device_dropped_samples", "al-live") == 4
    later = scrape_until(
        gw,
        lambda s: (sink(s, "iotgw_sink_oldest_pending_age_seconds", "influx") or 0) > age,
        "the backlog aging",
    )
    assert sink(later, "iotgw_sink_pending_readings", "influx") == 3

    # removed: its series are gone at the next scrape, the other device's stay
    conn = gw.connect()
    try:
        registry.remove_device(conn, "al-live")
    finally:
        conn.close()
    removed = scrape(gw)
    assert not any(("device", "al-live") in labels for _, labels in removed)
    assert device(removed, "iotgw_device_online", "al-never") == 0
