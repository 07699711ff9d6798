"""Over-the-air update round trip under the unix port (docs/firmware.md, "Over the air").

A real gateway, its operator API, ``iotgw firmware ota`` as a user runs it, and the firmware
in a folder of its own, restarted like a board after each reset. A good update is applied and
named in the next ``hello``; a bad one (it never reaches the gateway) rolls back by itself; the
command ledger holds every ``ota`` step of both.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.firmware.mp import FIRMWARE, Firmware, base_config
from tests.support.gateway import GatewayProcess, repo_env


def firmware_copy(dest: Path, version: str, *, broken: bool = False, base: Path = FIRMWARE) -> Path:
    shutil.copytree(base, dest, ignore=shutil.ignore_patterns("__pycache__", "ota.d", "*.json", "*.md"))
    compat = dest / "compat.py"
    text = compat.read_text()
    old = next(line for line in text.splitlines() if line.startswith("VERSION = "))
    compat.write_text(text.replace(old, f'VERSION = "{version}"'))
    if broken:  # a build whose link never reaches the gateway
        link = dest / "link.py"
        code = link.read_text()
        link.write_text(code.replace("    async def session(self):\n",
                                     "    async def session(self):\n        raise OSError('broken build')\n", 1))  # fmt: skip
    return dest


def ota(gw: GatewayProcess, token: str, device: str, source: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gateway.cli", "firmware", "ota", device, "--source", str(source),
           "--api", gw.api_url, "--token", token, "--wait", "90"]  # fmt: skip
    return subprocess.run(cmd, env=repo_env(), capture_output=True, text=True, timeout=180)


def test_good_update_is_kept_and_a_bad_one_rolls_back_by_itself(tmp_path: Path) -> None:
    board = firmware_copy(tmp_path / "board", "0.1.0-test")
    with GatewayProcess.start(tmp_path / "gw") as gw:
        device_token = gw.add_device("board-ota")
        operator = gw.add_operator("alice")
        config = base_config(gw.device_url, device_token, device="board-ota", interval_s=0.2, ota_confirm_s=4)
        with Firmware(tmp_path, config, root=board, resets=True) as fw:
            fw.wait_line(r"^LINK welcome ", timeout=30)

            good = ota(gw, operator, "board-ota", firmware_copy(tmp_path / "good", "0.2.0-good"))
            assert good.returncode == 0, good.stdout + good.stderr
            assert "board-ota: running iotgw-fw/0.2.0-good" in good.stdout
            fw.wait_line(r"^OTA confirmed 0.2.0-good", timeout=30)

            bad_src = firmware_copy(tmp_path / "bad", "0.3.0-bad", broken=True, base=board)
            bad = ota(gw, operator, "board-ota", bad_src)
            assert bad.returncode == 1, bad.stdout + bad.stderr
            assert "rolled back (rolled_back 0.3.0-bad); still iotgw-fw/0.2.0-good" in bad.stdout
            fw.wait_line(r"^OTA rolled back 0.3.0-bad", timeout=5)
        conn = gw.connect()
        try:
            rows = conn.execute(
                "SELECT c.args, c.state FROM commands c JOIN devices d ON d.id = c.device_id"
                " WHERE d.name = 'board-ota' AND c.name = 'ota' ORDER BY c.created_ms"
            ).fetchall()
        finally:
            conn.close()
    ops = [json.loads(args)["op"] for args, _ in rows]
    assert ops.count("begin") == 2 and ops.count("commit") == 2, ops
    assert {state for _, state in rows} == {"succeeded"}
    assert fw.find(r"^OTA trial boot 2 of 0.3.0-bad")  # two chances, then the rollback
    assert (board / "compat.py").read_text().count('VERSION = "0.2.0-good"') == 1
