"""What every ``iotgw`` subcommand shares: finding the gateway's settings from the arguments."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.integrations.influx.lineprotocol import LineError, check_measurement


def load_checked_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """``load_config`` plus the checks that need a plane's rules (the config module is a leaf).

    Today that is ``influx.measurement`` against the line-protocol name rules, so a bad name
    fails when the file is read, not when the first batch is written. Raises ConfigError.
    """
    config = load_config(path, environ)
    try:
        check_measurement(config.influx.measurement)
    except LineError as exc:
        where = f"config file {path}" if path else "configuration"
        raise ConfigError(f"{where}: influx.measurement: {exc}") from None
    return config


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """The settings ``--config`` (and the environment) give, with ``--store`` over the store path.

    Raises ``gateway.config.ConfigError`` for an unreadable or invalid file; the caller
    prints it and exits.
    """
    config = load_checked_config(args.config)
    if getattr(args, "store", None):
        config.store.path = args.store
    return config
