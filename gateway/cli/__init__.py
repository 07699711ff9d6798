"""The ``iotgw`` command line: serve, device, operator client, watch, demo, firmware, install."""

from gateway.cli.root import main

__all__ = ["main"]
