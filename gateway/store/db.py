"""The one way the store opens and closes a transaction.

Every store connection is opened with ``isolation_level=None`` (see
``gateway.store.schema.connect``), so sqlite3 never begins a transaction on its own: outside
an explicit ``BEGIN`` each statement commits by itself. Code that must make several
statements atomic wraps them in :class:`transaction` instead of writing its own
``BEGIN``/``COMMIT``/``ROLLBACK`` block.
"""

from __future__ import annotations

import sqlite3
from types import TracebackType


class transaction:  # lower case: used like a function, ``with transaction(conn):``
    """Run the ``with`` body in one transaction on ``conn``; ``as`` gives ``conn`` back.

    Issues ``BEGIN`` (``BEGIN IMMEDIATE`` when ``immediate`` is true, which takes the write
    lock up front so a later write cannot fail with ``SQLITE_BUSY`` half way) on enter,
    ``COMMIT`` when the body returns, and ``ROLLBACK`` when the body raises anything
    (``BaseException``, so a cancelled task or ``KeyboardInterrupt`` does not leave the
    connection inside a transaction); the exception is re-raised. If ``COMMIT`` itself fails
    the transaction is rolled back and the error re-raised.

    The caller must pass a connection opened with ``isolation_level=None`` that is not
    already inside a transaction (SQLite does not nest ``BEGIN``), and must use it from one
    thread at a time. A class rather than a ``@contextmanager`` generator: the group-commit
    writer enters one per commit, and this costs no more than writing the statements inline.
    """

    __slots__ = ("_begin", "_conn")

    def __init__(self, conn: sqlite3.Connection, *, immediate: bool = False) -> None:
        self._conn = conn
        self._begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute(self._begin)
        return self._conn

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn = self._conn
        if exc_type is None:
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        elif conn.in_transaction:
            conn.execute("ROLLBACK")


__all__ = ["transaction"]
