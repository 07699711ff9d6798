"""Writers: send one line-protocol body to InfluxDB, blocking, in the caller's thread.

Two writers with one interface (``Writer``), chosen by ``influx.api``:

- ``V1Writer`` posts to ``/write`` (InfluxDB 1.x; also the v1-compatibility API
  of 2.x/3.x and VictoriaMetrics) with stdlib ``http.client`` over one
  keep-alive connection. Credentials go in an ``Authorization`` header (Basic
  for user/password, ``Token`` if a token is set), never in the URL.
- ``V2Writer`` hands the same pre-built body to ``influxdb-client``'s
  synchronous write API (``/api/v2/write``), which does no per-point work.

Both write with precision ``ms`` and raise ``WriteError``, whose ``retryable``
says what the delivery engine does next: wait and retry the same batch
(unreachable, 5xx, 429, credentials refused, database missing) or split it to
find the points InfluxDB refuses (other 4xx); ``sink.InfluxSink`` turns it into
the engine's ``DeliveryError``. The engine calls them from a worker thread,
never on the event loop.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse
from collections.abc import Callable
from typing import Protocol, cast

from gateway.config import InfluxSettings

__all__ = ["V1Writer", "V2Writer", "WriteError", "Writer", "make_writer", "redact_url"]


def redact_url(url: str) -> str:
    """``url`` without the ``user:password@`` part (``***@`` in its place), for status and logs.

    What ``target`` shows and every message naming ``influx.url`` goes through this: the status
    (``/api/v1/status`` to read-role operators, ``iotgw status``) and the log never carry a secret.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<an unparsable URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def _url_credentials(url: urllib.parse.SplitResult) -> tuple[str, str] | None:
    """The ``user:password`` of a URL (percent-decoded), or None."""
    if url.username is None:
        return None
    return urllib.parse.unquote(url.username), urllib.parse.unquote(url.password or "")


