"""MicroPython on the board itself: flash it, provision it, follow its console (``iotgw firmware ...``).

``flash`` puts the MicroPython image the user downloaded on the board (esptool from PyPI for an
ESP32, a UF2 copy for a Pico W); ``provision`` writes WiFi, the gateway URL and the device token
as a checked ``config.json`` over USB (mpremote), so nobody edits JSON by hand; ``logs`` attaches
to the board's console. Each prints the exact commands it runs; ``--dry-run`` stops there.
``add_firmware_commands`` registers them beside ``deploy`` (firmware.py) on the root parser.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from gateway.cli.firmware import FirmwareError, check_board_config, deploy, firmware_dir, tool

# -- flash: MicroPython itself onto a board ------------------------------------------------------

#: Where the MicroPython image goes in flash, per esptool chip (micropython.org download pages).
ESP_OFFSETS = {"esp32": "0x1000", "esp32s2": "0x1000", "esp32s3": "0x0", "esp32c3": "0x0", "esp32c6": "0x0"}
UF2_MAGIC = b"UF2\n"
ESP_IMAGE_MAGIC = 0xE9


def flash_steps(
    board: str, image: Path, *, port: str | None, drive: Path | None, chip: str = "esp32"
) -> list[list[str]]:
    """The exact commands that put the MicroPython ``image`` (downloaded by the user) on a board.

    ESP32: ``esptool erase-flash`` then ``write-flash`` at the chip's offset (esptool from PyPI,
    run as ``python -m esptool``). Pico W: copy the ``.uf2`` onto the RPI-RP2 drive the board shows
    while BOOTSEL is held. Refuses an image that is not one for that board.
    """
    head = image.read_bytes()[:512] if image.is_file() else b""
    if not head:
        raise FirmwareError(f"{image}: no such file (download it from https://micropython.org/download/)")
    if board == "esp32":
        if chip not in ESP_OFFSETS:
            raise FirmwareError(f"unknown chip {chip!r}; known: {', '.join(sorted(ESP_OFFSETS))}")
        if head[0] != ESP_IMAGE_MAGIC:
            raise FirmwareError(f"{image} is not an ESP32 firmware image (.bin from micropython.org)")
        if not port:
            raise FirmwareError("--port is needed for an ESP32 (e.g. /dev/ttyUSB0)")
        esptool = [sys.executable, "-m", "esptool", "--chip", chip, "--port", port]
        return [
            [*esptool, "erase-flash"],
            [*esptool, "--baud", "460800", "write-flash", "-z", ESP_OFFSETS[chip], str(image)],
        ]
    if board == "pico":
        if head[:4] != UF2_MAGIC:
            raise FirmwareError(f"{image} is not a UF2 file (RPI_PICO_W .uf2 from micropython.org)")
        target = drive or find_rp2_drive()
        if target is None or not (target / "INFO_UF2.TXT").is_file():
            raise FirmwareError(
                "no RPI-RP2 drive: hold BOOTSEL while plugging the Pico W in, then give its mount point with --drive"
            )
        return [["cp", str(image), str(target / image.name)], ["sync"]]
    raise FirmwareError(f"unknown board {board!r}; known: esp32, pico")


def find_rp2_drive() -> Path | None:
    """The mount point of a Pico in BOOTSEL mode (a drive named RPI-RP2 or RP2350), if one is mounted."""
    for base in (Path("/media"), Path("/run/media"), Path("/mnt")):
        for candidate in [*base.glob("*/RPI-RP2"), *base.glob("*/RP2350"), *base.glob("RPI-RP2")]:
            if (candidate / "INFO_UF2.TXT").is_file():
                return candidate
    return None


def run_steps(steps: list[list[str]], *, dry_run: bool) -> int:
    """Print each command (``$ ...``), and run it unless dry_run; stops at the first failure."""
    for argv in steps:
        print("$ " + " ".join(argv))
    if dry_run:
        print("(dry run: nothing was run)")
        return 0
    for argv in steps:
        result = subprocess.run(argv)
        if result.returncode:
            return result.returncode
    return 0


# -- provision: WiFi and token over USB, no hand-edited JSON -------------------------------------


def board_config(
    *, base: Path | None, url: str, token: str, device: str, ssid: str, password: str, ca_name: str | None
) -> dict[str, Any]:
    """The board's config.json: ``base`` (sensors, outputs, ...; default the example's settings
    without its sensors) with the gateway, the token and WiFi filled in."""
    source = base or firmware_dir() / "config.example.json"
    config: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    if base is None:
        config["sensors"], config["inputs"], config["outputs"] = [], [], []
    config.update(url=url, token=token, device=device)
    config["wifi"] = {**config.get("wifi", {}), "ssid": ssid, "password": password}
    if ca_name:
        config["ca_file"] = ca_name
    return config


def provision_steps(port: str, config_file: Path, ca: Path | None) -> list[list[str]]:
    """One mpremote command: the CA (if any) and config.json onto the board, then a reset."""
    argv = [tool("mpremote", "mpremote"), "connect", port]
    if ca is not None:
        argv += ["fs", "cp", str(ca), ":" + ca.name, "+"]
    return [[*argv, "fs", "cp", str(config_file), ":config.json", "+", "reset"]]


def masked(config: dict[str, Any]) -> str:
    shown = json.loads(json.dumps(config))
    shown["token"] = shown["token"][:8] + "..."
    shown["wifi"]["password"] = "***"
    return json.dumps(shown, indent=2)


def provision(
    port: str,
    *,
    url: str,
    token: str,
    device: str,
    ssid: str,
    password: str,
    base: Path | None = None,
    ca: Path | None = None,
    board: str | None = None,
    dry_run: bool = False,
) -> int:
    """Write a checked config.json (WiFi, gateway, token) to the board at ``port`` over USB."""
    config = board_config(
        base=base,
        url=url,
        token=token,
        device=device,
        ssid=ssid,
        password=password,
        ca_name=ca.name if ca else None,
    )
    with tempfile.TemporaryDirectory(prefix="iotgw-provision-") as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        path.chmod(0o600)
        check_board_config(path, board)
        print(masked(config))
        return run_steps(provision_steps(port, path, ca), dry_run=dry_run)


def logs_command(port: str) -> list[str]:
    """mpremote attached to the board's console without resetting it (Ctrl-] leaves)."""
    return [tool("mpremote", "mpremote"), "connect", port, "resume", "repl"]


