"""Gateway settings: a TOML file, overridden by environment variables.

Every setting has one environment name, ``IOTGW_<SECTION>_<KEY>`` in upper case
(``[store] path`` -> ``IOTGW_STORE_PATH``). The README's configuration
reference lists them all; ``iotgw serve --print-config`` shows the result.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from iotgw_common.protocol.messages import DEFAULT_MAX_CLOCK_SKEW_MS

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[float, msgspec.Meta(gt=0)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


def parse_networks(text: str | None, key: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A comma-separated list of networks (``127.0.0.0/8,::1/128``); raises ValueError naming ``key``."""
    try:
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in (text or "").split(",")
            if part.strip()
        )
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


class DeviceSettings(_Section):
    """The device plane: WebSocket server for agents and boards."""

    host: str = "0.0.0.0"
    port: Port = 8765
    ping_interval: Positive = 20.0
    ping_timeout: Positive = 20.0
    open_timeout: Positive = 10.0
    hello_timeout: Positive = 10.0
    max_clock_skew_ms: Annotated[int, msgspec.Meta(ge=0)] = DEFAULT_MAX_CLOCK_SKEW_MS
    max_refused_in_row: Annotated[int, msgspec.Meta(ge=1)] = 20
    sample_interval: Positive | None = None
    """Sampling interval (s) sent to devices in welcome.settings; None leaves their own."""
    # quotas (docs/operations.md, "Quotas"; gateway/device/quotas.py, gateway/device/admission.py)
    max_metric_names: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 256
    """Distinct metric names (keys of sample values and event data) per device; a frame adding
    more is refused with ``too_many_metrics``, frames with known names are still stored."""
    max_event_names: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 64
    """Distinct event names per device; beyond, new names get ``too_many_event_names``."""
    readings_rate: Positive = 10_000.0
    """Samples per second per device, sustained; a faster device is slowed (the gateway stops
    reading its socket until its bucket refills)."""
    readings_burst: Annotated[int, msgspec.Meta(ge=1)] = 20_000
    """Samples a device may send at once before back-pressure; one frame costing more is refused
    (``rate_limited``)."""
    max_connections_per_address: Annotated[int, msgspec.Meta(ge=1)] = 64
    """Open connections per source address (IPv6: per /64) on the device port; beyond: HTTP 429."""
    connection_limit_exempt: str | None = "127.0.0.0/8,::1/128"
    """Comma-separated networks without that limit (loopback; add a reverse proxy's address);
    empty or ``none``: every address is limited."""

    def __post_init__(self) -> None:
        self.exempt_networks()  # raises ValueError naming a bad network

    def exempt_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``connection_limit_exempt`` parsed."""
        return parse_networks(self.connection_limit_exempt, "device.connection_limit_exempt")


class StoreSettings(_Section):
    """The local SQLite store."""

    path: str = "iotgw-data/iotgw.sqlite3"
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    retention_days: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    """Readings older than this are deleted (0 keeps everything)."""
    max_pending_samples: Annotated[int, msgspec.Meta(ge=100)] = 50_000
    """Samples waiting for the next commit before devices are slowed (backpressure); the commit
    in progress holds up to as many again."""
    command_days: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    """Final commands (and their state history) last changed longer ago are deleted (0 keeps all)."""
    dead_letter_days: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    """Dead letters last changed longer ago (resent, or never resent) are deleted (0 keeps all)."""


class InfluxSettings(_Section):
    """Forwarding of readings and events to InfluxDB (docs/influxdb.md)."""

    enabled: bool = False
    api: Literal["v1", "v2"] = "v2"
    """``v2``: /api/v2/write through influxdb-client (InfluxDB 2.x, 3.x, Cloud, compatibles);
    ``v1``: /write (InfluxDB 1.x, as Debian and Raspberry Pi OS ship it)."""
    url: str = "http://127.0.0.1:8086"
    required: bool = False
    """True: refuse to start when the target does not answer or refuses the credentials."""
    measurement: str = "iotgw"
    """Readings go to this measurement, events to ``<measurement>_events``."""
    events: bool = True
    # v2 API (``token`` is also sent, as ``Authorization: Token``, by the v1 writer if set)
    token: str = ""
    org: str = ""
    bucket: str = "iotgw"
    # v1 API
    database: str = "iotgw"
    retention_policy: str = ""
    username: str = ""
    password: str = ""
    # batching and retries
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 5000
    max_delay: Positive = 1.0
    """Longest time (s) a stored reading waits for its batch to fill before it is sent."""
    timeout: Positive = 10.0
    retry_max: Positive = 30.0
    """Longest wait (s) between retries while InfluxDB is unreachable (exponential backoff)."""
    string_newlines: Literal["auto", "literal", "escape"] = "auto"
    """Newlines in string values: ``literal`` (exact with InfluxDB itself), ``escape`` (as ``\\n``,
    for engines that split lines before parsing); ``auto``: literal for v1, escape for v2."""


class ApiSettings(_Section):
    """The operator HTTP API (docs/api.md): JSON, bearer tokens from ``iotgw token add``."""

    enabled: bool = True
    host: str = "127.0.0.1"
    """Loopback by default: set ``0.0.0.0`` to serve other machines (put TLS in front)."""
    port: Port = 8080
    max_wait: Annotated[float, msgspec.Meta(gt=0, le=300)] = 60.0
    """Longest time (s) a request may wait for a command's result before it gets 202."""
    read_connections: Annotated[int, msgspec.Meta(ge=1, le=32)] = 4
    """Store connections for API reads, each used from a worker thread."""
    feed_queue: Annotated[int, msgspec.Meta(ge=10, le=1_000_000)] = 1000
    """Messages a live feed subscriber may fall behind before it is dropped (docs/live.md)."""
    # limits and quotas (docs/api.md, "Limits and quotas"; gateway/operator/api/limits.py, connections.py)
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 65_536
    """Largest request body; a larger ``Content-Length`` gets 413 before anything is read."""
    body_timeout: Positive = 30.0
    """Seconds a request body has, from its first byte read, to arrive whole (else 408)."""
    header_timeout: Positive = 10.0
    """Seconds a connection has to send a whole request head, after connecting or after its
    previous response (else 408 and closed)."""
    keep_alive_timeout: Positive = 5.0
    """Seconds an idle keep-alive connection stays open between requests."""
    max_header_bytes: Annotated[int, msgspec.Meta(ge=4096, le=1_048_576)] = 16_384
    """Largest request head (request line and headers); larger gets 400."""
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000
    """Open connections (live feed WebSockets included); beyond, 503 and closed."""
    max_connections_per_address: Annotated[int, msgspec.Meta(ge=1)] = 64
    """Open connections per source address (IPv6: per /64); beyond, 429 and closed."""
    connection_limit_exempt: str | None = "127.0.0.0/8,::1/128"
    """Comma-separated networks without the per-address limit (loopback; a reverse proxy's
    address); empty or ``none``: every address is limited."""
    feed_subscribers_per_token: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 8
    """Live feed subscriptions one operator token may hold at once; the next is closed 4429."""
    max_open_commands: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 100
    """Commands queued or sent per device; the next is refused, 429 ``too_many_open_commands``."""

    def __post_init__(self) -> None:
        self.exempt_networks()  # raises ValueError naming a bad network

    def exempt_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``connection_limit_exempt`` parsed."""
        return parse_networks(self.connection_limit_exempt, "api.connection_limit_exempt")


class MqttSettings(_Section):
    """The MQTT bridge (docs/mqtt.md): readings, events, presence, commands, Home Assistant discovery."""

    enabled: bool = False
    url: str = "mqtt://127.0.0.1:1883"
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` (TLS, the broker verified against ``ca_file``
    or the system's CAs)."""
    username: str = ""
    password: str = ""
    client_id: str = ""
    """Empty: ``iotgw-<gateway>``. Two gateways must never share one (the broker would kick one)."""
    protocol: Literal["5", "3.1.1"] = "5"
    ca_file: str = ""
    cert_file: str = ""
    """A client certificate (PEM) for brokers that authenticate by certificate; ``key_file`` its key."""
    key_file: str = ""
    insecure: bool = False
    """mqtts:// without checking the broker's host name (never in production)."""
    prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*\Z")] = "iotgw"
    gateway: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}\Z")] = "gateway"
    """This gateway's name in topics: ``<prefix>/<gateway>/...``."""
    qos: Literal[0, 1] = 1
    keepalive: Annotated[int, msgspec.Meta(ge=5, le=3600)] = 30
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 100
    """Messages awaiting PUBACK at once (the broker's Receive Maximum lowers it)."""
    commands: bool = True
    """Accept commands on ``<prefix>/<gateway>/request/<client>/<device>/<command>``."""
    discovery: bool = True
    """Publish Home Assistant discovery configs."""
    discovery_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*\Z")] = (
        "homeassistant"
    )
    ha_client: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}\Z")] = "homeassistant"
    """Recorded as the sender (``mqtt:<ha_client>``) of commands from Home Assistant entities."""
    required: bool = False
    """True: refuse to start when the broker does not answer or refuses the credentials."""
    # the delivery engine (batches, retries), as for InfluxDB
    events: bool = True
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 10_000
    """Rows per batch. A batch is one round trip (publish, wait for every PUBACK, move the cursor), so
    larger batches carry more per second (docs/performance.md, bridge); a replay after a crash resends
    up to one batch."""
    max_delay: Positive = 0.01
    """Time (s) a part-filled batch waits for more rows before it is published; the engine also polls
    the store this often when idle. Shorter than InfluxDB's: MQTT subscribers watch live (bench bridge)."""
    timeout: Positive = 10.0
    """How long a batch may wait for its PUBACKs before it is sent again."""
    retry_max: Positive = 10.0


