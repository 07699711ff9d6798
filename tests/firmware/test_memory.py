"""The firmware on a board-sized heap, through outages and MemoryErrors: no reading is lost silently.

Each test runs the firmware compiled with mpy-cross (as ``iotgw firmware deploy --mpy``
installs it) under the MicroPython unix port against a real gateway process, and checks
the one invariant the firmware promises (docs/firmware.md, "No silent loss"): every
sample it took is either stored by the gateway or counted in ``dropped``, exactly.

``wss://`` goes through a TLS terminator started here (CPython ``ssl``, a certificate
made with ``openssl``) in front of the gateway's plain device port; the board's clock
starts at 2000-01-01 under libfaketime, so TLS verification only passes once the
firmware has set its clock from the gateway's HTTP ``Date`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.firmware.mp import Firmware, base_config, compile_firmware
from tests.support.gateway import GatewayProcess

HEAP_WS = "128k"
"""Heap for ws:// with .mpy files on the 64-bit unix port. The issue's target is 72k: not reached
(at 96k it streams, but reconnects during a long outage fragment the heap: docs/firmware.md)."""
HEAP_WSS = "160k"
OUTAGE_SAMPLES = 1200
"""Samples taken while the gateway is down in the long outage: 1,200 at 100 ms, about 2 minutes."""
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@pytest.fixture(scope="module")
def mpy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_firmware(tmp_path_factory.mktemp("mpy"))


def drained(fw: Firmware) -> tuple[int, int]:
    """(taken, dropped) from the firmware's last line: ``DRAINED taken buffered=0 dropped=D``."""
    m = fw.wait_line(r"^DRAINED (\d+) buffered=0 dropped=(\d+)", timeout=5)
    return int(m.group(1)), int(m.group(2))


def stored_numbers(gw: GatewayProcess, device: str) -> list[int]:
    return [int(values["n"]) for _, _, values in gw.readings(device)]


def assert_nothing_uncounted(fw: Firmware, gw: GatewayProcess, device: str) -> tuple[int, int, int]:
    taken, dropped = drained(fw)
    numbers = stored_numbers(gw, device)
    assert len(numbers) == len(set(numbers)), "a reading was stored twice"
    assert len(numbers) + dropped == taken, (len(numbers), dropped, taken)
    return taken, dropped, len(numbers)


# -- a full ring through an outage ----------------------------------------------------------------


@pytest.mark.slow
def test_two_minute_outage_with_a_full_ring_on_a_small_heap(tmp_path: Path, mpy_root: Path) -> None:
    # 2 minutes of outage (the only one this long in the suite): about 2.5 minutes in all.
    total = 100 + OUTAGE_SAMPLES + 200
    with GatewayProcess.start(tmp_path / "gw") as gw:
        token = gw.add_device("board-mem")
        config = base_config(gw.device_url, token, device="board-mem", interval_s=0.1, sample_limit=total,
                             exit_when_drained=True, drain_timeout_s=120, trace_mem_every=100)  # fmt: skip
        with Firmware(tmp_path, config, heap=HEAP_WS, root=mpy_root) as fw:
            fw.wait_line(r"^SAMPLE 100 ", timeout=60)
            gw.kill()
            down_at = len(fw.snapshot())
            fw.wait_line(rf"^SAMPLE {100 + OUTAGE_SAMPLES} ", timeout=600)
            gw.launch()
            fw.wait_line(r"^LINK welcome ", start=down_at, timeout=60)
            assert fw.wait(300) == 0, fw.tail()
        taken, dropped, stored = assert_nothing_uncounted(fw, gw, "board-mem")
    assert taken == total
    assert dropped > OUTAGE_SAMPLES // 2, "the ring should have filled and dropped its oldest"
    assert not fw.find(r"Traceback|LINK error"), fw.tail()
    print(f"\nheap {HEAP_WS}: taken {taken}, stored {stored}, dropped {dropped}; MEM lines: {fw.mem()[-3:]}")


# -- wss:// with verification, after the clock is set ---------------------------------------------


