"""What the command service accepts: its limits, its errors, what a device connection must offer.

The service (``gateway.operator.commands``) calls :func:`check_submission` before it logs a new
command; the API (``gateway.operator.api.routes``) turns each error into its HTTP answer:
:class:`TooManyOpenCommands` 429 with ``code``, another :class:`CommandError` 422,
:class:`UnknownCommand` 404/409. The limits are documented in docs/commands.md and, with their
settings, in docs/api.md ("Limits and quotas").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from iotgw_common.protocol import Command

if TYPE_CHECKING:
    from gateway.store.registry import DeviceRecord

MAX_ARGS_BYTES = 4096
"""Longest encoded ``args`` object the gateway sends (boards have little memory)."""
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_TTL_S = 60.0
MAX_TIMEOUT_S = 300.0
MAX_TTL_S = 7 * 86400.0
DEFAULT_MAX_OPEN_PER_DEVICE = 100
"""Commands queued or sent per device before ``submit`` refuses (``api.max_open_commands``)."""


class CommandError(ValueError):
    """A command cannot be submitted; ``declared`` lists what the device accepts, when relevant."""

    def __init__(self, detail: str, declared: list[str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.declared = declared


class TooManyOpenCommands(CommandError):
    """The device already has its quota of open (queued or sent) commands; ``code`` names it."""

    code = "too_many_open_commands"


class UnknownCommand(LookupError):
    """No command with that id."""


class CommandSession(Protocol):
    """What the service needs of a device's connection (``gateway.device.server.DeviceSession``).

    The same object is passed to every hook for one connection; the service compares
    sessions by identity.
    """

    @property
    def record(self) -> DeviceRecord:
        """The device this connection authenticated as."""

    @property
    def peer(self) -> str:
        """The remote address, for the ``sent`` history entry."""

    async def send_command(self, command: Command) -> None:
        """Send one ``command`` frame; raise (``ConnectionClosed``, mostly) if it cannot."""


def check_submission(
    device: DeviceRecord,
    name: str,
    args: dict[str, Any],
    *,
    declared: frozenset[str] | None,
    open_now: int,
    max_open: int,
) -> None:
    """Raise the error a new command ``name(args)`` for ``device`` deserves, if any.

    ``declared``: what the device accepts (None: never seen, anything goes); ``open_now``: its
    commands queued or sent now; ``max_open``: the most it may have.
    """
    if open_now >= max_open:
        raise TooManyOpenCommands(
            f"device {device.name!r} has {open_now} commands queued or sent, the most it may have "
            f"(api.max_open_commands); wait for some to finish, or cancel queued ones"
        )
    if declared is not None and name not in declared:
        raise CommandError(
            f"device {device.name!r} does not accept command {name!r}; it declares: "
            + (", ".join(sorted(declared)) or "no commands"),
            sorted(declared),
        )
    if len(msgspec.json.encode(args)) > MAX_ARGS_BYTES:
        raise CommandError(f"args are larger than {MAX_ARGS_BYTES} bytes encoded")


__all__ = [
    "DEFAULT_MAX_OPEN_PER_DEVICE",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_TTL_S",
    "MAX_ARGS_BYTES",
    "MAX_TIMEOUT_S",
    "MAX_TTL_S",
    "CommandError",
    "CommandSession",
    "TooManyOpenCommands",
    "UnknownCommand",
    "check_submission",
]
