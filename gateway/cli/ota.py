"""``iotgw firmware ota DEVICE``: update a board's firmware files over its own connection.

Nothing new in the gateway: the update is a series of ordinary ``ota`` commands sent through
the operator API (so the command ledger records every step, with who sent it), which the
firmware declares in its ``hello`` (``firmware_micropython/ota.py``):

1. ``begin`` with the version and every file's SHA-256;
2. ``chunk`` per piece of each file (base64, under the API's 4 KB args limit), resendable;
3. ``commit``: the board verifies every hash, marks the update pending and reboots.

At the next boot ``otaboot.py`` moves the new files into place; the board keeps them once it
reaches the gateway (its ``hello`` then names the new version), and rolls back by itself after
two boots that do not. ``--wait`` follows the device until its ``hello`` shows the outcome.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from gateway.cli.client import ApiClient, ApiError
from gateway.cli.firmware import FirmwareError, firmware_dir, stage

CHUNK = 2048
"""Raw bytes per ``chunk`` command: 2,732 in base64, inside the API's 4,096-byte args limit."""


def plan(source: Path, *, compiled: bool) -> dict[str, bytes]:
    """{board path: content} of every firmware file, compiled to .mpy if asked (entry points stay .py)."""
    with tempfile.TemporaryDirectory(prefix="iotgw-ota-") as tmp:
        staging = Path(tmp)
        files = stage(staging, compiled=compiled, source=source)
        return {f.relative_to(staging).as_posix(): f.read_bytes() for f in files}


def version_of(files: dict[str, bytes]) -> str:
    """The VERSION string compat.py declares (what the board's hello will name)."""
    for line in files.get("compat.py", b"").decode(errors="replace").splitlines():
        if line.startswith("VERSION = "):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def send(client: ApiClient, device: str, args: dict[str, Any], timeout: float = 30.0) -> Any:
    """One ``ota`` command, waited for; raises FirmwareError unless it succeeded."""
    path = f"/api/v1/devices/{urllib.parse.quote(device, safe='')}/commands"
    body = {"name": "ota", "args": args, "timeout": timeout, "ttl": timeout, "wait": True}
    try:
        _, command = client.request("POST", path, body=body, timeout=timeout + 30)
    except ApiError as exc:
        raise FirmwareError(f"{args['op']}: {exc}") from None
    if command.get("state") != "succeeded":
        raise FirmwareError(
            f"{args['op']} {args.get('name', '')}: {command.get('state')}: {command.get('error')}"
        )
    return command.get("value")


def update(client: ApiClient, device: str, files: dict[str, bytes], version: str) -> int:
    """Send begin, every chunk and commit; prints one line per file. Returns the commands sent."""
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    send(client, device, {"op": "begin", "version": version, "files": digests})
    sent = 1
    for name, data in files.items():
        for offset in range(0, max(len(data), 1), CHUNK):
            piece = base64.b64encode(data[offset : offset + CHUNK]).decode()
            send(client, device, {"op": "chunk", "name": name, "offset": offset, "data": piece})
            sent += 1
        print(f"  {name}: {len(data)} bytes, sha256 {digests[name][:16]}...")
    value = send(client, device, {"op": "commit"})
    print(f"committed {value}: the board reboots into {version}, on trial until it reaches the gateway")
    return sent + 1


def wait_outcome(client: ApiClient, device: str, version: str, timeout: float) -> bool:
    """Follow the device until its hello names ``version`` (kept) or reports a rollback."""
    deadline = time.monotonic() + timeout
    path = f"/api/v1/devices/{urllib.parse.quote(device, safe='')}"
    while time.monotonic() < deadline:
        try:
            record = client.get(path)
        except ApiError:
            record = {}
        info = record.get("info") or {}
        if str(info.get("firmware_update", "")).startswith("rolled_back"):
            print(f"{device}: rolled back ({info['firmware_update']}); still {record.get('agent')}")
            return False
        if record.get("online") and str(record.get("agent", "")).endswith("/" + version):
            print(f"{device}: running {record.get('agent')}")
            return True
        time.sleep(1.0)
    print(f"{device}: no outcome within {timeout:.0f} s")
    return False


def run(client: ApiClient, device: str, *, source: Path | None, compiled: bool, wait: float) -> int:
    files = plan(source or firmware_dir(), compiled=compiled)
    version = version_of(files)
    print(f"updating {device} to {version}: {len(files)} files")
    update(client, device, files, version)
    if wait:
        return 0 if wait_outcome(client, device, version, wait) else 1
    return 0
