"""The agent's lean install: what ``device_agent`` and ``iotgw_common`` may import, read from the source.

``pip install 'iotgw[agent]'`` brings the base dependencies and the agent extra, nothing else;
so every import in ``device_agent`` (at the top of a module or inside a function, where the
optional ones hide) must name the standard library, ``device_agent``, ``iotgw_common`` or a
package those two lists install, and ``iotgw_common`` only the standard library and the base
dependencies. ``gateway`` is in neither list. The import-linter contracts (tests/test_layering.py)
forbid the gateway by name; this test also catches a heavy third-party import creeping in.
tests/install/test_extras.py shows the same on a real install.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def import_names(requirements: list[str]) -> set[str]:
    """Top-level import names of PEP 508 requirements (each of ours imports as its own name)."""
    names = set()
    for requirement in requirements:
        match = re.match(r"[A-Za-z0-9._-]+", requirement)
        assert match, requirement
        names.add(match.group().lower().replace("-", "_"))
    return names


BASE = import_names(PROJECT["dependencies"])
AGENT_EXTRA = import_names(PROJECT["optional-dependencies"]["agent"])


def imports(path: Path, package: str) -> Iterator[tuple[int, str]]:
    """(line, top-level name) of every absolute import in ``path``, inside functions too."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom):
            # a relative import stays inside its own package
            yield node.lineno, package if node.level else (node.module or "").partition(".")[0]


def foreign_imports(package: str, allowed: set[str], root: Path = REPO) -> list[str]:
    """``path:line: name`` for each import in ``root/package`` outside ``allowed`` and the stdlib."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for line, name in imports(path, package):
            if name not in allowed and name not in sys.stdlib_module_names and name != "__future__":
                found.append(f"{path.relative_to(root)}:{line}: {name}")
    return found


def test_the_agent_imports_only_what_its_extra_installs() -> None:
    assert "gateway" not in BASE | AGENT_EXTRA
    assert foreign_imports("device_agent", {"device_agent", "iotgw_common"} | BASE | AGENT_EXTRA) == []


def test_the_shared_package_imports_only_the_stdlib_and_the_base_dependencies() -> None:
    assert foreign_imports("iotgw_common", {"iotgw_common"} | BASE) == []


@pytest.mark.parametrize(
    "source",
    [
        "import gateway.store\n",
        "def f():\n    from gateway.cli import main\n",  # a lazy import, as the CLI's own are
        "from gateway import tokens as t\n",
        "import influxdb_client\n",
    ],
)
def test_the_check_sees_each_kind_of_import(tmp_path: Path, source: str) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(f"import os\nfrom . import sibling\n{source}")
    assert len(foreign_imports("pkg", {"pkg"}, root=tmp_path)) == 1
