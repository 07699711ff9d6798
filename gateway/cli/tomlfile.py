"""Write settings back as TOML (the stdlib reads TOML but cannot write it).

Used by ``iotgw demo`` to leave ``demo-data/gateway.toml``, the running demo's settings,
for the other commands to find (gateway/cli/common.py). Only what gateway settings hold:
tables of strings, numbers, booleans and lists of those; ``None`` (unset) is left out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


class TomlValueError(ValueError):
    """A value TOML cannot hold as these settings need it (NaN, a nested list of tables...)."""


def dumps(document: Mapping[str, Any], header: str = "") -> str:
    """``{"store": {"path": "x"}}`` -> ``[store]\\npath = "x"\\n``; ``header`` lines become comments."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    top = {k: v for k, v in document.items() if not isinstance(v, Mapping)}
    lines += [f"{_key(k)} = {_value(v)}" for k, v in top.items() if v is not None]
    for name, table in document.items():
        if isinstance(table, Mapping):
            _table(lines, [name], table)
    return "\n".join(lines) + "\n"


def _table(lines: list[str], path: list[str], table: Mapping[str, Any]) -> None:
    if lines:
        lines.append("")
    lines.append("[" + ".".join(_key(p) for p in path) + "]")
    lines += [
        f"{_key(k)} = {_value(v)}" for k, v in table.items() if v is not None and not isinstance(v, Mapping)
    ]
    for name, sub in table.items():
        if isinstance(sub, Mapping):
            _table(lines, [*path, name], sub)


def _key(key: str) -> str:
    bare = key and all(c.isalnum() or c in "-_" for c in key) and key.isascii()
    return key if bare else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TomlValueError(f"{value!r} has no place in these settings")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string is a JSON string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TomlValueError(f"cannot write {type(value).__name__} {value!r} as TOML")
