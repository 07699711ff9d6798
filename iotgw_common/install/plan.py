"""The installer's plan: typed steps, the facts they depend on, and the pure planners.

:func:`gather_facts` is the only function here that reads the machine;
:func:`plan_install` and :func:`plan_uninstall` are pure, so tests check a plan
without touching anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from iotgw_common._version import __version__
from iotgw_common.install.arch import (
    ARM32,
    BUILD_COST,
    BUILD_PACKAGES,
    PIWHEELS,
    can_compile,
    piwheels_configured,
    this_machine,
)
from iotgw_common.install.units import (
    AGENT,
    DEFAULT_LAYOUT,
    DISTRIBUTION,
    NOLOGIN,
    RESTART_BACKOFF_DROPIN,
    RESTART_STEPS_SINCE,
    Layout,
    Role,
    render_unit,
)

#: The newest CPython PyPI's lgpio 0.2.2.0 has aarch64 and armv7l wheels for (pyproject.toml's marker).
LGPIO_WHEELS_UP_TO = (3, 12)


class InstallError(RuntimeError):
    """The installation cannot go on; the message says why and what to do."""


# -- steps -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnsureUser:
    """Create the system user and its group (useradd)."""

    name: str
    home: PurePosixPath

    def argv(self) -> list[str]:
        return ["useradd", "--system", "--user-group", "--home-dir", str(self.home), "--no-create-home",
                "--shell", NOLOGIN, "--comment", "iotgw service", self.name]  # fmt: skip


@dataclass(frozen=True)
class AddToGroups:
    """Add the user to existing supplementary groups (usermod -aG)."""

    user: str
    groups: tuple[str, ...]

    def argv(self) -> list[str]:
        return ["usermod", "--append", "--groups", ",".join(self.groups), self.user]


@dataclass(frozen=True)
class MakeDir:
    path: PurePosixPath
    mode: int
    owner: str


@dataclass(frozen=True)
class CreateVenv:
    """A plain virtual environment: no ``--system-site-packages``. Bookworm's packaged
    websockets and gpiozero are older than the agent needs, and lgpio comes from pip too."""

    path: PurePosixPath
    python: str

    def argv(self) -> list[str]:
        return [self.python, "-m", "venv", str(self.path)]


@dataclass(frozen=True)
class AptInstall:
    """Debian packages pip needs (a compiler where no wheel exists)."""

    packages: tuple[str, ...]
    why: str

    def argv(self) -> list[str]:
        return ["apt-get", "install", "-y", "--no-install-recommends", *self.packages]


@dataclass(frozen=True)
class PipInstall:
    venv: PurePosixPath
    args: tuple[str, ...]
    source: str
    """Where the package comes from, for the printout."""

    def argv(self) -> list[str]:
        return [str(self.venv / "bin" / "python"), "-m", "pip", "install", "--upgrade",
                "--disable-pip-version-check", *self.args]  # fmt: skip


@dataclass(frozen=True)
class WriteFile:
    path: PurePosixPath
    content: str
    mode: int
    owner: str
    keep_existing: bool = False
    """A config file: an existing one is kept (its mode and owner are still enforced)."""


@dataclass(frozen=True)
class Symlink:
    path: PurePosixPath
    target: PurePosixPath


@dataclass(frozen=True)
class Remove:
    path: PurePosixPath
    tree: bool = False
    only_if_link_to: PurePosixPath | None = None
    """Remove ``path`` only if it is a symlink to this target (never someone else's file)."""


@dataclass(frozen=True)
class Systemctl:
    args: tuple[str, ...]
    only_if_changed: bool = False
    """Run only when an earlier step of this run changed something."""

    def argv(self) -> list[str]:
        return ["systemctl", *self.args]


Step = (
    EnsureUser
    | AddToGroups
    | MakeDir
    | CreateVenv
    | AptInstall
    | PipInstall
    | WriteFile
    | Symlink
    | Remove
    | Systemctl
)


@dataclass
class Plan:
    action: Literal["install", "uninstall"]
    role: Role
    steps: list[Step]
    epilogue: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Printed before the steps: the architecture and where pip's wheels come from."""


# -- facts and planning ----------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What the planner needs to know about the machine (gathered by :func:`gather_facts`)."""

    users: frozenset[str] = frozenset()
    group_members: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    systemd_version: int | None = None
    systemd_running: bool = True
    venv_ready: bool = False
    unit_present: bool = False
    enabled: bool = False
    active: bool = False
    machine: str = "x86_64"
    """The architecture pip installs for (:func:`iotgw_common.install.arch.this_machine`)."""
    python_version: tuple[int, int] = (sys.version_info[0], sys.version_info[1])
    piwheels: str | None = None
    """Where pip is already told about piwheels.org (``/etc/pip.conf`` on Raspberry Pi OS), if anywhere."""
    compiler: bool = False
    """gcc and Python.h are installed: pip can build msgspec from source."""


@dataclass(frozen=True)
class Source:
    """Where pip installs the package from: ``pip install --upgrade *args``."""

    args: tuple[str, ...]
    label: str


def plan_install(
    role: Role,
    facts: Facts,
    *,
    layout: Layout = DEFAULT_LAYOUT,
    config_text: str,
    source: Source | None,
    python: str,
    overwrite_config: bool = False,
    start: bool = True,
    build_from_source: bool = False,
) -> Plan:
    """The steps that install ``role``; steps already satisfied by ``facts`` are left out.

    ``build_from_source``: on 32-bit ARM, compile msgspec (apt installs a compiler first)
    instead of taking its wheel from piwheels.org.
    """
    steps: list[Step] = []
    if role.user not in facts.users:
        steps.append(EnsureUser(role.user, layout.state_dir(role)))
    missing = tuple(
        g for g in role.groups if g in facts.group_members and role.user not in facts.group_members[g]
    )
    if missing:
        steps.append(AddToGroups(role.user, missing))
    steps += [
        MakeDir(layout.config_dir, 0o755, "root"),
        MakeDir(layout.state_root, 0o755, "root"),
        MakeDir(layout.state_dir(role), 0o700, role.user),
        MakeDir(layout.prefix, 0o755, "root"),
    ]
    notes: list[str] = []
    if source is not None:
        source, apt, notes = _for_architecture(role, facts, source, build_from_source)
        steps += apt
    if not facts.venv_ready:
        steps.append(CreateVenv(layout.venv(role), python))
    if source is not None:
        steps.append(PipInstall(layout.venv(role), source.args, source.label))
    steps += [
        WriteFile(layout.config(role), config_text, 0o600, role.user, keep_existing=not overwrite_config),
        WriteFile(layout.unit_path(role), render_unit(role, layout), 0o644, "root"),
    ]
    if facts.systemd_version is not None and facts.systemd_version >= RESTART_STEPS_SINCE:
        steps += [
            MakeDir(layout.dropin_dir(role), 0o755, "root"),
            WriteFile(
                layout.dropin_dir(role) / "restart-backoff.conf", RESTART_BACKOFF_DROPIN, 0o644, "root"
            ),
        ]
    steps.append(Symlink(layout.bin_dir / role.script, layout.executable(role)))
    if facts.systemd_running:
        steps.append(Systemctl(("daemon-reload",), only_if_changed=True))
    if not facts.enabled:
        steps.append(Systemctl(("enable", role.unit)))
    if start and facts.systemd_running:
        steps.append(Systemctl(("restart", role.unit), only_if_changed=facts.active))
    return Plan("install", role, steps, _install_epilogue(role, layout, facts, start), notes)


def _for_architecture(
    role: Role, facts: Facts, source: Source, build_from_source: bool
) -> tuple[Source, list[Step], list[str]]:
    """Where msgspec and lgpio come from on this architecture (iotgw_common/install/arch.py):
    the source with pip's extra arguments, apt steps before pip, and notes for the printout."""
    machine, (major, minor) = facts.machine, facts.python_version
    notes = [f"architecture {machine}, Python {major}.{minor} (pip installs wheels for {machine})"]
    offline = "--no-index" in source.args
    lgpio = role is AGENT and machine in ("aarch64", "armv7l")  # the [agent] extra's marker
    if lgpio and (major, minor) <= LGPIO_WHEELS_UP_TO:
        notes.append("lgpio (gpiozero's pin library) comes with iotgw[agent] as a wheel from PyPI")
        source = Source(source.args, f"{source.label}, with lgpio")
    elif lgpio:
        notes.append(
            f"PyPI has no lgpio wheel for Python {major}.{minor} (up to "
            f"{'.'.join(map(str, LGPIO_WHEELS_UP_TO))}): iotgw[agent] leaves it out and gpiozero "
            "uses another pin library; install an lgpio wheel into the environment to have it"
        )
    if machine not in ARM32 or offline:
        if machine in ARM32:
            notes.append("offline: the directory must hold a msgspec wheel for this architecture")
        return source, [], notes
    if not build_from_source:
        if facts.piwheels:
            notes.append(f"msgspec: no 32-bit ARM wheel on PyPI; piwheels.org is in {facts.piwheels}")
            return source, [], notes
        notes.append(
            "msgspec: no 32-bit ARM wheel on PyPI; pip also asks piwheels.org "
            f"(--extra-index-url {PIWHEELS}; --no-piwheels compiles instead)"
        )
        args = ("--extra-index-url", PIWHEELS, *source.args)
        return Source(args, f"{source.label}, msgspec from piwheels.org"), [], notes
    if facts.compiler:
        notes.append("msgspec: no 32-bit ARM wheel on PyPI; pip compiles it (gcc and Python.h are there)")
        return Source(source.args, f"{source.label}, msgspec compiled here"), [], notes
    why = f"a compiler for msgspec, which has no 32-bit ARM wheel on PyPI ({BUILD_COST})"
    notes.append(
        f"msgspec: no 32-bit ARM wheel on PyPI; apt installs {' '.join(BUILD_PACKAGES)} ({BUILD_COST})"
    )
    return (
        Source(source.args, f"{source.label}, msgspec compiled here"),
        [AptInstall(BUILD_PACKAGES, why)],
        notes,
    )


def _install_epilogue(role: Role, layout: Layout, facts: Facts, start: bool) -> list[str]:
    stem = role.unit.removesuffix(".service")
    lines = [
        f"{role.description} installed as {role.unit}: user {role.user}, "
        f"config {layout.config(role)}, state {layout.state_dir(role)}, code {layout.venv(role)}.",
    ]
    if not facts.systemd_running:
        lines.append(
            "systemd is not running on this machine: the unit is enabled and starts at the next boot."
        )
    elif not start:
        lines.append(f"Not started (--no-start): sudo systemctl start {stem}")
    lines += [
        "Check it:",
        f"  systemctl status {stem}",
        f"  journalctl -u {stem} -f",
    ]
    if role is AGENT:
        lines += [
            f"  sudo {role.script} check --config {layout.config(role)}    # reads every sensor once",
            "After editing the config: sudo systemctl restart iotgw-agent",
        ]
    else:
        lines += [
            "Register a device (prints its token once):",
            f"  sudo -u {role.user} {role.script} device add NAME --config {layout.config(role)}",
            "After editing the config: sudo systemctl restart iotgw",
        ]
    return lines


def plan_uninstall(role: Role, facts: Facts, *, layout: Layout = DEFAULT_LAYOUT) -> Plan:
    """Stop and remove the service, its code and its command; keep config, data and user."""
    steps: list[Step] = []
    if facts.unit_present or facts.enabled:
        args = ("disable", "--now", role.unit) if facts.systemd_running else ("disable", role.unit)
        steps.append(Systemctl(args))
    steps += [
        Remove(layout.unit_path(role)),
        Remove(layout.dropin_dir(role), tree=True),
    ]
    if facts.systemd_running:
        steps.append(Systemctl(("daemon-reload",), only_if_changed=True))
    steps += [
        Remove(layout.bin_dir / role.script, only_if_link_to=layout.executable(role)),
        Remove(layout.venv(role), tree=True),
    ]
    epilogue = [
        f"{role.unit} removed, with {layout.venv(role)} and {layout.bin_dir / role.script}.",
        "Left in place (your data):",
        f"  {layout.config(role)}  (the configuration{', with the device token' if role is AGENT else ''})",
        f"  {layout.state_dir(role)}  ({'readings not yet acknowledged by the gateway' if role is AGENT else 'the store: every reading'})",
        f"  the system user {role.user}",
        "To delete them too:",
        f"  sudo rm -r {layout.config(role)} {layout.state_dir(role)} && sudo userdel {role.user}",
    ]
    return Plan("uninstall", role, steps, epilogue)


def parse_systemd_version(text: str) -> int | None:
    """``systemd 252 (252.38-1~deb12u1)`` -> 252."""
    match = re.match(r"systemd (\d+)", text.strip())
    return int(match.group(1)) if match else None


def read_accounts(root: Path) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, frozenset[str]]]]:
    """Users (name -> uid, gid) and groups (name -> gid, members) from ROOT/etc/passwd and group."""
    users: dict[str, tuple[int, int]] = {}
    groups: dict[str, tuple[int, frozenset[str]]] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in (root / "etc/passwd").read_text(encoding="utf-8").splitlines():
            parts = line.split(":")
            if len(parts) >= 4 and parts[2].isdigit() and parts[3].isdigit():
                users[parts[0]] = (int(parts[2]), int(parts[3]))
    with contextlib.suppress(FileNotFoundError):
        for line in (root / "etc/group").read_text(encoding="utf-8").splitlines():
            parts = line.split(":")
            if len(parts) >= 4 and parts[2].isdigit():
                groups[parts[0]] = (int(parts[2]), frozenset(m for m in parts[3].split(",") if m))
    return users, groups


