"""Commands to a device another gateway holds, and their outcomes back (docs/scale-out.md).

The origin side reuses the command service unchanged: a device held by peer ``B`` is given
to the service as a :class:`RemoteSession` (a ``CommandSession``), so queueing, ``sent``
before it leaves, the ttl, the deadline and the ledger work as for a local connection.
``send_command`` publishes a :class:`ForwardedCommand` to ``B`` and returns at its PUBACK;
``B``'s :class:`ForwardedResult` becomes the ``result`` the service finishes the command with.
The origin's ledger says ``sent ... to gateway B``; the holder's ledger has its own record of
the same command, sender ``fleet:<origin>``.

The holder side (:meth:`CommandRouter.serve`) submits the forwarded command to its own
service (ttl and timeout: the time left before the origin's deadline), so a device that is
between two connections still gets it, and answers with the final state. QoS 1 may deliver
a request twice: the holder remembers ``(origin, id)`` and runs it once. A command may be
passed on at most ``MAX_HOPS`` times (the device moved again meanwhile).

Call everything from the gateway's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.fleet.wire import MAX_HOPS, FleetTopics, ForwardedCommand, ForwardedResult, encode
from gateway.operator.command_rules import CommandError
from gateway.operator.commands import CommandService
from gateway.store.ledger import CommandRecord, CommandState
from gateway.store.registry import DeviceRecord
from iotgw_common.clock import now_ms
from iotgw_common.protocol import Command, Result

__all__ = ["CommandRouter", "RemoteSession"]

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[Any]]
"""Publish at QoS 1 and wait for the PUBACK; raises when the broker cannot take it."""
STORED_WAIT_S = 5.0
SEEN_KEPT = 10_000
"""Forwarded requests remembered for de-duplication (QoS 1 redelivery comes within seconds)."""


class RemoteSession:
    """A device held by a peer gateway, as the command service sees a connection."""

    def __init__(self, router: CommandRouter, record: DeviceRecord, gateway: str) -> None:
        self._router = router
        self._record = record
        self.gateway = gateway
        self.declared: list[str] | None = None
        """The commands the holder last announced for the device (set by ``FleetNode``)."""

    @property
    def record(self) -> DeviceRecord:
        return self._record

    @property
    def peer(self) -> str:
        return f"gateway {self.gateway}"

    async def send_command(self, command: Command) -> None:
        await self._router.forward(self, command)

    def __repr__(self) -> str:
        return f"RemoteSession({self._record.name!r} on {self.gateway!r})"


class CommandRouter:
    """Forwards commands to holders and serves the ones forwarded here; see the module docstring."""

    def __init__(
        self,
        commands: CommandService,
        topics: FleetTopics,
        publish: Publish,
        find_device: Callable[[str], DeviceRecord | None],
    ) -> None:
        self.commands = commands
        self.topics = topics
        self._publish = publish
        self._find = find_device
        self._in_flight: dict[str, RemoteSession] = {}  # origin command id -> where it went
        self._served: dict[str, tuple[str, str]] = {}  # local command id -> (origin, origin's id)
        self._hops: dict[str, int] = {}  # local command id -> hops it took to get here
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.forwarded = 0
        self.served = 0
        commands.state_observers.append(self._state_changed)

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # -- the origin's side ------------------------------------------------------------------

    async def forward(self, session: RemoteSession, command: Command) -> None:
        """Publish ``command`` to the holder (``RemoteSession.send_command``); raises if it cannot go."""
        hops = self._hops.get(command.id, 0) + 1
        if hops > MAX_HOPS:
            raise CommandError(f"the device moved again; the command has passed {MAX_HOPS} gateways")
        left = max(1, command.deadline - now_ms()) if command.deadline else 10_000
        message = ForwardedCommand(origin=self.topics.gateway, id=command.id, device=session.record.name,
                                   name=command.name, args=command.args, timeout_ms=left, hops=hops)  # fmt: skip
        self._in_flight[command.id] = session
        try:
            await self._publish(self.topics.command_of(session.gateway), encode(message))
        except BaseException:
            self._in_flight.pop(command.id, None)
            raise
        self.forwarded += 1

    def result(self, message: ForwardedResult) -> None:
        """A holder's answer: finish the command it names (late or unknown ones are logged)."""
        session = self._in_flight.pop(message.id, None)
        if session is None:
            log.info("fleet: result from %s for %s, which is not in flight here", message.gateway, message.id)
            return
        error = message.error
        if not message.ok and message.state != CommandState.FAILED:
            error = f"{message.state} on gateway {message.gateway}: {error or 'no reason given'}"
        self.commands.result_received(session, Result(id=message.id, ok=message.ok, value=message.value,
                                                      error=error))  # fmt: skip

    def session_gone(self, session: RemoteSession) -> None:
        """The holder no longer holds the device (or is gone): forget its commands in flight here.

        The caller then tells the command service (``session_closed``), which fails them.
        """
        for command_id in [i for i, s in self._in_flight.items() if s is session]:
            del self._in_flight[command_id]

    # -- the holder's side --------------------------------------------------------------------

    def serve(self, message: ForwardedCommand) -> None:
        """A command forwarded here: run it once on the device, answer the origin when it is final."""
        key = (message.origin, message.id)
        if key in self._seen:
            return  # a QoS 1 duplicate
        self._seen[key] = None
        while len(self._seen) > SEEN_KEPT:
            self._seen.popitem(last=False)
        self.served += 1
        self._spawn(self._submit(message))

    async def _submit(self, message: ForwardedCommand) -> None:
        record = self._find(message.device)
        if record is None:
            await self._answer(message.origin, ForwardedResult(
                gateway=self.topics.gateway, id=message.id, state="refused", ok=False,
                error=f"gateway {self.topics.gateway} has no device named {message.device!r}"))  # fmt: skip
            return
        seconds = message.timeout_ms / 1000
        try:
            command = await self.commands.submit(record, message.name, message.args,
                                                 sender=f"fleet:{message.origin}", timeout_s=seconds,
                                                 ttl_s=seconds)  # fmt: skip
        except CommandError as exc:
            await self._answer(message.origin, ForwardedResult(
                gateway=self.topics.gateway, id=message.id, state="refused", ok=False, error=exc.detail))  # fmt: skip
            return
        self._hops[command.id] = message.hops
        self._served[command.id] = (message.origin, message.id)
        if command.final:
            self._state_changed(command)

    def _state_changed(self, record: CommandRecord) -> None:
        if not record.final:
            return
        self._hops.pop(record.id, None)
        served = self._served.pop(record.id, None)
        if served is not None:
            self._spawn(self._outcome(served, record))

    async def _outcome(self, served: tuple[str, str], record: CommandRecord) -> None:
        await self.commands.wait(record.id, STORED_WAIT_S)  # in this gateway's ledger first
        origin, origin_id = served
        await self._answer(origin, ForwardedResult(
            gateway=self.topics.gateway, id=origin_id, state=str(record.state),
            ok=record.state == CommandState.SUCCEEDED, value=record.value, error=record.error))  # fmt: skip

    async def _answer(self, origin: str, message: ForwardedResult) -> None:
        try:
            await self._publish(self.topics.result_of(origin), encode(message))
        except Exception as exc:  # the broker is away: the origin's deadline fails the command
            log.warning("fleet: cannot send the result of %s to %s: %s", message.id, origin, exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
