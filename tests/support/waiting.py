"""Waiting for a condition instead of sleeping for a fixed time.

A test that sleeps and then asserts is slow on a fast machine and flaky on a slow
one. Poll the condition with a generous deadline instead: the test goes on as soon
as the condition holds, and fails naming what it waited for (and the last value
seen) when it never does. A sleep stays only where it paces traffic (a device that
sends every 10 ms) or gives something the chance to happen that must not (say so
in a comment there).

    rows = wait_until(lambda: gw.readings("pi-1"), what="pi-1's readings in the store")
    await async_wait_until(lambda: dev.closed, what="the gateway to close the connection")
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = 15.0, what: str = "", interval: float = 0.05
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raises ``AssertionError`` naming ``what`` and the last value after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what or predicate}; last {value!r}"
            )
        time.sleep(interval)
        value = predicate()
    return value


async def async_wait_until(
    predicate: Callable[[], T | Awaitable[T]], timeout: float = 15.0, what: str = "", interval: float = 0.05
) -> T:
    """``wait_until`` inside an event loop: ``predicate`` may be a plain or a coroutine function."""
    deadline = time.monotonic() + timeout

    async def probe() -> T:
        value = predicate()
        if inspect.isawaitable(value):
            return await value
        return value

    value = await probe()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what or predicate}; last {value!r}"
            )
        await asyncio.sleep(interval)
        value = await probe()
    return value
