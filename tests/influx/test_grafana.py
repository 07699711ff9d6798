"""The Grafana dashboard: every panel's InfluxQL query returns series from a gateway-fed InfluxDB 1.x.

A real gateway forwards two devices' readings (declared with units), and events, to a real
`influxd`; then each query of the dashboard, with Grafana's macros filled in as Grafana
would, runs through `/query`. Also: units reach InfluxDB, and docs/grafana/ is what the
generator writes today (not a stale copy).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from gateway.integrations.influx import grafana
from tests.support.device import ScriptedDevice, now_ms
from tests.support.gateway import REPO, GatewayProcess
from tests.support.services import InfluxDB1

from .conftest import run, status, v1_env, wait_for

SENSORS = [
    {"metric": "temp", "unit": "°C", "kind": "temperature"},
    {"metric": "soil_moisture", "unit": "%", "kind": "adc"},
    {"metric": "door", "kind": "event"},  # no unit: no units point
]


def grafana_macros(query: str, since_ms: int) -> str:
    """Fill in the macros as Grafana does for 'All' devices and one metric."""
    query = query.replace("$timeFilter", f"time >= {since_ms}ms")
    query = query.replace("$__interval", "10s")
    query = query.replace("/^$device$/", "/^(pi-1|pi-2)$/")
    return query.replace("$metric", "temp")


def series_of(influx: InfluxDB1, query: str, db: str) -> list[dict[str, object]]:
    result = influx.query(query, db)["results"][0]
    assert "error" not in result, (query, result)
    series: list[dict[str, object]] = result.get("series", [])
    return series


def test_every_dashboard_query_returns_series_from_a_gateway_fed_influxdb(
    influx1: InfluxDB1, tmp_path: Path
) -> None:
    db = "grafana_panels"
    influx1.create_database(db)
    with GatewayProcess.start(tmp_path, env=v1_env(influx1, db)) as gw:
        tokens = {name: gw.add_device(name, {"site": "home"}) for name in ("pi-1", "pi-2")}
        base = now_ms() - 120_000

        async def stream() -> None:
            for n, token in enumerate(tokens.values()):
                async with ScriptedDevice(gw.device_url, token) as dev:
                    await dev.hello(sensors=SENSORS)
                    for i in range(20):
                        await dev.readings(i + 1, {"temp": 20.0 + n + i / 10, "soil_moisture": 40.0 + i},
                                           ts=base + i * 5000)  # fmt: skip
                    event = {"type": "event", "seq": 21, "ts": base + 50_000, "name": "door.opened",
                             "data": {"door": "front"}}  # fmt: skip
                    await dev.send(json.dumps(event))
                    await dev.wait_ack(21)

        run(stream())
        wait_for(
            "the forwarder caught up",
            lambda: (s := status(gw))["pending_readings"] == 0 and s["pending_events"] == 0,
        )

    # Units reach InfluxDB: one point per declared metric with a unit, tagged with device and metric.
    units = influx1.rows('SELECT last("unit") AS "unit", last("kind") AS "kind" FROM "iotgw_units" '
                         'GROUP BY "device", "metric"', db)  # fmt: skip
    assert {(r["device"], r["metric"], r["unit"], r["kind"]) for r in units} == {
        (device, metric, unit, kind)
        for device in ("pi-1", "pi-2")
        for metric, unit, kind in (("temp", "°C", "temperature"), ("soil_moisture", "%", "adc"))
    }
    assert influx1.rows('SELECT count(*) FROM "iotgw"', db)[0]["count_temp"] == 40  # units add no readings

    since = base - 1000
    for name, query in grafana.variable_queries().items():
        found = series_of(influx1, query, db)
        column = "value" if name == "device" else "fieldKey"  # what Grafana takes from each
        values = {row[s["columns"].index(column)] for s in found for row in s["values"]}  # type: ignore[attr-defined,index]
        assert values >= ({"pi-1", "pi-2"} if name == "device" else {"temp", "soil_moisture"}), (name, values)
    queries = grafana.panel_queries()
    for title, query in queries.items():
        filled = grafana_macros(query, since)
        assert not re.search(r"\$[a-zA-Z_]", filled), filled
        assert series_of(influx1, filled, db), f"panel {title!r} returned no series: {filled}"
    unit = series_of(influx1, grafana_macros(grafana.unit_query(), since), db)
    assert unit[0]["columns"] == ["time", "unit"] and unit[0]["values"][0][1] == "°C"  # type: ignore[index]


def test_the_dashboard_holds_those_queries_and_docs_grafana_is_current(tmp_path: Path) -> None:
    board = grafana.build_dashboard()
    targets = [t["query"] for p in board["panels"] for t in p.get("targets", [])]
    for query in grafana.panel_queries().values():
        assert query in targets
    assert grafana.unit_query() in targets
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert {p["title"] for p in board["panels"] if p["type"] == "row"} == {
        "Fleet overview", "Per-device metrics, with units", "Events", "Gateway health",
    }  # fmt: skip
    assert all(
        t["datasource"]["uid"] == grafana.INFLUXQL_UID for p in board["panels"] for t in p.get("targets", [])
    )
    written = grafana.write_provisioning(tmp_path)
    for path in written:
        committed = REPO / "docs" / "grafana" / path.relative_to(tmp_path)
        assert committed.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
            f"{committed} is stale: python -m gateway.integrations.influx.grafana docs/grafana"
        )
    datasources = (tmp_path / "provisioning" / "datasources" / "iotgw.yaml").read_text()
    assert re.search(r"uid: iotgw-influxql\n\s+type: influxdb", datasources)
    assert "version: Flux" in datasources and "token: $IOTGW_INFLUX_TOKEN" in datasources
