"""Retention with two sinks on (InfluxDB and MQTT): a row goes only once both have delivered it."""

from __future__ import annotations

import sqlite3

from gateway.integrations.influx.sink import EVENTS_CURSOR, READINGS_CURSOR
from gateway.integrations.mqtt.sink import EVENTS_CURSOR as MQTT_EVENTS
from gateway.integrations.mqtt.sink import READINGS_CURSOR as MQTT_READINGS
from gateway.store.retention import delete_older_than
from iotgw_common.clock import now_ms
from tests.store.test_retention import DAY, fill, ids


def test_the_sink_furthest_behind_holds_old_rows(conn: sqlite3.Connection) -> None:
    now = now_ms()
    fill(conn, now)  # ids 1-4 device a, 5-8 device b; ages 40, 35, 1, 0 days
    conn.execute(
        "INSERT INTO cursors (name, last_id) VALUES (?, 8), (?, 5), (?, 8), (?, 1)",
        (READINGS_CURSOR, MQTT_READINGS, EVENTS_CURSOR, MQTT_EVENTS),
    )
    deleted = delete_older_than(
        conn, now - 30 * DAY,
        readings_cursor=[READINGS_CURSOR, MQTT_READINGS], events_cursor=(EVENTS_CURSOR, MQTT_EVENTS),
    )  # fmt: skip
    assert deleted == 3  # InfluxDB has all, but the broker has not confirmed reading 6 yet
    assert ids(conn, "readings") == [3, 4, 6, 7, 8]
    assert ids(conn, "events") == [2, 3, 4, 5, 6, 7, 8]  # MQTT has event 1 only
    # the MQTT sink catches up: now they go
    conn.execute("UPDATE cursors SET last_id = 8 WHERE name IN (?, ?)", (MQTT_READINGS, MQTT_EVENTS))
    assert delete_older_than(conn, now - 30 * DAY, readings_cursor=[READINGS_CURSOR, MQTT_READINGS]) == 1
    assert ids(conn, "readings") == [3, 4, 7, 8]
    # one sink that never confirmed anything keeps everything
    assert delete_older_than(conn, now, readings_cursor=[READINGS_CURSOR, "mqtt-never.readings"]) == 0
