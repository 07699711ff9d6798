"""device_agent.link and the Agent against a real websockets server playing the gateway by hand.

The server side is written with the shared codec, message by message, so each
test states exactly what the gateway says and checks exactly what the agent sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from device_agent.agent import Agent, split_samples
from device_agent.buffer import FrameBuffer
from device_agent.commands import CommandRegistry
from device_agent.config import parse_config
from device_agent.link import Backoff, Link, LinkSettings
from iotgw_common.protocol import (
    Ack,
    CloseCode,
    Command,
    Error,
    Event,
    Hello,
    Readings,
    Result,
    Sample,
    Status,
    Welcome,
    decode_device_message,
    encode_text,
)
from iotgw_common.protocol.messages import MAX_FRAME_BYTES, DeviceMessage

TS = 1_700_000_000_000
TOKEN = "iotgw_d_test-token"

ProcessRequest = Callable[[ServerConnection, Request], Response | None]


@contextlib.asynccontextmanager
async def hand_gateway(
    process_request: ProcessRequest | None = None,
) -> AsyncIterator[tuple[str, asyncio.Queue[ServerConnection]]]:
    """A real WebSocket server; each accepted connection is handed to the test through the queue."""
    connections: asyncio.Queue[ServerConnection] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        await connections.put(ws)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None, process_request=process_request) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/device", connections


async def receive(ws: ServerConnection) -> DeviceMessage:
    raw = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(raw, str), "the device must send text frames"
    return decode_device_message(raw)


async def receive_raw(ws: ServerConnection) -> str:
    raw = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(raw, str)
    return raw


async def welcome(ws: ServerConnection, last_seq: int, device: str = "pi-test") -> None:
    await ws.send(encode_text(Welcome(device=device, server_time=TS, last_seq=last_seq)))


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def fill(buffer: FrameBuffer, n: int) -> None:
    for i in range(n):
        buffer.append_readings([Sample(ts=TS + i, values={"v": float(i)})])


def make_link(url: str, buffer: FrameBuffer, **settings: Any) -> Link:
    def hello() -> Hello:
        stats = buffer.stats()
        return Hello(
            stream=buffer.stream,
            agent="iotgw-agent/test",
            device="pi-test",
            last_acked=buffer.last_acked,
            buffered=stats.buffered,
            dropped=stats.dropped,
        )

    options: dict[str, Any] = {"backoff_base": 0.01, "backoff_max": 0.05, **settings}
    return Link(LinkSettings(url=url, token=TOKEN, **options), buffer, hello, CommandRegistry())


# -- Link ------------------------------------------------------------------------------------


def test_hello_welcome_resend_in_order_after_reconnect_and_acks_delete(tmp_path: Path) -> None:
    async def main() -> None:
        buffer = FrameBuffer(tmp_path / "b.sqlite3")
        fill(buffer, 5)
        async with hand_gateway() as (url, connections):
            link = make_link(url, buffer)
            task = asyncio.create_task(link.run())
            try:
                # -- session 1
                ws = await asyncio.wait_for(connections.get(), 5)
                assert ws.request is not None
                assert ws.request.headers["Authorization"] == f"Bearer {TOKEN}"
                assert "Sec-WebSocket-Extensions" not in ws.request.headers  # no permessage-deflate
                hello = await receive(ws)
                assert isinstance(hello, Hello)
                assert (hello.stream, hello.device, hello.protocol) == (buffer.stream, "pi-test", 1)
                assert (hello.last_acked, hello.buffered, hello.dropped) == (0, 5, 0)
                await welcome(ws, last_seq=2)  # frames 1 and 2 are stored already
                first = [await receive_raw(ws) for _ in range(3)]
                seqs = [decode_device_message(raw) for raw in first]
                assert [m.seq for m in seqs if isinstance(m, Readings)] == [3, 4, 5]
                await ws.send(encode_text(Ack(seq=3)))
                await eventually(lambda: [s for s, _ in buffer.pending(0, 10)] == [4, 5])
                assert link.connected
                await ws.close(CloseCode.SERVICE_RESTART)
                # -- session 2: everything not acked again, in order, byte for byte
                ws = await asyncio.wait_for(connections.get(), 5)
                hello = await receive(ws)
                assert isinstance(hello, Hello)
                assert (hello.last_acked, hello.buffered) == (3, 2)
                await welcome(ws, last_seq=3)
                assert [await receive_raw(ws) for _ in range(2)] == first[1:]
                buffer.append_event("door", TS, {"pressed": True})
                link.notify()
                event = await receive(ws)
                assert isinstance(event, Event) and event.seq == 6
                await ws.send(encode_text(Ack(seq=6)))
                await eventually(lambda: buffer.stats().buffered == 0)
                assert link.sessions == 2
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        buffer.close()

    asyncio.run(main())


def test_at_most_max_in_flight_unacked_frames(tmp_path: Path) -> None:
    async def main() -> None:
        buffer = FrameBuffer(tmp_path / "b.sqlite3")
        fill(buffer, 5)
        async with hand_gateway() as (url, connections):
            task = asyncio.create_task(make_link(url, buffer, max_in_flight=2).run())
            try:
                ws = await asyncio.wait_for(connections.get(), 5)
                await receive(ws)
                await welcome(ws, last_seq=0)
                assert [getattr(await receive(ws), "seq", None) for _ in range(2)] == [1, 2]
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.2)  # window full
                await ws.send(encode_text(Ack(seq=1)))
                assert getattr(await receive(ws), "seq", None) == 3
                await ws.send(encode_text(Ack(seq=3)))  # cumulative: covers 2 and 3
                assert [getattr(await receive(ws), "seq", None) for _ in range(2)] == [4, 5]
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        buffer.close()

    asyncio.run(main())


def test_errors_and_commands(tmp_path: Path) -> None:
    async def main() -> None:
        buffer = FrameBuffer(tmp_path / "b.sqlite3")
        fill(buffer, 3)
        async with hand_gateway() as (url, connections):
            task = asyncio.create_task(make_link(url, buffer).run())
            try:
                ws = await asyncio.wait_for(connections.get(), 5)
                await receive(ws)
                await welcome(ws, last_seq=0)
                for _ in range(3):
                    await receive(ws)
                # seq_not_increasing for a buffered frame: keep it, wait for the ack
                await ws.send(encode_text(Error(code="seq_not_increasing", detail="seen", seq=1)))
                # a refused frame is dropped from the buffer and counted
                await ws.send(encode_text(Error(code="bad_value", detail="NaN", seq=2)))
                await ws.send(encode_text(Command(id="c1", name="reboot", args={})))
                result = await receive(ws)
                assert isinstance(result, Result)
                assert (result.id, result.ok) == ("c1", False)
                assert result.error is not None and "unknown command" in result.error
                assert [s for s, _ in buffer.pending(0, 10)] == [1, 3]
                assert buffer.stats().dropped == 1
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        buffer.close()

    asyncio.run(main())


def test_401_is_logged_clearly_and_retried_only_after_the_long_delay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[float] = []

    def refuse(ws: ServerConnection, request: Request) -> Response:
        attempts.append(asyncio.get_running_loop().time())
        return ws.respond(HTTPStatus.UNAUTHORIZED, "unknown token\n")

    async def run_for(seconds: float, config_error_delay: float) -> int:
        attempts.clear()
        with FrameBuffer(tmp_path / "b.sqlite3") as buffer:
            async with hand_gateway(refuse) as (url, _):
                link = make_link(url, buffer, config_error_delay=config_error_delay)
                task = asyncio.create_task(link.run())
                await asyncio.sleep(seconds)  # a window of fixed length: the attempts in it are counted
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return len(attempts)

    caplog.set_level(logging.INFO, logger="device_agent.link")
    assert asyncio.run(run_for(0.5, config_error_delay=30.0)) == 1
    assert any("HTTP 401" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert asyncio.run(run_for(0.5, config_error_delay=0.05)) >= 3


def test_close_4000_waits_the_long_delay(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> int:
        with FrameBuffer(tmp_path / "b.sqlite3") as buffer:
            async with hand_gateway() as (url, connections):
                task = asyncio.create_task(make_link(url, buffer, long_delay=30.0).run())
                ws = await asyncio.wait_for(connections.get(), 5)
                await receive(ws)
                await welcome(ws, last_seq=0)
                await ws.close(CloseCode.REPLACED, "replaced")
                await asyncio.sleep(0.5)  # a window for what must not happen (a reconnect)
                reconnects = connections.qsize()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return reconnects

    caplog.set_level(logging.INFO, logger="device_agent.link")
    assert asyncio.run(main()) == 0
    assert any("4000" in r.getMessage() and "token" in r.getMessage() for r in caplog.records)


def test_backoff_is_exponential_with_full_jitter_and_a_cap() -> None:
    backoff = Backoff(1.0, 60.0, rng=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0
    jittered = Backoff(1.0, 60.0, rng=lambda: 0.25)
    assert [jittered.next_delay() for _ in range(3)] == [0.25, 0.5, 1.0]
    for _ in range(200):  # no overflow however long the outage
        jittered.next_delay()
    assert jittered.ceiling() == 60.0


def test_split_samples_keeps_frames_within_the_limits() -> None:
    wide = Sample(ts=TS, values={f"m{i}": float(i) for i in range(150)})
    chunks = list(split_samples([wide]))
    assert [len(s.values) for c in chunks for s in c] == [64, 64, 22]
    assert all(s.ts == TS for c in chunks for s in c)
    many = [Sample(ts=TS + i, values={f"metric_{j}": 1.5 for j in range(40)}) for i in range(200)]
    chunks = list(split_samples(many, max_bytes=MAX_FRAME_BYTES))
    assert sum(len(c) for c in chunks) == 200
    assert len(chunks) > 1
    assert [s.ts for c in chunks for s in c] == [s.ts for s in many]


# -- the whole Agent -----------------------------------------------------------------------------


def agent_config(url: str, tmp_path: Path, **agent: Any) -> str:
    extra = "".join(f"{key} = {value!r}\n" for key, value in agent.items())
    return f"""
