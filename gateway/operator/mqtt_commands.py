"""Commands over MQTT: requests from the broker go through the command ledger, results go back.

docs/mqtt.md, "Commands over MQTT", is the contract. Two ways in, both subscribed on the
bridge's connection (``gateway.integrations.mqtt.bridge.MqttBridge.subscribe``):

- ``<prefix>/<gateway>/request/<client>/<device>/<command>`` with a JSON object
  ``{"args": {...}, "id": "<your correlation id>", "timeout": s, "ttl": s}`` (all optional;
  an empty payload is ``{}``). ``<client>`` is the sender the ledger records (``mqtt:<client>``);
  the broker's ACL binds it to the publisher's user name (``pattern write .../request/%u/#``).
  The final outcome (succeeded, failed, expired, or refused at once) is published to the
  MQTT 5 *response topic* with the request's *correlation data* when the request carries them,
  else to ``<prefix>/<gateway>/reply/<client>/<device>/<command>``. A response topic must lie
  under ``<prefix>/<gateway>/reply/<client>/``: the gateway never publishes where the
  requester could not read (no confused deputy).
- ``<prefix>/<gateway>/ha/<device>/<entity>/set``: Home Assistant entities (discovery,
  ``gateway.integrations.mqtt.discovery``): a switch's ``ON``/``OFF`` or a number's value
  becomes ``set {target, value}``, a button's ``PRESS`` its command; sender ``mqtt:<ha_client>``.

Output states follow results: a succeeded ``set``/``toggle``/``blink`` (its value is the
output's read-back state) or ``ping`` (its ``actuators`` map) is published retained on
``.../device/<device>/output/<name>``, which Home Assistant's entities show.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import MqttSettings
from gateway.integrations.mqtt.bridge import MqttBridge
from gateway.integrations.mqtt.discovery import ha_target
from gateway.operator.command_rules import (
    DEFAULT_TIMEOUT_S,
    DEFAULT_TTL_S,
    MAX_TIMEOUT_S,
    MAX_TTL_S,
    CommandError,
)
from gateway.operator.commands import CommandService
from gateway.store.ledger import CommandRecord, CommandState
from iotgw_common.urgency import urgent_context

__all__ = ["MAX_REQUEST_BYTES", "MqttCommands"]

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192
"""Longest request payload accepted (the args themselves: ``MAX_ARGS_BYTES``)."""
OUTPUT_COMMANDS = frozenset({"set", "toggle", "blink"})
STORED_WAIT_S = 5.0


@dataclass(slots=True)
class _Reply:
    topic: str
    correlation: Any  # the request's "id" (JSON)
    correlation_data: bytes | None  # MQTT 5
    device: str
    command: str


class RequestError(ValueError):
    """A request that cannot become a command; ``code`` goes into the reply."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class MqttCommands:
    """Subscribes the request topics and answers them; ``start()`` once, after the bridge exists."""

    def __init__(self, bridge: MqttBridge, commands: CommandService, settings: MqttSettings) -> None:
        self.bridge = bridge
        self.commands = commands
        self.settings = settings
        self.topics = bridge.topics
        self._replies: dict[str, _Reply] = {}  # command id -> where its outcome goes
        self._tasks: set[asyncio.Task[Any]] = set()
        self.received = 0
        self.refused = 0

    def start(self) -> None:
        """Subscribe (before ``bridge.start()``, so the first connection subscribes) and observe results."""
        self.bridge.subscribe(self.topics.requests, self._request)
        if self.settings.discovery:
            self.bridge.subscribe(self.topics.ha_commands, self._ha_command)
        self.commands.state_observers.append(self._state_changed)

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # -- requests --------------------------------------------------------------------------

    def _request(self, message: paho.MQTTMessage) -> None:
        target = self.topics.parse_request(message.topic)
        if target is None or message.retain:  # a retained request would run again at every subscribe
            return
        self.received += 1
        props = getattr(message, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation_data = getattr(props, "CorrelationData", None) if props is not None else None
        default = self.topics.reply(target.client, target.device, target.command)
        reply = _Reply(default, None, correlation_data, target.device, target.command)
        try:
            request = _parse(message.payload)
            reply.correlation = request.get("id")
            if response_topic:
                allowed = f"{self.topics.base}/reply/{target.client}/"
                if not response_topic.startswith(allowed) or "+" in response_topic or "#" in response_topic:
                    raise RequestError(
                        "bad_response_topic",
                        f"response topic must be under {self.topics.base}/reply/{target.client}/",
                    )
                reply.topic = response_topic
            args = request.get("args", {})
            if not isinstance(args, dict):
                raise RequestError("bad_request", "args must be a JSON object")
            timeout = _seconds(request, "timeout", DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S)
            ttl = _seconds(request, "ttl", DEFAULT_TTL_S, MAX_TTL_S)
        except RequestError as exc:
            self._refuse(reply, exc)
            return
        self._spawn(self._submit(reply, target.command, args, f"mqtt:{target.client}", timeout, ttl))

    def _ha_command(self, message: paho.MQTTMessage) -> None:
        target = self.topics.parse_ha(message.topic)
        if target is None or message.retain:
            return
        self.received += 1
        sender = f"mqtt:{self.settings.ha_client}"
        reply = _Reply("", None, None, target.device, "")
        record = self.bridge.find_device(target.device)
        what = None if record is None else ha_target(record, target.entity)
        if what is None:
            log.info("MQTT: Home Assistant command for unknown entity %s of %s", target.entity, target.device)
            self.refused += 1
            return
        kind, name = what
        text = message.payload.decode("utf-8", "replace").strip()
        if kind == "set":
            reply.command = "set"
            value: Any = {"ON": "on", "OFF": "off"}.get(text.upper(), text)
            self._spawn(self._submit(reply, "set", {"target": name, "value": value}, sender,
                                     DEFAULT_TIMEOUT_S, DEFAULT_TTL_S))  # fmt: skip
        else:
            reply.command = name
            self._spawn(self._submit(reply, name, {}, sender, DEFAULT_TIMEOUT_S, DEFAULT_TTL_S))

    async def _submit(self, reply: _Reply, name: str, args: dict[str, Any], sender: str, timeout: float,
                      ttl: float) -> None:  # fmt: skip
        record = self.bridge.find_device(reply.device)
        if record is None:
            self._refuse(reply, RequestError("unknown_device", f"no device named {reply.device!r}"))
            return
        try:
            command = await self.commands.submit(
                record, name, args, sender=sender, timeout_s=timeout, ttl_s=ttl
            )
        except CommandError as exc:  # not declared, bad args, too many open (its own code)
            self._refuse(reply, RequestError(getattr(exc, "code", "command_refused"), exc.detail))
            return
        if command.final:  # expired at once (offline, ttl 0) or already answered
            self._state_changed(command)
        else:
            self._replies[command.id] = reply

    def _refuse(self, reply: _Reply, exc: RequestError) -> None:
        self.refused += 1
        log.info("MQTT command %s for %s refused: %s", reply.command, reply.device, exc.detail)
        if reply.topic:
            self._publish(reply, {"id": None, "correlation": reply.correlation, "device": reply.device,
                                  "command": reply.command, "state": "refused", "ok": False,
                                  "code": exc.code, "error": exc.detail})  # fmt: skip

    # -- outcomes ----------------------------------------------------------------------------

    def _state_changed(self, record: CommandRecord) -> None:
        if not record.final:
            return
        if record.state == CommandState.SUCCEEDED:
            self._follow_outputs(record)
        reply = self._replies.pop(record.id, None)
        if reply is not None and reply.topic:
            self._spawn(self._answer(reply, record))

    async def _answer(self, reply: _Reply, record: CommandRecord) -> None:
        await self.commands.wait(record.id, STORED_WAIT_S)  # the outcome is in the ledger first
        self._publish(reply, {
            "id": record.id, "correlation": reply.correlation, "device": record.device,
            "command": record.name, "state": record.state, "ok": record.state == CommandState.SUCCEEDED,
            "value": record.value, "error": record.error, "sender": record.sender,
        })  # fmt: skip

    def _follow_outputs(self, record: CommandRecord) -> None:
        value = record.value
        if not isinstance(value, dict):
            return
        if record.name in OUTPUT_COMMANDS and isinstance(value.get("target"), str):
            self.bridge.publish_output(record.device, value["target"], value)
        elif record.name == "ping" and isinstance(value.get("actuators"), dict):
            for output, state in value["actuators"].items():
                if isinstance(output, str):
                    self.bridge.publish_output(record.device, output, {"target": output, "value": state})

    def _publish(self, reply: _Reply, body: dict[str, Any]) -> None:
        props = None
        if reply.correlation_data is not None and self.bridge.connection.mqtt5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = reply.correlation_data
        payload = json.dumps(body, separators=(",", ":"), default=str).encode()
        self.bridge.publish(reply.topic, payload, properties=props)

    def _spawn(self, coro: Any) -> None:
        # a command request: in the event loop's urgent lane, like the HTTP API's
        task = asyncio.create_task(coro, context=urgent_context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _parse(payload: bytes | bytearray) -> dict[str, Any]:
    if len(payload) > MAX_REQUEST_BYTES:
        raise RequestError("request_too_large", f"request payload over {MAX_REQUEST_BYTES} bytes")
    if not payload.strip():
        return {}
    try:
        request = json.loads(payload)
    except ValueError as exc:
        raise RequestError("invalid_json", f"payload is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise RequestError("bad_request", "payload must be a JSON object")
    return request


def _seconds(request: dict[str, Any], key: str, default: float, high: float) -> float:
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise RequestError("bad_request", f"{key} must be a number of seconds from 0 to {high:g}")
    return float(value)
