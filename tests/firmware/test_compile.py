"""Every firmware file compiles with mpy-cross, the cross-compiler a board's files go through."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from gateway.cli.firmware import stage
from tests.firmware.mp import FIRMWARE, compile_firmware, firmware_files, mpy_cross_binary


def test_firmware_has_the_expected_modules() -> None:
    names = {p.relative_to(FIRMWARE).as_posix() for p in firmware_files()}
    for required in ("boot.py", "main.py", "app.py", "ws.py", "link.py", "ring.py", "proto.py",
                     "compat.py", "drivers/__init__.py", "drivers/hw.py", "drivers/sim.py"):  # fmt: skip
        assert required in names


@pytest.mark.parametrize("source", firmware_files(), ids=lambda p: p.relative_to(FIRMWARE).as_posix())
def test_mpy_cross_compiles(source: Path, tmp_path: Path) -> None:
    out = tmp_path / (source.stem + ".mpy")
    proc = subprocess.run(
        [mpy_cross_binary(), "-o", str(out), str(source)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and out.stat().st_size > 0
    assert out.read_bytes()[:1] == b"M"  # .mpy magic


def test_deploy_compiles_exactly_as_the_memory_tests_do(tmp_path: Path) -> None:
    # The memory budget (docs/firmware.md) is measured on compile_firmware's files: a board given
    # `iotgw firmware deploy --mpy` (or an --mpy OTA update) must get the same bytes, down to
    # the source name mpy-cross stores in each module (the board's file name: one qstr for both).
    deployed = tmp_path / "deploy"
    staged = {p.relative_to(deployed) for p in stage(deployed, compiled=True, source=FIRMWARE)}
    tested = compile_firmware(tmp_path / "tests")
    assert staged == {p.relative_to(tested) for p in tested.rglob("*") if p.is_file()}
    for rel in staged:
        assert (deployed / rel).read_bytes() == (tested / rel).read_bytes(), rel
    assert b"drivers/sim.mpy" in (tested / "drivers" / "sim.mpy").read_bytes()


def test_firmware_code_has_no_type_hints() -> None:
    # Board code stays plain MicroPython (house style); hints belong in .pyi stubs.
    for source in firmware_files():
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.returns is None, f"{source}:{node.lineno}: return annotation"
            elif isinstance(node, ast.arg):
                assert node.annotation is None, f"{source}:{node.lineno}: argument annotation"
            elif isinstance(node, ast.AnnAssign):
                raise AssertionError(f"{source}:{node.lineno}: variable annotation")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert "typing" not in names, f"{source}:{node.lineno}: imports typing"
