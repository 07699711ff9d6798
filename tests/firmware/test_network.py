"""The firmware finds the gateway by name without blocking its sampler (docs/firmware.md, "Names").

A real DNS server (dnsmasq, on a free loopback port) answers for the gateway's name; a UDP
socket that never answers plays a DNS server that is down.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.firmware.mp import Firmware, base_config
from tests.support.gateway import GatewayProcess


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def dnsmasq(tmp_path: Path, name: str, address: str) -> Iterator[str]:
    """dnsmasq answering ``name`` with ``address`` on 127.0.0.1; yields "127.0.0.1:port"."""
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not Path(binary).is_file():
        pytest.fail("dnsmasq missing: apt install dnsmasq-base (.ci/system-deps.sh)", pytrace=False)
    port = free_udp_port()
    log = tmp_path / "dnsmasq.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [binary, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
             "--listen-address=127.0.0.1", f"--port={port}", f"--address=/{name}/{address}",
             "--log-queries", "--log-facility=-", "--pid-file", "--user=root"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_gateway_found_by_name_through_a_real_dns_server(tmp_path: Path) -> None:
    with GatewayProcess.start(tmp_path / "gw") as gw:
        token = gw.add_device("board-dns")
        with dnsmasq(tmp_path, "gw.iotgw.test", "127.0.0.1") as server:
            config = base_config(f"ws://gw.iotgw.test:{gw.port}/v1/device", token, device="board-dns",
                                 dns=server, interval_s=0.02, sample_limit=50, exit_when_drained=True)  # fmt: skip
            with Firmware(tmp_path, config) as fw:
                assert fw.wait(60) == 0, fw.tail()
        assert len(gw.readings("board-dns")) == 50
    assert "query[A] gw.iotgw.test" in (tmp_path / "dnsmasq.log").read_text()


def test_a_dns_server_that_never_answers_does_not_stop_the_sampler(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        server = f"127.0.0.1:{silent.getsockname()[1]}"
        config = base_config("ws://gw.iotgw.test:8765/v1/device", dns=server, interval_s=0.02)
        with Firmware(tmp_path, config) as fw:
            fw.wait_line(r"^LINK down: .*DNS: no answer for gw.iotgw.test", timeout=60)
            lines = fw.snapshot()
        silent.settimeout(5)
        assert silent.recv(512)  # the firmware did ask
    start = next(i for i, line in enumerate(lines) if line.startswith("LINK connecting"))
    end = next(i for i, line in enumerate(lines) if "DNS: no answer" in line)
    sampled = [line for line in lines[start:end] if line.startswith("SAMPLE ")]
    # 10 s of DNS retries at 20 ms a sample: hundreds; a blocking resolver would allow none.
    assert len(sampled) >= 50, len(sampled)
