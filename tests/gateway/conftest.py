"""The gateway the tests of this folder talk to: one real process per test module.

``gw`` starts ``iotgw serve`` (tests/support/gateway.py) with its own store in a
temporary directory, before the module's first test that asks for it, and stops it
after the module's last. A module gives its settings as a module attribute::

    GATEWAY_ENV = {"IOTGW_DEVICE_HELLO_TIMEOUT": "1.0"}  # read by the gw fixture

and prepares what all its tests share (operators, devices) by overriding ``gw`` with
a fixture of the same name that takes the gateway from here::

    @pytest.fixture(scope="module")
    def gw(gw: GatewayProcess) -> GatewayProcess:
        gw.add_device("api-dev")
        return gw

Tests are written so that they can share one gateway: each uses device and operator
names of its own. A test that kills, restarts or reconfigures the gateway starts
its own with ``GatewayProcess.start(tmp_path, env=...)`` instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.gateway import GatewayProcess


@pytest.fixture(scope="module")
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A running gateway for the module, with the module's ``GATEWAY_ENV`` settings (if any)."""
    env: dict[str, str] = dict(getattr(request.module, "GATEWAY_ENV", {}))
    name = request.module.__name__.rpartition(".")[2]
    with GatewayProcess.start(tmp_path_factory.mktemp(f"gw-{name}"), env=env) as gateway:
        yield gateway
