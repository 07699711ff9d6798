"""Install the gateway or the agent as a hardened systemd service, and remove it again.

Shared: ``iotgw install`` and ``iotgw-agent install`` both run this package. What each side
alone knows, its config file and the options that fill it, stays with that side and is
passed in through :func:`add_commands` (``configure`` adds the options, ``config_text``
returns the file to write): the gateway's part lives in ``gateway/cli/install.py``, the
agent's in ``device_agent/install.py``. This package imports neither of them, and only the
standard library, so the agent's lean install (``iotgw[agent]``) carries it.

One code path serves real runs, ``--dry-run`` and ``--root DIR``:

1. :func:`gather_facts` reads what is there: accounts and groups, whether the unit is
   enabled and active, the systemd version, whether the virtual environment exists.
2. :func:`plan_install` / :func:`plan_uninstall` turn a spec and the facts into a list of
   typed steps. Pure functions: no I/O, so tests check a plan without touching anything.
3. :class:`Executor` carries the steps out, prints each one with its outcome, and skips
   what is already as planned, so a second run changes nothing. ``dry_run`` only prints.
   ``root`` puts every path under a directory and runs no system command: ``useradd``,
   ``usermod``, ``systemctl``, ``python -m venv`` and ``pip`` are printed and appended to
   ``ROOT/.iotgw-install.log``; the account database under ``ROOT/etc`` and the
   ``multi-user.target.wants`` link are updated the way the real commands would, so that
   a second run sees the first one's effects.

Layout (``--prefix`` moves the virtual environments; docs/install.md):

=====================  ==========================================  ==========================================
what                   gateway                                     agent
=====================  ==========================================  ==========================================
system user            ``iotgw``                                   ``iotgw-agent`` (+ gpio, i2c, spi groups)
virtual environment    ``/opt/iotgw/gateway`` (``iotgw[gateway]``)  ``/opt/iotgw/agent`` (``iotgw[agent]``)
config (0600, user)    ``/etc/iotgw/gateway.toml``                  ``/etc/iotgw/agent.toml``
state (0700, user)     ``/var/lib/iotgw/gateway/iotgw.sqlite3``     ``/var/lib/iotgw/agent/buffer.sqlite3``
unit                   ``/etc/systemd/system/iotgw.service``        ``/etc/systemd/system/iotgw-agent.service``
command on PATH        ``/usr/local/bin/iotgw``                     ``/usr/local/bin/iotgw-agent``
=====================  ==========================================  ==========================================

Per architecture (``arch``): a plain venv everywhere; lgpio from PyPI with ``iotgw[agent]`` on
aarch64 and armv7l; on 32-bit ARM msgspec from piwheels.org (``/etc/pip.conf`` on Raspberry Pi
OS, else ``--extra-index-url``) or, with ``--no-piwheels``, compiled after apt installs
``build-essential python3-dev``. ``--machine`` plans for another architecture (dry runs).

Modules: ``units`` (roles, paths, unit text), ``arch`` (architectures, piwheels, compiler),
``plan`` (steps, facts, planners),
``executor`` (carries a plan out) and ``cli`` (the two sub-commands).
"""

from __future__ import annotations

from iotgw_common.install.cli import add_commands, main
from iotgw_common.install.executor import Executor, Report
from iotgw_common.install.plan import (
    AddToGroups,
    AptInstall,
    CreateVenv,
    EnsureUser,
    Facts,
    InstallError,
    MakeDir,
    PipInstall,
    Plan,
    Remove,
    Source,
    Step,
    Symlink,
    Systemctl,
    WriteFile,
    gather_facts,
    parse_systemd_version,
    plan_install,
    plan_uninstall,
    read_accounts,
    resolve_source,
    source_tree,
)
from iotgw_common.install.units import (
    AGENT,
    DEFAULT_PREFIX,
    GATEWAY,
    LOG_NAME,
    RESTART_BACKOFF_DROPIN,
    RESTART_STEPS_SINCE,
    ROLES,
    Layout,
    Role,
    render_unit,
    unit_files,
    write_unit_files,
)

__all__ = [
    "AGENT",
    "DEFAULT_PREFIX",
    "GATEWAY",
    "LOG_NAME",
    "RESTART_BACKOFF_DROPIN",
    "RESTART_STEPS_SINCE",
    "ROLES",
    "AddToGroups",
    "AptInstall",
    "CreateVenv",
    "EnsureUser",
    "Executor",
    "Facts",
    "InstallError",
    "Layout",
    "MakeDir",
    "PipInstall",
    "Plan",
    "Remove",
    "Report",
    "Role",
    "Source",
    "Step",
    "Symlink",
    "Systemctl",
    "WriteFile",
    "add_commands",
    "gather_facts",
    "main",
    "parse_systemd_version",
    "plan_install",
    "plan_uninstall",
    "read_accounts",
    "render_unit",
    "resolve_source",
    "source_tree",
    "unit_files",
    "write_unit_files",
]
