"""Connections per source address on the device port (docs/operations.md, "Quotas").

Every TCP connection is counted against its source address from the moment it
is accepted until it is closed, whether or not its handshake completes, so a
client trickling handshakes counts too. Addresses are counted as they are, except:

* an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) counts as its IPv4 address;
* an IPv6 address counts as its /64, since a single host usually holds a whole /64;
* addresses in ``device.connection_limit_exempt`` (loopback by default, and a
  reverse proxy's address where one is used) are not limited.

A connection beyond ``device.max_connections_per_address`` gets HTTP 429 with a
body saying why, at its handshake, before its token is looked up. One beyond
twice the limit is closed at once, without reading its request: nothing it
could send would be answered otherwise, and it would hold a socket for
``open_timeout``.

``AddressLimiter`` is the counter, without I/O; ``counted_connection`` makes the
``websockets`` connection class that drives it (``serve(create_connection=...)``).
"""

from __future__ import annotations

import asyncio
import http
import ipaddress
import logging
from collections.abc import Iterable

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

from gateway.device.leaving import LeavesInBackground

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_key(host: str) -> str:
    """What connections from ``host`` are counted as: the address, or an IPv6 address's /64."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class AddressLimiter:
    """Open connections per source address, at most ``limit`` each (exempt networks aside).

    Call ``acquire(host)`` once per accepted connection and, with what it
    returned, ``release(key)`` exactly once when the connection is gone.
    """

    def __init__(self, limit: int, exempt: Iterable[Network] = ()) -> None:
        self.limit = limit
        self.exempt = tuple(exempt)
        self._open: dict[str, int] = {}
        self.refused = 0
        """Connections refused so far (429 or closed at once)."""

    def acquire(self, host: str | None) -> tuple[str | None, int]:
        """Count a new connection from ``host``: (key to release, or None if not counted; its number).

        The number is 0 for an exempt or unknown address; above ``limit`` the
        connection must be refused.
        """
        if host is None or self._exempt(host):
            return None, 0
        key = address_key(host)
        count = self._open.get(key, 0) + 1
        self._open[key] = count
        return key, count

    def release(self, key: str | None) -> None:
        """A connection counted under ``key`` closed."""
        if key is None:
            return
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def open_from(self, host: str) -> int:
        """Connections counted now for ``host``'s key."""
        return self._open.get(address_key(host), 0)

    def _exempt(self, host: str) -> bool:
        if not self.exempt:
            return False
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.exempt)


def counted_connection(limiter: AddressLimiter) -> type[ServerConnection]:
    """A ``ServerConnection`` class that counts itself in ``limiter`` from accept to close.

    It says goodbye in the loop's background lane (``gateway/device/leaving.py``).

    Its ``over_quota`` is True when the address had ``limiter.limit`` connections
    already: the ``process_request`` hook must then answer ``too_many_connections``.
    """

    class CountedConnection(LeavesInBackground):
        over_quota = False
        _quota_key: str | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            host = peer[0] if isinstance(peer, tuple) and peer else None
            self._quota_key, number = limiter.acquire(host)
            if number > limiter.limit:
                self.over_quota = True
                limiter.refused += 1
                if number == limiter.limit + 1:  # once per crossing, not per refused connection
                    log.warning(
                        "device port: %s has %d connections open, the limit is %d: refusing more (429)",
                        host, number - 1, limiter.limit,
                    )  # fmt: skip
                if number > 2 * limiter.limit and isinstance(transport, asyncio.Transport):
                    transport.abort()  # connection_lost follows and releases the count

        def connection_lost(self, exc: Exception | None) -> None:
            key, self._quota_key = self._quota_key, None
            limiter.release(key)
            super().connection_lost(exc)

    return CountedConnection


def too_many_connections(connection: ServerConnection, limit: int) -> Response:
    """The HTTP 429 answer to a handshake over the per-address limit."""
    host = connection.remote_address[0] if connection.remote_address else "?"
    response = connection.respond(
        http.HTTPStatus.TOO_MANY_REQUESTS,
        f"too many connections from {host}: at most {limit} may be open at once from one address "
        "(device.max_connections_per_address); close some and retry\n",
    )
    response.headers["Retry-After"] = "30"
    return response


__all__ = ["AddressLimiter", "address_key", "counted_connection", "too_many_connections"]
