"""Every scenario of tests/vectors/sessions.json against a real gateway.

Each refused frame must get its documented error code and seq, and every valid
reading sent before and after it on the same connection must be stored exactly.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from tests.protocol.vectors import load_sessions, render, render_value
from tests.support.device import ScriptedDevice, now_ms
from tests.support.gateway import GatewayProcess

SCENARIOS = load_sessions()


async def _play(url: str, token: str, scenario: dict, now: int) -> None:
    async with ScriptedDevice(url, token, stream="vectors") as dev:
        welcome = await dev.hello()
        assert welcome["last_seq"] == 0
        for number, step in enumerate(scenario["steps"]):
            frame = render(step["send"], now, step.get("pad_to_bytes")).decode()
            await dev.send(frame)
            expect = step["expect"]
            where = f"step {number}: sent {frame[:120]!r}"
            if "ack" in expect:
                while dev.acked < expect["ack"]:
                    message = await dev.next()
                    assert message["type"] == "ack", f"{where}: expected ack {expect['ack']}, got {message}"
            else:
                message = await dev.next()
                assert message["type"] == "error", f"{where}: expected error {expect}, got {message}"
                assert (message["code"], message["seq"]) == (expect["error"], expect["seq"]), where
                assert message["detail"], f"{where}: an error must explain itself"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_session_scenario(gw: GatewayProcess, scenario: dict) -> None:
    device = re.sub(r"[^A-Za-z0-9_.-]", "-", scenario["name"])[:60]
    token = gw.add_device(device)
    now = now_ms()
    asyncio.run(asyncio.wait_for(_play(gw.device_url, token, scenario, now), 60))

    expected = [tuple(row) for row in render_value(scenario["stored"], now)]
    stored = [(seq, ts, values) for seq, ts, values in gw.readings(device)]
    assert stored == expected
    expected_events = [tuple(row) for row in render_value(scenario.get("stored_events", []), now)]
    assert gw.events(device) == expected_events


def test_scenarios_cover_every_refusal_the_issue_names() -> None:
    codes = {
        step["expect"]["error"]
        for scenario in SCENARIOS
        for step in scenario["steps"]
        if "error" in step["expect"]
    }
    required = {
        "invalid_json", "invalid_message", "bad_value", "too_many_samples", "frame_too_large",
        "bad_metric_name", "unknown_type", "seq_not_increasing", "clock_skew", "unexpected_message",
    }  # fmt: skip
    assert required <= codes, required - codes
    assert json.dumps(SCENARIOS)  # the file is plain JSON, readable by the firmware suite too