[gateway]
url = "{url}"
token = "{TOKEN}"
device = "pi-test"
[agent]
interval = 0.05
buffer_path = "{tmp_path / "agent.sqlite3"}"
backoff_base = 0.01
backoff_max = 0.05
{extra}
[simulation]
enabled = true
seed = 5
step = 0.05
[[sensors]]
type = "cpu_temperature"
[[sensors]]
type = "mcp3008"
channel = 0
metric = "soil_moisture"
scale = 100.0
unit = "%"
[[sensors]]
type = "ds18b20"
serial = "28-0316a27944ff"
metric = "water_temp"
[[sensors]]
type = "button"
pin = 17
name = "door"
"""


def test_agent_streams_simulated_readings_and_they_are_acked(tmp_path: Path) -> None:
    async def main() -> None:
        async with hand_gateway() as (url, connections):
            agent = Agent(parse_config(agent_config(url, tmp_path, samples_per_frame=2)))
            task = asyncio.create_task(agent.run())
            try:
                ws = await asyncio.wait_for(connections.get(), 5)
                hello = await receive(ws)
                assert isinstance(hello, Hello)
                assert hello.agent.startswith("iotgw-agent/")
                assert (hello.protocol, hello.device, hello.last_acked) == (1, "pi-test", 0)
                declared = {(s.metric, s.unit, s.kind) for s in hello.sensors}
                assert declared == {
                    ("cpu_temp", "°C", "temperature"),
                    ("soil_moisture", "%", "adc"),
                    ("water_temp", "°C", "temperature"),
                    ("door", "", "event"),
                }
                builtins = ["ping", "read_now", "set_interval"]  # no actuators configured
                assert [c.name for c in hello.commands] == builtins
                assert hello.info["simulated"] is True
                assert hello.info["sensors_skipped"] == 0
                assert "platform" in hello.info
                await welcome(ws, last_seq=0)
                seen = 0
                while seen < 3:
                    message = await receive(ws)
                    if isinstance(message, Readings):
                        assert len(message.samples) == 2
                        for sample in message.samples:
                            assert 30.0 < float(sample.values["cpu_temp"]) < 80.0
                            assert 0.0 <= float(sample.values["soil_moisture"]) <= 100.0
                            assert 0.0 < float(sample.values["water_temp"]) < 40.0
                        seen += 1
                        await ws.send(encode_text(Ack(seq=message.seq)))
                assert agent.buffer is not None
                stream = agent.buffer.stream
            finally:
                agent.stop()
                await asyncio.wait_for(task, 5)
        with FrameBuffer(tmp_path / "agent.sqlite3") as buffer:
            assert buffer.stream == stream
            assert buffer.last_acked >= 3
            assert buffer.stats().buffered <= 2  # at most what came after the last ack

    asyncio.run(main())


def test_readings_survive_a_gateway_outage_and_an_agent_restart(tmp_path: Path) -> None:
    async def main() -> None:
        # 1. no gateway: the agent samples into its buffer, then stops
        config = parse_config(agent_config("ws://127.0.0.1:9/v1/device", tmp_path, status_interval=0.05))
        offline = Agent(config)
        task = asyncio.create_task(offline.run())
        await eventually(lambda: offline.buffer is not None and offline.buffer.stats().buffered >= 4)
        offline.stop()
        await asyncio.wait_for(task, 5)
        with FrameBuffer(tmp_path / "agent.sqlite3") as buffer:
            stored = buffer.stats().buffered
            stream = buffer.stream
        assert stored >= 4
        # 2. the gateway is back: a new agent process (same buffer) sends everything, in order
        async with hand_gateway() as (url, connections):
            agent = Agent(parse_config(agent_config(url, tmp_path, status_interval=0.05)))
            task = asyncio.create_task(agent.run())
            try:
                ws = await asyncio.wait_for(connections.get(), 5)
                hello = await receive(ws)
                assert isinstance(hello, Hello)
                assert hello.stream == stream
                assert hello.buffered >= stored
                await welcome(ws, last_seq=0)
                seqs: list[int] = []
                statuses: list[Status] = []
                while len(seqs) < stored + 2 or not statuses:
                    message = await receive(ws)
                    if isinstance(message, Readings | Event):
                        seqs.append(message.seq)
                    elif isinstance(message, Status):
                        statuses.append(message)
                assert seqs == list(range(1, len(seqs) + 1))
                await ws.send(encode_text(Ack(seq=seqs[-1])))
                assert agent.buffer is not None
                buffer = agent.buffer
                await eventually(lambda: buffer.last_acked == seqs[-1])
                assert statuses[0].dropped == 0
            finally:
                agent.stop()
                await asyncio.wait_for(task, 5)

    asyncio.run(main())


def test_agent_without_simulation_skips_a_missing_sensor_and_runs(tmp_path: Path) -> None:
    w1 = tmp_path / "w1"
    (w1 / "28-00000abcdef0").mkdir(parents=True)
    (w1 / "28-00000abcdef0" / "w1_slave").write_text("aa : crc=aa YES\naa t=20500\n")
    text = f"""
[gateway]
url = "URL"
token = "{TOKEN}"
[agent]
interval = 0.05
buffer_path = "{tmp_path / "agent.sqlite3"}"
[[sensors]]
type = "cpu_temperature"
sensor_file = "{tmp_path / "no-thermal-zone"}"
[[sensors]]
type = "ds18b20"
base_dir = "{w1}"
"""

    async def main() -> None:
        async with hand_gateway() as (url, connections):
            agent = Agent(parse_config(text.replace("URL", url)))
            task = asyncio.create_task(agent.run())
            try:
                ws = await asyncio.wait_for(connections.get(), 5)
                hello = await receive(ws)
                assert isinstance(hello, Hello)
                assert hello.device is None
                assert hello.info["sensors_skipped"] == 1
                assert hello.info["simulated"] is False
                assert [s.metric for s in hello.sensors] == ["temp_28-00000abcdef0"]
                await welcome(ws, last_seq=0)
                message = await receive(ws)
                assert isinstance(message, Readings)
                assert message.samples[0].values == {"temp_28-00000abcdef0": 20.5}
            finally:
                agent.stop()
                await asyncio.wait_for(task, 5)

    asyncio.run(main())
