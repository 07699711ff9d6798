"""Gateway settings: a TOML file, overridden by environment variables.

Every setting has one environment name, ``IOTGW_<SECTION>_<KEY>`` in upper case
(``[store] path`` -> ``IOTGW_STORE_PATH``). The README's configuration
reference lists them all; ``iotgw serve --print-config`` shows the result.
"""

from __future__ import annotations

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


class StoreSettings(_Section):
    """The local SQLite store."""

    path: str = "iotgw-data/iotgw.sqlite3"
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    retention_days: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    """Readings older than this are deleted (0 keeps everything)."""
    max_pending_samples: Annotated[int, msgspec.Meta(ge=100)] = 50_000
    """Samples waiting for the next commit before devices are slowed (backpressure)."""


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


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["plain", "json"] = "plain"


class GatewayConfig(_Section):
    device: DeviceSettings = msgspec.field(default_factory=DeviceSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    influx: InfluxSettings = msgspec.field(default_factory=InfluxSettings)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)


_SECTIONS: dict[str, type[_Section]] = {
    "device": DeviceSettings,
    "store": StoreSettings,
    "influx": InfluxSettings,
    "api": ApiSettings,
    "log": LogSettings,
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
