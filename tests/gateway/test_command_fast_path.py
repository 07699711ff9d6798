"""The command endpoint's fast path (gateway/operator/api/command_fast_path.py) against a real gateway.

What it answers must be what FastAPI's route answers, and what it does not take must reach the
route with its body intact and get the route's own error. ``iotgw_http_command_fast_path_total``
tells which of the two answered.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from contextlib import closing
from typing import Any

import httpx
import pytest

from tests.support.commands import AnsweringDevice, api
from tests.support.gateway import GatewayProcess
from tests.support.rawhttp import read_response

MAX_BODY = 4096
GATEWAY_ENV = {"IOTGW_API_MAX_BODY_BYTES": str(MAX_BODY), "IOTGW_API_BODY_TIMEOUT": "2"}
PATH = "/api/v1/devices/fp-dev/commands"
ROUTE = "/api/v1/devices/{name}/commands"


@pytest.fixture(scope="module")
def gw(gw: GatewayProcess) -> GatewayProcess:
    gw.control = gw.add_operator("fp-carol", "control")  # type: ignore[attr-defined]
    gw.read = gw.add_operator("fp-rita", "read")  # type: ignore[attr-defined]
    gw.token = gw.add_device("fp-dev")  # type: ignore[attr-defined]
    return gw


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def counter(metrics: str, pattern: str) -> float:
    found = re.search(rf"^{pattern} (\S+)$", metrics, re.M)
    return float(found[1]) if found else 0.0


async def fast_path_count(c: httpx.AsyncClient) -> float:
    return counter((await c.get("/metrics")).text, "iotgw_http_command_fast_path_total")


async def post_raw(
    c: httpx.AsyncClient, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await c.post(PATH, content=body, headers={"Content-Type": "application/json", **(headers or {})})


def test_a_well_formed_command_is_answered_by_the_fast_path_as_the_route_would(gw: GatewayProcess) -> None:
    async def scenario() -> tuple[list[httpx.Response], list[float], str, str]:
        async with (
            AnsweringDevice(gw.device_url, gw.token, ["set"]),  # type: ignore[attr-defined]
            api(gw.api_url, gw.control) as c,  # type: ignore[attr-defined]
        ):
            before_metrics = (await c.get("/metrics")).text
            counts = [await fast_path_count(c)]
            fast = await c.post(PATH, json={"name": "set", "args": {"x": 1}, "timeout": 5})
            counts.append(await fast_path_count(c))
            # "5" as a string: msgspec refuses it, pydantic's lax mode takes it: the route answers
            routed = await post_raw(c, b'{"name": "set", "args": {"x": 1}, "timeout": "5"}')
            counts.append(await fast_path_count(c))
            return [fast, routed], counts, before_metrics, (await c.get("/metrics")).text

    (fast, routed), counts, before, after = run(scenario())
    assert counts[1] == counts[0] + 1, "the well-formed request was not answered by the fast path"
    assert counts[2] == counts[1], "the request only pydantic takes was answered by the fast path"
    for r in (fast, routed):
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.headers["location"] == f"/api/v1/commands/{r.json()['id']}"
    a, b = fast.json(), routed.json()
    assert a.keys() == b.keys()
    assert a["id"] != b["id"]
    for body in (a, b):
        assert body["state"] == "succeeded" and body["value"] == {"name": "set", "args": {"x": 1}}
        assert body["sender"] == "fp-carol" and body["device"] == "fp-dev" and body["timeout"] == 5.0
        assert [h["state"] for h in body["history"]] == ["queued", "sent", "succeeded"]
        assert body["deadline_ms"] == body["history"][1]["ts"] + 5000
    # both counted under the route's template
    label = rf'iotgw_http_requests_total\{{method="POST",route="{re.escape(ROUTE)}",status="200"\}}'
    assert counter(after, label) == counter(before, label) + 2


def test_its_own_refusals_and_a_202_are_the_routes(gw: GatewayProcess) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response, float, float]:
        async with (
            AnsweringDevice(gw.device_url, gw.token, ["set"], lambda command: None),  # type: ignore[attr-defined]
            api(gw.api_url, gw.control) as c,  # type: ignore[attr-defined]
        ):
            start = await fast_path_count(c)
            undeclared = await c.post(PATH, json={"name": "reboot"})
            accepted = await c.post(PATH, json={"name": "set", "wait": False, "timeout": 1})
            return undeclared, accepted, start, await fast_path_count(c)

    undeclared, accepted, start, end = run(scenario())
    assert end == start + 2
    assert undeclared.status_code == 422
    assert undeclared.json() == {
        "detail": "device 'fp-dev' does not accept command 'reboot'; it declares: set",
        "declared": ["set"],
    }
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["state"] in ("queued", "sent")
    assert accepted.headers["location"] == f"/api/v1/commands/{accepted.json()['id']}"


LEFT_TO_THE_ROUTE = [
    # (why, token role or raw Authorization header, body, extra headers, path, status, detail or error loc)
    ("unknown token", "Bearer iotgw_o_unknown", b'{"name": "set"}', {}, PATH, 401, "unknown operator token"),
    ("read-only token", "read", b'{"name": "set"}', {}, PATH, 403, "this needs 'control'"),
    # FastAPI's HTTPBearer takes it; the fast path's reading is stricter: the route decides
    ("a space too many", "Bearer  {control}", b'{"name": "set"}', {}, PATH, 200, "succeeded"),
    ("unknown device", "control", b'{"name": "set"}', {}, "/api/v1/devices/fp-nobody/commands", 404, "fp-nobody"),
    ("name ending in a newline", "control", b'{"name": "set\\n"}', {}, PATH, 422, "body.name"),
    ("unknown field", "control", b'{"name": "set", "when": 1}', {}, PATH, 422, "body.when"),
    ("timeout 0", "control", b'{"name": "set", "timeout": 0}', {}, PATH, 422, "body.timeout"),
    ("not JSON", "control", b'{"name": ', {}, PATH, 422, "body"),
    ("not a JSON content type", "control", b'{"name": "set"}', {"Content-Type": "text/plain"}, PATH, 422, "body"),
]  # fmt: skip


@pytest.mark.parametrize(("why", "auth", "body", "headers", "path", "status", "detail"), LEFT_TO_THE_ROUTE,
                         ids=[case[0] for case in LEFT_TO_THE_ROUTE])  # fmt: skip
def test_what_the_fast_path_does_not_take_gets_the_routes_answer(
    gw: GatewayProcess, why: str, auth: str, body: bytes, headers: dict[str, str], path: str, status: int,
    detail: str,
) -> None:  # fmt: skip
    control, read = gw.control, gw.read  # type: ignore[attr-defined]
    authorization = {"control": f"Bearer {control}", "read": f"Bearer {read}"}.get(auth) or auth.format(
        control=control
    )

    async def scenario() -> tuple[httpx.Response, float, float]:
        async with (
            AnsweringDevice(gw.device_url, gw.token, ["set"]),  # type: ignore[attr-defined]
            api(gw.api_url, control) as c,
        ):
            start = await fast_path_count(c)
            r = await c.post(
                path,
                content=body,
                headers={"Content-Type": "application/json", **headers, "Authorization": authorization},
            )
            return r, start, await fast_path_count(c)

    r, start, end = run(scenario())
    assert end == start, f"{why}: answered by the fast path"
    assert r.status_code == status, r.text
    answer = r.json()
    if status == 200:
        assert answer["state"] == detail, answer
    elif status == 422 and "errors" in answer:
        assert any(".".join(map(str, e["loc"])).startswith(detail) for e in answer["errors"]), answer
    else:
        assert detail in answer["detail"], answer


def request_head(gw: GatewayProcess, framing: bytes) -> bytes:
    return (
        b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: gw\r\n"
        b"Authorization: Bearer " + gw.control.encode() + b"\r\n"  # type: ignore[attr-defined]
        b"Content-Type: application/json\r\n" + framing + b"\r\n"
    )


def test_the_body_limits_hold_on_the_fast_path(gw: GatewayProcess) -> None:
    start = counter(httpx.get(gw.api_url + "/metrics").text, "iotgw_http_command_fast_path_total")
    # a chunked body growing past api.max_body_bytes: 413, as on every route
    with closing(socket.create_connection(("127.0.0.1", gw.api_port), timeout=30)) as sock:
        sock.sendall(request_head(gw, b"Transfer-Encoding: chunked\r\n"))
        chunk = b" " * 1000
        for _ in range(MAX_BODY // len(chunk) + 2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, _, body = read_response(sock)
        assert status == 413, body
        assert json.loads(body)["code"] == "body_too_large"
    # a body that does not arrive within api.body_timeout: 408
    with closing(socket.create_connection(("127.0.0.1", gw.api_port), timeout=30)) as sock:
        sock.sendall(request_head(gw, b"Content-Length: 100\r\n") + b'{"name": ')
        status, _, body = read_response(sock)
        assert status == 408, body
        assert json.loads(body)["code"] == "body_timeout"
    end = counter(httpx.get(gw.api_url + "/metrics").text, "iotgw_http_command_fast_path_total")
    assert end == start
