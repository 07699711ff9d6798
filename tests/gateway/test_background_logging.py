"""The server's logging (iotgw_common/logs.py, ``background=True``): records are written by a
thread, so the event loop never waits on the log's file; nothing is lost or reordered, and a
normal exit writes everything queued."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import textwrap

from tests.support.gateway import repo_env

SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from iotgw_common.logs import setup_logging

    setup_logging("INFO", sys.argv[1], background=True)
    log = logging.getLogger("t")
    values = {"n": 0}
    for i in range(2000):
        values["n"] = i
        log.info("line %d of %s", i, dict(values))  # the argument changes after the call
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    log.info("last line")
    """
)


def _run(fmt: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, fmt], capture_output=True, text=True, env=repo_env(),
                          timeout=60, check=True)  # fmt: skip
    return done.stdout.splitlines()


def test_plain_lines_all_written_in_order_with_the_arguments_of_the_moment() -> None:
    lines = _run("plain")
    numbered = [line for line in lines if " INFO t: line " in line]
    assert len(numbered) == 2000
    for i, line in enumerate(numbered):
        assert line.endswith(f"line {i} of {{'n': {i}}}"), line
    assert any("ERROR t: it failed" in line for line in lines)
    assert any(line.startswith("ValueError: boom") for line in lines)  # the traceback, rendered by the thread
    assert lines[-1].endswith("INFO t: last line")


def test_json_lines_keep_the_exception_as_its_own_field() -> None:
    entries = [json.loads(line) for line in _run("json")]
    assert [e["message"] for e in entries[:3]] == [
        "line 0 of {'n': 0}",
        "line 1 of {'n': 1}",
        "line 2 of {'n': 2}",
    ]
    failed = next(e for e in entries if e["message"] == "it failed")
    assert failed["level"] == "ERROR" and "ValueError: boom" in failed["exception"]
    assert entries[-1]["message"] == "last line"


def test_a_lone_line_is_written_while_the_process_goes_on() -> None:
    """The writer thread gathers a burst before writing it, but does not wait for more lines (or
    the exit) to write what it has: an INFO line shows up while the process still runs."""
    script = textwrap.dedent(
        """
        import logging, sys
        from iotgw_common.logs import setup_logging

        setup_logging("INFO", "plain", background=True)
        logging.getLogger("t").info("alone")
        sys.stdin.readline()  # runs until the test is done with it
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env=repo_env())  # fmt: skip
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 60)
        assert ready, "no line within 60 s"
        line = process.stdout.readline()
        assert line.rstrip().endswith("INFO t: alone"), line
        assert process.poll() is None, "the line only came with the exit"
    finally:
        process.kill()
        process.wait(10)