class FleetSettings(_Section):
    """A fleet of gateways on one broker or broker cluster (docs/scale-out.md); needs ``[mqtt]``.

    The gateway's name in the fleet is ``mqtt.gateway``; every gateway of a fleet must have its own.
    """

    enabled: bool = False
    announce_interval: Positive = 2.0
    """Seconds between presence announcements (which devices this gateway holds); a change is
    announced at once besides."""
    presence_timeout: Positive = 7.0
    """A peer not heard from for this long is taken as gone, with every device it held."""
    registry_interval: Positive = 0.5
    """How often the local registry is checked for changes to replicate (add, remove, rotate)."""


class TlsSettings(_Section):
    """TLS on both ports (docs/security.md): ``wss://`` for devices, ``https://`` for operators.

    Set ``cert`` and ``key`` together (PEM files, e.g. from ``iotgw tls issue``); empty
    serves clear text. One certificate serves both ports, so it must name every host
    name and IP that devices and operators use. SIGHUP reloads both files for new
    connections; a pair that does not load is logged and the old one stays.
    """

    cert: str = ""
    """The certificate chain (PEM, the gateway's certificate first, then any intermediates)."""
    key: str = ""
    """Its private key (PEM, unencrypted; mode 0600, readable by the gateway's user only)."""
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("tls.cert and tls.key must be set together")

    @property
    def enabled(self) -> bool:
        return bool(self.cert)


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["plain", "json"] = "plain"


