"""Shared pieces of the InfluxDB tests: real servers, gateway settings, a streaming device."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.device import StreamingDevice, now_ms
from tests.support.gateway import REPO, GatewayProcess, repo_env
from tests.support.services import InfluxDB1, VictoriaMetrics

T = TypeVar("T")


@pytest.fixture(scope="session")
def influx1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    """One influxd for the tests that do not stop it; each test uses its own database."""
    with InfluxDB1.start(tmp_path_factory.mktemp("influxd")) as server:
        yield server


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    with VictoriaMetrics.start(tmp_path_factory.mktemp("victoria")) as server:
        yield server


def v1_env(influx: InfluxDB1 | str, database: str, **extra: str) -> dict[str, str]:
    """Gateway environment forwarding to ``influx`` (a server or a URL) through the v1 API, for quick tests."""
    env = {
        "IOTGW_INFLUX_ENABLED": "true",
        "IOTGW_INFLUX_API": "v1",
        "IOTGW_INFLUX_URL": influx if isinstance(influx, str) else influx.url,
        "IOTGW_INFLUX_DATABASE": database,
        "IOTGW_INFLUX_MAX_DELAY": "0.2",
        "IOTGW_INFLUX_RETRY_MAX": "1.0",
        "IOTGW_INFLUX_TIMEOUT": "5",
    }
    env.update({f"IOTGW_INFLUX_{k.upper()}": v for k, v in extra.items()})
    return env


def wait_for(what: str, fn: Callable[[], T], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    value = fn()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value {value!r}")
        time.sleep(interval)
        value = fn()
    return value


def iotgw(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``iotgw`` CLI against the gateway's store."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args, "--store", str(gw.store_path)],
        cwd=REPO,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def status(gw: GatewayProcess) -> dict[str, Any]:
    result = iotgw(gw, "status", "--json")
    assert result.returncode == 0, result.stderr
    influx: dict[str, Any] = json.loads(result.stdout)["influx"]
    return influx


def api_status(gw: GatewayProcess) -> dict[str, Any]:
    """GET /api/v1/status with a fresh read token, as the live page does."""
    token = gw.add_operator(f"reader-{time.monotonic_ns()}", role="read")
    request = urllib.request.Request(
        f"{gw.api_url}/api/v1/status", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


class UniqueStreamer(StreamingDevice):
    """A StreamingDevice whose every sample has its own millisecond.

    InfluxDB keys a point by series and timestamp: two samples of one device in
    the same millisecond are one point (docs/influxdb.md). To count points
    exactly, sample ``i`` of frame ``seq`` is stamped ``base + seq * spf + i``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base = now_ms() - 3_600_000

    def _make(self, seq: int) -> str:
        spf = self.samples_per_frame
        samples = [
            {"ts": self.base + seq * spf + i, "values": {"seq": seq, "i": i, "temp": 20 + (seq % 50) / 10}}
            for i in range(spf)
        ]
        return json.dumps({"type": "readings", "seq": seq, "samples": samples})

    def expected(self) -> set[tuple[float, float]]:
        return {(float(s), float(i)) for s in range(1, self.total + 1) for i in range(self.samples_per_frame)}


def run(coro: Any, timeout: float = 90) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def repo_path() -> Path:
    return REPO
