"""py-spy on a target during a measurement window, and a short summary of where time went.

``Profiler(pid, path, seconds)`` runs ``py-spy record --format raw`` (folded
stacks, one line per stack with its sample count) beside the load; ``top``
reads the file back and ranks functions by self time and by inclusive time.
Enabled by ``python -m bench --profile DIR``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    return shutil.which("py-spy") or (
        str(Path(sys.executable).parent / "py-spy")
        if (Path(sys.executable).parent / "py-spy").exists()
        else None
    )


class Profiler:
    """Samples ``pid`` (all threads, native frames off) for ``seconds`` into ``path``."""

    def __init__(self, pid: int, path: Path, seconds: float, rate: int = 200) -> None:
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.proc = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", str(rate),
             "--format", "raw", "--threads", "--nonblocking", "--output", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def wait(self, timeout: float = 30.0) -> Path:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.path


def top(path: Path, n: int = 20) -> str:
    """Functions ranked by self and inclusive samples, from a py-spy raw (folded) file."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [f for f in stack.split(";") if not f.startswith("thread (")]
        total += samples
        if frames:
            self_time[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    if not total:
        return "no samples"
    lines = [f"{total} samples; self time:"]
    lines += [f"  {100 * c / total:5.1f} %  {f}" for f, c in self_time.most_common(n)]
    lines.append("inclusive:")
    lines += [f"  {100 * c / total:5.1f} %  {f}" for f, c in inclusive.most_common(n)]
    return "\n".join(lines)
