"""Revocation on the device plane: removing a device or rotating its token ends its session.

``iotgw device remove`` and ``iotgw device rotate-token`` write the store from another
process; each logs a revocation (``device_revocations``, gateway/store/registry.py). The
gateway learns of them three ways, so that no window is left open:

* the handshake reads the log's watermark, then looks the token up (:func:`admit`): a
  revocation logged later than that watermark applies to the session;
* ``welcome`` checks the token again (:func:`recheck`): this covers a revocation that came
  between the handshake and the session holding the device, which the watch below could
  not match to a session yet; the watermark read then is what the group committer is told
  (``GroupCommitter.admit``), so it refuses the session's frames, even ones already queued,
  in the first commit after the revocation (gateway/store/batches.py);
* :class:`RevocationWatch` polls ``PRAGMA data_version`` on the server's read connection
  (it changes when any other connection commits) a few times a second, reads the log
  only then, and tells the server, which closes the session: 4003 after a removal, 4005
  after a rotation (docs/protocol.md, section 11).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from gateway.store import registry
from gateway.store.registry import DeviceRecord
from gateway.tokens import hash_token
from iotgw_common.protocol import CloseCode

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25
"""How often the watch looks at ``PRAGMA data_version`` (one cheap pragma per look)."""


@dataclass(frozen=True, slots=True)
class Admission:
    """What the handshake learnt: the device, its token's hash, the revocation watermark."""

    record: DeviceRecord
    token_hash: str
    watermark: int


def admit(conn: sqlite3.Connection, token: str) -> Admission | None:
    """The device ``token`` belongs to, or None; the watermark is read before the lookup."""
    watermark = registry.revocation_watermark(conn)
    record = registry.find_by_token(conn, token)
    return None if record is None else Admission(record, hash_token(token), watermark)


def recheck(
    conn: sqlite3.Connection, device_id: int, token_hash: str
) -> tuple[int, tuple[CloseCode, str] | None]:
    """Whether the session's token still holds: (new watermark, None) or (watermark, close)."""
    watermark = registry.revocation_watermark(conn)
    current = registry.token_hash_of(conn, device_id)
    if current == token_hash:
        return watermark, None
    return watermark, closing(registry.REMOVED if current is None else registry.ROTATED)


def closing(kind: str) -> tuple[CloseCode, str]:
    """The close code and reason for a session whose device was removed or re-tokened."""
    if kind == registry.REMOVED:
        return CloseCode.DEVICE_REMOVED, "the device was removed from the gateway"
    return CloseCode.TOKEN_REVOKED, "the device's token was rotated; connect with the new token"


Revoked = Callable[[int, int, str], None]
"""``on_revoked(log_id, device_id, kind)``: called on the event loop, oldest first."""


class RevocationWatch:
    """Polls the store for revocations; ``start()`` on the loop, ``await stop()``."""

    def __init__(
        self, conn: sqlite3.Connection, on_revoked: Revoked, *, interval: float = POLL_INTERVAL_S
    ) -> None:
        self._conn = conn
        self._on_revoked = on_revoked
        self._interval = interval
        self._cursor = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling; revocations logged before now are not reported (no session predates them)."""
        self._cursor = registry.revocation_watermark(self._conn)
        self._task = asyncio.create_task(self._run(), name="revocation-watch")

    async def stop(self) -> None:
        """Stop polling; safe to call twice."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def poll(self) -> None:
        """Report the revocations logged since the last poll (the loop calls this)."""
        for log_id, device_id, kind in registry.revocations_after(self._conn, self._cursor):
            self._cursor = log_id
            self._on_revoked(log_id, device_id, kind)

    async def _run(self) -> None:
        conn = self._conn
        version = _data_version(conn)
        while True:
            await asyncio.sleep(self._interval)
            try:
                seen = _data_version(conn)
                if seen != version:
                    self.poll()
                    version = seen
            except sqlite3.Error as exc:  # busy or a disk error: try again at the next look
                log.warning("revocation watch: cannot read the store: %s", exc)
            except Exception:  # an observer failed: keep watching
                log.exception("revocation watch: a revocation handler failed")


def _data_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA data_version").fetchone()
    return int(version)


__all__ = ["POLL_INTERVAL_S", "Admission", "RevocationWatch", "admit", "closing", "recheck"]
