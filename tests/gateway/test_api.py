"""The operator API against a real gateway: auth on every endpoint, devices, readings, status."""

from __future__ import annotations

import asyncio
import json
import random
import re
from typing import Any

import httpx
import pytest

from tests.support.commands import AnsweringDevice, api, wait_online
from tests.support.device import ScriptedDevice, now_ms
from tests.support.gateway import GatewayProcess

MUTATING = ("post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def gw(gw: GatewayProcess) -> GatewayProcess:
    """The module's gateway (tests/gateway/conftest.py): operators ``gw.control``, ``gw.read``; ``api-dev``."""
    gw.control = gw.add_operator("carol", "control")  # type: ignore[attr-defined]
    gw.read = gw.add_operator("rita", "read")  # type: ignore[attr-defined]
    gw.add_device("api-dev", {"site": "lab"})
    return gw


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def operations(gw: GatewayProcess) -> list[tuple[str, str]]:
    spec = httpx.get(gw.api_url + "/api/v1/openapi.json").json()
    return [(method, path) for path, item in spec["paths"].items() for method in item]


def concrete(path: str) -> str:
    return path.replace("{name}", "api-dev").replace("{command_id}", "0000000000000000")


# -- auth ------------------------------------------------------------------------------------


def test_every_mutating_endpoint_needs_a_token_and_the_control_role(gw: GatewayProcess) -> None:
    mutating = [(m, p) for m, p in operations(gw) if m in MUTATING]
    assert {(m, p) for m, p in mutating} == {
        ("post", "/api/v1/devices/{name}/commands"),
        ("put", "/api/v1/devices/{name}/labels"),
        ("patch", "/api/v1/devices/{name}/labels"),
        ("delete", "/api/v1/commands/{command_id}"),
    }
    bodies = {"post": {"name": "ping"}, "put": {"labels": {"a": "b"}}, "patch": {"labels": {"a": "b"}}}
    for method, path in mutating:
        url = gw.api_url + concrete(path)
        body = bodies.get(method)
        for headers in ({}, {"Authorization": "Bearer iotgw_o_unknown"}, {"Authorization": "Basic eDp5"}):
            r = httpx.request(method, url, json=body, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["detail"]
        r = httpx.request(method, url, json=body, headers={"Authorization": f"Bearer {gw.read}"})
        assert r.status_code == 403, (method, path, r.text)
        assert "has role 'read'; this needs 'control'" in r.json()["detail"]
    # nothing was changed by the refused requests
    device = httpx.get(gw.api_url + "/api/v1/devices/api-dev", headers={"Authorization": f"Bearer {gw.read}"})
    assert device.json()["labels"] == {"site": "lab"}


def test_every_read_endpoint_needs_a_token_and_accepts_a_read_token(gw: GatewayProcess) -> None:
    reads = [
        (m, p) for m, p in operations(gw) if m == "get" and p.startswith("/api/v1/") and "openapi" not in p
    ]
    assert len(reads) >= 8
    for _, path in reads:
        url = gw.api_url + concrete(path)
        params = {"metric": "temp"} if path.endswith("/readings") else {}
        assert httpx.get(url, params=params).status_code == 401, path
        r = httpx.get(url, params=params, headers={"Authorization": f"Bearer {gw.read}"})
        assert r.status_code in (200, 404), (path, r.text)  # 404: the made-up command id
    assert httpx.get(gw.api_url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(gw.api_url + "/api/v1/openapi.json").status_code == 200


def test_token_management_from_the_cli(gw: GatewayProcess, tmp_path) -> None:
    import subprocess
    import sys

    from tests.support.gateway import repo_env

    def iotgw(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "gateway.cli", *args, "--store", str(gw.store_path)]
        return subprocess.run(cmd, env=repo_env(), capture_output=True, text=True, timeout=30)

    added = iotgw("token", "add", "dash", "--role", "read")
    assert added.returncode == 0, added.stderr
    token = re.search(r"iotgw_o_\S+", added.stdout).group(0)  # type: ignore[union-attr]
    assert (
        httpx.get(gw.api_url + "/api/v1/devices", headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )
    listed = json.loads(iotgw("token", "list", "--json").stdout)
    assert {"name": "dash", "role": "read"}.items() <= next(o for o in listed if o["name"] == "dash").items()
    assert token not in iotgw("token", "list").stdout
    assert iotgw("token", "add", "dash").returncode == 2  # taken
    assert iotgw("token", "remove", "dash").returncode == 0
    assert (
        httpx.get(gw.api_url + "/api/v1/devices", headers={"Authorization": f"Bearer {token}"}).status_code
        == 401
    )
    conn = gw.connect()
    try:
        hashes = [row[0] for row in conn.execute("SELECT token_hash FROM operators")]
    finally:
        conn.close()
    assert token not in hashes and all(len(h) == 64 for h in hashes)  # hashed at rest


# -- devices -------------------------------------------------------------------------------------


def test_device_list_shows_state_version_declarations_and_labels(gw: GatewayProcess) -> None:
    token = gw.add_device("listed-1", {"room": "hall"})

    async def scenario() -> None:
        async with api(gw.api_url, gw.read) as c:
            async with ScriptedDevice(gw.device_url, token) as dev:
                await dev.hello(
                    agent="iotgw-fw/9.9 micropython/1.23",
                    sensors=[{"metric": "temp", "unit": "degC", "kind": "ds18b20"}],
                    commands=[{"name": "ping", "description": "pong", "args": {"n": "count"}}],
                    info={"mem_free": 1234, "board": "esp32"},
                )
                await dev.readings(1, {"temp": 20.5})
                await dev.wait_ack(1)
                devices = {d["name"]: d for d in (await c.get("/api/v1/devices")).json()}
                d = devices["listed-1"]
                assert d["online"] is True and d["peer"]
                assert d["agent"] == "iotgw-fw/9.9 micropython/1.23"
                assert d["sensors"] == [{"metric": "temp", "unit": "degC", "kind": "ds18b20"}]
                assert d["commands"] == [{"name": "ping", "description": "pong", "args": {"n": "count"}}]
                assert d["labels"] == {"room": "hall"} and d["info"] == {"mem_free": 1234, "board": "esp32"}
                assert d["last_seen_ms"] is not None and d["last_seq"] == 1
            await wait_online(c, "listed-1", False)
            d = (await c.get("/api/v1/devices/listed-1")).json()
            assert d["online"] is False and d["peer"] is None and d["commands"][0]["name"] == "ping"
            assert (await c.get("/api/v1/devices/nope")).status_code == 404

    run(scenario())


def test_labels_can_be_replaced_and_patched(gw: GatewayProcess) -> None:
    gw.add_device("labels-1", {"a": "1", "b": "2"})

    async def scenario() -> None:
        async with api(gw.api_url, gw.control) as c:
            r = await c.patch("/api/v1/devices/labels-1/labels", json={"labels": {"b": None, "c": "3"}})
            assert r.status_code == 200 and r.json()["labels"] == {"a": "1", "c": "3"}
            r = await c.put("/api/v1/devices/labels-1/labels", json={"labels": {"z": "9"}})
            assert r.json()["labels"] == {"z": "9"}
            assert (await c.get("/api/v1/devices/labels-1")).json()["labels"] == {"z": "9"}
            bad = await c.put("/api/v1/devices/labels-1/labels", json={"labels": {"device": "x"}})
            assert bad.status_code == 422 and "reserved" in bad.json()["detail"]
            bad = await c.put("/api/v1/devices/labels-1/labels", json={"labels": {"ok": "new\nline"}})
            assert bad.status_code == 422
            assert (await c.put("/api/v1/devices/nope/labels", json={"labels": {}})).status_code == 404

    run(scenario())


# -- readings: exactly what the store holds ----------------------------------------------------


def stored(gw: GatewayProcess, device: str) -> list[tuple[int, dict[str, Any]]]:
    conn = gw.connect()
    try:
        rows = conn.execute(
            "SELECT r.ts, r.data FROM readings r JOIN devices d ON d.id = r.device_id WHERE d.name = ? "
            "ORDER BY r.ts, r.id",
            (device,),
        ).fetchall()
    finally:
        conn.close()
    return [(ts, json.loads(data)) for ts, data in rows]


def test_history_returns_exactly_what_the_store_holds_for_the_range(gw: GatewayProcess) -> None:
    token = gw.add_device("hist-1")
    base = (now_ms() // 60_000 - 30) * 60_000  # a whole minute, 30 minutes ago
    rng = random.Random(5)
    sent: list[tuple[int, dict[str, Any]]] = []
    for i in range(300):
        ts = base + i * 1000
        values: dict[str, Any] = {"on": i % 3 == 0}
        if i % 7:
            values["temp"] = round(rng.uniform(-10, 40), 3)
        if i % 10 == 0:
            values["mode"] = f"m{i}"
            values["temp_x"] = 1.0  # a metric whose name starts like another
        sent.append((ts, values))
    sent.append((base + 5000, {"temp": 99.5}))  # a second sample at an existing ts, sent later

    async def feed() -> None:
        async with ScriptedDevice(gw.device_url, token, stream="hist") as dev:
            await dev.hello()
            for seq, (ts, values) in enumerate(sent, start=1):
                await dev.readings(seq, values, ts=ts)
            await dev.wait_ack(len(sent))

    run(feed())
    rows = stored(gw, "hist-1")
    assert len(rows) == len(sent)

    def expected(metric: str, start: int, end: int) -> list[dict[str, Any]]:
        return [
            {"ts": ts, "value": data[metric]} for ts, data in rows if start <= ts < end and metric in data
        ]

    async def check() -> None:
        async with api(gw.api_url, gw.read) as c:

            async def history(**params: Any) -> dict[str, Any]:
                r = await c.get("/api/v1/devices/hist-1/readings", params=params)
                assert r.status_code == 200, r.text
                return r.json()

            ranges = [(base, base + 300_000), (base + 5000, base + 5001), (base + 1234, base + 61_000),
                      (0, base + 10**9), (base + 299_000, base + 299_000)]  # fmt: skip
            ranges += [(base + a, base + a + rng.randint(0, 100_000)) for a in rng.sample(range(300_000), 10)]
            for metric in ("temp", "on", "mode", "temp_x", "missing"):
                for start, end in ranges:
                    got = await history(metric=metric, start=start, end=end, limit=100_000)
                    assert got["points"] == expected(metric, start, end), (metric, start, end)
                    assert got["truncated"] is False and got["buckets"] == []
            both = await history(metric="temp", start=base + 5000, end=base + 5001)
            assert [p["value"] for p in both["points"]] == [rows[5][1]["temp"], 99.5]  # insertion order
            # limit: the first N, and truncated says there is more
            page = await history(metric="temp", start=base, end=base + 300_000, limit=10)
            assert page["points"] == expected("temp", base, base + 300_000)[:10] and page["truncated"] is True
            # downsampling: buckets aligned to the epoch, bools as 0/1, strings left out
            for metric, every in (("temp", 10_000), ("on", 60_000), ("mode", 60_000)):
                got = await history(metric=metric, start=base, end=base + 300_000, every=every)
                buckets: dict[int, list[float]] = {}
                for point in expected(metric, base, base + 300_000):
                    if not isinstance(point["value"], str):
                        buckets.setdefault(point["ts"] // every * every, []).append(float(point["value"]))
                want = [
                    {
                        "ts": b,
                        "count": len(v),
                        "mean": pytest.approx(sum(v) / len(v)),
                        "min": min(v),
                        "max": max(v),
                    }
                    for b, v in sorted(buckets.items())
                ]
                assert got["buckets"] == want and got["points"] == [] and got["every"] == every
            latest = (await c.get("/api/v1/devices/hist-1/readings/latest")).json()["values"]
            last_ts = max(ts for ts, _ in rows)
            assert latest["on"] == {"ts": last_ts, "value": rows[-1][1]["on"]}
            assert latest["temp"]["ts"] == max(ts for ts, d in rows if "temp" in d)
            assert set(latest) == {"temp", "on", "mode", "temp_x"}
            bad = await c.get(
                "/api/v1/devices/hist-1/readings", params={"metric": "temp", "start": 10, "end": 5}
            )
            assert bad.status_code == 422
            bad = await c.get("/api/v1/devices/hist-1/readings", params={"metric": 'te"mp'})
            assert bad.status_code == 422

    run(check())


def test_events_history(gw: GatewayProcess) -> None:
    token = gw.add_device("events-1")
    base = now_ms() - 60_000

    async def scenario() -> None:
        async with ScriptedDevice(gw.device_url, token, stream="ev") as dev:
            await dev.hello()
            for seq in range(1, 6):
                name = "door.opened" if seq % 2 else "button.pressed"
                await dev.send(json.dumps({"type": "event", "seq": seq, "ts": base + seq, "name": name,
                                           "data": {"n": seq}}))  # fmt: skip
            await dev.wait_ack(5)
        async with api(gw.api_url, gw.read) as c:
            r = (
                await c.get("/api/v1/devices/events-1/events", params={"start": base, "end": base + 5})
            ).json()
            assert [(e["ts"], e["name"], e["data"]) for e in r["events"]] == [
                (base + s, "door.opened" if s % 2 else "button.pressed", {"n": s}) for s in range(1, 5)
            ]
            doors = (await c.get("/api/v1/devices/events-1/events", params={"event": "door.opened"})).json()
            assert [e["seq"] for e in doors["events"]] == [1, 3, 5]

    run(scenario())


# -- status, metrics ---------------------------------------------------------------------------


def test_status_and_prometheus_metrics(gw: GatewayProcess) -> None:
    token = gw.add_device("status-1")

    async def scenario() -> None:
        async with AnsweringDevice(gw.device_url, token, ["ping"]), api(gw.api_url, gw.control) as c:
            assert (
                await c.post("/api/v1/devices/status-1/commands", json={"name": "ping"})
            ).status_code == 200
            status = (await c.get("/api/v1/status")).json()
            assert status["devices_connected"] >= 1 and status["devices_registered"] >= 2
            assert status["store_bytes"] > 0 and status["store_path"].endswith("gateway.sqlite3")
            assert status["commands_finished"]["succeeded"] >= 1
            assert set(status["ingest"]) >= {"samples_per_s", "committed_samples", "pending_samples"}
            assert status["forwarders"] == []  # no InfluxDB forwarder configured
            metrics = (await c.get("/metrics")).text
            assert 'iotgw_commands_finished_total{state="succeeded"}' in metrics
            assert "iotgw_command_round_trip_seconds_count" in metrics
            assert re.search(r"^iotgw_device_connections [1-9]", metrics, re.M)
            assert (
                'iotgw_http_requests_total{method="POST",route="/api/v1/devices/{name}/commands",status="200"}'
                in metrics
            )

    run(scenario())
