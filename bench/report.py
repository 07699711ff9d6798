"""What a run leaves behind: the machine and library versions, the table, one JSON file per scenario."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import sqlite3
import subprocess
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

from .registry import Result
from .targets import REPO, MosquittoTarget, raise_nofile

RESULTS_DIR = REPO / "bench" / "results"


def environment() -> dict[str, Any]:
    """The machine and the versions the figures depend on."""

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mosquitto = None
    binary = MosquittoTarget.available()
    if binary:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False).stdout
        mosquitto = out.splitlines()[0].removeprefix("mosquitto version ").strip() if out else None
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip() or None  # fmt: skip
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_mb": mem_kb // 1024,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "websockets": version("websockets"),
        "msgspec": version("msgspec"),
        "paho_mqtt": version("paho-mqtt"),
        "sqlite": sqlite3.sqlite_version,
        "mosquitto": mosquitto,
        "git_commit": commit,
        "nofile_limit": raise_nofile(),
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms",):
        return f"{value:,.1f} {unit}"
    if unit in ("x", "ratio"):
        return f"{value:.2f}x" if unit == "x" else f"{value:.2f}"
    if unit == "%":
        return f"{value:,.0f} %"
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f} {unit}".rstrip()
    return f"{value:,.2f} {unit}".rstrip()


def format_table(results: Sequence[Result]) -> str:
    rows: list[tuple[str, str, str, str, str]] = [("scenario", "figure", "value", "target", "")]
    for result in results:
        label = result.scenario
        if result.error:
            rows.append((label, "ERROR", result.error.splitlines()[-1][:60], "", ""))
            continue
        for f in result.figures:
            mark = "" if f.met is None else ("ok" if f.met else "MISSED")
            note = f" ({f.note})" if f.note else ""
            rows.append((label, f.name, _fmt(f.value, f.unit), f.target, mark + note))
            label = ""
        for check, passed in result.checks.items():
            rows.append((label, f"check: {check}", "yes" if passed else "NO", "", "" if passed else "FAILED"))
            label = ""
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append(
            f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:<{widths[3]}}  {r[4]}".rstrip()
        )
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def write_result(result: Result, env: dict[str, Any], directory: Path, quick: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d")
    suffix = "-quick" if quick else ""
    path = directory / f"{stamp}-{result.scenario}{suffix}.json"
    document = {
        "scenario": result.scenario,
        "title": result.title,
        "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "quick": quick,
        "machine": env,
        "seconds": round(result.seconds, 1),
        "figures": [asdict(f) for f in result.figures],
        "checks": result.checks,
        "details": result.details,
        "error": result.error or None,
    }
    path.write_bytes(msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n")
    return path
