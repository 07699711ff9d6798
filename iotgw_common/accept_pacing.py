"""New connections a few at a time: a storm of them cannot stall the event loop.

asyncio accepts, in one callback, every connection waiting on a listening socket, up to the
server's ``backlog`` (2,048 on the device port, so that the kernel does not drop the SYNs of a
fleet reconnecting at once). Each accepted connection then opens in the loop's next turns: its
transport, the WebSocket handshake, the token lookup, ``hello`` and ``welcome``, 0.5-1 ms of
the loop's time in all. When thousands of devices connect within a second, one loop turn held
hundreds of them, and every other device's frames and acks waited behind that turn: ack p99
1.7-2.5 s for the devices already connected (docs/performance.md, "Connection storms").

:class:`AcceptPacingLoop` accepts at most :data:`ACCEPTS_PER_TURN` connections per turn of
the loop and per listening socket. The rest wait in the kernel's accept queue, which costs the
gateway nothing, and the listening socket is readable again at the next turn, so accepting
goes on at once, interleaved with the traffic of the devices already connected (their ack p50
~30 ms during a storm of 10,000). The storm itself takes longer, ~15 s instead of ~10 on two
cores: its handshakes' store writes no longer go in a few large commits. 4 a turn, against 8
and 16, gave the connected devices the shortest waits for about the same storm.

This overrides CPython's ``BaseSelectorEventLoop._accept_connection`` (3.11-3.13);
:func:`accept_pacing_works` checks it on the running interpreter, and the gateway's tests fail
if it does not, so a Python upgrade that changes it is noticed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

ACCEPTS_PER_TURN = 4
"""Connections accepted from one listening socket per turn of the loop (a few ms of handshakes)."""


class AcceptPacingLoop(asyncio.SelectorEventLoop):
    """A selector event loop that accepts at most :data:`ACCEPTS_PER_TURN` connections a turn."""

    accepts_per_turn = ACCEPTS_PER_TURN

    def _accept_connection(
        self, protocol_factory: Any, sock: socket.socket, sslcontext: Any = None, server: Any = None,
        backlog: int = 100, *rest: Any,
    ) -> None:  # fmt: skip
        # CPython calls this once per turn in which the listening socket is readable and accepts
        # up to ``backlog`` connections in a row; the kernel's queue keeps the others, and the
        # socket stays readable (level-triggered), so the next turn takes the next few
        super()._accept_connection(  # type: ignore[misc]
            protocol_factory, sock, sslcontext, server, min(backlog, self.accepts_per_turn), *rest
        )


def accept_pacing_works(
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = AcceptPacingLoop,
    waiting: int = 3 * ACCEPTS_PER_TURN,
) -> bool:
    """Whether a loop of ``loop_factory`` makes ``waiting`` queued connections at most
    :data:`ACCEPTS_PER_TURN` a turn, and all of them, on this interpreter's asyncio."""
    per_turn: list[int] = []

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        made: list[int] = []

        class Count(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                made.append(1)
                transport.close()

        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(waiting + 16)
        # the kernel completes these connections and queues them before the loop looks
        clients = [socket.create_connection(listener.getsockname()) for _ in range(waiting)]
        server = await loop.create_server(Count, sock=listener, backlog=waiting + 16)
        try:
            for _ in range(4 * waiting):
                before = len(made)
                await asyncio.sleep(0)  # one turn of the loop
                per_turn.append(len(made) - before)
                if len(made) >= waiting:
                    break
        finally:
            for client in clients:
                client.close()
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(probe())
    return sum(per_turn) == waiting and max(per_turn, default=0) <= ACCEPTS_PER_TURN


__all__ = ["ACCEPTS_PER_TURN", "AcceptPacingLoop", "accept_pacing_works"]
