"""Hostile traffic beside 100 well-behaved devices: the good ones never notice.

While 100 devices stream (each its own session, pipelined, acked), hostile clients on the same
gateway send every kind of garbage the trust boundary must absorb: malformed and oversized
frames, values nested a thousand levels deep, integers beyond what the store holds, NaN, floods
of new metric and event names, control characters, wrong tokens, connections that never say
hello. The good devices must end with every acknowledged reading stored exactly once, none of
their sessions closed, and the gateway's memory bounded. The counts are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.device import StreamingDevice, now_ms
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.slow

GOOD_DEVICES = 100
FRAMES = 40
SAMPLES_PER_FRAME = 2
HOSTILE_DEVICES = 6
RSS_CAP_MB = 400  # generous: the gateway idles near 60 MB; unbounded growth would blow far past it


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def hostile_frames(seq: int, round_: int) -> list[str]:
    """One round of garbage; every frame is refused or harmless, none may hurt anyone else."""
    ts = now_ms()
    deep = "[" * 1000 + "]" * 1000
    return [
        "{not json",
        '{"type": "readings", "seq": 1, "samples": [{"ts": 1, "values": {"a": 1}}]} trailing',
        '{"type": "readings", "type": "event", "seq": 5}',
        json.dumps({"type": "readings", "seq": seq, "samples": [{"ts": ts, "values": {"x": float("nan")}}]}),
        f'{{"type": "readings", "seq": {seq}, "samples": [{{"ts": {ts}, "values": {{"x": {deep}}}}}]}}',
        '{"type": "status", "buffered": 1' + "0" * 30 + ', "dropped": 0}',
        '{"type": "status", "buffered": 0, "dropped": 0, "info": {"big": 1' + "0" * 25 + "}}",
        f'{{"type": "event", "seq": {seq}, "ts": {ts}, "name": "e{round_}", "data": {{"deep": {deep}}}}}',
        json.dumps({"type": "readings", "seq": seq, "samples": [{"ts": ts, "values": {"v": "x" * 70_000}}]}),
        json.dumps(  # a flood of new metric names
            {
                "type": "readings",
                "seq": seq + 1,
                "samples": [{"ts": ts, "values": {f"m{round_}_{i}": 1.0 for i in range(64)}}],
            }
        ),
        json.dumps({"type": "event", "seq": seq + 2, "ts": ts, "name": f"flood_{round_}", "data": {}}),
        json.dumps({"type": "hello", "stream": "s", "agent": "evil\n2026-01-01 INFO forged line"}),
        json.dumps({"type": "readings", "seq": 2**60, "samples": [{"ts": 2**60, "values": {"a": 1}}]}),
        json.dumps({"type": "result", "id": "0" * 20, "ok": True, "value": {"a": [1, [2, [3]]]}}),
    ]


async def hostile_device(url: str, token: str, name: str, stop: asyncio.Event, stats: Counter[str]) -> None:
    """Connect, say hello, spray garbage; when closed (1008 and friends), come back until ``stop``."""
    round_ = 0
    while not stop.is_set():
        try:
            headers = {"Authorization": f"Bearer {token}"}
            async with connect(url, additional_headers=headers, compression=None, max_size=None) as ws:
                stats["hostile connections"] += 1
                await ws.send(json.dumps({"type": "hello", "stream": f"evil-{round_}", "agent": "evil/1"}))
                seq = 1_000 * (round_ + 1)
                while not stop.is_set():
                    round_ += 1
                    for frame in hostile_frames(seq, round_):
                        await ws.send(frame)
                        stats["hostile frames"] += 1
                    seq += 10
                    with contextlib.suppress(TimeoutError):
                        while True:  # drain the error replies without blocking on them
                            await asyncio.wait_for(ws.recv(), 0.01)
                            stats["hostile replies"] += 1
        except ConnectionClosed as exc:
            stats[f"hostile closed {exc.rcvd.code if exc.rcvd else 'none'}"] += 1
        except (OSError, TimeoutError, InvalidStatus):
            stats["hostile connect failures"] += 1
        await asyncio.sleep(0.05)  # pacing: a hostile client reconnects quickly, not in a busy loop


async def wrong_tokens(url: str, stop: asyncio.Event, stats: Counter[str]) -> None:
    while not stop.is_set():
        try:
            async with connect(url, additional_headers={"Authorization": "Bearer iotgw_d_forged"}):
                stats["wrong token accepted"] += 1
        except InvalidStatus as exc:
            stats[f"wrong token HTTP {exc.response.status_code}"] += 1
        except OSError:
            stats["wrong token connect failures"] += 1
        await asyncio.sleep(0.01)  # pacing


async def silent_connections(url: str, token: str, stop: asyncio.Event, stats: Counter[str]) -> None:
    """Authenticated connections that never send hello: closed by the hello timeout (4002)."""
    while not stop.is_set():
        try:
            headers = {"Authorization": f"Bearer {token}"}
            async with connect(url, additional_headers=headers, compression=None) as ws:
                await ws.recv()
        except ConnectionClosed as exc:
            stats[f"silent closed {exc.rcvd.code if exc.rcvd else 'none'}"] += 1
        except (OSError, InvalidStatus):
            stats["silent connect failures"] += 1


def test_hostile_traffic_does_not_hurt_well_behaved_devices(tmp_path: Path) -> None:
    env = {"IOTGW_DEVICE_HELLO_TIMEOUT": "1.0"}
    with GatewayProcess.start(tmp_path / "gw", env=env) as gw:
        good = [
            StreamingDevice(
                gw.device_url,
                gw.add_device(f"good-{d:03d}"),
                f"good-{d:03d}",
                FRAMES,
                window=4,
                samples_per_frame=SAMPLES_PER_FRAME,
            )
            for d in range(GOOD_DEVICES)
        ]
        evil_tokens = [gw.add_device(f"evil-{d}") for d in range(HOSTILE_DEVICES)]
        silent_token = gw.add_device("silent")
        assert gw.proc is not None
        pid = gw.proc.pid
        stats: Counter[str] = Counter()
        rss: list[float] = [rss_mb(pid)]

        async def sample_rss(stop: asyncio.Event) -> None:
            while not stop.is_set():
                rss.append(rss_mb(pid))
                await asyncio.sleep(0.2)  # sampling interval, not a wait for a condition

        async def good_device(device: StreamingDevice) -> None:
            await device.run(deadline_s=240)  # pipelined by its window; reconnects if closed

        async def main() -> None:
            stop = asyncio.Event()
            attackers = [
                *(
                    asyncio.create_task(hostile_device(gw.device_url, t, f"evil-{i}", stop, stats))
                    for i, t in enumerate(evil_tokens)
                ),
                asyncio.create_task(wrong_tokens(gw.device_url, stop, stats)),
                *(
                    asyncio.create_task(silent_connections(gw.device_url, silent_token, stop, stats))
                    for _ in range(5)
                ),
                asyncio.create_task(sample_rss(stop)),
            ]
            # let the attack get going before the good devices start, so they stream through it
            deadline = time.monotonic() + 30
            while stats["hostile frames"] < 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            stats["hostile frames before the good devices"] = stats["hostile frames"]
            try:
                await asyncio.gather(*(good_device(d) for d in good))
            finally:
                stats["hostile frames while they streamed"] = (
                    stats["hostile frames"] - stats["hostile frames before the good devices"]
                )
                stop.set()
                await asyncio.wait(attackers, timeout=15)
                for task in attackers:
                    task.cancel()

        asyncio.run(asyncio.wait_for(main(), 300))

        closed_good = {d.name: d.connections for d in good if d.connections != 1}
        print(f"\nhostile soak: {dict(sorted(stats.items()))}")
        print(f"gateway RSS MB: start {rss[0]:.0f}, max {max(rss):.0f}, end {rss[-1]:.0f}")
        assert not closed_good, f"good sessions were closed and had to reconnect: {closed_good}"
        assert not any(key.startswith("hostile closed 1011") for key in stats), stats
        # the attack ran all through the good devices' streaming (how much depends on the machine)
        assert stats["hostile frames while they streamed"] >= 100, stats
        assert stats["wrong token accepted"] == 0, stats
        for device in good:
            assert device.acked == FRAMES, (device.name, device.acked)
            rows = gw.readings(device.name)
            seqs = Counter(seq for seq, _, _ in rows)
            assert len(rows) == FRAMES * SAMPLES_PER_FRAME, (device.name, len(rows))
            assert set(seqs) == set(range(1, FRAMES + 1)), device.name
            assert all(n == SAMPLES_PER_FRAME for n in seqs.values()), f"{device.name}: stored twice"
        assert max(rss) < RSS_CAP_MB, f"gateway RSS reached {max(rss):.0f} MB"
        log = gw.log()
        assert "Traceback" not in log, log[-3000:]
        assert "code 1011" not in log, "a session was closed with 1011 (internal error)"
