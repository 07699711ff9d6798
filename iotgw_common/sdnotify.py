"""systemd readiness and watchdog notifications (``sd_notify``), stdlib only.

Under a ``Type=notify`` unit systemd passes ``NOTIFY_SOCKET`` (a datagram
socket path, or ``@name`` for the abstract namespace) and, with
``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). Outside systemd
both are absent and every call here is a no-op, so callers need no checks::

    notify("READY=1", status="devices connect to ws://...")   # once serving
    task = asyncio.create_task(watchdog_loop())              # keeps WatchdogSec= fed
    ...
    notify("STOPPING=1")

The watchdog is fed from the event loop, so it proves the loop still runs:
a loop blocked for longer than ``WatchdogSec`` gets the process restarted.
Protocol: sd_notify(3); the gateway and the agent share this module (standard library only).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

_warned = False


def notify(state: str, *, status: str | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``READY=1``) and an optional ``STATUS=`` line; True if sent.

    Never raises: a failure is logged once (the service keeps running; systemd
    will time it out if readiness was never received).
    """
    global _warned
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":  # abstract namespace
        address = "\0" + address[1:]
    message = state if status is None else f"{state}\nSTATUS={status}"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        if not _warned:
            _warned = True
            log.warning("cannot notify systemd at %s: %s", env.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (a third of ``WatchdogSec``), or None when not enabled."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        pid = int(env.get("WATCHDOG_PID", "0") or 0)
    except ValueError:
        return None
    if usec <= 0 or (pid and pid != os.getpid()):
        return None
    return usec / 1e6 / 3


async def watchdog_loop(healthy: Callable[[], bool] | None = None) -> None:
    """Send ``WATCHDOG=1`` every third of ``WatchdogSec`` while ``healthy()`` holds.

    Returns at once when the watchdog is not enabled; otherwise runs until cancelled.
    """
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        if healthy is None or healthy():
            notify("WATCHDOG=1")
        await asyncio.sleep(interval)


__all__ = ["notify", "watchdog_interval", "watchdog_loop"]