class GatewayConfig(_Section):
    device: DeviceSettings = msgspec.field(default_factory=DeviceSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    influx: InfluxSettings = msgspec.field(default_factory=InfluxSettings)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    tls: TlsSettings = msgspec.field(default_factory=TlsSettings)
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)
    fleet: FleetSettings = msgspec.field(default_factory=FleetSettings)


_SECTIONS: dict[str, type[_Section]] = {
    "device": DeviceSettings,
    "store": StoreSettings,
    "influx": InfluxSettings,
    "api": ApiSettings,
    "log": LogSettings,
    "tls": TlsSettings,
    "mqtt": MqttSettings,
    "fleet": FleetSettings,
}


class ConfigError(ValueError):
    """The configuration file or an environment override is invalid."""


ENV_PREFIX = "IOTGW_"


def env_names() -> dict[str, str]:
    """Map every environment variable name to the ``section.key`` it overrides."""
    names = {}
    for section, cls in _SECTIONS.items():
        for key in cls.__struct_fields__:
            names[f"{ENV_PREFIX}{section.upper()}_{key.upper()}"] = f"{section}.{key}"
    return names


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read the TOML file (if any), apply ``IOTGW_*`` overrides, validate.

    Raises ConfigError naming the file, the key and the problem.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    environ = os.environ if environ is None else environ
    for name, dotted in env_names().items():
        if name in environ:
            section, key = dotted.split(".")
            raw.setdefault(section, {})[key] = _env_value(environ[name])
    try:
        return msgspec.convert(raw, GatewayConfig, strict=False)
    except msgspec.ValidationError as exc:
        where = f"config file {path}" if path else "configuration"
        raise ConfigError(f"{where}: {exc}") from None


def _env_value(text: str) -> Any:
    """Environment values are strings; ``none`` means unset, the rest msgspec converts."""
    return None if text.strip().lower() in ("", "none", "null") else text
