"""What every ``iotgw`` subcommand shares: finding the running gateway's settings, the same way.

Where the settings come from, first match wins (docs/cli.md, "Which gateway"):

1. ``--config FILE``;
2. ``IOTGW_CONFIG`` (a path);
3. ``/etc/iotgw/gateway.toml``, what ``iotgw install`` writes, if it exists;
4. the demo's own config, ``demo-data/gateway.toml`` in the current directory (``make demo`` in
   the checkout writes it with the ports it really bound); ``serve`` and ``demo`` skip this
   step: they *are* the gateway;
5. the defaults.

The ``IOTGW_<SECTION>_<KEY>`` overrides apply on top, and ``--store`` over the store path. When
the source was not named (steps 3-5), the commands say on stderr which store or API they use,
so nobody works on a second, empty database by accident. Commands other than ``serve`` and
``demo`` never create a store: :func:`open_store` fails with a hint instead (the one exception:
``device add`` and ``token add`` with a new path named by ``--store``, which is deliberate).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sqlite3
import sys
from collections.abc import Mapping
from pathlib import Path

from gateway import store
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.integrations.influx.lineprotocol import LineError, check_measurement

#: What ``iotgw install`` writes (iotgw_common/install): the installed gateway's settings.
INSTALLED_CONFIG = Path("/etc/iotgw/gateway.toml")
#: What ``iotgw demo`` writes beside its store (relative to where the demo runs).
DEMO_CONFIG = Path("demo-data") / "gateway.toml"
#: The API a client uses when nothing names one.
DEFAULT_API = "http://127.0.0.1:8080"

EXPLICIT = ("--config", "IOTGW_CONFIG")


@dataclasses.dataclass(frozen=True)
class ConfigSource:
    """Which config file (or none) the settings came from, and why that one."""

    path: Path | None
    origin: str
    """``--config``, ``IOTGW_CONFIG``, ``installed``, ``demo`` or ``defaults``."""

    @property
    def explicit(self) -> bool:
        return self.origin in EXPLICIT

    def describe(self) -> str:
        """``demo-data/gateway.toml (the demo's config)`` and the like, for notes and errors."""
        if self.path is None:
            return f"the defaults (no --config, IOTGW_CONFIG, {INSTALLED_CONFIG} or {DEMO_CONFIG})"
        what = {"installed": "the installed gateway's config", "demo": "the demo's config"}
        return f"{_shown(self.path)} ({what.get(self.origin, self.origin)})"


def find_config(
    given: str | Path | None,
    environ: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
    installed: Path = INSTALLED_CONFIG,
    demo: bool = True,
) -> ConfigSource:
    """Apply the search order of the module docstring; ``demo=False`` skips the demo's config.

    Only looks: an explicit path that does not exist is returned as it is, and
    ``load_checked_config`` then fails naming it.
    """
    environ = os.environ if environ is None else environ
    if given:
        return ConfigSource(Path(given), "--config")
    if environ.get("IOTGW_CONFIG"):
        return ConfigSource(Path(environ["IOTGW_CONFIG"]), "IOTGW_CONFIG")
    if installed.is_file():
        return ConfigSource(installed, "installed")
    if demo:
        here = Path.cwd() if cwd is None else cwd
        if (here / DEMO_CONFIG).is_file():
            return ConfigSource(here / DEMO_CONFIG, "demo")
    return ConfigSource(None, "defaults")


def load_checked_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """``load_config`` plus the checks that need a plane's rules (the config module is a leaf).

    Today that is ``influx.measurement`` against the line-protocol name rules, so a bad name
    fails when the file is read, not when the first batch is written. An unreadable file (no
    permission, a directory, not UTF-8) is a ConfigError too. Raises ConfigError.
    """
    try:
        config = load_config(path, environ)
    except (PermissionError, IsADirectoryError) as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc.strerror} (check its owner and mode)"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text (is it the right file?)") from None
    try:
        check_measurement(config.influx.measurement)
    except LineError as exc:
        where = f"config file {path}" if path else "configuration"
        raise ConfigError(f"{where}: influx.measurement: {exc}") from None
    return config