def gather_facts(
    role: Role, layout: Layout, root: Path | None = None, *, machine: str | None = None
) -> Facts:
    """Read the facts for ``role``; with ``root`` from under it and without running systemctl.

    ``machine`` plans for another architecture than this one's (a dry run of what a Pi does).
    """
    base = Path(root) if root is not None else Path("/")
    host = host_mapper(base)
    users, groups = read_accounts(base)
    enabled = host(layout.wants_link(role)).is_symlink()
    unit_present = host(layout.unit_path(role)).exists()
    version: int | None = None
    running = True
    active = enabled
    if root is None:
        systemctl = shutil.which("systemctl")
        if systemctl is not None:
            result = subprocess.run([systemctl, "--version"], capture_output=True, text=True, check=False)
            version = parse_systemd_version(result.stdout)
        running = Path("/run/systemd/system").is_dir()
        active = running and systemctl is not None and subprocess.run(
            [systemctl, "is-active", "--quiet", role.unit], check=False
        ).returncode == 0  # fmt: skip
    return Facts(
        users=frozenset(users),
        group_members={name: members for name, (_, members) in groups.items()},
        systemd_version=version,
        systemd_running=running,
        venv_ready=host(layout.venv(role) / "pyvenv.cfg").is_file()
        and (root is not None or host(layout.venv(role) / "bin" / "python").exists()),
        unit_present=unit_present,
        enabled=enabled,
        active=active,
        machine=machine or this_machine(),
        piwheels=piwheels_configured(base, os.environ if root is None else None),
        compiler=root is None and can_compile(),
    )


