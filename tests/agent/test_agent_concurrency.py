"""The agent runs at most one run per command name at a time (docs/commands.md, section 5).

Real programs (``[[commands]]``) that wait for a file the test creates, so "still running" is a
state the test controls, not a timing guess.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from device_agent.commands import CommandRegistry, register_custom
from device_agent.config import CustomCommand
from iotgw_common.protocol import Command
from tests.support.waiting import async_wait_until

WAIT_FOR_FILE = (
    "import os, sys, time\n"
    "open(sys.argv[1], 'w').close()\n"  # tell the test it started
    "while not os.path.exists(sys.argv[2]): time.sleep(0.01)\n"
    "print('done')\n"
)


def _waiting_command(name: str, tmp: Path) -> tuple[CustomCommand, Path, Path]:
    started, release = tmp / f"{name}.started", tmp / f"{name}.release"
    argv = [sys.executable, "-c", WAIT_FOR_FILE, str(started), str(release)]
    return CustomCommand(name=name, argv=argv, timeout=60), started, release


def test_a_second_run_of_the_same_name_is_refused_while_one_runs(tmp_path: Path) -> None:
    command, started, release = _waiting_command("backup", tmp_path)
    registry = CommandRegistry()
    register_custom(registry, [command])

    async def scenario() -> None:
        first = asyncio.create_task(registry.handle(Command(id="c1", name="backup", args={})))
        await async_wait_until(started.exists, what="the first run to start")
        second = await registry.handle(Command(id="c2", name="backup", args={}))
        assert not second.ok
        assert second.id == "c2"
        assert second.error == "backup is already running"
        assert not first.done()  # the refusal did not disturb the run in progress
        release.touch()
        result = await asyncio.wait_for(first, 60)
        assert result.ok, result
        assert result.value["stdout"] == "done\n"
        # the name is free again once the run ended
        started.unlink()
        third = await asyncio.wait_for(registry.handle(Command(id="c3", name="backup", args={})), 60)
        assert third.ok, third

    asyncio.run(scenario())


def test_different_names_run_at_the_same_time(tmp_path: Path) -> None:
    one, one_started, one_release = _waiting_command("one", tmp_path)
    two, two_started, two_release = _waiting_command("two", tmp_path)
    registry = CommandRegistry()
    register_custom(registry, [one, two])

    async def scenario() -> None:
        first = asyncio.create_task(registry.handle(Command(id="a", name="one", args={})))
        second = asyncio.create_task(registry.handle(Command(id="b", name="two", args={})))
        await async_wait_until(
            lambda: one_started.exists() and two_started.exists(), what="both programs to run at once"
        )
        one_release.touch()
        two_release.touch()
        results = await asyncio.wait_for(asyncio.gather(first, second), 60)
        assert [r.ok for r in results] == [True, True]

    asyncio.run(scenario())


def test_a_failed_run_frees_the_name(tmp_path: Path) -> None:
    registry = CommandRegistry()
    register_custom(
        registry, [CustomCommand(name="fails", argv=[sys.executable, "-c", "raise SystemExit(3)"])]
    )

    async def scenario() -> None:
        for attempt in ("x1", "x2"):
            result = await asyncio.wait_for(registry.handle(Command(id=attempt, name="fails", args={})), 60)
            assert not result.ok
            assert "exited with code 3" in (result.error or "")

    asyncio.run(scenario())
