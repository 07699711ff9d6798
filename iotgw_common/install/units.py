"""Unit files of the gateway and agent services, and where each role's files go.

:func:`render_unit` is the one source of the unit text; ``systemd/`` in the source tree
holds its output for the default prefix (``python -m iotgw_common.install systemd`` rewrites
it; tests/install/test_units.py checks that they agree and that ``systemd-analyze
verify`` accepts them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

DISTRIBUTION = "iotgw"
DEFAULT_PREFIX = PurePosixPath("/opt/iotgw")
CONFIG_DIR = PurePosixPath("/etc/iotgw")
STATE_ROOT = PurePosixPath("/var/lib/iotgw")
UNIT_DIR = PurePosixPath("/etc/systemd/system")
BIN_DIR = PurePosixPath("/usr/local/bin")
LOG_NAME = ".iotgw-install.log"
NOLOGIN = "/usr/sbin/nologin"
#: RestartSteps= and RestartMaxDelaySec= exist from systemd 254 on (Debian 13); Debian 12 has 252.
RESTART_STEPS_SINCE = 254


# -- roles and layout ------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    """What differs between the gateway and the agent service."""

    name: Literal["gateway", "agent"]
    user: str
    script: str
    unit: str
    description: str
    config_name: str
    state_file: str
    state_env: str
    """Environment override the unit sets so the state file is always in the writable directory."""
    groups: tuple[str, ...] = ()
    """Groups the user joins if they exist (device access on a Raspberry Pi)."""


GATEWAY = Role(
    name="gateway",
    user="iotgw",
    script="iotgw",
    unit="iotgw.service",
    description="iotgw telemetry gateway",
    config_name="gateway.toml",
    state_file="iotgw.sqlite3",
    state_env="IOTGW_STORE_PATH",
)
AGENT = Role(
    name="agent",
    user="iotgw-agent",
    script="iotgw-agent",
    unit="iotgw-agent.service",
    description="iotgw Raspberry Pi agent",
    config_name="agent.toml",
    state_file="buffer.sqlite3",
    state_env="IOTGW_AGENT_BUFFER_PATH",
    groups=("gpio", "i2c", "spi"),
)
ROLES = {role.name: role for role in (GATEWAY, AGENT)}


@dataclass(frozen=True)
class Layout:
    """Target paths (on the machine being installed, not under ``--root``)."""

    prefix: PurePosixPath = DEFAULT_PREFIX
    config_dir: PurePosixPath = CONFIG_DIR
    state_root: PurePosixPath = STATE_ROOT
    unit_dir: PurePosixPath = UNIT_DIR
    bin_dir: PurePosixPath = BIN_DIR

    def venv(self, role: Role) -> PurePosixPath:
        return self.prefix / role.name

    def executable(self, role: Role) -> PurePosixPath:
        return self.venv(role) / "bin" / role.script

    def config(self, role: Role) -> PurePosixPath:
        return self.config_dir / role.config_name

    def state_dir(self, role: Role) -> PurePosixPath:
        return self.state_root / role.name

    def state_path(self, role: Role) -> PurePosixPath:
        return self.state_dir(role) / role.state_file

    def unit_path(self, role: Role) -> PurePosixPath:
        return self.unit_dir / role.unit

    def dropin_dir(self, role: Role) -> PurePosixPath:
        return self.unit_dir / f"{role.unit}.d"

    def wants_link(self, role: Role) -> PurePosixPath:
        return self.unit_dir / "multi-user.target.wants" / role.unit


DEFAULT_LAYOUT = Layout()


# -- unit files ------------------------------------------------------------------------------

_HARDENING_COMMON = """\
# Hardening (systemd.exec(5)); `systemd-analyze security {unit_stem}` scores it (docs/install.md).
UMask=0077
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ReadWritePaths={state_dir}
ProtectHome=yes
PrivateTmp=yes
PrivateMounts=yes
ProtectProc=invisible
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
"""

_GATEWAY_DEVICES = """\
# No device access at all, no other users, no /proc beyond its own processes.
PrivateDevices=yes
PrivateUsers=yes
ProcSubset=pid
DevicePolicy=closed
"""

_AGENT_DEVICES = """\
# GPIO, SPI and I2C character devices only. DeviceAllow= takes groups from /proc/devices
# (globs allowed), so nodes that appear after start (an overlay loaded later) are covered:
# gpiochip = /dev/gpiochip*, *gpiomem = /dev/gpiomem* (bcm2835-gpiomem on Pi 1-4,
# rpi-gpiomem on Pi 5), spi = /dev/spidev*, i2c = /dev/i2c-*. No PrivateDevices= (it would
# hide them), no PrivateUsers= (it would unmap the gpio/i2c/spi groups), no ProcSubset=pid
# (the load_average sensor reads /proc/loadavg).
DevicePolicy=closed
DeviceAllow=char-gpiochip rw
DeviceAllow=char-*gpiomem rw
DeviceAllow=char-spi rw
DeviceAllow=char-i2c rw
"""

_UNIT = """\
# {description}: written by `{script} install` (rendered by iotgw_common/install/units.py;
# systemd/{unit} in the source tree is the same text for the default prefix /opt/iotgw).
# Local changes belong in a drop-in: `sudo systemctl edit {unit_stem}`.
[Unit]
Description={description}
After=network-online.target time-sync.target
Wants=network-online.target
# Never give up: Restart=always with RestartSec= below keeps trying after any failure.
StartLimitIntervalSec=0

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
{reload}User={user}
Group={user}
Environment={state_env}={state_path}
Environment=PYTHONUNBUFFERED=1
StateDirectory={state_rel}
StateDirectoryMode=0700
WorkingDirectory={state_dir}
Restart=always
RestartSec=5s
# READY=1 once serving; WATCHDOG=1 from the event loop every WatchdogSec/3 (iotgw_common/sdnotify.py).
WatchdogSec=60s
TimeoutStartSec=120s
TimeoutStopSec=60s
LimitNOFILE={nofile}

