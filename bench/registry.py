"""The scenario registry: ``@scenario`` and the types a scenario is written against.

A scenario is a function ``(ctx: Context) -> Result`` registered with
``@scenario("name", "title")``; adding one is adding a function in a module the
runner imports (``bench/scenarios.py``, ``bench/command_rtt.py``,
``bench/influx_e2e.py``). This module imports none of them, so a scenario
module and the runner both depend on it and on nothing of each other.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class Figure:
    """One line of the table: a measured value, its unit, and the target it is read against."""

    name: str
    value: float | None
    unit: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass(slots=True)
class Result:
    """What a scenario returns: figures for the table, behaviour checks, raw details for the JSON."""

    scenario: str = ""
    title: str = ""
    figures: list[Figure] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    def add(self, name: str, value: float | None, unit: str = "", target: str = "",
            met: bool | None = None, note: str = "") -> None:  # fmt: skip
        self.figures.append(Figure(name, value, unit, target, met, note))

    def figure(self, name: str) -> float | None:
        return next((f.value for f in self.figures if f.name == name), None)


@dataclass(slots=True)
class Context:
    """Options and shared state handed to every scenario."""

    quick: bool
    workdir: Path
    processes: int
    results: dict[str, Result] = field(default_factory=dict)
    keep: bool = False
    profile_dir: Path | None = None
    """When set, py-spy samples the target during every measurement window (``bench.profile``)."""
    devices: int | None = None
    """Overrides the number of devices of the load scenarios (not ``connections``)."""
    measure_s: float | None = None
    """Overrides the length of every measurement window."""

    def scratch(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        return path

    def done(self, path: Path) -> None:
        if not self.keep:
            shutil.rmtree(path, ignore_errors=True)


ScenarioFn = Callable[[Context], Result]


@dataclass(slots=True)
class Scenario:
    name: str
    title: str
    fn: ScenarioFn
    needs: tuple[str, ...] = ()


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, title: str, needs: tuple[str, ...] = ()) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register a scenario; ``needs`` names external programs it requires (skipped if missing)."""

    def register(fn: ScenarioFn) -> ScenarioFn:
        SCENARIOS[name] = Scenario(name, title, fn, needs)
        return fn

    return register
