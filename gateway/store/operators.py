"""Operator tokens: who may use the HTTP API, and with which role.

A token is made by ``iotgw token add NAME --role read|control``, shown once,
and kept only as its SHA-256 (``tokens.hash_token``; the ``iotgw_o_`` prefix
tells it apart from a device token at a glance). Roles:

* ``read``: every GET endpoint (devices, readings, commands, status);
* ``control``: everything ``read`` may, plus sending and cancelling commands
  and editing device labels.

Plain functions over a store connection, like ``registry``: the CLI writes,
the API looks tokens up on its read connections.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Literal

from gateway.tokens import hash_token, new_token
from iotgw_common.clock import now_ms

OPERATOR_PREFIX = "iotgw_o_"
Role = Literal["read", "control"]
ROLES: tuple[Role, ...] = ("read", "control")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")


class OperatorError(ValueError):
    """An operator request cannot be done (bad name or role, duplicate, unknown operator)."""


@dataclass(slots=True, frozen=True)
class Operator:
    """One operator token's owner as the store holds it (never the token itself)."""

    id: int
    name: str
    role: Role
    created_ms: int
    last_used_ms: int | None = None

    def may(self, role: Role) -> bool:
        """True when this operator's role includes ``role`` (control includes read)."""
        return role == "read" or self.role == "control"


_COLUMNS = "id, name, role, created_ms, last_used_ms"


def add_operator(conn: sqlite3.Connection, name: str, role: str) -> str:
    """Create operator ``name`` with ``role`` and return its token; only the hash is kept.

    The caller shows the token now: it cannot be recovered. Raises OperatorError.
    """
    if not _NAME.match(name):
        raise OperatorError(
            f"invalid operator name {name!r}: use 1-64 letters, digits, '_', '.', '@', '-', "
            "starting with a letter or digit"
        )
    if role not in ROLES:
        raise OperatorError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    token = new_token(OPERATOR_PREFIX)
    try:
        conn.execute(
            "INSERT INTO operators (name, token_hash, role, created_ms) VALUES (?, ?, ?, ?)",
            (name, hash_token(token), role, now_ms()),
        )
    except sqlite3.IntegrityError:
        raise OperatorError(f"an operator named {name!r} already exists") from None
    return token


def remove_operator(conn: sqlite3.Connection, name: str) -> None:
    """Delete ``name``; its token stops working at once. Raises OperatorError if unknown."""
    if conn.execute("DELETE FROM operators WHERE name = ?", (name,)).rowcount == 0:
        raise OperatorError(f"no operator named {name!r}")


def list_operators(conn: sqlite3.Connection) -> list[Operator]:
    return [_operator(row) for row in conn.execute(f"SELECT {_COLUMNS} FROM operators ORDER BY name")]


def find_by_token(conn: sqlite3.Connection, token: str) -> Operator | None:
    """The operator owning ``token``, or None (wrong prefix, unknown or removed)."""
    if not token.startswith(OPERATOR_PREFIX):
        return None
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM operators WHERE token_hash = ?", (hash_token(token),)
    ).fetchone()
    return None if row is None else _operator(row)


def touch(conn: sqlite3.Connection, operator_id: int, now_ms: int) -> None:
    """Record that the operator's token was used (the API calls this at most once a minute)."""
    conn.execute("UPDATE operators SET last_used_ms = ? WHERE id = ?", (now_ms, operator_id))


def _operator(row: tuple[int, str, Role, int, int | None]) -> Operator:
    return Operator(id=row[0], name=row[1], role=row[2], created_ms=row[3], last_used_ms=row[4])


__all__ = [
    "OPERATOR_PREFIX",
    "ROLES",
    "Operator",
    "OperatorError",
    "Role",
    "add_operator",
    "find_by_token",
    "list_operators",
    "remove_operator",
    "touch",
]
