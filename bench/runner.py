"""``python -m bench [scenario ...] [--quick]``: run scenarios, print a table, write JSON.

A scenario is a function ``(ctx: Context) -> Result`` registered with
``@scenario("name", "title")`` (``bench/registry.py``); adding one is adding a
function to a scenario module imported below. The runner calls them in
registry order (or the order given),
passes earlier results on (``ctx.results``) so a scenario can report a ratio
against a peer measured in the same run, prints every figure next to its
target, and writes ``<results-dir>/<date>-<scenario>.json`` with the machine
and library versions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

# Importing a scenario module registers its scenarios; they are listed and run in this order.
from . import scenarios  # isort: split

from . import bridge_e2e, command_rtt, influx_e2e, storm, targets
from .registry import SCENARIOS, Context, Result
from .report import RESULTS_DIR, environment, format_table, write_result
from .targets import MosquittoTarget

# command_rtt registers first (scenarios.py imports its probe) but reads what ingest and
# connections measured and runs the relay beside ingest's half load: it goes last.
SCENARIOS["command_rtt"] = SCENARIOS.pop("command_rtt")

SCENARIO_MODULES = (scenarios, command_rtt, influx_e2e, bridge_e2e, storm)


def _have(program: str) -> bool:
    if program == "mosquitto":
        return MosquittoTarget.available() is not None
    return shutil.which(program) is not None


def main(argv: Sequence[str] | None = None) -> int:
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
    parser.add_argument("--gateway-tree", type=Path, metavar="DIR",
                        help="run the gateway of this source tree (old/new comparisons in one session)")  # fmt: skip
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for every gateway, e.g. IOTGW_RUNTIME=off (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    targets.GATEWAY_ENV.update(item.split("=", 1) for item in args.gateway_env)
    if args.gateway_tree is not None:
        targets.GATEWAY_TREE = args.gateway_tree.resolve()
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:<14} {s.title}")
        return 0
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    chosen = [SCENARIOS[name] for name in (args.scenarios or list(SCENARIOS))]

    env = environment()
    env["gateway_env"] = dict(targets.GATEWAY_ENV)
    env["gateway_tree"] = str(targets.GATEWAY_TREE or "this checkout, with its uncommitted changes")
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
        load_before = os.getloadavg()  # the machine is shared: say how busy it was
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
        if targets.RUNTIME_NOTES:
            result.details["gateway_runtime"] = dict(targets.RUNTIME_NOTES)
            targets.RUNTIME_NOTES.clear()
        result.details.setdefault("load_average", {"before": [round(x, 2) for x in load_before],
                                                   "after": [round(x, 2) for x in os.getloadavg()]})  # fmt: skip
        print(f"   load average before / after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}", flush=True)
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
