"""What a sink of the delivery engine is: the interface, its errors, the engine's settings.

The engine (``gateway.integrations.engine``) moves stored rows to a :class:`Sink`; a sink
turns one stored row into an *item* (a ``str``) and delivers lists of items to its
target. The InfluxDB sink (``gateway.integrations.influx.sink``) is the model; the MQTT
bridge is the next one. A sink implements every method below; it may keep caches (the
InfluxDB sink caches series prefixes) and must make a replayed item harmless, because
after a crash the engine sends again what it had not recorded as delivered.

Errors, as the engine treats them::

    DeliveryError        write/check: the target did not accept; retryable or refused
    EncodeError          encode_*: this row can never be sent (it becomes a dead letter)
    DeliveryStartError   raised by the engine: a required sink is away at start
"""

from __future__ import annotations

import sqlite3
from typing import Protocol

__all__ = ["DeliveryError", "DeliverySettings", "DeliveryStartError", "EncodeError", "Sink"]


class DeliveryError(Exception):
    """The sink's target did not accept a batch (raised by ``Sink.write`` and ``Sink.check``).

    ``retryable``: the same batch may succeed later (the engine waits and retries it);
    otherwise the target refuses (some of) its rows, and the engine halves the batch to
    find them. ``status`` is the target's code (HTTP for InfluxDB; None if not reached),
    kept with a dead letter. ``retry_after`` (s): the target asked to wait that long.
    ``summary`` is one line for people (state and logs). ``needs_operator``: retrying
    alone will not help (credentials, a missing database): logged as an error.
    """

    def __init__(self, message: str, *, retryable: bool, status: int | None = None,
                 retry_after: float | None = None, summary: str = "",
                 needs_operator: bool = False) -> None:  # fmt: skip
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.summary = summary or message
        self.needs_operator = needs_operator


class EncodeError(ValueError):
    """A stored row the sink cannot encode; it becomes a dead letter with this message."""


class DeliveryStartError(RuntimeError):
    """The sink is required (``<sink>.required``) and its target is away or refuses us at start."""


class Sink(Protocol):
    """What the engine needs from a sink.

    An encoded row (an *item*) is a ``str``: what the sink sends for that row, and what
    a dead letter keeps to show an operator. ``encode_*`` and ``prepare`` run in a
    worker thread with the engine's read connection; ``write`` and ``check`` block in a
    worker thread; only one of these runs at a time. ``close`` is called once, last.
    """

    name: str
    """Names the cursors (``<name>.readings``, ``<name>.events``), the state row, the dead
    letters and the config section (``<name>.required``). Never change it for a sink in use."""
    title: str
    """For people, in log lines: ``InfluxDB``."""
    target: str
    """For people: where the sink delivers (never credentials)."""

    def prepare(self, conn: sqlite3.Connection, *, resend: bool = False) -> None:
        """Called before the rows of a batch are encoded; ``resend``: dead letters follow
        (drop caches an operator's fix may have made stale, such as device labels)."""

    def encode_reading(self, conn: sqlite3.Connection, device_id: int, ts: int, data: str) -> str:
        """The item for one stored reading (``data``: its JSON metric map); raise EncodeError."""

    def encode_event(self, conn: sqlite3.Connection, device_id: int, ts: int, seq: int, name: str,
                     data: str) -> str:  # fmt: skip
        """The item for one stored event; raise EncodeError."""

    def write(self, items: list[str]) -> None:
        """Deliver ``items`` (at least one); return once the target confirmed them, else raise DeliveryError."""

    def check(self) -> None:
        """Raise DeliveryError unless the target answers and accepts our credentials."""

    def close(self) -> None: ...


class DeliverySettings(Protocol):
    """The engine's settings; a sink's config section has them (``InfluxSettings`` does)."""

    @property
    def batch_size(self) -> int:
        """Most rows of each table in one batch."""

    @property
    def max_delay(self) -> float:
        """Longest time (s) a stored row waits for its batch to fill before it is sent."""

    @property
    def timeout(self) -> float:
        """The sink's write timeout (s): how long ``stop`` waits for a write in flight (+1 s)."""

    @property
    def retry_max(self) -> float:
        """Longest wait (s) between retries."""

    @property
    def events(self) -> bool:
        """Deliver events too, not only readings."""

    @property
    def required(self) -> bool:
        """Refuse to start when the target is away or refuses the credentials."""
