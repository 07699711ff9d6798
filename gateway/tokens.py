"""Bearer tokens: made here, shown once, stored only as a hash.

Tokens carry 256 random bits, so a plain SHA-256 is a safe hash at rest: there
is nothing to brute-force that a slow password hash would protect (unlike
human-chosen passwords). Lookup by hash is then a single indexed query.
"""

from __future__ import annotations

import hashlib
import secrets

DEVICE_PREFIX = "iotgw_d_"


def new_token(prefix: str = DEVICE_PREFIX) -> str:
    """A fresh token; the caller shows it once and stores ``hash_token`` of it."""
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Hex SHA-256 of the token, the only form the store keeps."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 256:
        return None
    return token
