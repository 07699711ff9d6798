"""The operator API served by uvicorn inside the gateway's event loop.

uvicorn's ``Server.serve()`` would take over SIGINT/SIGTERM; the gateway owns
the signals (``Gateway.run_until_signalled``), so :class:`_EmbeddedServer`
leaves them alone and :meth:`ApiServer.stop` asks uvicorn to exit instead:
stop accepting, finish in-flight requests within ``GRACE_S``, close the rest.
The listening socket is bound here, so port 0 works and a taken port fails
``start()`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from gateway.config import ApiSettings
from gateway.device.admission import AddressLimiter
from gateway.device.server import DeviceServer
from gateway.integrations.influx.sink import NAME as INFLUX
from gateway.integrations.mqtt.sink import NAME as MQTT
from gateway.operator.api.connections import ConnectionLimits
from gateway.operator.api.context import ApiContext
from gateway.operator.commands import CommandService
from gateway.operator.feed import Feed
from gateway.operator.metrics import GatewayMetrics, IngestRate, LiveState, LoopFigures, read_fleet
from gateway.store.lookups import Lookups
from gateway.store.readings import ReadPool
from gateway.store.writer import GroupCommitter
from iotgw_common.background_lane import BackgroundLaneLoop
from iotgw_common.urgency import urgent_context

log = logging.getLogger(__name__)

GRACE_S = 5


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the gateway handles signals


def _listen(host: str, port: int, family: socket.AddressFamily) -> socket.socket:
    """A listening TCP socket. Made with ``IPPROTO_TCP`` explicitly: asyncio turns Nagle off
    (TCP_NODELAY) only on sockets whose ``proto`` says TCP, and ``socket.create_server``'s say 0;
    with Nagle on, every keep-alive response waits ~40 ms for a delayed ACK."""
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _build_route_tables(app: FastAPI) -> None:
    """Have FastAPI build its route tables now: it does so on the first request that needs them
    (tens of milliseconds on a busy gateway), which would be the first operator's command."""
    for method, path in (("GET", "/"), ("POST", "/api/v1/devices/-/commands")):
        scope: dict[str, Any] = {
            "type": "http",
            "method": method,
            "path": path,
            "root_path": "",
            "headers": [],
        }
        for route in app.router.routes:
            route.matches(scope)


