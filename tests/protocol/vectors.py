"""Loader of the shared protocol vectors in tests/vectors/ (standard library only).

Every suite that checks protocol behaviour reads the same two files:

    from tests.protocol.vectors import load_messages, load_sessions, render, render_value

    for vector in load_messages():
        frame = render(vector["frame"], now_ms, vector.get("pad_to_bytes"))

The file format is described in each file's ``description`` and in
docs/protocol.md, "Test vectors".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

VECTORS_DIR = Path(__file__).resolve().parent.parent / "vectors"
MESSAGES_PATH = VECTORS_DIR / "messages.json"
SESSIONS_PATH = VECTORS_DIR / "sessions.json"

PLACEHOLDER = re.compile(r"\$NOW([+-]\d+)?")
_WHOLE_PLACEHOLDER = re.compile(r"\$NOW([+-]\d+)?\Z")


def load_messages() -> list[dict[str, Any]]:
    """The codec-level vectors of messages.json, in file order."""
    vectors: list[dict[str, Any]] = _load(MESSAGES_PATH)["vectors"]
    return vectors


def load_sessions() -> list[dict[str, Any]]:
    """The session scenarios of sessions.json, in file order."""
    scenarios: list[dict[str, Any]] = _load(SESSIONS_PATH)["scenarios"]
    return scenarios


def render(frame: str, now_ms: int, pad_to_bytes: int | None = None) -> bytes:
    """The bytes to send for ``frame``: placeholders replaced, then padded with spaces.

    ``$NOW``, ``$NOW+<ms>`` and ``$NOW-<ms>`` become ``now_ms`` plus or minus
    ms; with ``pad_to_bytes``, ASCII spaces are appended until the UTF-8 text is
    that long (JSON allows trailing whitespace). Decode the result with
    ``.decode()`` to send it as a text frame.
    """
    data = PLACEHOLDER.sub(lambda m: str(_resolve(m, now_ms)), frame).encode("utf-8")
    if pad_to_bytes is not None:
        if len(data) > pad_to_bytes:
            raise ValueError(f"frame is already {len(data)} bytes, longer than pad_to_bytes={pad_to_bytes}")
        data += b" " * (pad_to_bytes - len(data))
    return data


def render_value(value: Any, now_ms: int) -> Any:
    """``value`` (a ``message``, ``stored`` list ...) with every "$NOW..." string made a number."""
    if isinstance(value, str):
        match = _WHOLE_PLACEHOLDER.match(value)
        return _resolve(match, now_ms) if match else value
    if isinstance(value, list):
        return [render_value(item, now_ms) for item in value]
    if isinstance(value, dict):
        return {key: render_value(item, now_ms) for key, item in value.items()}
    return value


def _resolve(match: re.Match[str], now_ms: int) -> int:
    offset = match.group(1)
    return now_ms + int(offset) if offset else now_ms


def _load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data
