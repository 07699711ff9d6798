"""The MQTT topic scheme (docs/mqtt.md, "Topics"): every topic the bridge publishes or reads.

All topics live under ``<prefix>/<gateway>/`` (``mqtt.prefix``, default ``iotgw``, and
``mqtt.gateway``), so several gateways share one broker without clashing and one ACL
line can grant an integration a whole gateway::

    <base>/status                                 retained, "online" / "offline" (last will)
    <base>/device/<device>/readings               readings, JSON, QoS 1, not retained
    <base>/device/<device>/state                  retained: the latest value of every metric
    <base>/device/<device>/event/<name>           events, JSON, QoS 1
    <base>/device/<device>/availability           retained, "online" / "offline"
    <base>/device/<device>/output/<actuator>      retained: an output's state after a result
    <base>/request/<client>/<device>/<command>    commands in (JSON); <client> is the sender
    <base>/reply/<client>/<device>/<command>      results out, when the request named no reply topic
    <base>/ha/<device>/<entity>/set               Home Assistant entities' commands

Device names, metric and command names are restricted by the device protocol
(``[A-Za-z0-9_.:-]``), so they never contain ``/``, ``+`` or ``#``.
Pure functions: no I/O, no broker.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CommandTopic", "HaTopic", "Topics"]


@dataclass(frozen=True, slots=True)
class CommandTopic:
    """A parsed request topic: who asks, which device, which command."""

    client: str
    device: str
    command: str


@dataclass(frozen=True, slots=True)
class HaTopic:
    """A parsed Home Assistant entity command topic."""

    device: str
    entity: str


class Topics:
    """Builds and parses the topics of one gateway; ``Topics("iotgw", "gw1")``."""

    def __init__(self, prefix: str, gateway: str) -> None:
        self.prefix = prefix
        self.gateway = gateway
        self.base = f"{prefix}/{gateway}"
        self.status = f"{self.base}/status"
        self.requests = f"{self.base}/request/+/+/+"
        """Subscription for commands."""
        self.ha_commands = f"{self.base}/ha/+/+/set"
        """Subscription for Home Assistant entity commands."""
        self._request_root = f"{self.base}/request/"
        self._ha_root = f"{self.base}/ha/"

    def device(self, device: str) -> str:
        return f"{self.base}/device/{device}"

    def readings(self, device: str) -> str:
        return f"{self.base}/device/{device}/readings"

    def state(self, device: str) -> str:
        return f"{self.base}/device/{device}/state"

    def event(self, device: str, name: str) -> str:
        return f"{self.base}/device/{device}/event/{name}"

    def availability(self, device: str) -> str:
        return f"{self.base}/device/{device}/availability"

    def output(self, device: str, actuator: str) -> str:
        return f"{self.base}/device/{device}/output/{actuator}"

    def request(self, client: str, device: str, command: str) -> str:
        return f"{self.base}/request/{client}/{device}/{command}"

    def reply(self, client: str, device: str, command: str) -> str:
        return f"{self.base}/reply/{client}/{device}/{command}"

    def ha_command(self, device: str, entity: str) -> str:
        return f"{self.base}/ha/{device}/{entity}/set"

    def parse_request(self, topic: str) -> CommandTopic | None:
        """The request a topic names, or None if it is not a request topic of this gateway."""
        if not topic.startswith(self._request_root):
            return None
        parts = topic[len(self._request_root) :].split("/")
        if len(parts) != 3 or not all(parts):
            return None
        return CommandTopic(*parts)

    def parse_ha(self, topic: str) -> HaTopic | None:
        """The entity a Home Assistant command topic names, or None."""
        if not topic.startswith(self._ha_root):
            return None
        parts = topic[len(self._ha_root) :].split("/")
        if len(parts) != 3 or parts[2] != "set" or not parts[0] or not parts[1]:
            return None
        return HaTopic(parts[0], parts[1])
