"""Fixtures of the agent tests: gpiozero's MockFactory for pins (never a mock of a server)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory


@pytest.fixture
def mock_factory() -> Iterator[MockFactory]:
    """A fresh MockFactory as gpiozero's global pin factory, reset after the test."""
    previous = Device.pin_factory
    factory = MockFactory()
    Device.pin_factory = factory
    try:
        yield factory
    finally:
        factory.reset()
        Device.pin_factory = previous


@pytest.fixture(autouse=True)
def _mock_pins_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any gpiozero device built without an explicit factory gets the mock one, on any machine."""
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
