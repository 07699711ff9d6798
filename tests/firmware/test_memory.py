"""The firmware on a board-sized heap, through outages and MemoryErrors: no reading is lost silently.

Each test runs the firmware compiled with mpy-cross (as ``iotgw firmware deploy --mpy``
installs it) under the MicroPython unix port against a real gateway process, and checks
the one invariant the firmware promises (docs/firmware.md, "No silent loss"): every
sample it took is either stored by the gateway or counted in ``dropped``, exactly.

``wss://`` goes to the gateway's own TLS (``[tls]`` cert and key from ``iotgw tls init-ca``
and ``iotgw tls issue``), verified against the site CA; the board's clock starts at
2000-01-01 under libfaketime, so TLS verification only passes once the firmware has set
its clock from the gateway's HTTP ``Date`` header.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.firmware.mp import Firmware, base_config, compile_firmware
from tests.support.gateway import GatewayProcess, repo_env

HEAP_WS = "72k"
"""Heap for ws:// with .mpy files on the 64-bit unix port: the issue's target (was 84k, and 128k before
that). What made it fit, and what is still thin (the heap fragments before it fills: reconnects need
blocks of up to ~600 bytes), is in docs/firmware.md, "Memory budget"."""
HEAP_WSS = "160k"
"""wss://: mbedtls allocates from the MicroPython heap on this port."""
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
    return [int(values["n"]) for _, _, values in gw.readings(device)]  # type: ignore[call-overload]


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


