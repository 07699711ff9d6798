"""The installer's executor: carries out a plan for real, under a root directory, or only prints it."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from iotgw_common.install.plan import (
    AddToGroups,
    AptInstall,
    CreateVenv,
    EnsureUser,
    InstallError,
    MakeDir,
    PipInstall,
    Plan,
    Remove,
    Step,
    Symlink,
    Systemctl,
    WriteFile,
    host_mapper,
    read_accounts,
)
from iotgw_common.install.units import DISTRIBUTION, LOG_NAME, NOLOGIN

# -- executor --------------------------------------------------------------------------------

Outcome = Literal["changed", "unchanged", "kept", "would", "recorded", "skipped"]


@dataclass
class Report:
    outcomes: list[tuple[Step, Outcome]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(outcome == "changed" for _, outcome in self.outcomes)


class Executor:
    """Carry out a plan on this machine, under ``root``, or (``dry_run``) only print it.

    ``run_command`` runs a system command in real mode (tests never get there).
    """

    def __init__(
        self,
        *,
        root: Path | None = None,
        dry_run: bool = False,
        out: TextIO | None = None,
        run_command: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.root = Path(root).resolve() if root is not None else None
        self.dry_run = dry_run
        self.out = out if out is not None else sys.stdout
        self._run_command = run_command or _run_checked
        self.host = host_mapper(self.root if self.root is not None else Path("/"))
        self._changed = False

    # -- public

    def run(self, plan: Plan) -> Report:
        report = Report()
        mode = "dry run: nothing is changed" if self.dry_run else (
            f"under {self.root}: commands are recorded in {self.root / LOG_NAME}" if self.root else "")  # fmt: skip
        title = f"{plan.role.script} {plan.action}"
        self._print(f"{title} ({mode})" if mode else title)
        for note in plan.notes:
            self._print(f"  {note}")
        total = len(plan.steps)
        for index, step in enumerate(plan.steps, 1):
            description, outcome = self._apply(step)
            if outcome == "changed":
                self._changed = True
            report.outcomes.append((step, outcome))
            self._print(f"[{index:>2}/{total}] {outcome:<9} {description}")
        return report

    # -- steps

    def _apply(self, step: Step) -> tuple[str, Outcome]:
        if isinstance(step, EnsureUser):
            return self._command(
                step.argv(), f"create system user {step.name}", lambda: self._sim_useradd(step)
            )
        if isinstance(step, AddToGroups):
            return self._command(
                step.argv(), f"add {step.user} to {', '.join(step.groups)}", lambda: self._sim_usermod(step)
            )
        if isinstance(step, MakeDir):
            return self._make_dir(step)
        if isinstance(step, CreateVenv):
            return self._command(
                step.argv(), f"create virtual environment {step.path}", lambda: self._sim_venv(step)
            )
        if isinstance(step, AptInstall):
            if not self.dry_run and self.root is None:
                self._print(f"       running apt-get: {step.why} ...")
            return self._command(step.argv(), f"install {step.why}", None)
        if isinstance(step, PipInstall):
            return self._pip(step)
        if isinstance(step, WriteFile):
            return self._write(step)
        if isinstance(step, Symlink):
            return self._symlink(step)
        if isinstance(step, Remove):
            return self._remove(step)
        return self._systemctl(step)

    def _command(
        self, argv: list[str], what: str, simulate: Callable[[], bool] | None
    ) -> tuple[str, Outcome]:
        """Run a system command; under ``root`` record it and simulate its effect, if any."""
        text = f"{what}: {shlex.join(argv)}"
        if self.dry_run:
            return text, "would"
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            with (self.root / LOG_NAME).open("a", encoding="utf-8") as log:
                log.write(shlex.join(argv) + "\n")
            return text, "changed" if simulate is not None and simulate() else "recorded"
        self._run_command(argv)
        return text, "changed"

    def _make_dir(self, step: MakeDir) -> tuple[str, Outcome]:
        path = self.host(step.path)
        text = f"directory {step.path} ({step.mode:04o} {step.owner})"
        if self.dry_run:
            return text, "unchanged" if self._matches(path, step.mode, step.owner) else "would"
        created = not path.is_dir()
        if created:
            path.mkdir(parents=True, exist_ok=True)
        fixed = self._set_mode_owner(path, step.mode, step.owner)
        return text, "changed" if created or fixed else "unchanged"

    def _pip(self, step: PipInstall) -> tuple[str, Outcome]:
        text = f"install {DISTRIBUTION} from {step.source}: {shlex.join(step.argv())}"
        if self.dry_run or self.root is not None:
            return self._command(step.argv(), f"install {DISTRIBUTION} from {step.source}", None)
        before = _installed_record(self.host(step.venv))
        self._print(f"       running pip ({step.source}) ...")
        self._run_command(step.argv())
        after = _installed_record(self.host(step.venv))
        return text, "unchanged" if before == after else "changed"

    def _write(self, step: WriteFile) -> tuple[str, Outcome]:
        path = self.host(step.path)
        data = step.content.encode("utf-8")
        text = f"file {step.path} ({step.mode:04o} {step.owner})"
        exists = path.is_file()
        if exists and step.keep_existing:
            same = path.read_bytes() == data
            note = " kept as it is" + (
                "" if same else " (differs from the one given: --overwrite-config replaces it)"
            )
            if self.dry_run:
                return text + note, "kept" if self._matches(path, step.mode, step.owner) else "would"
            fixed = self._set_mode_owner(path, step.mode, step.owner)
            return text + note + (", mode/owner fixed" if fixed else ""), "changed" if fixed else "kept"
        same = exists and path.read_bytes() == data
        if self.dry_run:
            return text, "unchanged" if same and self._matches(path, step.mode, step.owner) else "would"
        if not same:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, step.mode)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            self._set_mode_owner(tmp, step.mode, step.owner)
            os.replace(tmp, path)
            return text, "changed"
        fixed = self._set_mode_owner(path, step.mode, step.owner)
        return text, "changed" if fixed else "unchanged"

    def _symlink(self, step: Symlink) -> tuple[str, Outcome]:
        path = self.host(step.path)
        text = f"command {step.path} -> {step.target}"
        if path.is_symlink() and os.readlink(path) == str(step.target):
            return text, "unchanged"
        if path.exists() and not path.is_symlink():
            return text + f" (left alone: {step.path} is not a link this installer made)", "skipped"
        if self.dry_run:
            return text, "would"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()
        path.symlink_to(step.target)
        return text, "changed"

    def _remove(self, step: Remove) -> tuple[str, Outcome]:
        path = self.host(step.path)
        text = f"remove {step.path}"
        if not path.exists() and not path.is_symlink():
            return text + " (not there)", "unchanged"
        if step.only_if_link_to is not None and not (
            path.is_symlink() and os.readlink(path) == str(step.only_if_link_to)
        ):
            return text + " (left alone: not a link this installer made)", "skipped"
        if self.dry_run:
            return text, "would"
        if step.tree and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return text, "changed"

    def _systemctl(self, step: Systemctl) -> tuple[str, Outcome]:
        if step.only_if_changed and not self._changed and not self.dry_run:
            return f"{shlex.join(step.argv())} (nothing changed)", "unchanged"
        what = {"daemon-reload": "reload systemd units", "enable": "start at boot", "restart": "(re)start now",
                "disable": "stop and disable"}.get(step.args[0], "systemctl")  # fmt: skip
        return self._command(step.argv(), what, lambda: self._sim_systemctl(step))

    # -- ownership and modes

    def _ids(self, owner: str) -> tuple[int, int] | None:
        if owner == "root":
            return 0, 0
        users, _ = read_accounts(self.root or Path("/"))
        return users.get(owner)

    def _matches(self, path: Path, mode: int, owner: str) -> bool:
        try:
            st = path.lstat()
        except FileNotFoundError:
            return False
        ids = self._ids(owner)
        return (st.st_mode & 0o7777) == mode and ids is not None and (st.st_uid, st.st_gid) == ids

    def _set_mode_owner(self, path: Path, mode: int, owner: str) -> bool:
        """Enforce mode and owner; True if anything had to change."""
        st = path.lstat()
        ids = self._ids(owner)
        if ids is None:
            raise InstallError(f"user {owner} does not exist (was useradd skipped?)")
        changed = False
        if (st.st_uid, st.st_gid) != ids:
            os.chown(path, *ids)
            changed = True
        if st.st_mode & 0o7777 != mode:
            os.chmod(path, mode)
            changed = True
        return changed

    # -- simulations of system commands under --root (the account database and enablement links)

    def _sim_useradd(self, step: EnsureUser) -> bool:
        assert self.root is not None
        users, groups = read_accounts(self.root)
        used = {uid for uid, _ in users.values()} | {gid for gid, _ in groups.values()}
        uid = next(n for n in range(999, 99, -1) if n not in used)
        etc = self.root / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        with (etc / "passwd").open("a", encoding="utf-8") as file:
            file.write(f"{step.name}:x:{uid}:{uid}:iotgw service:{step.home}:{NOLOGIN}\n")
        with (etc / "group").open("a", encoding="utf-8") as file:
            file.write(f"{step.name}:x:{uid}:\n")
        return True

    def _sim_usermod(self, step: AddToGroups) -> bool:
        assert self.root is not None
        path = self.root / "etc/group"
        lines = []
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split(":")
            if len(parts) >= 4 and parts[0] in step.groups:
                members = [m for m in parts[3].split(",") if m]
                if step.user not in members:
                    members.append(step.user)
                parts[3] = ",".join(members)
            lines.append(":".join(parts))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return True

    def _sim_venv(self, step: CreateVenv) -> bool:
        """Only the marker :func:`gather_facts` looks for (no interpreter is copied)."""
        cfg = self.host(step.path) / "pyvenv.cfg"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(f"home = {Path(step.python).parent}\ninclude-system-site-packages = false\n"
                       "# simulated by --root: no interpreter was copied\n", encoding="utf-8")  # fmt: skip
        return True

    def _sim_systemctl(self, step: Systemctl) -> bool:
        """enable/disable create/remove the wants link, as systemctl does; the rest changes no file."""
        assert self.root is not None
        verb, unit = step.args[0], step.args[-1]
        link = self.root / "etc/systemd/system/multi-user.target.wants" / unit
        if verb == "enable" and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f"/etc/systemd/system/{unit}")
            return True
        if verb == "disable" and link.is_symlink():
            link.unlink()
            return True
        return False

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def _run_checked(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True)
    except FileNotFoundError:
        raise InstallError(f"{argv[0]} is not installed on this machine") from None
    except subprocess.CalledProcessError as exc:
        hint = ""
        if "pip" in argv:
            hint = " (no network? install offline from a directory of wheels: --from DIR, docs/install.md)"
            if "--extra-index-url" in argv:
                hint += "; piwheels.org unreachable? --no-piwheels compiles msgspec instead"
        raise InstallError(f"`{shlex.join(argv)}` failed with exit status {exc.returncode}{hint}") from None


def _installed_record(venv: Path) -> bytes | None:
    """The RECORD of the installed distribution (file hashes): unchanged means pip changed nothing."""
    for record in sorted(venv.glob(f"lib/python*/site-packages/{DISTRIBUTION}-*.dist-info/RECORD")):
        return record.read_bytes()
    return None