def host_mapper(root: Path) -> Callable[[PurePosixPath], Path]:
    """Map a target path to the path on this machine (under ``root``)."""

    def host(path: PurePosixPath) -> Path:
        return root / path.relative_to("/") if str(root) != "/" else Path(path)

    return host


# -- where the package comes from ------------------------------------------------------------


def source_tree() -> Path | None:
    """The source checkout this code runs from (editable install or PYTHONPATH), if any."""
    tree = Path(__file__).resolve().parents[2]
    pyproject = tree / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return None
    return tree if re.search(r'^name\s*=\s*"iotgw"', text, re.MULTILINE) else None


def resolve_source(
    role: Role, layout: Layout, from_: str | None, *, running_prefix: str = sys.prefix
) -> Source | None:
    """Pick what pip installs into the service's environment.

    ``from_``: a wheel file, a directory of wheels (offline: ``--no-index``), a source
    tree, or a requirement such as ``iotgw==0.2.0``. Without it: nothing when this very
    program runs from the target environment; this checkout when it runs from one;
    otherwise the same version from the package index.
    """
    extra = role.name
    if from_:
        path = Path(from_)
        if path.is_file() and path.suffix == ".whl":
            return Source(
                (f"{DISTRIBUTION}[{extra}] @ {path.resolve().as_uri()}",), f"wheel {path.resolve()}"
            )
        if path.is_dir() and (path / "pyproject.toml").exists():
            return Source((f"{path.resolve()}[{extra}]",), f"source tree {path.resolve()}")
        if path.is_dir():
            wheels = str(path.resolve())
            return Source(
                ("--no-index", "--find-links", wheels, f"{DISTRIBUTION}[{extra}]"),
                f"wheels in {wheels} (offline)",
            )
        if os.sep in from_ or from_.endswith((".whl", ".tar.gz")):
            raise InstallError(f"--from {from_}: no such file or directory")
        requirement = from_
        if requirement.startswith(DISTRIBUTION) and "[" not in requirement:
            requirement = f"{DISTRIBUTION}[{extra}]{requirement[len(DISTRIBUTION) :]}"
        return Source((requirement,), f"package index ({requirement})")
    if os.path.realpath(running_prefix) == os.path.realpath(str(layout.venv(role))):
        return None
    tree = source_tree()
    if tree is not None:
        return Source((f"{tree}[{extra}]",), f"source tree {tree}")
    requirement = f"{DISTRIBUTION}[{extra}]=={__version__}"
    return Source((requirement,), f"package index ({requirement})")


def base_python() -> str:
    """The interpreter a new environment is built from (the system one, not a venv's)."""
    return str(getattr(sys, "_base_executable", None) or sys.executable)
