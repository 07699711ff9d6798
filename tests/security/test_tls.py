"""TLS on both ports, end to end with real processes (docs/security.md).

One site CA and one gateway certificate are made with ``iotgw tls`` itself (the
command line, as a user would); a second CA stands for "someone else's". The
gateway serves ``wss://`` and ``https://`` from that certificate; real agents
(subprocesses, mock pins) connect with the site CA, with the other CA, with a
name the certificate does not carry, and with verification turned off.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli.tls import init_ca, issue
from tests.support.gateway import GatewayProcess, repo_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


class TlsGateway(GatewayProcess):
    """A gateway serving ``wss://`` and ``https://`` with ``cert``/``key`` (``[tls]`` via env)."""

    def __init__(self, directory: Path, cert: Path, key: Path, extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(directory, {"IOTGW_TLS_CERT": str(cert), "IOTGW_TLS_KEY": str(key)})
        self.extra_args = extra_args

    @property
    def device_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/v1/device"

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def launch(self, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--store", str(self.store_path),
               "--host", "127.0.0.1", "--port", "0", "--api-port", "0", *self.extra_args]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, cwd=self.directory, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        line = wait_until(
            lambda: _line(self, " ready: devices connect to "), timeout, "the gateway to be ready"
        )
        assert "wss://127.0.0.1:" in line, line
        self.port = int(line.split("wss://127.0.0.1:", 1)[1].split("/", 1)[0])
        api = _line(self, "operator API at https://127.0.0.1:")
        self.api_port = int(api.split("127.0.0.1:", 1)[1].split(" ", 1)[0])


def _line(gw: GatewayProcess, marker: str) -> str:
    if gw.proc is not None and gw.proc.poll() is not None:
        raise AssertionError(f"gateway exited with {gw.proc.returncode}:\n{gw.log()}")
    return next((line for line in gw.log().splitlines() if marker in line), "")


def _iotgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=repo_env(), capture_output=True,
                          text=True, timeout=60)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The site CA and the gateway's certificate (made by the CLI), and a stranger's CA."""
    root = tmp_path_factory.mktemp("pki")
    made = _iotgw("tls", "init-ca", str(root / "site"))
    assert made.returncode == 0, made.stderr
    made = _iotgw("tls", "issue", "--ca", str(root / "site"), "--name", "gw.test", "--ip", "127.0.0.1",
                  "--no-loopback", "--out", str(root / "gw"))  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert f'cert = "{root / "gw" / "gw.test.pem"}"' in made.stdout  # it says what to put where
    key = root / "gw" / "gw.test.key"
    assert key.stat().st_mode & 0o077 == 0, "the private key must be readable by its owner only"
    init_ca(root / "other")
    return {"ca": root / "site" / "ca.pem", "other_ca": root / "other" / "ca.pem", "site": root / "site",
            "cert": root / "gw" / "gw.test.pem", "key": key}  # fmt: skip


@pytest.fixture(scope="module")
def gateway(pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsGateway]:
    gw = TlsGateway(tmp_path_factory.mktemp("gw"), pki["cert"], pki["key"])
    gw.launch()
    try:
        yield gw
    finally:
        gw.stop()


class Agent:
    """``python -m device_agent run`` (mock pins, one simulated sensor) with extra ``[gateway]`` keys."""

    def __init__(self, gw: TlsGateway, directory: Path, name: str, url: str, gateway_extra: str) -> None:
        self.log_path = directory / f"{name}.log"
        config = directory / f"{name}.toml"
        config.write_text(
            f'[gateway]\nurl = "{url}"\ntoken = "{gw.add_device(name)}"\ndevice = "{name}"\n{gateway_extra}\n'
            f'[agent]\ninterval = 0.2\nbuffer_path = "{directory / name}.sqlite3"\n'
            "backoff_base = 0.1\nbackoff_max = 0.5\n\n"
            '[simulation]\nenabled = true\n\n[[sensors]]\ntype = "cpu_temperature"\n'
        )
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "device_agent", "run", "--config", str(config)], cwd=directory,
                env=repo_env({"GPIOZERO_PIN_FACTORY": "mock"}), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def test_agents_verify_the_gateway(gateway: TlsGateway, pki: dict[str, Path], tmp_path: Path) -> None:
    url = gateway.device_url
    good = Agent(gateway, tmp_path, "pi-good", url, f'ca_file = "{pki["ca"]}"\n')
    stranger = Agent(gateway, tmp_path, "pi-stranger", url, f'ca_file = "{pki["other_ca"]}"\n')
    misnamed = Agent(gateway, tmp_path, "pi-misnamed", url.replace("127.0.0.1", "localhost"),
                      f'ca_file = "{pki["ca"]}"\n')  # fmt: skip
    blind = Agent(gateway, tmp_path, "pi-blind", url, "tls_verify = false\n")
    agents = (good, stranger, misnamed, blind)
    try:
        wait_until(lambda: len(gateway.readings("pi-good")) >= 3, 30, "pi-good's readings over wss://")
        wait_until(lambda: len(gateway.readings("pi-blind")) >= 3, 30, "pi-blind's readings")
        # each refused agent keeps retrying: at least two refusals, each one clear sentence
        wait_until(lambda: stranger.log().count("not signed by a CA") >= 2, 30,
                   "pi-stranger to be refused twice")  # fmt: skip
        wait_until(lambda: misnamed.log().count("does not name this host") >= 2, 30,
                   "pi-misnamed to be refused twice")  # fmt: skip
    finally:
        for agent in agents:
            agent.stop()
    for agent in agents:
        assert "Traceback" not in agent.log(), agent.log()
    assert gateway.readings("pi-stranger") == [] and gateway.readings("pi-misnamed") == []
    assert "certificate verification failed" in stranger.log()
    assert "WITHOUT verifying its certificate" in blind.log()
    assert "WITHOUT verifying" not in good.log()


def test_api_over_https_needs_the_ca(gateway: TlsGateway, pki: dict[str, Path]) -> None:
    url = f"{gateway.api_url}/healthz"
    trusting = ssl.create_default_context(cafile=str(pki["ca"]))
    with urllib.request.urlopen(url, context=trusting, timeout=10) as response:
        assert response.status == 200
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=10)  # the system's CAs
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
    with pytest.raises(OSError):  # nor does it answer in clear text (URLError or a reset)
        urllib.request.urlopen(url.replace("https://", "http://"), timeout=10)


def _served_cert(port: int, ca: Path) -> bytes:
    """The DER certificate a new TLS connection to ``port`` gets (verified against ``ca``)."""
    context = ssl.create_default_context(cafile=str(ca))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname="gw.test") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_sighup_reloads_the_certificate(pki: dict[str, Path], tmp_path: Path) -> None:
    cert, key = tmp_path / "gw.test.pem", tmp_path / "gw.test.key"
    issue(pki["site"], ["gw.test"], [], out_dir=tmp_path)
    gw = TlsGateway(tmp_path / "gw", cert, key)
    gw.launch()
    try:
        first = {port: _served_cert(port, pki["ca"]) for port in (gw.port, gw.api_port)}
        assert first[gw.port] == first[gw.api_port]
        issue(pki["site"], ["gw.test"], [], out_dir=tmp_path, force=True)  # renewal: new key, new cert
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "TLS certificate reloaded" in gw.log(), 15, "the reload to be logged")
        renewed = {port: _served_cert(port, pki["ca"]) for port in (gw.port, gw.api_port)}
        assert renewed[gw.port] != first[gw.port] and renewed[gw.api_port] != first[gw.api_port]
        digest = hashlib.sha256(renewed[gw.port]).hexdigest()
        # a broken pair is refused and the renewed certificate stays in service
        key.write_text("not a key\n")
        gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "not reloaded" in gw.log(), 15, "the failed reload to be logged")
        assert hashlib.sha256(_served_cert(gw.port, pki["ca"])).hexdigest() == digest
        assert gw.proc.poll() is None
    finally:
        gw.stop()


def _serve_output(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """Start ``iotgw serve`` with ``args``, wait until ready (or exit), stop it: (exit code, stderr)."""
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--store", str(tmp_path / "gw.sqlite3"),
           "--port", "0", "--api-port", "0", *args]  # fmt: skip
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=repo_env(env), stdout=stdout, stderr=stderr)
    try:
        wait_until(lambda: proc.poll() is not None or " ready: " in out.read_text(), 30, "serve to start")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return (proc.returncode if " ready: " not in out.read_text() else None), err.read_text()


def test_cleartext_warning_only_beyond_loopback(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    code, stderr = _serve_output(tmp_path / "a", "--host", "0.0.0.0", "--api-host", "0.0.0.0")
    assert code is None, stderr
    assert "SECURITY WARNING: the device plane serves ws:// (clear text) on 0.0.0.0:" in stderr
    assert "SECURITY WARNING: the operator API serves http:// (clear text) on 0.0.0.0:" in stderr
    assert ":0," not in stderr  # the ports really bound, not the 0 asked for
    code, stderr = _serve_output(tmp_path / "b", "--host", "127.0.0.1")
    assert code is None, stderr
    assert "SECURITY WARNING" not in stderr


def test_a_key_that_does_not_match_stops_start_up(pki: dict[str, Path], tmp_path: Path) -> None:
    env = {"IOTGW_TLS_CERT": str(pki["cert"]), "IOTGW_TLS_KEY": str(pki["site"] / "ca.key")}
    code, stderr = _serve_output(tmp_path, "--host", "127.0.0.1", env=env)
    assert code == 2
    assert "does not belong to the certificate" in stderr and "Traceback" not in stderr


def test_unverified_tls_warns_at_every_connect(caplog: pytest.LogCaptureFixture) -> None:
    from device_agent.link import Link, LinkSettings

    link = Link(
        LinkSettings(url="wss://gw.test:8765/v1/device", token="t", tls_verify=False), None, None, None
    )  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="device_agent.link"):
        for _ in range(2):  # the context Link builds for each connection attempt
            context = link._tls_context()
            assert context is not None and context.verify_mode == ssl.CERT_NONE
    assert sum("WITHOUT verifying" in r.getMessage() for r in caplog.records) == 2
    plain = Link(LinkSettings(url="ws://gw.test:8765/v1/device", token="t"), None, None, None)  # type: ignore[arg-type]
    assert plain._tls_context() is None


def test_agent_tls_settings_are_checked(pki: dict[str, Path], tmp_path: Path) -> None:
    from device_agent.config import ConfigError, parse_config

    def gateway(url: str, extra: str) -> str:
        return f'[gateway]\nurl = "{url}"\ntoken = "t"\n{extra}\n'

    (tmp_path / "ca.pem").write_bytes(pki["ca"].read_bytes())
    config = parse_config(gateway("wss://gw.test/v1/device", 'ca_file = "ca.pem"'), base_dir=tmp_path)
    assert config.gateway.ca_file == str(tmp_path / "ca.pem") and config.gateway.tls_verify
    with pytest.raises(ConfigError, match="ws:// "):
        parse_config(gateway("ws://gw.test/v1/device", f'ca_file = "{pki["ca"]}"'))
    with pytest.raises(ConfigError, match=r"gateway\.ca_file: .* does not exist"):
        parse_config(gateway("wss://gw.test/v1/device", 'ca_file = "missing.pem"'), base_dir=tmp_path)
