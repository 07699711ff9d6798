"""The v1 path (/write) against a real InfluxDB 1.x, through a real gateway and real devices."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.device import ScriptedDevice, now_ms
from tests.support.gateway import GatewayProcess
from tests.support.services import InfluxDB1, free_port

from .conftest import iotgw, run, status, v1_env, wait_for

HOSTILE_LABELS = {
    "site": "north wing, bldg=2",
    "room name": 'the "big" room',
    "lieu": "salle ünï 温度 😀",
    "a,b=c d": " padded ",
}
HOSTILE_STRINGS = [
    "plain",
    'double"quote and \\backslash\\',
    "trailing backslash\\",
    "line1\nline2\r\nline3",
    'a"\nevil,device=victim temp=99.0 1764000000000\nx s="',
    "x,device=other room=hijack",
    "unicode ünï 温度 😀",
    "tab\there",
    "",
]


def field_types(influx: InfluxDB1, db: str, measurement: str) -> dict[str, str]:
    result = influx.query(f'SHOW FIELD KEYS FROM "{measurement}"', db)
    return {key: kind for key, kind in result["results"][0]["series"][0]["values"]}


def test_readings_and_events_arrive_with_tags_types_and_timestamps(
    influx1: InfluxDB1, tmp_path: Path
) -> None:
    db = "v1_roundtrip"
    influx1.create_database(db)
    with GatewayProcess.start(tmp_path, env=v1_env(influx1, db)) as gw:
        token = gw.add_device("pi-1", HOSTILE_LABELS)
        victim = gw.add_device("victim", {"site": "south"})
        base = now_ms() - 60_000
        sent: dict[int, dict[str, object]] = {}

        async def stream() -> None:
            async with ScriptedDevice(gw.device_url, victim) as dev:
                await dev.hello()
                await dev.readings(1, {"temp": 5.0}, ts=base - 1)
                await dev.wait_ack(1)
            async with ScriptedDevice(gw.device_url, token) as dev:
                await dev.hello()
                for i, text in enumerate(HOSTILE_STRINGS):
                    values = {
                        "temp": 21.5 + i,
                        "count": float(i),
                        "int_like": 3,
                        "door": i % 2 == 0,
                        "mode": text,
                    }
                    sent[base + i] = values
                    await dev.readings(i + 1, values, ts=base + i)
                seq = len(HOSTILE_STRINGS) + 1
                event = {"type": "event", "seq": seq, "ts": base + 100, "name": "door.opened",
                         "data": {"door": "front", "count": 2}}  # fmt: skip
                await dev.send(json.dumps(event))
                await dev.wait_ack(seq)
                assert dev.errors == []

        run(stream())
        rows = wait_for(
            "every reading in InfluxDB",
            lambda: (
                (r := influx1.rows('SELECT * FROM "iotgw" WHERE "device" = \'pi-1\'', db))
                and len(r) == len(HOSTILE_STRINGS)
                and r
            ),
        )
        for row in rows:
            values = sent[row["time"]]  # millisecond timestamps, exact
            assert row["temp"] == values["temp"]
            assert row["count"] == values["count"]
            assert row["int_like"] == 3.0
            assert row["door"] is values["door"]
            assert row["mode"] == values["mode"]  # hostile strings, exact (literal newlines on v1)
            for key, value in HOSTILE_LABELS.items():
                assert row[key] == value
        assert field_types(influx1, db, "iotgw") == {
            "temp": "float", "count": "float", "int_like": "float", "door": "boolean", "mode": "string",
        }  # fmt: skip
        # nothing injected: exactly two series, and the victim has its one point only
        series = influx1.query('SHOW SERIES FROM "iotgw"', db)["results"][0]["series"][0]["values"]
        assert len(series) == 2, series
        victim_rows = influx1.rows('SELECT * FROM "iotgw" WHERE "device" = \'victim\'', db)
        assert [(r["time"], r["temp"]) for r in victim_rows] == [(base - 1, 5.0)]
        assert influx1.query("SHOW MEASUREMENTS", db)["results"][0]["series"][0]["values"] == [
            ["iotgw"],
            ["iotgw_events"],
        ]
        events = wait_for("the event", lambda: influx1.rows('SELECT * FROM "iotgw_events"', db))
        assert len(events) == 1
        event = events[0]
        assert (event["time"], event["device"], event["event"]) == (base + 100, "pi-1", "door.opened")
        assert (event["door"], event["count"], event["seq"]) == (
            "front",
            2.0,
            float(len(HOSTILE_STRINGS) + 1),
        )
        assert event["site"] == HOSTILE_LABELS["site"]

        state = wait_for("status caught up", lambda: (s := status(gw))["pending_readings"] == 0 and s)
        assert state["state"] == "ok" and state["dead_letters"] == 0
        assert state["sent_readings"] == len(HOSTILE_STRINGS) + 1 and state["sent_events"] == 1
        text = iotgw(gw, "status").stdout
        assert "influx      target        v1 http://127.0.0.1:" in text
        assert "pending       0 readings, 0 events" in text


def test_field_type_conflict_goes_to_dead_letters_and_the_rest_is_stored(
    influx1: InfluxDB1, tmp_path: Path
) -> None:
    db = "v1_conflict"
    influx1.create_database(db)
    with GatewayProcess.start(tmp_path, env=v1_env(influx1, db, max_delay="1.0")) as gw:
        token = gw.add_device("pi-1")
        base = now_ms() - 60_000

        async def stream() -> None:
            async with ScriptedDevice(gw.device_url, token) as dev:
                await dev.hello()
                await dev.readings(1, {"temp": 20.0}, ts=base)
                await dev.wait_ack(1)
                wait_for("the first point", lambda: influx1.count("iotgw", "temp", db) == 1)
                # one frame, twenty samples, one of them with temp as a string
                samples = [
                    {"ts": base + 1 + i, "values": {"temp": 21.0 + i, "n": float(i)}} for i in range(20)
                ]
                samples[13]["values"]["temp"] = "hot"
                await dev.send(json.dumps({"type": "readings", "seq": 2, "samples": samples}))
                await dev.wait_ack(2)

        run(stream())
        wait_for("the dead letter", lambda: status(gw)["dead_letters"] == 1)
        assert influx1.count("iotgw", "temp", db) == 20  # 1 + the 19 others of the batch
        assert influx1.count("iotgw", "n", db) == 19  # the refused point is kept whole, in dead_letters
        listing = json.loads(iotgw(gw, "deadletters", "--json").stdout)
        assert len(listing) == 1
        dead = listing[0]
        assert dead["ts"] == base + 14 and dead["status"] == 400 and dead["state"] == "dead"
        assert "field type conflict" in dead["error"]  # InfluxDB's own message
        assert 'temp="hot"' in dead["line"]
        assert "field type conflict" in iotgw(gw, "deadletters").stdout
        assert status(gw)["pending_readings"] == 0  # the stream was not blocked

        # the operator makes room for the string (here: drops the measurement), then resends
        influx1.query('DROP MEASUREMENT "iotgw"', db)
        result = iotgw(gw, "deadletters", "--retry", str(dead["id"]))
        assert result.returncode == 0 and result.stdout.startswith("1 dead letters marked"), result
        wait_for(
            "the resend", lambda: status(gw)["dead_letters"] == 0 and status(gw)["dead_letters_retrying"] == 0
        )
        rows = influx1.rows('SELECT "temp" FROM "iotgw"', db)
        assert [(r["time"], r["temp"]) for r in rows] == [(base + 14, "hot")]
        assert json.loads(iotgw(gw, "deadletters", "--json", "--all").stdout)[0]["state"] == "resent"


def test_labels_that_cannot_be_tags_are_refused_by_the_cli(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path)
    gw.connect().close()  # create the store
    for label, error in [
        ("room=kitchen\nevil", "control characters"),
        ("room=back\\slash", "backslashes"),
        ("device=other", "reserved"),
    ]:
        result = iotgw(gw, "device", "add", "pi-1", "--label", label)
        assert result.returncode == 2 and error in result.stderr, result
    result = iotgw(gw, "device", "add", "pi-1", "--label", "room=a, b=c d")
    assert result.returncode == 0, result.stderr


def test_required_and_unreachable_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = v1_env(f"http://127.0.0.1:{port}", "x", required="true")
    gw = GatewayProcess(tmp_path, env=env)
    try:
        gw.launch()
    except RuntimeError as exc:
        text = str(exc)
    else:
        gw.stop()
        raise AssertionError("the gateway started without its required InfluxDB")
    assert "exited with 2" in text
    assert f"InfluxDB v1 http://127.0.0.1:{port} database x: unreachable" in text
    assert "influx.required is true: not starting" in text


def test_refused_credentials_fail_fast_when_required_and_are_retried_otherwise(tmp_path: Path) -> None:
    with InfluxDB1.start(tmp_path / "influxd", auth=True) as influx:
        influx.create_database("auth")
        env = v1_env(influx, "auth", username="admin", password="wrong", required="true")
        try:
            GatewayProcess(tmp_path / "gw1", env=env).launch()
        except RuntimeError as exc:
            assert "HTTP 401 (credentials refused): authorization failed" in str(exc)
        else:
            raise AssertionError("started with refused credentials")
        # not required: the device plane runs, readings are acked and wait; status says why
        env["IOTGW_INFLUX_REQUIRED"] = "false"
        with GatewayProcess.start(tmp_path / "gw2", env=env) as gw:
            token = gw.add_device("pi-1")

            async def one() -> None:
                async with ScriptedDevice(gw.device_url, token) as dev:
                    await dev.hello()
                    await dev.readings(1, {"temp": 1.0})
                    await dev.wait_ack(1)

            run(one())
            state = wait_for("a retry", lambda: (s := status(gw))["retries"] >= 1 and s)
            assert state["state"] == "retrying" and state["pending_readings"] == 1
            assert "credentials refused" in state["last_error"]
            assert "credentials refused" in gw.log()
        # the right password: everything flows
        env["IOTGW_INFLUX_PASSWORD"] = influx.admin[1]
        with GatewayProcess.start(tmp_path / "gw2", env=env) as gw:
            wait_for("the backlog", lambda: influx.count("iotgw", "temp", "auth") == 1)
            assert "admin-secret" not in gw.log()