# -- the `iotgw firmware ...` commands -----------------------------------------------------------


def add_firmware_commands(sub: Any) -> None:
    """Register ``iotgw firmware deploy|flash|provision|logs`` on the root parser's subparsers."""
    firmware = sub.add_parser("firmware", help="the MicroPython firmware for ESP32 / Pico W boards")
    actions = firmware.add_subparsers(title="firmware commands", metavar="ACTION")
    boards = ("esp32", "pico")

    deploy_p = actions.add_parser("deploy", help="copy the firmware and a config.json to a board (mpremote)")
    deploy_p.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyACM0")
    deploy_p.add_argument("--config", required=True, type=Path, help="the board's config.json")
    deploy_p.add_argument(
        "--mpy", action="store_true", help="precompile modules to .mpy with mpy-cross (less RAM)"
    )
    deploy_p.add_argument("--board", choices=boards, help="the board type: refuse sensors it does not have")
    deploy_p.add_argument(
        "--dry-run", action="store_true", help="print the mpremote command without running it"
    )
    deploy_p.set_defaults(func=_deploy_cmd)

    flash_p = actions.add_parser(
        "flash", help="put MicroPython on a board (esptool for ESP32, UF2 for Pico W)"
    )
    flash_p.add_argument("--board", required=True, choices=boards)
    flash_p.add_argument(
        "--image", required=True, type=Path, help="the .bin / .uf2 from micropython.org/download"
    )
    flash_p.add_argument("--port", help="ESP32: its serial port, e.g. /dev/ttyUSB0")
    flash_p.add_argument("--chip", default="esp32", help="ESP32 family member for esptool (default esp32)")
    flash_p.add_argument(
        "--drive", type=Path, help="Pico W: the RPI-RP2 drive's mount point (found if omitted)"
    )
    flash_p.add_argument("--dry-run", action="store_true", help="print the steps without running them")
    flash_p.set_defaults(func=_flash_cmd)

    prov = actions.add_parser("provision", help="write WiFi, gateway URL and token to a board over USB")
    prov.add_argument("--port", required=True, help="the board's serial port")
    prov.add_argument("--gateway", required=True, help="device URL, e.g. ws://192.168.1.10:8765/v1/device")
    prov.add_argument("--device", required=True, help="the device name given to `iotgw device add`")
    prov.add_argument("--ssid", required=True, help="WiFi network")
    prov.add_argument("--config", type=Path, help="a config.json with the sensors and outputs to keep")
    prov.add_argument("--ca", type=Path, help="the gateway's CA certificate, for wss://")
    prov.add_argument("--board", choices=boards)
    prov.add_argument(
        "--dry-run", action="store_true", help="print the config (secrets masked) and the steps"
    )
    prov.set_defaults(func=_provision_cmd)

    ota_p = actions.add_parser("ota", help="update a board's firmware over its connection (operator API)")
    ota_p.add_argument("device", help="the device to update")
    ota_p.add_argument("--source", type=Path, help="firmware folder to send (default: this iotgw's firmware)")
    ota_p.add_argument("--mpy", action="store_true", help="send .mpy files compiled with mpy-cross")
    ota_p.add_argument("--wait", type=float, default=0, help="seconds to follow the device for the outcome")
    ota_p.add_argument("--api", help="operator API URL (IOTGW_API_URL; else the config's [api])")
    ota_p.add_argument("--config", metavar="FILE", help="the gateway's TOML config (finds its API)")
    ota_p.add_argument("--token", default=os.environ.get("IOTGW_TOKEN"), help="operator token (IOTGW_TOKEN)")
    ota_p.set_defaults(func=_ota_cmd)

    logs_p = actions.add_parser("logs", help="follow the board's console (mpremote; Ctrl-] to leave)")
    logs_p.add_argument("--port", required=True)
    logs_p.add_argument("--dry-run", action="store_true", help="print the command without running it")
    logs_p.set_defaults(func=_logs_cmd)


