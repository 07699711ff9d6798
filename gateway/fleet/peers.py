"""Who holds which device in the fleet, from the peers' presence announcements. Sans-I/O.

Each peer gateway announces the devices it holds every ``announce_interval`` and at once
after a change (gateway/fleet/wire.py, ``Presence``). A peer is forgotten, with every device
it held, when it says it is leaving, when its status says "offline" (its last will, if it
died), or when nothing was heard from it for ``timeout_ms`` (the broker lost its will, a
partition). When two peers claim one device (it moved, and the old holder has not said so
yet), the newer session (``since_ms``) wins.

The caller feeds messages and the clock in and reads :meth:`holder`; :meth:`update`,
:meth:`forget` and :meth:`expire` return the device names whose holder may have changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.fleet.wire import DeviceHeld, Presence

__all__ = ["PeerTable"]


@dataclass(slots=True)
class _Peer:
    heard_ms: int
    devices: dict[str, DeviceHeld] = field(default_factory=dict)


class PeerTable:
    """The fleet's presence as this gateway sees it; ``PeerTable(timeout_ms=7000)``."""

    def __init__(self, *, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self._peers: dict[str, _Peer] = {}

    def update(self, presence: Presence, now_ms: int) -> set[str]:
        """A peer's announcement; the names whose holder may have changed."""
        if presence.leaving:
            return self.forget(presence.gateway)
        peer = self._peers.setdefault(presence.gateway, _Peer(now_ms))
        peer.heard_ms = now_ms
        before = peer.devices
        peer.devices = {d.name: d for d in presence.devices}
        return {n for n in before.keys() | peer.devices.keys() if before.get(n) != peer.devices.get(n)}

    def forget(self, gateway: str) -> set[str]:
        """The peer is gone; the names it held."""
        peer = self._peers.pop(gateway, None)
        return set() if peer is None else set(peer.devices)

    def expire(self, now_ms: int) -> tuple[list[str], set[str]]:
        """Forget peers silent for ``timeout_ms``: (their names, the device names they held)."""
        gone = [g for g, p in self._peers.items() if now_ms - p.heard_ms > self.timeout_ms]
        names: set[str] = set()
        for gateway in gone:
            names |= self.forget(gateway)
        return gone, names

    def clear(self) -> set[str]:
        """Forget everyone (this gateway lost the broker); every name that was held."""
        names: set[str] = set()
        for gateway in list(self._peers):
            names |= self.forget(gateway)
        return names

    def holder(self, name: str) -> tuple[str, DeviceHeld] | None:
        """The peer holding ``name`` and its claim (the newest session), or None."""
        best: tuple[str, DeviceHeld] | None = None
        for gateway, peer in self._peers.items():
            held = peer.devices.get(name)
            if held is not None and (best is None or (held.since_ms, gateway) > (best[1].since_ms, best[0])):
                best = (gateway, held)
        return best

    @property
    def gateways(self) -> list[str]:
        return sorted(self._peers)

    def held(self) -> dict[str, str]:
        """Device name -> the peer holding it, for every device a peer holds."""
        out: dict[str, str] = {}
        for name in {n for p in self._peers.values() for n in p.devices}:
            found = self.holder(name)
            if found is not None:
                out[name] = found[0]
        return out
