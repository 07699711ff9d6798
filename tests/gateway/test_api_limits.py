"""Limits and quotas of the operator API (docs/api.md, "Limits and quotas") against a real gateway.

Request bodies refused before they are read (by size, by credentials), trickled request heads
closed, connections per address capped, feed subscriptions per token, open commands per device,
bounded /metrics labels rendered off the event loop, InfluxDB credentials never shown. Raw
sockets where the point is what the gateway does before a request is complete.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.operator.command_rules import TooManyOpenCommands
from gateway.operator.deadlines import Deadlines
from gateway.operator.metrics import GatewayMetrics, IngestRate, LiveState
from tests.support.gateway import GatewayProcess, repo_env
from tests.support.rawhttp import read_response
from tests.support.waiting import wait_until

SECRET_USER, SECRET_PASSWORD = "scott", "tiger-s3cret"
MAX_BODY = 4096
PER_ADDRESS = 8
GATEWAY_ENV = {
    "IOTGW_API_MAX_BODY_BYTES": str(MAX_BODY),
    "IOTGW_API_HEADER_TIMEOUT": "3",
    "IOTGW_API_BODY_TIMEOUT": "2",
    "IOTGW_API_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS),
    "IOTGW_API_CONNECTION_LIMIT_EXEMPT": "none",  # the tests come from loopback, exempt by default
    "IOTGW_API_FEED_SUBSCRIBERS_PER_TOKEN": "2",
    "IOTGW_API_MAX_OPEN_COMMANDS": "3",
    # a forwarder whose URL carries credentials (port 9: nothing listens, it just retries)
    "IOTGW_INFLUX_ENABLED": "true",
    "IOTGW_INFLUX_API": "v1",
    "IOTGW_INFLUX_URL": f"http://{SECRET_USER}:{SECRET_PASSWORD}@127.0.0.1:9/",
}


@pytest.fixture(scope="module")
def gw(gw: GatewayProcess) -> GatewayProcess:
    gw.control = gw.add_operator("lim-carol", "control")  # type: ignore[attr-defined]
    gw.read = gw.add_operator("lim-rita", "read")  # type: ignore[attr-defined]
    gw.add_device("lim-dev")
    return gw


def raw(gw: GatewayProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.api_port), timeout=30)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the gateway closed the connection (reads what it sent before)."""
    try:
        while data := sock.recv(65536):
            _ = data
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


# -- request bodies ----------------------------------------------------------------------------


def test_a_body_larger_than_the_cap_is_refused_before_it_is_read(gw: GatewayProcess) -> None:
    with closing(raw(gw)) as sock:
        sock.sendall(
            b"POST /api/v1/devices/lim-dev/commands HTTP/1.1\r\nHost: gw\r\n"
            b"Authorization: Bearer " + gw.control.encode() + b"\r\n"  # type: ignore[attr-defined]
            b"Content-Type: application/json\r\nContent-Length: 400000000\r\n\r\n"
        )  # and not one byte of the 400 MB body
        status, headers, body = read_response(sock)
        assert status == 413
        assert json.loads(body) == {
            "detail": f"the request body is larger than {MAX_BODY} bytes (api.max_body_bytes)",
            "code": "body_too_large",
        }
        assert headers["connection"] == "close"
        assert wait_until(lambda: closed_by_peer(sock), what="the gateway to close the connection")


def test_a_request_without_a_token_is_refused_before_its_body_is_read(gw: GatewayProcess) -> None:
    for auth in (b"", b"Authorization: Bearer iotgw_o_unknown\r\n"):
        with closing(raw(gw)) as sock:
            sock.sendall(
                b"PUT /api/v1/devices/lim-dev/labels HTTP/1.1\r\nHost: gw\r\n" + auth
                + b"Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
            )  # fmt: skip
            status, headers, body = read_response(sock)
            assert status == 401, body
            assert headers["www-authenticate"].startswith("Bearer")
            assert "operator token" in json.loads(body)["detail"]