{hardening}{devices}
[Install]
WantedBy=multi-user.target
"""

RESTART_BACKOFF_DROPIN = """\
# Written by the iotgw installer for systemd >= 254: restart delays grow from RestartSec=5s
# to 5 minutes over 10 restarts, so a crash loop does not wear the SD card with logs.
[Service]
RestartSteps=10
RestartMaxDelaySec=5min
"""


def render_unit(role: Role, layout: Layout = DEFAULT_LAYOUT) -> str:
    """The unit file text for ``role`` installed under ``layout``."""
    if role is GATEWAY:
        exec_start = f"{layout.executable(role)} serve --config {layout.config(role)}"
    else:
        exec_start = f"{layout.executable(role)} run --config {layout.config(role)}"
    state_dir = layout.state_dir(role)
    unit_stem = role.unit.removesuffix(".service")
    return _UNIT.format(
        description=role.description,
        script=role.script,
        unit=role.unit,
        unit_stem=unit_stem,
        exec_start=exec_start,
        # the gateway re-reads its TLS certificate on SIGHUP (docs/security.md): systemctl reload iotgw
        reload="ExecReload=/bin/kill -HUP $MAINPID\n" if role is GATEWAY else "",
        user=role.user,
        state_env=role.state_env,
        state_path=layout.state_path(role),
        state_rel=state_dir.relative_to("/var/lib"),
        state_dir=state_dir,
        nofile=65536 if role is GATEWAY else 4096,
        hardening=_HARDENING_COMMON.format(unit_stem=unit_stem, state_dir=state_dir),
        devices=_GATEWAY_DEVICES if role is GATEWAY else _AGENT_DEVICES,
    )


def unit_files(layout: Layout = DEFAULT_LAYOUT) -> dict[str, str]:
    """File name -> text of every unit for ``layout`` (the files in systemd/ use the default)."""
    return {role.unit: render_unit(role, layout) for role in (GATEWAY, AGENT)} | {
        "restart-backoff.conf": RESTART_BACKOFF_DROPIN
    }


def write_unit_files(directory: Path, layout: Layout = DEFAULT_LAYOUT) -> list[Path]:
    """Write :func:`unit_files` into ``directory`` (``python -m iotgw_common.install systemd``)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in unit_files(layout).items():
        (directory / name).write_text(text, encoding="utf-8")
        written.append(directory / name)
    return written