def _guarded(name: str, call: Any) -> int:
    try:
        result: int = call()
    except FirmwareError as exc:
        print(f"iotgw firmware {name}: {exc}", file=sys.stderr)
        return 2
    return result


def _deploy_cmd(args: Any) -> int:
    return _guarded(
        "deploy",
        lambda: deploy(args.port, args.config, compiled=args.mpy, dry_run=args.dry_run, board=args.board),
    )


def _flash_cmd(args: Any) -> int:
    return _guarded(
        "flash",
        lambda: run_steps(
            flash_steps(args.board, args.image, port=args.port, drive=args.drive, chip=args.chip),
            dry_run=args.dry_run,
        ),
    )


def _secret(env: str, prompt: str) -> str:
    """A secret from the environment, else asked for without echo (never a command-line argument)."""
    value = os.environ.get(env)
    if value:
        return value
    import getpass

    return getpass.getpass(prompt)


def _provision_cmd(args: Any) -> int:
    def run() -> int:
        token = _secret("IOTGW_DEVICE_TOKEN", "device token (from `iotgw device add`): ")
        password = _secret("IOTGW_WIFI_PASSWORD", f"WiFi password for {args.ssid}: ")
        return provision(
            args.port, url=args.gateway, token=token, device=args.device, ssid=args.ssid,
            password=password, base=args.config, ca=args.ca, board=args.board, dry_run=args.dry_run,
        )  # fmt: skip

    return _guarded("provision", run)


def _logs_cmd(args: Any) -> int:
    return _guarded("logs", lambda: run_steps([logs_command(args.port)], dry_run=args.dry_run))


def _ota_cmd(args: Any) -> int:
    from gateway.cli import ota
    from gateway.cli.client import ApiClient
    from gateway.cli.common import api_url

    client = ApiClient(api_url(args), args.token)
    return _guarded(
        "ota", lambda: ota.run(client, args.device, source=args.source, compiled=args.mpy, wait=args.wait)
    )
