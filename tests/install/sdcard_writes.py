"""Bytes written to storage per million readings: the agent's buffer and the gateway's store.

Run it (docs/operations.md shows the figures and the method)::

    python -m tests.install.sdcard_writes            # 4,000 readings per case, ~1 minute
    python -m tests.install.sdcard_writes --readings 20000 --json out.json

Method: each case runs in a process of its own and reads that process's
``/proc/<pid>/io`` ``write_bytes`` (bytes the process caused to be sent to the block
layer: page-cache pages it dirtied, so a page rewritten after an fsync counts again)
before and after N readings, then scales to 1,000,000. File-system metadata and the
ext4 journal come on top and are not counted. ``wchar`` (bytes passed to write(2)) is
shown beside it.

- agent: a real :class:`~device_agent.buffer.FrameBuffer` in a temporary directory on the
  same disk; every frame is appended, then acknowledged (deleted), as in a connected agent.
- gateway: a real ``iotgw serve`` process and one device sending one frame at a time and
  waiting for its ack, so every frame is its own commit: the worst case, a small fleet.
  A busy gateway merges many devices' frames into one commit and writes less per reading.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

MILLION = 1_000_000


def io_counters(pid: int | str = "self") -> dict[str, int]:
    text = Path(f"/proc/{pid}/io").read_text()
    return {key: int(value) for key, value in (line.split(": ") for line in text.splitlines())}


def agent_case(readings: int, samples_per_frame: int, synchronous: str) -> dict[str, object]:
    """Runs in a child process: python -m tests.install.sdcard_writes --agent-case ..."""
    from device_agent.buffer import FrameBuffer
    from iotgw_common.protocol import Sample

    with tempfile.TemporaryDirectory(dir=REPO) as directory:
        buffer = FrameBuffer(Path(directory) / "buffer.sqlite3", synchronous=synchronous)  # type: ignore[arg-type]
        ts = int(time.time() * 1000)
        before = io_counters()
        for first in range(0, readings, samples_per_frame):
            samples = [Sample(ts=ts + first + i, values={"cpu_temp": 47.5, "load_1m": 0.25, "door": False})
                       for i in range(samples_per_frame)]  # fmt: skip
            seq = buffer.append_readings(samples)
            buffer.ack(seq)
        after = io_counters()
        buffer.close()
    return _result("agent buffer", readings, samples_per_frame, synchronous, before, after)


def _result(what: str, readings: int, spf: int, sync: str, before: dict[str, int], after: dict[str, int]) -> dict[str, object]:  # fmt: skip
    written = after["write_bytes"] - before["write_bytes"]
    wchar = after["wchar"] - before["wchar"]
    return {
        "what": what,
        "readings": readings,
        "samples_per_frame": spf,
        "synchronous": sync,
        "write_bytes": written,
        "bytes_per_reading": round(written / readings, 1),
        "mb_per_million": round(written / readings * MILLION / 1e6, 1),
        "wchar_mb_per_million": round(wchar / readings * MILLION / 1e6, 1),
    }


def gateway_case(readings: int, samples_per_frame: int, synchronous: str) -> dict[str, object]:
    from tests.support.device import StreamingDevice
    from tests.support.gateway import GatewayProcess

    with tempfile.TemporaryDirectory(dir=REPO) as directory:
        env = {"IOTGW_STORE_SYNCHRONOUS": synchronous, "IOTGW_STORE_RETENTION_DAYS": "0"}
        with GatewayProcess.start(Path(directory), env=env) as gw:
            assert gw.proc is not None
            token = gw.add_device("pi-1")
            frames = readings // samples_per_frame
            device = StreamingDevice(gw.device_url, token, "pi-1", frames, window=1,
                                     samples_per_frame=samples_per_frame)  # fmt: skip
            time.sleep(0.5)
            before = io_counters(gw.proc.pid)
            asyncio.run(device.run(deadline_s=600))
            time.sleep(0.5)
            after = io_counters(gw.proc.pid)
    return _result("gateway store", frames * samples_per_frame, samples_per_frame, synchronous, before, after)


CASES = [(spf, sync) for spf in (1, 10) for sync in ("FULL", "NORMAL")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=4000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--agent-case", nargs=2, metavar=("SPF", "SYNC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent_case:
        print(json.dumps(agent_case(args.readings, int(args.agent_case[0]), args.agent_case[1])))
        return 0
    results = []
    for spf, sync in CASES:  # each agent case in a fresh process: its own /proc/self/io
        out = subprocess.run([sys.executable, "-m", "tests.install.sdcard_writes", "--readings", str(args.readings),
                              "--agent-case", str(spf), sync], cwd=REPO, capture_output=True, text=True,
                             check=True)  # fmt: skip
        results.append(json.loads(out.stdout))
    results += [gateway_case(args.readings, spf, sync) for spf, sync in CASES]
    print(f"{'what':<14} {'samples/frame':>13} {'synchronous':>11} {'bytes/reading':>13} "
          f"{'MB per 1M readings':>18} {'(write(2) MB)':>13}")  # fmt: skip
    for r in results:
        print(f"{r['what']:<14} {r['samples_per_frame']:>13} {r['synchronous']:>11} {r['bytes_per_reading']:>13} "
              f"{r['mb_per_million']:>18} {r['wchar_mb_per_million']:>13}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")
    sys.exit(main())
