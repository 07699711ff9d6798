"""A temporary store for the store-level tests: ``path`` to it and ``conn``, the test's own connection.

Code under test (a group committer, a delivery engine) opens its own connections to ``path``;
``conn`` is for the test's set-up and its reads of what the code recorded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import store


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite3"


@pytest.fixture
def conn(path: Path) -> Iterator[sqlite3.Connection]:
    connection = store.connect(path, synchronous="NORMAL")
    yield connection
    connection.close()