class WriteError(Exception):
    """InfluxDB did not accept a body; ``status`` is None when it was not reached at all."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """True: the same body may succeed later. False: InfluxDB refuses (some of) its points."""
        status = self.status
        return status is None or status >= 500 or status in (401, 403, 404, 408, 429)

    @property
    def summary(self) -> str:
        where = "unreachable" if self.status is None else f"HTTP {self.status}"
        hint = {
            401: " (credentials refused)",
            403: " (not allowed to write)",
            404: " (database/bucket not found)",
        }
        return f"{where}{hint.get(self.status or 0, '')}: {self.message}"


class Writer(Protocol):
    """What the InfluxDB sink needs from a writer."""

    target: str
    """For people: API, URL and database or bucket (never credentials)."""

    def write(self, body: bytes) -> None:
        """Send lines joined by LF (precision ms); raise WriteError unless InfluxDB accepted them."""

    def check(self) -> None:
        """Raise WriteError unless the target answers and accepts our credentials."""

    def close(self) -> None: ...


def make_writer(settings: InfluxSettings) -> Writer:
    """The writer ``settings.api`` asks for."""
    if settings.api == "v1":
        return V1Writer(settings)
    return V2Writer(settings)


def _error_text(body: bytes, fallback: str) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        decoded = json.loads(text)
    except ValueError:
        return text[:2000] or fallback
    if isinstance(decoded, dict):
        for key in ("error", "message"):
            if isinstance(decoded.get(key), str):
                return str(decoded[key])[:2000]
    return text[:2000] or fallback


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: ignore, the backoff applies


class V1Writer:
    """``POST /write?db=..&rp=..&precision=ms`` over a keep-alive ``http.client`` connection."""

    def __init__(self, settings: InfluxSettings) -> None:
        url = urllib.parse.urlsplit(settings.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"influx.url {redact_url(settings.url)!r} is not an http:// or https:// URL")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._timeout = settings.timeout
        query = {"db": settings.database, "precision": "ms"}
        if settings.retention_policy:
            query["rp"] = settings.retention_policy
        self._path = url.path.rstrip("/") + "/write?" + urllib.parse.urlencode(query)
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        in_url = _url_credentials(url)  # user:password@ in the URL: HTTP Basic, as curl would
        if settings.token:
            self._headers["Authorization"] = f"Token {settings.token}"
        elif settings.username or in_url:
            user, password = (
                (settings.username, settings.password) if settings.username else in_url or ("", "")
            )
            pair = f"{user}:{password}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        rp = f", retention policy {settings.retention_policy}" if settings.retention_policy else ""
        where = redact_url(urllib.parse.urlunsplit((url.scheme, url.netloc, url.path, "", "")))
        self.target = f"v1 {where} database {settings.database}{rp}"
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def write(self, body: bytes) -> None:
        reused = self._conn is not None
        try:
            status, text, retry_after = self._post(body)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            if not reused:
                raise WriteError(f"cannot connect: {exc}") from None
            try:  # the server may have closed an idle keep-alive connection: once more, fresh
                status, text, retry_after = self._post(body)
            except (OSError, http.client.HTTPException) as exc2:
                self.close()
                raise WriteError(f"cannot connect: {exc2}") from None
        if 200 <= status < 300:
            return
        raise WriteError(text, status, retry_after)

    def _post(self, body: bytes) -> tuple[int, str, float | None]:
        if self._conn is None:
            self._conn = self._connect()
        self._conn.request("POST", self._path, body, self._headers)
        response = self._conn.getresponse()
        data = response.read()
        if response.will_close:
            self.close()
        status = response.status
        if 200 <= status < 300:
            return status, "", None
        return status, _error_text(data, response.reason), _retry_after(response.getheader("Retry-After"))

    def check(self) -> None:
        # An empty body: InfluxDB checks credentials and the database, then writes nothing (204).
        self.write(b"")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class V2Writer:
    """``/api/v2/write`` through influxdb-client's synchronous write API, given whole bodies."""

    def __init__(self, settings: InfluxSettings) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self._bucket = settings.bucket
        self._org = settings.org
        self._client = InfluxDBClient(
            url=settings.url,
            token=settings.token,
            org=self._org,
            timeout=int(settings.timeout * 1000),
            retries=False,  # the delivery engine retries, with backoff, and knows when to split
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)
        org = f" org {settings.org}" if settings.org else ""
        self.target = f"v2 {redact_url(settings.url.rstrip('/'))}{org} bucket {settings.bucket}"

    def write(self, body: bytes) -> None:
        from influxdb_client.domain.write_precision import WritePrecision

        ms = cast(WritePrecision, WritePrecision.MS)
        self._guarded(lambda: self._api.write(self._bucket, self._org, record=body, write_precision=ms))

    def check(self) -> None:
        from influxdb_client.service.write_service import WriteService

        # An empty write checks reachability, credentials and the bucket, and writes nothing.
        service = WriteService(self._client.api_client)  # type: ignore[no-untyped-call]
        try:
            self._guarded(
                lambda: service.post_write(  # type: ignore[no-untyped-call]
                    org=self._org, bucket=self._bucket, body=b"", precision="ms"
                )
            )
        except WriteError as exc:
            if exc.status != 400:  # 400 "writing requires points": reached, authorised, bucket found
                raise

    def _guarded(self, call: Callable[[], object]) -> None:
        """Run a client call; turn what it raises into WriteError."""
        import urllib3
        from influxdb_client.client.exceptions import InfluxDBError

        try:
            call()
        except InfluxDBError as exc:
            status = getattr(exc, "status", None)
            if status is None and exc.response is not None:
                status = getattr(exc.response, "status", None)
            raw = getattr(exc, "body", None) or exc.message
            message = _error_text(raw, str(exc)) if isinstance(raw, bytes) else str(raw or exc)
            if status is None:
                raise WriteError(f"cannot connect: {message}") from None
            retry_after = _retry_after(str(exc.retry_after)) if exc.retry_after else None
            raise WriteError(message, int(status), retry_after) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise WriteError(f"cannot connect: {exc}") from None

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]
