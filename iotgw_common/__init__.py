"""What the gateway and the device agent share, owned by neither.

The protocol codec and its messages (:mod:`iotgw_common.protocol`), the one version
string, logging set-up, systemd's readiness protocol (``sdnotify``), the clock and the
installer. It imports neither :mod:`gateway` nor :mod:`device_agent` (import-linter
contracts in ``.importlinter`` say so, checked by ``make test``), and needs only the
base dependency (msgspec), so the agent's lean install carries it.
"""

from iotgw_common._version import __version__

__all__ = ["__version__"]
