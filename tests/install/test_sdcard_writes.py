"""The SD-card write measurement (docs/operations.md) keeps working: a small agent case, for real."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.gateway import REPO, repo_env


def test_agent_buffer_writes_are_measured_and_batching_reduces_them() -> None:
    def case(spf: int) -> dict[str, float]:
        out = subprocess.run(
            [sys.executable, "-m", "tests.install.sdcard_writes", "--readings", "400", "--agent-case", str(spf), "FULL"],
            cwd=REPO, env=repo_env(), capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        result: dict[str, float] = json.loads(out.stdout)
        return result

    one, ten = case(1), case(10)
    # every frame is a synchronous commit (append) plus another (ack): at least a page each
    assert one["bytes_per_reading"] >= 2 * 4096, one
    assert ten["bytes_per_reading"] < one["bytes_per_reading"] / 4, (one, ten)
