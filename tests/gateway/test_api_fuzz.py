"""Fuzz the live operator API from its own OpenAPI document (schemathesis).

Every operation gets generated requests (valid and invalid) with a ``control``
token; each answer must not be a 5xx and must match the document: status code,
content type, headers and body schema. A device with stored readings and
commands exists (its name is the path example), so the fuzzer reaches real data.
"""

from __future__ import annotations

import asyncio

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.commands import AnsweringDevice, api
from tests.support.device import ScriptedDevice
from tests.support.gateway import GatewayProcess

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 40


# the module's gateway (fixture gw, tests/gateway/conftest.py): commands to a never-connected device
# queue; a short max_wait keeps waiting requests short
GATEWAY_ENV = {"IOTGW_API_MAX_WAIT": "0.3"}


@pytest.fixture(scope="module")
def gw(gw: GatewayProcess) -> GatewayProcess:
    """The module's gateway with stored readings and a command for ``fuzz-dev``; ``gw.fuzz_token``."""
    control = gw.add_operator("fuzzer", "control")
    token = gw.add_device("fuzz-dev", {"site": "lab"})
    gw.add_device("never-seen")

    async def seed() -> None:
        async with ScriptedDevice(gw.device_url, token, stream="fuzz") as dev:
            await dev.hello(commands=[{"name": "ping"}], sensors=[{"metric": "temp"}])
            for seq in range(1, 21):
                await dev.readings(seq, {"temp": 20.0 + seq, "on": seq % 2 == 0, "mode": "auto"})
            await dev.wait_ack(20)
        async with (
            AnsweringDevice(gw.device_url, token, ["ping"]),
            api(gw.api_url, control) as c,
        ):
            await c.post("/api/v1/devices/fuzz-dev/commands", json={"name": "ping"})

    asyncio.run(seed())
    gw.fuzz_token = control  # type: ignore[attr-defined]
    return gw


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_live_api_conforms_to_its_openapi_document(gw: GatewayProcess, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{gw.api_url}/api/v1/openapi.json")
    headers = {"Authorization": f"Bearer {gw.fuzz_token}"}  # type: ignore[attr-defined]
    tested = []
    untestable = []
    for result in schema.get_all_operations():
        operation = result.ok()
        tested.append(operation.label)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS, timeout=10)

        try:
            check()
        except Unsatisfiable:
            # nothing in the operation can be made invalid (no parameters or body): /healthz, /metrics
            assert mode is GenerationMode.NEGATIVE, operation.label
            untestable.append(operation.label)
    assert len(tested) >= 12, tested
    assert len(untestable) <= 4, untestable
