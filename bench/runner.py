"""``python -m bench [scenario ...] [--quick]``: run scenarios, print a table, write JSON.

A scenario is a function ``(ctx: Context) -> Result`` registered with
``@scenario("name", "title")`` in ``bench/scenarios.py``; adding one is adding
a function. The runner calls them in registry order (or the order given),
passes earlier results on (``ctx.results``) so a scenario can report a ratio
against a peer measured in the same run, prints every figure next to its
target, and writes ``<results-dir>/<date>-<scenario>.json`` with the machine
and library versions.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

from .targets import REPO, MosquittoTarget, raise_nofile

RESULTS_DIR = REPO / "bench" / "results"


@dataclass(slots=True)
class Figure:
    """One line of the table: a measured value, its unit, and the target it is read against."""

    name: str
    value: float | None
    unit: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass(slots=True)
class Result:
    """What a scenario returns: figures for the table, behaviour checks, raw details for the JSON."""

    scenario: str = ""
    title: str = ""
    figures: list[Figure] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    def add(self, name: str, value: float | None, unit: str = "", target: str = "",
            met: bool | None = None, note: str = "") -> None:  # fmt: skip
        self.figures.append(Figure(name, value, unit, target, met, note))

    def figure(self, name: str) -> float | None:
        return next((f.value for f in self.figures if f.name == name), None)


@dataclass(slots=True)
class Context:
    """Options and shared state handed to every scenario."""

    quick: bool
    workdir: Path
    processes: int
    results: dict[str, Result] = field(default_factory=dict)
    keep: bool = False
    profile_dir: Path | None = None
    """When set, py-spy samples the target during every measurement window (``bench.profile``)."""
    devices: int | None = None
    """Overrides the number of devices of the load scenarios (not ``connections``)."""
    measure_s: float | None = None
    """Overrides the length of every measurement window."""

    def scratch(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        return path

    def done(self, path: Path) -> None:
        if not self.keep:
            shutil.rmtree(path, ignore_errors=True)


ScenarioFn = Callable[[Context], Result]


@dataclass(slots=True)
class Scenario:
    name: str
    title: str
    fn: ScenarioFn
    needs: tuple[str, ...] = ()


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, title: str, needs: tuple[str, ...] = ()) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register a scenario; ``needs`` names external programs it requires (skipped if missing)."""

    def register(fn: ScenarioFn) -> ScenarioFn:
        SCENARIOS[name] = Scenario(name, title, fn, needs)
        return fn

    return register


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


def _have(program: str) -> bool:
    if program == "mosquitto":
        return MosquittoTarget.available() is not None
    return shutil.which(program) is not None


def main(argv: Sequence[str] | None = None) -> int:
    from . import scenarios  # noqa: F401  (registers the scenarios)

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"which to run, in order (default: all): {', '.join(SCENARIOS)}")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="small and short: a check that it all works")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON files go")
    parser.add_argument("--processes", type=int, default=max(2, os.cpu_count() or 2),
                        help="load generator processes (default: cores, at least 2)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the stores and logs (printed at the end)")
    parser.add_argument(
        "--devices", type=int, help="devices in the load scenarios (default 1000; --quick 50)"
    )
    parser.add_argument("--measure-s", type=float, help="length of each measurement window in seconds")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run py-spy on the target during each window; folded stacks go to DIR")  # fmt: skip
    args = parser.parse_args(argv)
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:<14} {s.title}")
        return 0
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    chosen = [SCENARIOS[name] for name in (args.scenarios or list(SCENARIOS))]

    env = environment()
    workdir = Path(tempfile.mkdtemp(prefix="iotgw-bench-"))
    ctx = Context(quick=args.quick, workdir=workdir, processes=args.processes, keep=args.keep,
                  profile_dir=args.profile, devices=args.devices, measure_s=args.measure_s)  # fmt: skip
    print(f"iotgw bench{' --quick' if args.quick else ''}: {env['cores']} cores ({env['cpu']}), "
          f"Python {env['python']}, websockets {env['websockets']}, msgspec {env['msgspec']}, "
          f"SQLite {env['sqlite']}, Mosquitto {env['mosquitto']}; open files {env['nofile_limit']}",
          flush=True)  # fmt: skip
    results: list[Result] = []
    failed = False
    for s in chosen:
        missing = [prog for prog in s.needs if not _have(prog)]
        print(f"\n== {s.name}: {s.title}", flush=True)
        started = time.monotonic()
        if missing:
            result = Result(s.name, s.title, error=f"skipped: {', '.join(missing)} not installed")
        else:
            try:
                result = s.fn(ctx)
            except Exception as exc:
                traceback.print_exc()
                result = Result(s.name, s.title, error=f"{type(exc).__name__}: {exc}")
        result.scenario, result.title = s.name, s.title
        result.seconds = time.monotonic() - started
        ctx.results[s.name] = result
        results.append(result)
        path = write_result(result, env, args.results_dir, args.quick)
        print(format_table([result]), flush=True)
        print(f"-> {path} ({result.seconds:.0f} s)", flush=True)
        failed = failed or bool(result.error) or not all(result.checks.values())
    print("\n" + format_table(results))
    if args.keep:
        print(f"\nstores and logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
