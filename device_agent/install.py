"""``iotgw-agent install`` / ``uninstall``: the agent as a systemd service on a Raspberry Pi.

The installer itself (plan, executor, unit text) is shared with the gateway in
:mod:`iotgw_common.install`, which imports only the standard library. This module adds what
is the agent's own: the ``--gateway``/``--token``/``--device``/``--config`` options and
the config file they produce::

    sudo iotgw-agent install --gateway ws://gateway.local:8765/v1/device --token iotgw_d_...
    sudo iotgw-agent install --config my-sensors.toml --token iotgw_d_...   # sensors from a file
    sudo iotgw-agent uninstall

Without ``--config`` the config reads the Pi's own health (CPU temperature, load, disk
use); add ``[[sensors]]`` to ``/etc/iotgw/agent.toml`` and restart the service.
"""

from __future__ import annotations

import argparse
import json
import math
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from device_agent.config import ConfigError, parse_config
from iotgw_common.install import AGENT, InstallError, Layout, add_commands

DEVICE_PATH = "/v1/device"

_HEADER = """\
# iotgw-agent configuration, written by `iotgw-agent install` (every key: device_agent/config.py,
# sensors and actuators: device_agent/hardware_config.py).
# The service reads it at start: `sudo systemctl restart iotgw-agent` after a change, and
# `sudo iotgw-agent check --config /etc/iotgw/agent.toml` reads every sensor once.
"""

DEFAULT_SENSORS: list[dict[str, Any]] = [
    {"type": "cpu_temperature"},
    {"type": "load_average"},
    {"type": "disk_usage", "path": "/"},
]


def add_install_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``install`` and ``uninstall`` to the ``iotgw-agent`` command line."""
    add_commands(commands, AGENT, _options, config_text)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", metavar="URL", help="the gateway's device URL, ws://HOST:8765/v1/device")
    parser.add_argument("--token", help="the device token `iotgw device add NAME` printed")
    parser.add_argument("--device", metavar="NAME", help="the device name (optional: the token names it)")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="an agent config to install (its sensors); --gateway/--token/--device override its [gateway]",
    )


def config_text(args: argparse.Namespace, layout: Layout, existing: Path | None) -> str:
    """The config file to install; an existing one is kept unless ``--overwrite-config``."""
    overrides = {
        key: value
        for key, value in (("url", args.gateway), ("token", args.token), ("device", args.device))
        if value
    }
    base: str | None = None
    if args.config:
        try:
            base = Path(args.config).read_text(encoding="utf-8")
        except OSError as exc:
            raise InstallError(f"cannot read --config {args.config}: {exc.strerror or exc}") from None
    elif existing is not None:
        base = existing.read_text(encoding="utf-8")  # e.g. a new --token for the installed config
        if not overrides:
            return base
    if args.config and not overrides:
        assert base is not None
        _validate(base, args.config)
        return base
    if base is None and not {"url", "token"} <= overrides.keys():
        raise InstallError("a first install needs --gateway URL and --token TOKEN (or --config FILE)")
    doc: dict[str, Any] = tomllib.loads(base) if base is not None else {"sensors": DEFAULT_SENSORS}
    gateway = doc.setdefault("gateway", {})
    if "url" in overrides:
        overrides["url"] = device_url(overrides["url"])
    gateway.update(overrides)
    agent = doc.setdefault("agent", {})
    agent.setdefault("buffer_path", str(layout.state_path(AGENT)))
    header = _HEADER + (f"# Sensors from {Path(args.config).resolve()}.\n" if args.config else "")
    text = header + "\n" + dump_toml(doc)
    _validate(text, args.config or "the generated config")
    return text


def device_url(url: str) -> str:
    """``ws://host:8765`` -> ``ws://host:8765/v1/device``; http(s) becomes ws(s)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else DEVICE_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, parts.fragment))


def _validate(text: str, where: str) -> None:
    try:
        parse_config(text, env={})
    except ConfigError as exc:
        raise InstallError(f"{where}: {exc}") from None


def dump_toml(doc: dict[str, Any]) -> str:
    """TOML for the agent config's shapes: tables and arrays of tables holding scalars."""
    lines: list[str] = []
    for key, value in doc.items():
        if not isinstance(value, dict | list) or (isinstance(value, list) and not _is_tables(value)):
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in doc.items():
        if isinstance(value, dict):
            lines += ["", f"[{_key(key)}]", *_pairs(value, key)]
    for key, value in doc.items():
        if isinstance(value, list) and _is_tables(value):
            for table in value:
                lines += ["", f"[[{_key(key)}]]", *_pairs(table, key)]
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_tables(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(item, dict) for item in value)


def _pairs(table: dict[str, Any], where: str) -> list[str]:
    out = []
    for key, value in table.items():
        if isinstance(value, dict) or (isinstance(value, list) and _is_tables(value)):
            raise InstallError(f"[{where}] {key}: nested tables are not supported here; use --config as is")
        out.append(f"{_key(key)} = {_value(value)}")
    return out


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string (raw non-ASCII; DEL must be escaped in TOML).
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise InstallError(f"cannot write {value!r} as TOML")


__all__ = ["DEFAULT_SENSORS", "add_install_commands", "config_text", "device_url", "dump_toml"]
