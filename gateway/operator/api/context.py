"""What the API's routes reach in the running gateway, in one object on ``app.state``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request

from gateway.config import ApiSettings
from gateway.device.server import DeviceServer
from gateway.operator.commands import CommandService
from gateway.operator.feed import Feed
from gateway.operator.metrics import GatewayMetrics, IngestRate
from gateway.store.lookups import Lookups
from gateway.store.readings import ReadPool
from gateway.store.writer import GroupCommitter


@dataclass(slots=True)
class ApiContext:
    """The gateway's parts the API uses; everything is used from the gateway's event loop."""

    settings: ApiSettings
    commands: CommandService
    devices: DeviceServer
    committer: GroupCommitter
    reads: ReadPool
    lookups: Lookups
    """Point lookups (operator by token, device by name) on the loop's thread, no hand-off."""
    store_path: Path
    rate: IngestRate
    metrics: GatewayMetrics
    started: float = field(default_factory=time.monotonic)
    touched: dict[int, int] = field(default_factory=dict)
    """operator id -> when its last_used_ms was last written (ms)."""
    feed: Feed | None = None
    """The live feed hub (gateway/operator/feed.py), served at /api/v1/feed by gateway/operator/api/live.py."""
    live_status: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)
    """Sink name -> a callable returning its live state (``OperatorApi.live_status``)."""
    locate: Callable[[str], str | None] | None = None
    """Device name -> the fleet gateway that holds it now, or None (gateway/fleet/node.py); unset
    when the gateway is not in a fleet."""
    feed_subscriptions: dict[int, int] = field(default_factory=dict)
    """operator id -> live feed subscriptions open now (``api.feed_subscribers_per_token``)."""

    def release_subscription(self, operator_id: int) -> None:
        """One of the operator's feed subscriptions ended."""
        left = self.feed_subscriptions.get(operator_id, 0) - 1
        if left > 0:
            self.feed_subscriptions[operator_id] = left
        else:
            self.feed_subscriptions.pop(operator_id, None)


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.iotgw
    return ctx