def site_pki(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, gateway certificate, its key), made as an installer makes them:
    ``iotgw tls init-ca`` and ``iotgw tls issue`` (EC P-256; localhost among the names)."""

    def iotgw(*args: str) -> None:
        made = subprocess.run([sys.executable, "-m", "gateway.cli", "tls", *args], env=repo_env(),
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert made.returncode == 0, made.stderr

    iotgw("init-ca", str(directory / "site"))
    iotgw("issue", "--ca", str(directory / "site"), "--name", "gw.test", "--out", str(directory / "gw"))
    return directory / "site" / "ca.pem", directory / "gw" / "gw.test.pem", directory / "gw" / "gw.test.key"


class TlsGatewayProcess(GatewayProcess):
    """The gateway serving ``wss://`` itself (``[tls]`` cert and key through the environment,
    gateway/config.py TlsSettings), started again on the same port after a kill."""

    def __init__(self, directory: Path, cert: Path, key: Path) -> None:
        super().__init__(directory, {"IOTGW_TLS_CERT": str(cert), "IOTGW_TLS_KEY": str(key)})

    def launch(self, timeout: float = 30.0) -> None:
        self.starts += 1
        marker = f"--- start {self.starts} ---\n"
        with self.log_path.open("a") as log:
            log.write(marker)
            log.flush()
            cmd = [sys.executable, "-m", "gateway.cli", "serve", "--store", str(self.store_path),
                   "--host", "127.0.0.1", "--port", str(self.port), "--api-port", str(self.api_port)]  # fmt: skip
            self.proc = subprocess.Popen(
                cmd, cwd=self.directory, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text().split(marker)[-1]
            for line in text.splitlines():
                if "operator API at https://" in line:
                    self.api_port = int(line.split("https://", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
                if " ready: devices connect to wss://" in line:
                    self.port = int(line.split("wss://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                    return
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        raise AssertionError(f"gateway not ready over TLS after {timeout}s:\n{self.log_path.read_text()}")


def test_wss_verified_after_the_clock_is_set_from_2000_through_an_outage(
    tmp_path: Path, mpy_root: Path
) -> None:
    assert FAKETIME_LIB.is_file(), "libfaketime missing: apt install faketime (.ci/system-deps.sh)"
    ca, cert, key = site_pki(tmp_path)
    clock_file = tmp_path / "board-clock"
    clock_file.write_text("@2000-01-01 00:00:00\n")  # the board's RTC after a power-up
    board_env = {
        "LD_PRELOAD": str(FAKETIME_LIB),
        "FAKETIME_TIMESTAMP_FILE": str(clock_file),  # timesync.set_clock writes here on the unix port
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # ticks_ms stays real
    }
    total = 500
    gw = TlsGatewayProcess(tmp_path / "gw", cert, key)
    gw.launch()
    try:
        token = gw.add_device("board-tls")
        config = base_config(f"wss://localhost:{gw.port}/v1/device", token, device="board-tls", interval_s=0.05,
                             sample_limit=total, exit_when_drained=True, drain_timeout_s=120,
                             ca_file=str(ca))  # fmt: skip
        with Firmware(tmp_path, config, heap=HEAP_WSS, root=mpy_root, env=board_env) as fw:
            fw.wait_line(r"^TIME set to \d+", timeout=60)
            fw.wait_line(r"^SAMPLE 100 ", timeout=60)
            fw.wait_line(r"^LINK welcome ", timeout=60)
            gw.kill()
            down_at = len(fw.snapshot())
            fw.wait_line(r"^SAMPLE 350 ", timeout=120)  # 12 s at 50 ms: the ring is full
            gw.launch()
            fw.wait_line(r"^LINK welcome ", start=down_at, timeout=60)
            assert fw.wait(180) == 0, fw.tail()
            taken, dropped, _ = assert_nothing_uncounted(fw, gw, "board-tls")
    finally:
        gw.stop()
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
        # A fault at the frame and send sites ends the session, every second or so: the 4 KB ring
        # (~70 samples) must hold what waits while it reconnects, so that those sites lose nothing
        # at all. Such sessions are too short to reset the backoff (stable_s), so each reconnect
        # waits up to the cap: 0.2 s here, and a sample every 200 ms gives ~14 s of margin. (At
        # 30 ms a sample and a 0.5 s cap, each session's one or two frames fall behind and the
        # ring overflows.) The other sites keep the session and sample every 50 ms.
        breaks_session = site in ("frame", "send")
        config = base_config(gw.device_url, token, device="board-fault", sample_limit=total,
                             interval_s=0.2 if breaks_session else 0.05,
                             backoff={"base_s": 0.1, "cap_s": 0.2, "replaced_s": 1.5, "long_s": 3},
                             exit_when_drained=True, drain_timeout_s=120, batch_samples=5, buffer_bytes=4096,
                             fault={"site": site, "every": every})  # fmt: skip
        with Firmware(tmp_path, config, heap=HEAP_WS, root=mpy_root) as fw:
            assert fw.wait(180) == 0, fw.tail()
        taken, dropped, _ = assert_nothing_uncounted(fw, gw, "board-fault")
    injected = len(fw.find(rf"^FAULT {re.escape(site)}$"))
    assert injected > 0
    assert taken == total
    if breaks_session:
        # The samples waited in the ring and were sent again. If not, say where they went.
        lost = int(fw.wait_line(r"^DRAINED .* lost=(\d+)", timeout=5).group(1))
        delays = [int(m.group(1)) for m in fw.find(r"^RECONNECT in (\d+) ms")]
        assert dropped == 0, (
            f"{dropped} dropped: {lost} lost to a real MemoryError before the ring, {dropped - lost} by the "
            f"ring (overflow or refused); {len(delays)} reconnects, longest delay {max(delays, default=0)} ms; "
            f"gateway errors: {[m.group(0) for m in fw.find(r'LINK gateway error .*')]}"
        )
    else:
        assert dropped == injected  # each injected fault cost exactly that one sample
    assert not fw.find(r"Traceback"), fw.tail()


# -- a reset loses the RAM ring: counted and reported after boot -----------------------------------


def test_samples_lost_in_a_reset_are_counted_after_boot(tmp_path: Path, mpy_root: Path) -> None:
    state = tmp_path / "rtc-memory"  # stands in for the ESP32's RTC memory (compat.save_state)
    with GatewayProcess.start(tmp_path / "gw") as gw:
        token = gw.add_device("board-reset")
        url = gw.device_url
        gw.kill()  # the gateway is away while the first run samples: nothing is acknowledged
        # a 4 KB ring holds all 30: what is under test is the reset's loss, not the ring's overflow
        first = base_config(url, token, device="board-reset", interval_s=0.02, sample_limit=30,
                            buffer_bytes=4096, state_file=str(state))  # fmt: skip
        with Firmware(tmp_path, first, heap=HEAP_WS, root=mpy_root, name="before") as fw:
            fw.wait_line(r"^APP sample limit reached: 30", timeout=60)
        # stop() is SIGTERM: the process dies like a board reset, the RAM ring with it
        gw.launch()
        second = base_config(url, token, device="board-reset", interval_s=0.02, sample_limit=40,
                             buffer_bytes=4096, exit_when_drained=True, state_file=str(state))  # fmt: skip
        with Firmware(tmp_path, second, heap=HEAP_WS, root=mpy_root, name="after") as fw2:
            assert fw2.wait(120) == 0, fw2.tail()
        stored = len(gw.readings("board-reset"))
    assert fw2.find(r"^BOOT lost 30 unacked samples in the reset")
    taken, dropped = drained(fw2)
    assert (taken, dropped) == (40, 30)
    assert stored == 40  # and the 30 of the first run are in `dropped`: 30 + 40 taken, 40 + 30 accounted
