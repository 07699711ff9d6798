"""`iotgw device …`, configuration overrides, and the store's housekeeping."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway import store
from gateway.config import ConfigError, env_names, load_config
from gateway.store import registry
from gateway.store.retention import delete_older_than
from gateway.tokens import hash_token
from tests.support.gateway import repo_env


def iotgw(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=cwd,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_device_add_shows_the_token_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    db = str(tmp_path / "s.sqlite3")
    added = iotgw("device", "add", "pi-1", "--label", "site=farm", "--store", db, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    token = next(word for word in added.stdout.split() if word.startswith("iotgw_d_"))
    assert len(token) > 40
    raw = Path(db).read_bytes() + (Path(db + "-wal").read_bytes() if Path(db + "-wal").exists() else b"")
    assert token.encode() not in raw
    conn = store.connect(db)
    assert registry.find_by_token(conn, token).name == "pi-1"  # type: ignore[union-attr]
    assert conn.execute("SELECT token_hash FROM devices").fetchone()[0] == hash_token(token)
    conn.close()

    again = iotgw("device", "add", "pi-1", "--store", db, cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = iotgw("device", "add", "bad name!", "--store", db, cwd=tmp_path)
    assert bad.returncode == 2 and "invalid device name" in bad.stderr

    listed = iotgw("device", "list", "--json", "--store", db, cwd=tmp_path)
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["labels"], r["readings"]) for r in rows] == [("pi-1", {"site": "farm"}, 0)]
    table = iotgw("device", "list", "--store", db, cwd=tmp_path).stdout
    assert "pi-1" in table and "never" in table and "site=farm" in table

    rotated = iotgw("device", "rotate-token", "pi-1", "--store", db, cwd=tmp_path)
    new_token = next(word for word in rotated.stdout.split() if word.startswith("iotgw_d_"))
    conn = store.connect(db)
    assert registry.find_by_token(conn, token) is None and registry.find_by_token(conn, new_token) is not None
    conn.close()

    removed = iotgw("device", "remove", "pi-1", "--store", db, cwd=tmp_path)
    assert removed.returncode == 0 and "no longer works" in removed.stdout
    assert json.loads(iotgw("device", "list", "--json", "--store", db, cwd=tmp_path).stdout) == []
    gone = iotgw("device", "remove", "pi-1", "--store", db, cwd=tmp_path)
    assert gone.returncode == 2 and "no device named" in gone.stderr


def test_listing_a_store_that_does_not_exist_says_so(tmp_path: Path) -> None:
    result = iotgw("device", "list", "--store", str(tmp_path / "nope.sqlite3"), cwd=tmp_path)
    assert result.returncode == 2 and "no store at" in result.stderr


def test_config_file_and_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[device]\nport = 9000\nhello_timeout = 3\n[store]\npath = "x.sqlite3"\n')
    config = load_config(path, environ={"IOTGW_DEVICE_PORT": "9100", "IOTGW_STORE_SYNCHRONOUS": "NORMAL"})
    assert (config.device.port, config.device.hello_timeout) == (9100, 3.0)
    assert (config.store.path, config.store.synchronous) == ("x.sqlite3", "NORMAL")
    assert "IOTGW_STORE_RETENTION_DAYS" in env_names()

    with pytest.raises(ConfigError, match="port"):
        load_config(path, environ={"IOTGW_DEVICE_PORT": "70000"})
    path.write_text("[device]\nprot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})


def test_retention_deletes_only_old_readings_and_events(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "s.sqlite3")
    registry.add_device(conn, "a")
    registry.add_device(conn, "b")
    now = int(time.time() * 1000)
    day = 86_400_000
    rows = [
        (device, now - age * day, i, "{}")
        for i, (device, age) in enumerate([(1, 40), (1, 1), (2, 31), (2, 0)])
    ]
    conn.executemany("INSERT INTO readings (device_id, ts, seq, data) VALUES (?, ?, ?, ?)", rows)
    conn.execute(
        "INSERT INTO events (device_id, ts, seq, name, data) VALUES (1, ?, 9, 'door', '{}')",
        (now - 40 * day,),
    )
    assert delete_older_than(conn, now - 30 * day) == 2
    assert sorted(r[0] for r in conn.execute("SELECT ts FROM readings")) == [now - day, now]
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    conn.close()


def test_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store.connect(path).close()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 999")
    raw.close()
    with pytest.raises(RuntimeError, match="upgrade iotgw"):
        store.connect(path)
