"""docs/protocol.md lists exactly the codes of iotgw_common/protocol/errors.py.

errors.py is the only place that defines codes; the spec mirrors its tables
(section 10 "Errors", section 11 "Close codes and reconnecting").
"""

from __future__ import annotations

import re
from pathlib import Path

from iotgw_common.protocol import CLOSE_EXPLANATIONS, ERROR_EXPLANATIONS, CloseCode, ErrorCode

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"^## \d+\. {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/protocol.md has no section {title!r}"
    return match.group(1)


def _table_rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not re.match(r"^\|[\s|:-]+\|$", line):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the header


def _error_rows() -> dict[str, list[str]]:
    rows = _table_rows(_section("Errors"))
    return {row[0].strip("`"): row for row in rows}


def _close_rows() -> dict[str, list[str]]:
    return {row[0]: row for row in _table_rows(_section("Close codes and reconnecting"))}


def test_every_error_code_is_in_the_error_table() -> None:
    rows = _error_rows()
    missing = [code.value for code in ErrorCode if code.value not in rows]
    assert not missing, f"add to docs/protocol.md section Errors: {missing}"


def test_every_code_in_the_error_table_exists() -> None:
    known = {code.value for code in ErrorCode}
    unknown = [code for code in _error_rows() if code not in known]
    assert not unknown, f"docs/protocol.md names error codes errors.py lacks: {unknown}"


def test_error_table_says_what_errors_py_says() -> None:
    rows = _error_rows()
    for code, explanation in ERROR_EXPLANATIONS.items():
        assert rows[code.value][1].startswith(explanation), code


def test_every_close_code_is_in_the_close_table() -> None:
    rows = _close_rows()
    missing = [int(code) for code in CloseCode if str(int(code)) not in rows]
    assert not missing, f"add to docs/protocol.md section Close codes: {missing}"


def test_every_close_code_in_the_table_exists() -> None:
    known = {str(int(code)) for code in CloseCode}
    numeric = [code for code in _close_rows() if code.isdigit()]
    unknown = [code for code in numeric if code not in known]
    assert not unknown, f"docs/protocol.md names close codes errors.py lacks: {unknown}"


def test_close_table_says_what_errors_py_says() -> None:
    rows = _close_rows()
    for code, explanation in CLOSE_EXPLANATIONS.items():
        assert rows[str(int(code))][2] == explanation, code


def test_limits_in_the_doc_match_the_code() -> None:
    from iotgw_common.protocol import messages as m

    limits = _section("Limits")
    for name, value in [
        ("max_frame_bytes", m.MAX_FRAME_BYTES),
        ("max_samples", m.MAX_SAMPLES),
        ("max_values", m.MAX_VALUES),
        ("max_string_length", m.MAX_STRING_LENGTH),
        ("max_clock_skew_ms", m.DEFAULT_MAX_CLOCK_SKEW_MS),
        ("max_nesting_depth", m.MAX_NESTING_DEPTH),
    ]:
        assert re.search(rf"`{name}`[^|]*\| {value} ", limits), name
    assert f"| {m.HARD_FRAME_BYTES} bytes |" in limits
    assert str(m.MIN_TIMESTAMP_MS) in limits
    assert str(m.MAX_SEQ) in limits