def source_of(args: argparse.Namespace, *, demo: bool = True) -> ConfigSource:
    """The config source for these arguments (cached on ``args``)."""
    found: ConfigSource | None = getattr(args, "_config_source", None)
    if found is None:
        found = find_config(getattr(args, "config", None), demo=demo)
        args._config_source = found
    return found


def config_from_args(args: argparse.Namespace, *, demo: bool = True) -> GatewayConfig:
    """The settings the search order finds (and the environment), with ``--store`` over the store path.

    Raises ``gateway.config.ConfigError`` for an unreadable or invalid file; the caller
    prints it and exits. ``demo=False`` (``serve``) skips the demo's config.
    """
    found = source_of(args, demo=demo)
    config = load_checked_config(found.path)
    if getattr(args, "store", None):
        config.store.path = args.store
    return config


def store_is_named(args: argparse.Namespace) -> bool:
    """True when the store path was named: ``--store``, ``IOTGW_STORE_PATH`` or an explicit config."""
    return bool(
        getattr(args, "store", None) or os.environ.get("IOTGW_STORE_PATH") or source_of(args).explicit
    )


def note_store(args: argparse.Namespace, config: GatewayConfig) -> None:
    """Say on stderr which store a command uses, when nothing on its command line named it."""
    if not store_is_named(args):
        note(f"using the store {_shown(Path(config.store.path))} from {source_of(args).describe()}")


def open_store(args: argparse.Namespace, config: GatewayConfig, *, adds: bool = False) -> sqlite3.Connection:
    """Open the store the settings name; never create one the user did not name with ``--store``.

    ``adds``: the command adds something (a device, an operator), so a store named with
    ``--store`` may be new (provisioning before the gateway's first start); a command that
    only reads or changes what exists never creates one. A missing store raises
    FileNotFoundError with a hint (which config was used and how to point at the running
    gateway). The caller owns the connection and must close it.
    """
    path = Path(config.store.path)
    if not path.exists():
        if adds and getattr(args, "store", None):
            note(f"creating a new, empty store at {path} (--store names a file that does not exist)")
            return store.connect(path, synchronous=config.store.synchronous)
        raise FileNotFoundError(missing_store_hint(path, source_of(args)))
    note_store(args, config)
    return store.connect(path, synchronous=config.store.synchronous, create=False)


def missing_store_hint(path: Path, found: ConfigSource) -> str:
    """The error for a store that is not there, saying where the path came from and what to do."""
    return (
        f"no store at {_shown(path)}: the path comes from {found.describe()}. "
        "Is the gateway running with another config? Name it with --config FILE or IOTGW_CONFIG "
        "(the demo prints its own in its banner), or the store with --store PATH; "
        "`iotgw serve` creates a new store"
    )


def api_url(args: argparse.Namespace) -> str:
    """The operator API URL: ``--api``, else ``IOTGW_API_URL``, else the found config's ``[api]``.

    A config that disables the API, or cannot be read, leaves the default (and a note).
    """
    given = getattr(args, "api", None) or os.environ.get("IOTGW_API_URL")
    if given:
        return str(given)
    found = source_of(args)
    if found.path is None:
        return DEFAULT_API
    try:
        config = load_checked_config(found.path)
    except ConfigError as exc:
        note(f"{exc}; trying {DEFAULT_API}")
        return DEFAULT_API
    host = config.api.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    tls = getattr(config, "tls", None)
    scheme = "https" if tls is not None and tls.enabled else "http"
    url = f"{scheme}://{host}:{config.api.port}"
    if not found.explicit:
        note(f"using the operator API at {url} from {found.describe()}")
    return url


def note(text: str) -> None:
    """One ``iotgw: note: ...`` line on stderr (never on stdout, which scripts parse)."""
    print(f"iotgw: note: {text}", file=sys.stderr, flush=True)


def _shown(path: Path) -> str:
    """A path as short as it can be said: relative when under the current directory."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def free_loopback_port() -> int:
    """A port on 127.0.0.1 the kernel says is free now, for a child service the demo starts (a hint
    only, as ``port_free``: the child reports it if someone took it meanwhile)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (a hint only: someone may take it next)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
