"""The live feed (docs/live.md) and its terminal clients against a real gateway process.

* every committed reading reaches a subscriber, in order, and filters hold;
* a subscriber that stops reading is dropped (close 4429) while ingest carries on;
* ``iotgw watch`` draws its table in a pseudo-terminal and updates it as readings arrive;
* ``iotgw readings DEVICE --follow`` prints readings as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.device import ScriptedDevice, StreamingDevice
from tests.support.gateway import GatewayProcess, repo_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def feed_url(gw: GatewayProcess) -> str:
    return f"ws://127.0.0.1:{gw.api_port}/api/v1/feed"


async def subscribe(gw: GatewayProcess, token: str, **fields: Any) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(feed_url(gw), max_size=None)
    await ws.send(json.dumps({"type": "subscribe", "token": token, **fields}))
    first = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert first["type"] == "subscribed", first
    return ws, first


def test_every_reading_reaches_a_subscriber_in_order(tmp_path: Path) -> None:
    devices, frames = 3, 300

    async def main(gw: GatewayProcess) -> None:
        token = gw.add_operator("watcher", "read")
        everything, first = await subscribe(gw, token)
        assert first["resumed"] and first["role"] == "read" and first["operator"] == "watcher"
        # a script may authenticate with the header instead of the token in the message
        only_dev0 = await connect(feed_url(gw), additional_headers={"Authorization": f"Bearer {token}"})
        await only_dev0.send(json.dumps({"type": "subscribe", "devices": ["dev-0"], "metrics": ["seq"],
                                         "types": ["readings"]}))  # fmt: skip
        assert json.loads(await only_dev0.recv())["type"] == "subscribed"
        streamers = [
            StreamingDevice(gw.device_url, gw.add_device(f"dev-{d}"), f"dev-{d}", frames, window=8)
            for d in range(devices)
        ]
        await asyncio.gather(*(s.run(60) for s in streamers))
        seqs: dict[str, list[int]] = {f"dev-{d}": [] for d in range(devices)}
        ids: list[int] = []
        while any(len(s) < frames for s in seqs.values()):
            message = json.loads(await asyncio.wait_for(everything.recv(), 10))
            ids.append(message["id"])
            if message["type"] == "readings":
                seqs[message["device"]].append(message["seq"])
                assert message["samples"][0]["values"]["seq"] == message["seq"]
        # every message once, no gaps, in the order the store committed them
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        for name, got in seqs.items():
            assert got == list(range(1, frames + 1)), name
        filtered: list[int] = []
        while len(filtered) < frames:
            message = json.loads(await asyncio.wait_for(only_dev0.recv(), 10))
            assert message["type"] == "readings" and message["device"] == "dev-0", message
            assert set(message["samples"][0]["values"]) == {"seq"}  # metrics narrowed to "seq"
            filtered.append(message["seq"])
        assert filtered == list(range(1, frames + 1))
        # A client that reconnects with the last id it handled misses nothing.
        resumed, hello = await subscribe(gw, token, after=ids[-5], epoch=first["epoch"])
        assert hello["resumed"]
        replayed = [json.loads(await asyncio.wait_for(resumed.recv(), 5))["id"] for _ in range(4)]
        assert replayed == ids[-4:]
        for ws in (everything, only_dev0, resumed):
            await ws.close()

    with GatewayProcess.start(tmp_path) as gw:
        asyncio.run(main(gw))


async def stalled_subscriber(gw: GatewayProcess, token: str) -> ClientConnection:
    """A subscriber that reads nothing: tiny receive buffer, client-side queue of one frame."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.api_port))
    sock.setblocking(False)
    # no permessage-deflate: compressed, the messages would all fit in the kernel's buffers
    ws = await connect(feed_url(gw), sock=sock, max_queue=1, max_size=None, compression=None)
    await ws.send(json.dumps({"type": "subscribe", "token": token}))
    return ws


def test_a_slow_subscriber_is_dropped_and_never_slows_ingest(tmp_path: Path) -> None:
    # ~12 MB of feed messages: more than the kernel buffers (tcp_wmem max is 4 MB here) hold
    # for a subscriber that reads nothing, so its queue at the gateway has to overflow.
    frames, samples = 1000, 200

    async def main(gw: GatewayProcess) -> None:
        token = gw.add_operator("watcher", "read")
        stalled = await stalled_subscriber(gw, token)
        healthy, _ = await subscribe(gw, token, types=["readings"])
        streamer = StreamingDevice(gw.device_url, gw.add_device("fast"), "fast", frames, window=32,
                                   samples_per_frame=samples)  # fmt: skip
        got: list[int] = []

        async def read_healthy() -> None:
            while len(got) < frames:
                got.append(json.loads(await asyncio.wait_for(healthy.recv(), 20))["seq"])

        reader = asyncio.create_task(read_healthy())
        # Ingest completes while the stalled subscriber has not read a single message.
        await streamer.run(60)
        assert streamer.acked == frames
        await reader
        assert got == list(range(1, frames + 1))
        # Now it reads: what the gateway had sent before dropping it, then close 4429.
        late = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(stalled.recv(), 10)
                late += 1
        assert late < frames // 2  # it got what was in flight, then the gateway let go of it
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429, closed.value
        assert "resubscribe with after=" in closed.value.rcvd.reason
        await healthy.close()

    # A small per-subscriber queue, so that a few thousand messages overflow it.
    with GatewayProcess.start(tmp_path, env={"IOTGW_API_FEED_QUEUE": "50"}) as gw:
        asyncio.run(main(gw))
        # the gateway's log is written by a thread: poll for the line
        wait_until(lambda: "live feed: subscriber dropped: more than 50 messages behind" in gw.log(), 10,
                   "the drop logged")  # fmt: skip
        with contextlib.closing(gw.connect()) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == frames * samples