class ApiServer:
    """``await start()`` serves ``app`` on host:port; ``await stop()``; ``port`` is the bound one.

    ``ssl_context`` (iotgw_common.tls.server_context) serves ``https://``. The server keeps
    using that very context, so a certificate reloaded into it (SIGHUP, gateway/cli/serve.py)
    is what new connections get; keep-alive connections already open keep the old one.
    """

    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        settings: ApiSettings | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.settings = settings or ApiSettings()
        """The connection limits (docs/api.md, "Limits and quotas"); host and port come from the arguments."""
        self.limits: ConnectionLimits | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        if ":" in shown:
            shown = f"[{shown}]"
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{shown}:{self.port}"

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = _listen(self.host, self.port, family)
        self.port = sock.getsockname()[1]
        s = self.settings
        limits = self.limits = ConnectionLimits(
            max_connections=s.max_connections,
            per_address=AddressLimiter(s.max_connections_per_address, s.exempt_networks()),
            header_timeout=s.header_timeout,
        )
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=GRACE_S,
            http=limits.http_protocol(),  # per-address and total caps, header timeout (connections.py)
            ws=limits.ws_protocol(),
            limit_concurrency=s.max_connections,  # requests in progress; beyond: 503
            timeout_keep_alive=max(1, round(s.keep_alive_timeout)),
            h11_max_incomplete_event_size=s.max_header_bytes,
        )
        if self.ssl_context is not None:
            # uvicorn builds its own context from ssl_certfile at load(); load first, then hand
            # it ours, which create_server uses as is (and SIGHUP can reload in place).
            config.load()
            config.ssl = self.ssl_context
        server = self._server = _EmbeddedServer(config)
        # in the event loop's urgent lane (iotgw_common.urgency): its reads and its requests'
        # tasks go before the queued device frames; the live feed's streams opt out
        self._task = asyncio.create_task(
            server.serve(sockets=[sock]), name="operator-api", context=urgent_context()
        )
        while not server.started:
            if self._task.done():
                sock.close()
                self._task.result()  # raises what made uvicorn fail
                raise RuntimeError("the operator API did not start")
            await asyncio.sleep(0.005)
        _build_route_tables(self.app)

    async def stop(self) -> None:
        """Stop accepting, let requests finish (``GRACE_S``), close; safe twice."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), GRACE_S + 2)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._server = None
        self._task = None


class OperatorApi:
    """The whole operator plane of one gateway: read connections, metrics, the app, the server.

    ``Gateway.start`` creates it after the device server and awaits :meth:`start`;
    ``Gateway.stop`` awaits :meth:`stop` first, so no request runs while the rest closes.
    """

    def __init__(
        self,
        settings: ApiSettings,
        commands: CommandService,
        devices: DeviceServer,
        committer: GroupCommitter,
        store_path: Path,
        feed: Feed | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self._ssl = ssl_context
        self._parts = (commands, devices, committer, store_path)
        self._feed = feed
        self.live_status: dict[str, Callable[[], dict[str, Any]]] = {}
        """Sink name -> its live state (the MQTT bridge's connection), shown in /api/v1/status."""
        self.locate: Callable[[str], str | None] | None = None
        """Device name -> the fleet gateway holding it (docs/scale-out.md); None: no fleet."""
        self.server: ApiServer | None = None
        self._reads: ReadPool | None = None
        self._lookups: Lookups | None = None
        self._sampler: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    async def start(self) -> None:
        from gateway.operator.api.app import create_app

        commands, devices, committer, store_path = self._parts
        rate = IngestRate(lambda: committer.committed_samples)
        self._reads = reads = ReadPool(store_path, self.settings.read_connections)
        self._lookups = Lookups(store_path)
        live = LiveState(
            connections=lambda: len(devices.sessions),
            refused_handshakes=lambda: devices.refused_handshakes,
            commits=lambda: committer.commits,
            committed_samples=lambda: committer.committed_samples,
            pending_samples=lambda: committer.pending_samples,
            failed_commits=lambda: committer.failed_commits,
            open_commands=lambda: commands.open_counts,
            finished_commands=lambda: dict(commands.finished),
            store_path=store_path,
            online_ids=lambda: list(devices.sessions),
            fleet=lambda: reads.run(functools.partial(read_fleet, sinks=(INFLUX, MQTT))),
            loop_figures=_loop_figures(asyncio.get_running_loop()),
        )
        metrics = GatewayMetrics(live, rate)
        commands.round_trip_observers.append(metrics.command_round_trip.observe)
        commands.phase_observers.append(
            lambda phase, seconds: metrics.command_phases.labels(phase).observe(seconds)
        )
        ctx = ApiContext(
            settings=self.settings,
            commands=commands,
            devices=devices,
            committer=committer,
            reads=self._reads,
            lookups=self._lookups,
            store_path=store_path,
            rate=rate,
            metrics=metrics,
            feed=self._feed,
            live_status=self.live_status,
            locate=self.locate,
        )
        self._sampler = asyncio.create_task(_sample_every_second(rate), name="ingest-rate")
        server = ApiServer(create_app(ctx), self.settings.host, self.settings.port, self._ssl, self.settings)
        try:
            await server.start()
        except BaseException:
            await self.stop()
            raise
        self.server = server
        log.info("operator API at %s (OpenAPI: %s%s)", server.url, server.url, "/api/v1/openapi.json")

    async def stop(self) -> None:
        """Stop serving, then close the read connections; safe twice."""
        if self.server is not None:
            await self.server.stop()
            self.server = None
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        if self._reads is not None:
            self._reads.close()
            self._reads = None
        if self._lookups is not None:
            self._lookups.close()
            self._lookups = None


def _loop_figures(loop: asyncio.AbstractEventLoop) -> Callable[[], LoopFigures] | None:
    """The background lane's and pacing's figures of ``loop``, read on the scraping thread."""
    if not isinstance(loop, BackgroundLaneLoop):
        return None
    return lambda: LoopFigures(
        background_callbacks=loop.background_callbacks,
        background_queued=loop.background_queued,
        carried_sockets=loop.carried_sockets,
    )


async def _sample_every_second(rate: IngestRate) -> None:
    while True:
        rate.sample()
        await asyncio.sleep(1.0)
