"""Command handling of the agent: a registry of named handlers, answered with ``result``.

Commands are specified by a later issue; for now the registry is empty, so every
``command`` is answered ``ok=false`` with ``unknown command: NAME``. To add one::

    registry.register("ping", handler, description="answer pong")

where ``handler(args) -> value`` is an async callable; an exception it raises
becomes ``ok=false`` with the exception's message. Registered commands are
declared in ``hello.commands``; the gateway sends only declared ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.protocol import Command, CommandInfo, Result
from gateway.protocol.messages import MAX_STRING_LENGTH

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class CommandRegistry:
    """Named command handlers; :meth:`handle` turns a ``command`` into its ``result``."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Handler, CommandInfo]] = {}

    def register(
        self, name: str, handler: Handler, *, description: str = "", args: dict[str, str] | None = None
    ) -> None:
        """Accept command ``name``; ``args`` maps argument names to a short description."""
        self._handlers[name] = (handler, CommandInfo(name=name, description=description, args=args or {}))

    def declare(self) -> list[CommandInfo]:
        """What to put in ``hello.commands``."""
        return [info for _, info in self._handlers.values()]

    async def handle(self, command: Command, *, now_ms: int | None = None) -> Result:
        """Run ``command`` and return the ``result`` to send; never raises (but CancelledError)."""
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        if command.deadline and now > command.deadline:
            return Result(id=command.id, ok=False, error="deadline passed before the command ran")
        entry = self._handlers.get(command.name)
        if entry is None:
            log.info("command %s %r refused: unknown command", command.id, command.name)
            return Result(id=command.id, ok=False, error=_short(f"unknown command: {command.name}"))
        handler, _ = entry
        try:
            value = await handler(command.args)
        except Exception as exc:
            log.warning("command %s %r failed: %s", command.id, command.name, exc)
            return Result(id=command.id, ok=False, error=_short(str(exc) or type(exc).__name__))
        return Result(id=command.id, ok=True, value=value)


def _short(text: str) -> str:
    return text[:MAX_STRING_LENGTH]


__all__ = ["CommandRegistry", "Handler"]
