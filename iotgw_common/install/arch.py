"""What pip needs per CPU architecture: where msgspec and lgpio come from on a Raspberry Pi.

Checked with ``pip download --only-binary=:all: --platform ... --python-version ...``
(docs/install.md, "Per architecture", has the commands and the date):

- ``aarch64`` (64-bit Raspberry Pi OS, Debian arm64): PyPI has wheels for msgspec
  (manylinux2014, CPython 3.10-3.14) and for lgpio 0.2.2.0 (manylinux_2_34, CPython 3.9-3.12).
- ``armv7l`` / ``armv6l`` (32-bit Raspberry Pi OS, Debian armhf): PyPI has lgpio wheels
  (``linux_armv7l``, CPython 3.9-3.12) but **no msgspec wheel**. Either piwheels.org (the
  Raspberry Pi community's wheel index, already in ``/etc/pip.conf`` on Raspberry Pi OS)
  or a compiler (``build-essential python3-dev``, about 275 MB, and minutes of building).
- ``x86_64``: everything from PyPI; lgpio is not installed (no GPIO header).

A 32-bit userland on a 64-bit kernel (the default of 32-bit Raspberry Pi OS on a Pi 4 or
5) reports ``aarch64`` from ``uname -m`` while pip installs ``armv7l`` wheels: the
architecture here is the interpreter's, as pip sees it. Standard library only.
"""

from __future__ import annotations

import configparser
import os
import platform
import shutil
import struct
import sysconfig
from collections.abc import Mapping
from pathlib import Path

PIWHEELS = "https://www.piwheels.org/simple"
ARM32 = ("armv7l", "armv6l")
MACHINES = ("aarch64", "armv7l", "armv6l", "x86_64")
#: Debian packages that compile msgspec where no wheel exists (measured in a Debian 12 armhf chroot).
BUILD_PACKAGES = ("build-essential", "python3-dev")
BUILD_COST = "about 275 MB of packages, and building msgspec takes minutes on a Pi"
#: pip's site-wide configuration files (pip.conf(5)); Raspberry Pi OS names piwheels in the first.
PIP_SITE_CONFIGS = ("etc/pip.conf", "etc/xdg/pip/pip.conf")


def this_machine() -> str:
    """The architecture pip installs wheels for: ``uname -m``, but 32-bit on a 64-bit kernel is armv7l."""
    machine = platform.machine()
    if machine == "aarch64" and struct.calcsize("P") == 4:
        return "armv7l"
    return machine


def piwheels_configured(root: Path, environ: Mapping[str, str] | None = None) -> str | None:
    """Where piwheels is already an index for pip (a pip.conf under ``root``, or the environment)."""
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL"):
        if environ is not None and "piwheels.org" in environ.get(name, ""):
            return name
    for relative in PIP_SITE_CONFIGS:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string((root / relative).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, configparser.Error):
            continue
        for section in parser.sections():
            for key in ("extra-index-url", "index-url"):
                if "piwheels.org" in parser.get(section, key, fallback=""):
                    return "/" + relative
    return None


def can_compile() -> bool:
    """A C compiler and Python's headers: pip can build msgspec from its source."""
    include = sysconfig.get_paths().get("include", "")
    return shutil.which("gcc") is not None and os.path.isfile(os.path.join(include, "Python.h"))


__all__ = [
    "ARM32",
    "BUILD_COST",
    "BUILD_PACKAGES",
    "MACHINES",
    "PIWHEELS",
    "can_compile",
    "piwheels_configured",
    "this_machine",
]
