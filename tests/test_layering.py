"""The layering contracts hold on the real tree, and each of them can fail.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``) and ``make layers`` runs
``lint-imports`` on them. A contract that cannot fail states nothing, so for each one a copy of the
packages gets one violating import and ``lint-imports``, pointed at the copy, must exit non-zero
naming that contract as broken (and the injected module, which shows the copy is what was read).

import-linter's ``acyclic_siblings`` sees cycles between the children of a package; it does not see
a package's ``__init__`` and one of its own modules importing each other. ``module_cycles`` below
walks the imports with ``ast`` and finds every cycle between two modules, that case included.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
ROOTS: list[str] = CONFIG["root_packages"]
CONTRACTS: dict[str, str] = {c["id"]: c["name"] for c in CONFIG["contracts"]}
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``tree``, with ``tree/pyproject.toml`` as its config.

    lint-imports puts its working directory first on ``sys.path``, so the packages of ``tree`` are
    the ones analysed, not those of the editable install. A wide terminal keeps each contract's
    verdict on one line.
    """
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: pip install -e '.[test]' (import-linter)"
    env = {**os.environ, "COLUMNS": "1000", "NO_COLOR": "1", "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def verdicts(output: str) -> dict[str, str]:
    """Contract id -> ``KEPT`` or ``BROKEN``, read from the summary lines of ``output``."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        for cid, name in CONTRACTS.items():
            for verdict in ("KEPT", "BROKEN"):
                if line.startswith(f"{name} {verdict}"):
                    found[cid] = verdict
    return found


def test_the_real_tree_keeps_every_contract() -> None:
    result = lint_imports(REPO)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert verdicts(out) == dict.fromkeys(CONTRACTS, "KEPT"), out


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the root packages and the config; each test works on a copy of this copy."""
    tree = tmp_path_factory.mktemp("layering") / "tree"
    for root in ROOTS:
        shutil.copytree(REPO / root, tree / root, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tree / "pyproject.toml")
    return tree


# (what the violation is, the file it goes into, the line appended, the contracts it must break)
VIOLATIONS = [
    ("the agent imports the gateway", "device_agent/agent.py", "import gateway.store", {"agent-independent"}),
    (
        "the agent reaches the gateway through iotgw_common",
        "iotgw_common/clock.py",
        "import gateway.tokens",
        {"agent-independent", "common-shared"},
    ),
    (
        "iotgw_common imports the agent",
        "iotgw_common/logs.py",
        "import device_agent.config",
        {"common-shared"},
    ),
    *(
        (f"the codec imports {io}", "iotgw_common/protocol/codec.py", f"import {io}", {"codec-sans-io"})
        for io in ("asyncio", "websockets", "socket", "sqlite3", "threading")
    ),
    (
        "the codec reaches I/O through another module",
        "iotgw_common/protocol/errors.py",
        "from iotgw_common import sdnotify",
        {"codec-sans-io"},
    ),
    (
        "the store imports the operator plane",
        "gateway/store/registry.py",
        "import gateway.operator.feed",
        {"gateway-layers"},
    ),
    (
        "the store imports the device plane",
        "gateway/store/schema.py",
        "from gateway.device import streams",
        {"gateway-layers"},
    ),
    (
        "the device plane imports the integrations",
        "gateway/device/streams.py",
        "import gateway.integrations",
        {"gateway-layers"},
    ),
    (
        "the session state machine does I/O",
        "gateway/device/session.py",
        "import asyncio",
        {"session-sans-io"},
    ),
    (
        "the stream state reads the store",
        "gateway/device/streams.py",
        "from gateway.store import registry",
        {"session-sans-io"},
    ),
    ("a leaf imports the store", "gateway/tokens.py", "import gateway.store", {"gateway-layers"}),
    ("a new gateway module is in no layer", "gateway/extra.py", "import gateway.config", {"gateway-layers"}),
    ("the bench runner loop comes back", "bench/scenarios.py", "from bench import runner", {"no-cycles"}),
    (
        "two codec modules import each other",
        "iotgw_common/protocol/errors.py",
        "from iotgw_common.protocol import codec",
        {"no-cycles"},
    ),
]


@pytest.mark.parametrize(("what", "path", "line", "broken"), VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_each_contract_can_fail(
    pristine: Path, tmp_path: Path, what: str, path: str, line: str, broken: set[str]
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(pristine, tree)
    target = tree / path
    before = target.read_text() if target.exists() else ""
    target.write_text(f"{before}\n{line}  # injected by tests/test_layering.py: {what}\n")

    result = lint_imports(tree)
    out = result.stdout + result.stderr

    assert result.returncode != 0, f"{what}: lint-imports passed\n{out}"
    found = verdicts(out)
    for cid in broken:
        assert found.get(cid) == "BROKEN", f"{what}: contract {cid} ({CONTRACTS[cid]}) not broken\n{out}"
    module = path.removesuffix(".py").replace("/", ".")
    assert module in out or module.rpartition(".")[2] in out, f"the report does not name {module}\n{out}"


# -- cycles between modules, package __init__ included ------------------------------------------


def module_graph(tree: Path, roots: Iterable[str]) -> dict[str, set[str]]:
    """Module -> the modules of ``roots`` it imports, anywhere in its body (like import-linter).

    ``from a.b import c`` imports ``a.b.c`` when that is a module, else the package ``a.b``.
    """
    modules: dict[str, Path] = {}
    for root in roots:
        for path in (tree / root).rglob("*.py"):
            parts = path.relative_to(tree).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                imported = resolve(target)
                if imported is not None and imported != name:
                    graph[name].add(imported)
    return graph


def module_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = []
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        work.append((start, iter(sorted(graph[start]))))
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_import_cycle_between_any_two_modules() -> None:
    assert module_cycles(module_graph(REPO, ROOTS)) == []


def test_the_cycle_check_sees_a_package_and_its_own_module(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg.sub import api\nVERSION = 1\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "api.py").write_text("def f():\n    from pkg import VERSION, settings\n")
    (package / "settings.py").write_text("from . import sub\n")
    (package / "leaf.py").write_text("import os\n")

    assert module_cycles(module_graph(tmp_path, ["pkg"])) == [["pkg", "pkg.sub.api"]]
