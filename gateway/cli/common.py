"""What every ``iotgw`` subcommand shares: finding the gateway's settings from the arguments."""

from __future__ import annotations

import argparse

from gateway.config import GatewayConfig, load_config


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """The settings ``--config`` (and the environment) give, with ``--store`` over the store path.

    Raises ``gateway.config.ConfigError`` for an unreadable or invalid file; the caller
    prints it and exits.
    """
    config = load_config(args.config)
    if getattr(args, "store", None):
        config.store.path = args.store
    return config
