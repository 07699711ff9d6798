"""New connections a few per loop turn (iotgw_common.accept_pacing), on the gateway's loop.

Counts per turn, not times: how many queued connections one turn of the loop made.
"""

from __future__ import annotations

import asyncio

import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from iotgw_common import accept_pacing
from iotgw_common.accept_pacing import ACCEPTS_PER_TURN, AcceptPacingLoop, accept_pacing_works
from iotgw_common.urgency import UrgentFirstLoop


def test_accept_pacing_works_on_this_interpreter() -> None:
    # it overrides a private method of asyncio: a Python upgrade that changes it fails here
    assert accept_pacing_works()


def test_the_gateways_loop_paces_accepts() -> None:
    assert accept_pacing_works(UrgentFirstLoop, waiting=5 * ACCEPTS_PER_TURN)


def test_the_check_fails_on_a_loop_that_accepts_everything_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AcceptPacingLoop, "accepts_per_turn", 100_000)
    assert not accept_pacing_works()
    assert not accept_pacing_works(asyncio.SelectorEventLoop)


def test_a_burst_larger_than_a_turn_is_accepted_whole_and_each_connection_answered() -> None:
    burst = 6 * accept_pacing.ACCEPTS_PER_TURN

    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async def main() -> list[str]:
        async with serve(echo, "127.0.0.1", 0, backlog=burst) as server:
            port = server.sockets[0].getsockname()[1]
            # all dial at once: more wait in the accept queue than one turn takes
            clients = await asyncio.gather(
                *(websockets.connect(f"ws://127.0.0.1:{port}", open_timeout=60) for _ in range(burst))
            )
            try:
                for i, client in enumerate(clients):
                    await client.send(f"hello {i}")
                return [str(await client.recv()) for client in clients]
            finally:
                await asyncio.gather(*(client.close() for client in clients))

    with asyncio.Runner(loop_factory=UrgentFirstLoop) as runner:
        answers = runner.run(main())
    assert answers == [f"hello {i}" for i in range(burst)]
