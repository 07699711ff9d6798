"""The integrations' tests use the store-level fixtures (a temporary store and a connection to it)."""

from tests.store.conftest import conn, path

__all__ = ["conn", "path"]