def test_a_chunked_body_growing_past_the_cap_is_refused(gw: GatewayProcess) -> None:
    with closing(raw(gw)) as sock:
        sock.sendall(
            b"PATCH /api/v1/devices/lim-dev/labels HTTP/1.1\r\nHost: gw\r\n"
            b"Authorization: Bearer " + gw.control.encode() + b"\r\n"  # type: ignore[attr-defined]
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 1000
        for _ in range(MAX_BODY // len(chunk) + 2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, headers, body = read_response(sock)
        assert status == 413
        assert json.loads(body)["code"] == "body_too_large"
        assert headers["connection"] == "close"
    # a small body still goes through
    r = httpx.patch(
        gw.api_url + "/api/v1/devices/lim-dev/labels",
        json={"labels": {"room": "lab"}},
        headers={"Authorization": f"Bearer {gw.control}"},  # type: ignore[attr-defined]
    )
    assert r.status_code == 200, r.text


def test_a_body_that_does_not_arrive_in_time_gets_408(gw: GatewayProcess) -> None:
    with closing(raw(gw)) as sock:
        sock.sendall(
            b"PATCH /api/v1/devices/lim-dev/labels HTTP/1.1\r\nHost: gw\r\n"
            b"Authorization: Bearer " + gw.control.encode() + b"\r\n"  # type: ignore[attr-defined]
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"labels": '
        )  # and the other 88 bytes never come
        status, headers, body = read_response(sock)
        assert status == 408
        assert json.loads(body) == {
            "detail": "the request body did not arrive within 2 s (api.body_timeout)",
            "code": "body_timeout",
        }
        assert headers["connection"] == "close"


# -- slow clients and connection caps ------------------------------------------------------------


def test_a_trickled_request_head_is_closed_with_408(gw: GatewayProcess) -> None:
    with closing(raw(gw)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
        sock.settimeout(0.3)
        answer = b""
        for i in range(1, 200):  # a header byte every 0.3 s, a new header now and then: never complete
            try:
                sock.sendall(b"X" if i % 20 else b"\r\nX-Slow: ")
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if not data:
                break
            answer += data
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b'"code": "header_timeout"' in answer


def test_connections_per_address_are_capped(gw: GatewayProcess) -> None:
    def attempt() -> bool:
        """Open the allowance, each answering a request; one more is refused. False: some earlier
        test's connection was still counted (closing is asynchronous), try again."""
        with ExitStack() as stack:
            held = [stack.enter_context(closing(raw(gw))) for _ in range(PER_ADDRESS)]
            for sock in held:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
                if read_response(sock)[0] != 200:
                    return False
            extra = stack.enter_context(closing(raw(gw)))
            status, headers, body = read_response(extra)
            assert status == 429, body
            assert json.loads(body)["code"] == "too_many_connections"
            assert headers["connection"] == "close"
            return True

    wait_until(attempt, what=f"{PER_ADDRESS} connections admitted and one more refused")
    # once they are closed, the address may connect again
    wait_until(
        lambda: httpx.get(gw.api_url + "/healthz").status_code == 200, what="a new connection admitted"
    )


# -- live feed subscriptions per token -------------------------------------------------------------


def test_feed_subscriptions_per_token_are_capped(gw: GatewayProcess) -> None:
    url = gw.api_url.replace("http://", "ws://") + "/api/v1/feed"

    async def subscribe(token: str) -> Any:
        ws = await connect(url)
        await ws.send(json.dumps({"type": "subscribe", "token": token}))
        return ws, json.loads(await ws.recv())

    async def main() -> None:
        control, read = gw.control, gw.read  # type: ignore[attr-defined]
        first, hello = await subscribe(control)
        assert hello["type"] == "subscribed"
        second, _ = await subscribe(control)
        third = await connect(url)
        await third.send(json.dumps({"type": "subscribe", "token": control}))
        with pytest.raises(ConnectionClosed) as closed:
            await third.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409
        assert "api.feed_subscribers_per_token" in closed.value.rcvd.reason
        other, hello = await subscribe(read)  # another token has its own allowance
        assert hello["type"] == "subscribed"
        await first.close()
        for _ in range(200):  # the gateway notices the close asynchronously: retry until admitted
            again = await connect(url)
            await again.send(json.dumps({"type": "subscribe", "token": control}))
            try:
                if json.loads(await again.recv())["type"] == "subscribed":
                    break
            except ConnectionClosed:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("a subscription was not admitted after one was closed")
        for ws in (second, other, again):
            await ws.close()

    asyncio.run(asyncio.wait_for(main(), 60))


# -- open commands per device ------------------------------------------------------------------------


def test_open_commands_per_device_are_capped_with_429(gw: GatewayProcess) -> None:
    headers = {"Authorization": f"Bearer {gw.control}"}  # type: ignore[attr-defined]
    url = gw.api_url + "/api/v1/devices/lim-dev/commands"
    body = {"name": "ping", "wait": False, "ttl": 600}
    ids = []
    for _ in range(3):  # lim-dev is offline: they stay queued
        r = httpx.post(url, json=body, headers=headers)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    r = httpx.post(url, json=body, headers=headers)
    assert r.status_code == 429
    assert r.json()["code"] == TooManyOpenCommands.code
    assert "has 3 commands queued or sent" in r.json()["detail"]
    cancelled = httpx.delete(gw.api_url + f"/api/v1/commands/{ids[0]}", headers=headers)
    assert cancelled.status_code == 200, cancelled.text
    r = httpx.post(url, json=body, headers=headers)
    assert r.status_code == 202, r.text


# -- /metrics ------------------------------------------------------------------------------------------


def http_series(gw: GatewayProcess) -> set[str]:
    text = httpx.get(gw.api_url + "/metrics").text
    return {
        line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("iotgw_http_requests_total{")
    }


def test_arbitrary_methods_do_not_add_metric_series(gw: GatewayProcess) -> None:
    before = http_series(gw)
    n = 5000  # distinct methods, pipelined on one connection (40k take a minute; the label is the point)
    with closing(raw(gw)) as sock:
        sock.sendall(b"".join(b"M%05d /metrics HTTP/1.1\r\nHost: gw\r\n\r\n" % i for i in range(n)))
        answers = 0
        data = b""
        while answers < n:
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {answers} answers"
            data += chunk
            answers += data.count(b"HTTP/1.1 405 ")
            data = data[data.rfind(b"HTTP/1.1 ") + 1 :] if b"HTTP/1.1 405 " in data else data
    after = http_series(gw)
    new = after - before
    assert all('method="other"' in s or ('route="/metrics"' in s and 'method="GET"' in s) for s in new), new
    assert len(new) <= 2, new  # other/405 on /metrics, and the GETs of this test's scrape


def test_metrics_render_on_a_worker_thread() -> None:
    threads: list[threading.Thread] = []

    def connections() -> int:
        threads.append(threading.current_thread())
        return 0

    zero = lambda: 0  # noqa: E731
    state = LiveState(
        connections=connections, refused_handshakes=zero, commits=zero, committed_samples=zero,
        pending_samples=zero, failed_commits=zero, open_commands=dict, finished_commands=dict,
        store_path=Path("/nonexistent"),
    )  # fmt: skip
    metrics = GatewayMetrics(state, IngestRate(zero))

    async def main() -> bytes:
        return await metrics.render()

    text = asyncio.run(main())
    assert b"iotgw_device_connections 0.0" in text
    assert threads and all(t is not threading.main_thread() for t in threads)


# -- credentials never shown ----------------------------------------------------------------------------


def test_influx_credentials_in_the_url_are_never_shown(gw: GatewayProcess) -> None:
    headers = {"Authorization": f"Bearer {gw.read}"}  # type: ignore[attr-defined]
    status = wait_until(
        lambda: (r := httpx.get(gw.api_url + "/api/v1/status", headers=headers)).json()["forwarders"] and r,
        what="the forwarder in the status",
    )
    target = status.json()["forwarders"][0]["target"]
    assert target == "v1 http://***@127.0.0.1:9/ database iotgw"
    cli = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", "--store", str(gw.store_path), "--json"],
        env=repo_env(), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "***@127.0.0.1:9" in cli.stdout
    for shown in (status.text, cli.stdout, cli.stderr, gw.log()):
        assert SECRET_PASSWORD not in shown and SECRET_USER not in shown


@pytest.fixture
def http_server() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server (stdlib) answering /write with 204 and recording Authorization headers."""
    import http.server

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_url_credentials_are_sent_as_basic_auth_and_not_shown(http_server: tuple[str, list[str]]) -> None:
    import base64

    from gateway.config import InfluxSettings
    from gateway.integrations.influx.writers import V1Writer

    where, seen = http_server
    writer = V1Writer(InfluxSettings(api="v1", url=f"http://{SECRET_USER}:tiger%40s3cret@{where}"))
    try:
        writer.write(b"m v=1 1")
    finally:
        writer.close()
    assert seen == ["Basic " + base64.b64encode(f"{SECRET_USER}:tiger@s3cret".encode()).decode()]
    assert writer.target == f"v1 http://***@{where} database iotgw"


# -- the command sweeper's timetable (in-process) ------------------------------------------------------


def test_the_timetable_visits_only_due_commands() -> None:
    deadlines = Deadlines()
    states = {f"long-{i}": "queued" for i in range(10_000)}
    for command_id in states:
        deadlines.add(command_id, "queued", 7 * 86_400_000)
    for i, at in enumerate((300, 100, 200)):
        states[f"short-{i}"] = "queued"
        deadlines.add(f"short-{i}", "queued", at)
    states["short-2"] = "succeeded"  # finished before it fell due: skipped
    asked: list[str] = []

    def current(command_id: str) -> str | None:
        asked.append(command_id)
        return states.get(command_id)

    assert [d.command_id for d in deadlines.due(1000, current)] == ["short-1", "short-0"]
    assert sorted(asked) == ["short-0", "short-1", "short-2"]  # not one of the 10,000 others
    assert list(deadlines.due(1000, current)) == []


def test_the_timetable_drops_stale_entries_once_they_are_the_majority() -> None:
    deadlines = Deadlines()
    for i in range(4000):
        deadlines.add(str(i), "queued", 10**12)
    deadlines.compact(lambda command_id: "queued")
    assert len(deadlines) == 4000
    deadlines.compact(lambda command_id: "queued" if int(command_id) < 1000 else None)
    assert len(deadlines) == 1000


def test_the_service_counts_open_commands_per_device_and_expires_by_timetable(tmp_path: Path) -> None:
    from gateway import store
    from gateway.operator.commands import CommandService
    from gateway.store import registry
    from gateway.store.ledger_writer import LedgerWriter
    from gateway.store.writer import GroupCommitter

    conn = store.connect(tmp_path / "store.db", synchronous="NORMAL")
    registry.add_devices(conn, ["a", "b"])
    a, b = registry.list_devices(conn)
    clock = [1_764_000_000_000]

    async def main() -> None:
        committer = GroupCommitter(
            store.connect(tmp_path / "store.db", synchronous="NORMAL", ledger_writable=False)
        )
        committer.start()
        ledger_writer = LedgerWriter(tmp_path / "store.db", synchronous="NORMAL")
        ledger_writer.start()
        service = CommandService(
            committer, ledger_writer, sweep_interval=3600, clock=lambda: clock[0], max_open_per_device=3
        )
        await service.start()
        try:
            short = await service.submit(a, "ping", {}, sender="op", ttl_s=1)
            for _ in range(2):
                await service.submit(a, "ping", {}, sender="op", ttl_s=86_400)
            with pytest.raises(TooManyOpenCommands):
                await service.submit(a, "ping", {}, sender="op", ttl_s=86_400)
            await service.submit(b, "ping", {}, sender="op", ttl_s=86_400)  # b has its own quota
            assert (service.open_for(a.id), service.open_for(b.id)) == (3, 1)
            assert service.open_counts == {"queued": 4, "sent": 0}
            clock[0] += 2000
            service.sweep()
            assert service.get(short.id) is None or service.get(short.id).state == "expired"  # type: ignore[union-attr]
            assert service.open_for(a.id) == 2
            assert service.open_counts == {"queued": 3, "sent": 0}
            await service.submit(a, "ping", {}, sender="op", ttl_s=86_400)  # room again
        finally:
            await service.stop()
            await ledger_writer.stop()
            await committer.stop()
            committer._conn.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    conn.close()