# -- terminal clients ------------------------------------------------------------------------------


class Terminal:
    """A process on a pseudo-terminal of a given size; ``screen`` is everything it wrote."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 30, cols: int = 140) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {**env, "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows)}
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True, close_fds=True
        )
        os.close(slave)
        self.output = b""

    def read(self, timeout: float = 0.1) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], timeout)
            if not ready:
                return
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk
            timeout = 0

    @property
    def screen(self) -> str:
        """What was written, escape sequences (colours, cursor moves) taken out."""
        return ANSI.sub("", self.output.decode(errors="replace"))

    def wait_for(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read()
            if text in self.screen:
                return
            if self.proc.poll() is not None:
                self.read()
                break
        raise AssertionError(f"{text!r} not on the terminal after {timeout}s:\n{self.screen[-3000:]}")

    def interrupt(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read()
        self.read()
        return self.proc.wait(5)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        with contextlib.suppress(OSError):
            os.close(self.master)


@contextlib.contextmanager
def terminal(argv: list[str], env: dict[str, str]) -> Iterator[Terminal]:
    term = Terminal(argv, env)
    try:
        yield term
    finally:
        term.close()


def test_watch_draws_a_live_table_in_a_terminal(tmp_path: Path) -> None:
    async def device(gw: GatewayProcess, token: str, values: list[float], stream: str) -> None:
        async with ScriptedDevice(gw.device_url, token, stream=stream) as dev:
            await dev.hello(sensors=[{"metric": "temp", "unit": "degC"}])
            for seq, value in enumerate(values, start=1):
                await dev.readings(seq, {"temp": value, "rh": 40.0})
                await dev.wait_ack(seq)

    with GatewayProcess.start(tmp_path) as gw:
        token = gw.add_operator("ops", "read")
        sensor = gw.add_device("sensor-7")
        gw.add_device("never-seen")
        asyncio.run(device(gw, sensor, [11.5], "first"))
        cli = [sys.executable, "-m", "gateway.cli", "watch", "--api", gw.api_url]
        with terminal(cli, repo_env({"IOTGW_TOKEN": token})) as term:
            term.wait_for("feed live")
            term.wait_for("sensor-7")
            term.wait_for("never-seen")
            term.wait_for("11.5 degC")  # loaded from the store at start
            asyncio.run(device(gw, sensor, [99.5, 4242.25], "second"))
            term.wait_for("4242.25 degC")  # pushed by the feed, table redrawn in place
            assert "\x1b[1A" in term.output.decode()  # cursor up: rich.live redraws the table in place
            assert term.interrupt() == 0
        assert token not in gw.log()
        with terminal([*cli, "--token", "iotgw_o_nope"], repo_env()) as term:
            term.wait_for("unknown operator token")
            assert term.proc.wait(10) == 2


def test_readings_follow_and_watch_json_print_readings_as_they_arrive(tmp_path: Path) -> None:
    async def send(gw: GatewayProcess, token: str, first: int, count: int) -> None:
        async with ScriptedDevice(gw.device_url, token, stream="follow") as dev:
            await dev.hello()
            for seq in range(first, first + count):
                await dev.readings(seq, {"level": float(seq) + 0.5})
            await dev.wait_ack(first + count - 1)

    with GatewayProcess.start(tmp_path) as gw:
        token = gw.add_operator("ops", "read")
        tank = gw.add_device("tank")
        asyncio.run(send(gw, tank, 1, 3))
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "readings", "tank", "--metric", "level", "--follow",
             "--json", "--api", gw.api_url],
            env=repo_env({"IOTGW_TOKEN": token}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        raw = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "watch", "--json", "--device", "tank", "--api", gw.api_url],
            env=repo_env({"IOTGW_TOKEN": token}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None and raw.stdout is not None
            lines = [json.loads(proc.stdout.readline()) for _ in range(3)]  # the history first
            assert json.loads(raw.stdout.readline())["type"] == "subscribed"
            wait_until(
                lambda: gw.log().count("live feed: ops subscribed") >= 2, 10, "both watchers subscribed"
            )
            asyncio.run(send(gw, tank, 4, 5))  # then, pushed by the feed, what arrives while it follows
            lines += [json.loads(proc.stdout.readline()) for _ in range(5)]
            messages = [json.loads(raw.stdout.readline()) for _ in range(7)]
        finally:
            for p in (proc, raw):
                p.send_signal(signal.SIGINT)
                assert p.wait(10) == 0
        assert [line["value"] for line in lines] == [seq + 0.5 for seq in range(1, 9)]
        readings = [m["seq"] for m in messages if m["type"] == "readings"]
        assert readings == [4, 5, 6, 7, 8], messages  # the other two: the device's hello and online
