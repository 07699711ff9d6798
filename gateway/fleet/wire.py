"""The fleet's topics and messages (docs/scale-out.md, "Fleet topics"). Pure: no I/O.

Every fleet topic lives under ``<prefix>/fleet/``, apart from the gateways' own trees, so one
ACL line gives the gateways' broker user the fleet and leaves every integration out of it
(token hashes travel here)::

    <prefix>/fleet/status/<gateway>              "online" / "offline" (last will), NOT retained
    <prefix>/fleet/presence                      Presence: the devices a gateway holds, periodic
    <prefix>/fleet/registry                      RegistryUpdate: changes (add, remove, rotate)
    <prefix>/fleet/declared                      Declarations: what held devices declared (hello), on change
    <prefix>/fleet/sync                          SyncRequest: a joining gateway asks for registry and declarations
    <prefix>/fleet/gateway/<gateway>/registry    RegistryUpdate: the answers to its SyncRequest
    <prefix>/fleet/gateway/<gateway>/declared    Declarations: the answers to its SyncRequest
    <prefix>/fleet/gateway/<gateway>/command     ForwardedCommand: run this on a device you hold
    <prefix>/fleet/gateway/<gateway>/result      ForwardedResult: the outcome, to the origin

Everything is published at QoS 1 and never retained: some clustered brokers keep retained
messages per node (RabbitMQ), so routing relies only on live announcements and requests.
A subscriber also receives its own messages (MQTT 3.1.1 has no "no local"): each message
names its sender, and a gateway ignores its own.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from gateway.store.fleet import FleetEntry
from iotgw_common.protocol.messages import (
    MAX_VALUES,
    CommandInfo,
    InfoValue,
    Label,
    MetricName,
    SensorInfo,
)

__all__ = [
    "MAX_HOPS",
    "Declarations",
    "DeviceDeclared",
    "DeviceHeld",
    "FleetTopics",
    "ForwardedCommand",
    "ForwardedResult",
    "Presence",
    "RegistryUpdate",
    "SyncRequest",
    "decode",
    "encode",
]

MAX_HOPS = 2
"""How many gateways a command may pass through (origin -> holder -> a newer holder)."""


class DeviceHeld(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    since_ms: int
    """When its session started (the newest claim wins when two gateways claim a device)."""
    commands: list[str] = []
    """What the device declared in its hello (the origin checks submissions against it)."""


class DeviceDeclared(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a held device declared: its hello (agent, sensors, commands, info), with ``info``
    replaced by its latest status frame's, as the holder's own registry row has it. Bounded
    by the protocol's own limits (iotgw_common/protocol/messages.py, ``Hello``): a peer's
    message that breaks them is refused whole, as a device's hello would be."""

    name: str
    since_ms: int
    """The session whose hello this is (``DeviceHeld.since_ms`` of the same claim): a newer
    session's declarations replace an older one's, never the reverse."""
    agent: Label = ""
    sensors: Annotated[list[SensorInfo], msgspec.Meta(max_length=MAX_VALUES)] = []
    commands: Annotated[list[CommandInfo], msgspec.Meta(max_length=MAX_VALUES)] = []
    info: Annotated[dict[MetricName, InfoValue], msgspec.Meta(max_length=MAX_VALUES)] = {}


class Declarations(msgspec.Struct, tag="declared", kw_only=True):
    """Declarations of devices the sender holds: on ``<prefix>/fleet/declared`` when a device
    connects (or its status changes its ``info``), to a joining gateway in answer to its sync."""

    gateway: str
    devices: list[DeviceDeclared] = []


class Presence(msgspec.Struct, tag="presence", kw_only=True):
    gateway: str
    interval_ms: int
    devices: list[DeviceHeld] = []
    leaving: bool = False
    """The gateway is shutting down: forget it now."""


class RegistryUpdate(msgspec.Struct, tag="registry", kw_only=True):
    gateway: str
    entries: list[FleetEntry] = []


class SyncRequest(msgspec.Struct, tag="sync", kw_only=True):
    gateway: str


class ForwardedCommand(msgspec.Struct, tag="command", kw_only=True):
    origin: str
    id: str
    """The command's id on the origin gateway (the result names it)."""
    device: str
    name: str
    args: dict[str, Any] = {}
    timeout_ms: int
    """Time left before the origin's deadline: the holder's ttl and timeout."""
    hops: int = 1


class ForwardedResult(msgspec.Struct, tag="result", kw_only=True):
    gateway: str
    id: str
    state: str
    """The holder's final state: succeeded, failed, expired, refused."""
    ok: bool
    value: Any = None
    error: str | None = None


Message = Presence | Declarations | RegistryUpdate | SyncRequest | ForwardedCommand | ForwardedResult
_decoder = msgspec.json.Decoder(Message)
_encoder = msgspec.json.Encoder()


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(payload: bytes | bytearray) -> Message:
    """The message, or msgspec.ValidationError / DecodeError."""
    return _decoder.decode(payload)


class FleetTopics:
    """The fleet topics of one gateway: ``FleetTopics("iotgw", "gw-a")``."""

    def __init__(self, prefix: str, gateway: str) -> None:
        self.root = f"{prefix}/fleet"
        self.gateway = gateway
        self.presence = f"{self.root}/presence"
        self.registry = f"{self.root}/registry"
        self.declared = f"{self.root}/declared"
        self.sync = f"{self.root}/sync"
        self.statuses = f"{self.root}/status/+"
        self.status = self.status_of(gateway)
        self.mine = f"{self.root}/gateway/{gateway}/#"
        """Subscription for what is addressed to this gateway."""

    def status_of(self, gateway: str) -> str:
        return f"{self.root}/status/{gateway}"

    def status_gateway(self, topic: str) -> str | None:
        """The gateway a status topic names, or None."""
        head = f"{self.root}/status/"
        return topic[len(head) :] if topic.startswith(head) else None

    def registry_of(self, gateway: str) -> str:
        return f"{self.root}/gateway/{gateway}/registry"

    def declared_of(self, gateway: str) -> str:
        return f"{self.root}/gateway/{gateway}/declared"

    def command_of(self, gateway: str) -> str:
        return f"{self.root}/gateway/{gateway}/command"

    def result_of(self, gateway: str) -> str:
        return f"{self.root}/gateway/{gateway}/result"

    def subscriptions(self) -> list[str]:
        return [self.presence, self.declared, self.registry, self.sync, self.statuses, self.mine]