def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "gw.pem", directory / "gw.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@contextlib.contextmanager
def tls_terminator(cert: Path, key: Path, backend_port: Any) -> Iterator[int]:
    """TLS on a free port, forwarding each connection to 127.0.0.1:backend_port() in the clear."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    loop = asyncio.new_event_loop()
    ready: list[int] = []
    started = threading.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend_port())
        except OSError:
            writer.close()  # the gateway is down: the board sees the connection drop
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        ready.append(server.sockets[0].getsockname()[1])
        started.set()
        async with server:
            with contextlib.suppress(asyncio.CancelledError):
                await server.serve_forever()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield ready[0]
    finally:
        for task in asyncio.all_tasks(loop):
            loop.call_soon_threadsafe(task.cancel)
        thread.join(10)


def test_wss_verified_after_the_clock_is_set_from_2000_through_an_outage(
    tmp_path: Path, mpy_root: Path
) -> None:
    assert FAKETIME_LIB.is_file(), "libfaketime missing: apt install faketime (.ci/system-deps.sh)"
    cert, key = make_cert(tmp_path)
    clock_file = tmp_path / "board-clock"
    clock_file.write_text("@2000-01-01 00:00:00\n")  # the board's RTC after a power-up
    board_env = {
        "LD_PRELOAD": str(FAKETIME_LIB),
        "FAKETIME_TIMESTAMP_FILE": str(clock_file),  # compat.set_clock writes here on the unix port
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # ticks_ms stays real
    }
    total = 500
    with GatewayProcess.start(tmp_path / "gw") as gw:
        token = gw.add_device("board-tls")
        with tls_terminator(cert, key, lambda: gw.port) as port:
            config = base_config(f"wss://localhost:{port}/v1/device", token, device="board-tls", interval_s=0.05,
                                 sample_limit=total, exit_when_drained=True, drain_timeout_s=120,
                                 ca_file=str(cert))  # fmt: skip
            with Firmware(tmp_path, config, heap=HEAP_WSS, root=mpy_root, env=board_env) as fw:
                fw.wait_line(r"^TIME set to \d+", timeout=60)
                fw.wait_line(r"^SAMPLE 100 ", timeout=60)
                fw.wait_line(r"^LINK welcome ", timeout=60)
                gw.kill()
                down_at = len(fw.snapshot())
                fw.wait_line(r"^SAMPLE 350 ", timeout=120)  # 12 s at 50 ms: the 8 KB ring is full
                gw.launch()
                fw.wait_line(r"^LINK welcome ", start=down_at, timeout=60)
                assert fw.wait(180) == 0, fw.tail()
        taken, dropped, _ = assert_nothing_uncounted(fw, gw, "board-tls")
    assert taken == total
    assert dropped > 0, "the ring should have filled during the outage"
    assert clock_file.read_text().startswith("@20") and not clock_file.read_text().startswith("@2000")
    assert not fw.find(r"validity starts in the future"), "TLS was tried before the clock was set"


# -- MemoryError at each allocation site of the send path ------------------------------------------


@pytest.mark.parametrize(
    ("site", "every"),
    [
        pytest.param("sample", 5, id="sensor-read"),
        pytest.param("encode", 5, id="encode-sample"),
        pytest.param("ring", 7, id="ring-put"),
        pytest.param("frame", 11, id="build-frame"),
        pytest.param("send", 9, id="ws-send"),
    ],
)
def test_memory_error_at_each_allocation_site_loses_nothing_uncounted(
    tmp_path: Path, mpy_root: Path, site: str, every: int
) -> None:
    total = 150
    with GatewayProcess.start(tmp_path / "gw") as gw:
        token = gw.add_device("board-fault")
        config = base_config(gw.device_url, token, device="board-fault", interval_s=0.02, sample_limit=total,
                             exit_when_drained=True, drain_timeout_s=120, batch_samples=5,
                             fault={"site": site, "every": every})  # fmt: skip
        with Firmware(tmp_path, config, heap=HEAP_WS, root=mpy_root) as fw:
            assert fw.wait(180) == 0, fw.tail()
        taken, dropped, _ = assert_nothing_uncounted(fw, gw, "board-fault")
    injected = len(fw.find(rf"^FAULT {re.escape(site)}$"))
    assert injected > 0
    assert taken == total
    if site in ("sample", "encode", "ring"):
        assert dropped == injected  # each injected fault cost exactly that one sample
    else:
        assert dropped == 0  # the samples waited in the ring and were sent again
    assert not fw.find(r"Traceback"), fw.tail()


# -- a reset loses the RAM ring: counted and reported after boot -----------------------------------


def test_samples_lost_in_a_reset_are_counted_after_boot(tmp_path: Path, mpy_root: Path) -> None:
    state = tmp_path / "rtc-memory"  # stands in for the ESP32's RTC memory (compat.save_state)
    with GatewayProcess.start(tmp_path / "gw") as gw:
        token = gw.add_device("board-reset")
        url = gw.device_url
        gw.kill()  # the gateway is away while the first run samples: nothing is acknowledged
        first = base_config(url, token, device="board-reset", interval_s=0.02, sample_limit=30,
                            state_file=str(state))  # fmt: skip
        with Firmware(tmp_path, first, heap=HEAP_WS, root=mpy_root, name="before") as fw:
            fw.wait_line(r"^APP sample limit reached: 30", timeout=60)
        # stop() is SIGTERM: the process dies like a board reset, the RAM ring with it
        gw.launch()
        second = base_config(url, token, device="board-reset", interval_s=0.02, sample_limit=40,
                             exit_when_drained=True, state_file=str(state))  # fmt: skip
        with Firmware(tmp_path, second, heap=HEAP_WS, root=mpy_root, name="after") as fw2:
            assert fw2.wait(120) == 0, fw2.tail()
        stored = len(gw.readings("board-reset"))
    assert fw2.find(r"^BOOT lost 30 unacked samples in the reset")
    taken, dropped = drained(fw2)
    assert (taken, dropped) == (40, 30)
    assert stored == 40  # and the 30 of the first run are in `dropped`: 30 + 40 taken, 40 + 30 accounted
