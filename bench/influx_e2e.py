"""Readings/s reaching InfluxDB 1.x through the gateway, next to InfluxDB's own ceiling.

``python -m bench influx`` (registered as a scenario) or standalone
``python -m bench.influx_e2e [--quick] [--json PATH]``. Three figures, one run,
one private ``influxd`` (tests/support/services.py):

1. ceiling: InfluxDB's own rate for batched writes (5000 pre-built lines per
   request, one writer, keep-alive) of points shaped like the gateway's;
2. drain: the forwarder alone, emptying a store prefilled with N readings
   (read, encode, write, advance the cursor);
3. live: devices stream N readings through a real gateway (10 samples per
   frame, pipelined) while it forwards; readings/s from the first frame sent
   until InfluxDB holds all N, and the devices' ack rate for comparison.

Checks (behaviour, not time): InfluxDB ends with exactly as many points as the
devices had acknowledged, and no dead letters.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from .registry import Context, Result, scenario
from .report import environment, format_table, write_result
from .targets import REPO, GatewayTarget

sys.path.insert(0, str(REPO))

from tests.support.services import InfluxDB1

BATCH = 5000
METRICS = 4


def _line(device: int, i: int, base: int) -> str:
    return (f"iotgw,device=dev-{device:05d} temp={20 + i % 50 / 10!r},hum={40 + i % 30 / 10!r},"
            f"door={'true' if i % 2 else 'false'},seq={float(i)!r} {base + i}")  # fmt: skip


def ceiling(influx: InfluxDB1, db: str, n: int) -> float:
    """Points/s InfluxDB accepts from one batched writer."""
    base = int(time.time() * 1000) - 10 * n
    lines = [_line(i % 100, i, base) for i in range(n)]
    bodies = ["\n".join(lines[k : k + BATCH]).encode() for k in range(0, n, BATCH)]
    conn = http.client.HTTPConnection("127.0.0.1", influx.port, timeout=60)
    started = time.perf_counter()
    for body in bodies:
        conn.request("POST", f"/write?db={db}&precision=ms", body)
        response = conn.getresponse()
        response.read()
        if response.status != 204:
            raise RuntimeError(f"InfluxDB refused a batch: {response.status}")
    elapsed = time.perf_counter() - started
    conn.close()
    return n / elapsed


def _env(influx: InfluxDB1, db: str) -> dict[str, str]:
    return {"IOTGW_API_ENABLED": "false", "IOTGW_INFLUX_ENABLED": "true", "IOTGW_INFLUX_API": "v1", "IOTGW_INFLUX_URL": influx.url,
            "IOTGW_INFLUX_DATABASE": db, "IOTGW_INFLUX_BATCH_SIZE": str(BATCH)}  # fmt: skip


def _cursor(store_path: Path) -> int:
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute("SELECT last_id FROM cursors WHERE name = 'influx.readings'").fetchone()
    except sqlite3.OperationalError:
        row = None
    finally:
        conn.close()
    return 0 if row is None else int(row[0])


def drain(influx: InfluxDB1, db: str, n: int, directory: Path) -> float:
    """Readings/s the forwarder alone moves from a prefilled store to InfluxDB."""
    from gateway import store

    gw = GatewayTarget(directory, _env(influx, db))
    gw.provision(100)
    conn = store.connect(gw.store_path)
    ids = [row[0] for row in conn.execute("SELECT id FROM devices ORDER BY id")]
    base = int(time.time() * 1000) - 10 * n
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO readings (device_id, ts, seq, data) VALUES (?, ?, ?, ?)",
        ((ids[i % 100], base + i, i + 1, json.dumps({"temp": 20 + i % 50 / 10, "hum": 40 + i % 30 / 10,
                                                      "door": bool(i % 2), "seq": float(i)}))
         for i in range(n)),
    )  # fmt: skip
    conn.execute("COMMIT")
    (last,) = conn.execute("SELECT max(id) FROM readings").fetchone()
    conn.close()
    gw.start()
    try:
        # time from the first batch on the wire, not from process start
        while _cursor(gw.store_path) == 0:
            time.sleep(0.005)
        started, first = time.perf_counter(), _cursor(gw.store_path)
        while (now := _cursor(gw.store_path)) < last:
            time.sleep(0.01)
        return (now - first) / (time.perf_counter() - started)
    finally:
        gw.stop()


async def _device(url: str, token: str, name: str, frames: int, spf: int, base: int,
                  first_sent: list[float]) -> int:  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(url, additional_headers=headers, compression=None, max_size=None) as ws:
        await ws.send(json.dumps({"type": "hello", "stream": name, "agent": "bench/1"}))
        json.loads(await ws.recv())
        acked, seq = 0, 0
        while acked < frames:
            while seq < frames and seq - acked < 16:
                seq += 1
                samples = [{"ts": base + seq * spf + i, "values": {"temp": 20.5, "hum": 41.0, "door": True,
                                                                   "seq": float(seq)}} for i in range(spf)]  # fmt: skip
                if not first_sent:
                    first_sent.append(time.perf_counter())
                await ws.send(json.dumps({"type": "readings", "seq": seq, "samples": samples}))
            message = json.loads(await ws.recv())
            if message["type"] == "ack":
                acked = message["seq"]
            elif message["type"] == "error":
                raise RuntimeError(f"{name}: {message}")
        return acked * spf


def live(influx: InfluxDB1, db: str, devices: int, frames: int, spf: int, directory: Path) -> dict[str, Any]:
    """Devices stream through a forwarding gateway; readings/s that reach InfluxDB."""
    gw = GatewayTarget(directory, _env(influx, db))
    creds = gw.provision(devices)
    gw.start()
    url = f"ws://127.0.0.1:{gw.port}/v1/device"
    base = int(time.time() * 1000) - 3_600_000
    first_sent: list[float] = []

    async def run() -> list[int]:
        return await asyncio.gather(*(_device(url, token, name, frames, spf, base, first_sent)
                                      for name, token in creds))  # fmt: skip

    try:
        acked = sum(asyncio.run(run()))
        acked_at = time.perf_counter()
        deadline = time.monotonic() + 300
        while (count := influx.count("iotgw", "seq", db)) < acked and time.monotonic() < deadline:
            time.sleep(0.05)
        done = time.perf_counter()
        dead = (
            sqlite3.connect(f"file:{gw.store_path}?mode=ro", uri=True)
            .execute("SELECT count(*) FROM dead_letters")
            .fetchone()[0]
        )
    finally:
        gw.stop()
    return {
        "acked": acked,
        "in_influxdb": count,
        "dead_letters": dead,
        "acked_per_s": acked / (acked_at - first_sent[0]),
        "reaching_influxdb_per_s": count / (done - first_sent[0]),
    }


def measure(workdir: Path, *, quick: bool) -> Result:
    n = 100_000 if quick else 1_000_000
    devices, frames, spf = (10, 200, 10) if quick else (50, 1000, 10)
    result = Result()
    with InfluxDB1.start(workdir / "influxd") as influx:
        for db in ("ceiling", "drain", "live"):
            influx.create_database(db)
        top = ceiling(influx, "ceiling", n)
        forwarder = drain(influx, "drain", n, workdir / "drain")
        run = live(influx, "live", devices, frames, spf, workdir / "live")
    result.add(
        "InfluxDB 1.x ceiling, batched writes", top, "points/s", note=f"{BATCH} lines/request, one writer"
    )
    result.add("forwarder drain, prefilled store", forwarder, "readings/s", note=f"{n:,} readings")
    result.add("drain / ceiling", forwarder / top, "ratio", "close to 1")
    result.add("live: acked to devices", run["acked_per_s"], "readings/s",
               note=f"{devices} devices, {spf} samples/frame")  # fmt: skip
    result.add("live: reaching InfluxDB", run["reaching_influxdb_per_s"], "readings/s",
               note="first frame sent -> all points in InfluxDB")  # fmt: skip
    result.add("live reaching InfluxDB / ceiling", run["reaching_influxdb_per_s"] / top, "ratio")
    result.checks["every acked reading is in InfluxDB, once"] = run["in_influxdb"] == run["acked"]
    result.checks["no dead letters"] = run["dead_letters"] == 0
    result.details = {"readings": n, "live": run, "points_per_reading_fields": METRICS}
    return result


@scenario("influx", "Readings/s reaching InfluxDB 1.x end to end, next to InfluxDB's own ceiling",
          needs=("influxd",))  # fmt: skip
def influx_scenario(ctx: Context) -> Result:
    directory = ctx.scratch("influx")
    try:
        return measure(directory, quick=ctx.quick)
    finally:
        ctx.done(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.influx_e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small: a check that it all works")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="iotgw-influx-bench-") as tmp:
        started = time.monotonic()
        result = measure(Path(tmp), quick=args.quick)
    result.scenario, result.title = "influx", "Readings/s reaching InfluxDB 1.x end to end"
    result.seconds = time.monotonic() - started
    print(format_table([result]))
    print(f"-> {write_result(result, environment(), args.results_dir, args.quick)}")
    return 0 if all(result.checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
