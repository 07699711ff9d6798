"""``install`` and ``uninstall`` sub-commands for ``iotgw`` and ``iotgw-agent``.

Each side calls :func:`add_commands` with its role and two callbacks for what only it
knows (its options, its config file): ``gateway/cli/install.py`` and
``device_agent/install.py``. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TextIO

from iotgw_common.install.arch import MACHINES
from iotgw_common.install.executor import Executor
from iotgw_common.install.plan import (
    InstallError,
    base_python,
    gather_facts,
    plan_install,
    plan_uninstall,
    resolve_source,
)
from iotgw_common.install.units import DEFAULT_PREFIX, Layout, Role, write_unit_files

# -- command line ----------------------------------------------------------------------------


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    role: Role,
    configure: Callable[[argparse.ArgumentParser], None],
    config_text: Callable[[argparse.Namespace, Layout, Path | None], str],
) -> None:
    """Add ``install`` and ``uninstall`` to a CLI. ``configure`` adds the role's own options;
    ``config_text(args, layout, existing)`` returns the config file to write (``existing`` is
    the current one on the host, if any) or raises InstallError."""
    stem = role.unit.removesuffix(".service")
    install = sub.add_parser(
        "install",
        help=f"install the {role.name} as a systemd service {stem} (run with sudo)",
        description=f"Create user {role.user}, a virtual environment under {DEFAULT_PREFIX}, "
        f"the config under /etc/iotgw and the state under /var/lib/iotgw; install, enable and "
        "start the hardened unit. Safe to run again: the config and the data are kept.",
    )
    configure(install)
    _common(install)
    install.add_argument(
        "--from",
        dest="from_",
        metavar="WHEEL|DIR|REQ",
        help="install from this wheel, directory of wheels (offline), source tree or requirement "
        "(default: this checkout, else iotgw==VERSION from the package index)",
    )
    install.add_argument("--overwrite-config", action="store_true", help="replace an existing config file")
    install.add_argument("--no-start", action="store_true", help="enable the service but do not (re)start it")
    install.add_argument(
        "--no-piwheels",
        action="store_true",
        help="32-bit ARM: compile msgspec (apt installs build-essential python3-dev, about 275 MB, "
        "minutes of building) instead of taking its wheel from piwheels.org",
    )
    install.add_argument(
        "--machine",
        choices=MACHINES,
        help="plan for this architecture instead of this machine's (with --dry-run or --root: "
        "what the install does on a Pi)",
    )
    install.set_defaults(func=lambda args: _run(args, role, config_text))
    uninstall = sub.add_parser(
        "uninstall",
        help=f"stop and remove the {stem} service (keeps config and data)",
        description="Stop, disable and remove the unit, the virtual environment and the command "
        "link. The config, the state directory and the user stay; the output says how to remove them.",
    )
    _common(uninstall)
    uninstall.set_defaults(func=lambda args: _run(args, role, None))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print every step without doing it")
    parser.add_argument(
        "--root",
        type=Path,
        metavar="DIR",
        help="install under DIR instead of / and run no system command (record them): for tests",
    )
    parser.add_argument(
        "--prefix",
        type=PurePosixPath,
        default=DEFAULT_PREFIX,
        help=f"where the virtual environment goes (default {DEFAULT_PREFIX}/<gateway|agent>)",
    )


def _run(
    args: argparse.Namespace,
    role: Role,
    config_text: Callable[[argparse.Namespace, Layout, Path | None], str] | None,
    out: TextIO | None = None,
) -> int:
    stream = out if out is not None else sys.stdout
    prefix = PurePosixPath(args.prefix)
    if not prefix.is_absolute():
        print(f"{role.script}: --prefix must be an absolute path", file=sys.stderr)
        return 2
    layout = Layout(prefix=prefix)
    root: Path | None = args.root
    try:
        if root is None and not args.dry_run and os.geteuid() != 0:
            raise InstallError(f"run it as root: sudo {shlex.join(sys.argv)}")
        machine = getattr(args, "machine", None)
        if machine and root is None and not args.dry_run:
            raise InstallError("--machine only goes with --dry-run or --root (it plans for another machine)")
        executor = Executor(root=root, dry_run=args.dry_run, out=stream)
        facts = gather_facts(role, layout, root, machine=machine)
        if config_text is None:
            plan = plan_uninstall(role, facts, layout=layout)
        else:
            existing = executor.host(layout.config(role))
            text = config_text(args, layout, existing if existing.is_file() else None)
            source = resolve_source(role, layout, args.from_)
            if root is None and not args.dry_run and not facts.venv_ready:
                _check_venv_module()
            plan = plan_install(role, facts, layout=layout, config_text=text, source=source,
                                python=base_python(), overwrite_config=args.overwrite_config,
                                start=not args.no_start, build_from_source=args.no_piwheels)  # fmt: skip
        executor.run(plan)
    except (InstallError, OSError) as exc:
        print(f"{role.script} {'install' if config_text else 'uninstall'}: {exc}", file=sys.stderr)
        return 1
    print("", file=stream)
    if args.dry_run:
        print("Dry run: nothing was changed. After a real run:", file=stream)
    print("\n".join(plan.epilogue), file=stream)
    return 0


def _check_venv_module() -> None:
    probe = subprocess.run([base_python(), "-c", "import ensurepip, venv"], capture_output=True, check=False)
    if probe.returncode != 0:
        raise InstallError("python3 cannot create virtual environments: sudo apt install -y python3-venv")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m iotgw_common.install DIR``: regenerate the unit files shipped in systemd/."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(
            "usage: python -m iotgw_common.install DIR   (writes the default unit files into DIR)",
            file=sys.stderr,
        )
        return 2
    for path in write_unit_files(Path(args[0])):
        print(path)
    return 0
