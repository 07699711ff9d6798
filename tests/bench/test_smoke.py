"""The benchmark runner end to end, tiny and short, so that it cannot rot.

It asserts behaviour only (a JSON file per scenario, every acked reading in the
store, the table printed), never a rate or a time: figures come from
``make bench`` on a quiet machine, not from a test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.runner import main


@pytest.mark.timeout(120)
def test_quick_ingest_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["ingest", "--quick", "--devices", "8", "--measure-s", "0.5", "--processes", "2",
                 "--results-dir", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out

    assert code == 0, out
    files = list(tmp_path.glob("*-ingest-quick.json"))
    assert len(files) == 1, out
    document = json.loads(files[0].read_text())
    assert document["scenario"] == "ingest"
    assert document["error"] is None
    assert document["machine"]["cores"] >= 1
    assert document["machine"]["sqlite"] and document["machine"]["websockets"]
    checks = document["checks"]
    assert checks and all(checks.values()), checks
    for run in document["details"]["runs"].values():
        assert run["connected"] == run["devices"] == 8
        assert run["samples_acked"] > 0
        assert run["store_rows"] == run["samples_acked"]  # every acked reading is stored, once
        assert not run["errors"] and not run["closes"]
    assert "frames/s, 1 sample/frame" in out
    assert "check: 1x: rows == acked readings" in out


@pytest.mark.timeout(120)
def test_quick_command_round_trip_runs_against_the_gateway_and_the_relay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["command_rtt", "--quick", "--measure-s", "0.5", "--results-dir", str(tmp_path)])
    out = capsys.readouterr().out

    assert code == 0, out
    document = json.loads(next(tmp_path.glob("*-command_rtt-quick.json")).read_text())
    assert document["error"] is None
    assert document["checks"] == {
        "idle: every command succeeded": True,
        "relay, idle: every command succeeded": True,
    }
    figures = {figure["name"]: figure["value"] for figure in document["figures"]}
    for name in ("command RTT p99, idle", "relay RTT p99, idle", "command RTT p99 over the relay's, idle"):
        assert figures[name] is not None and figures[name] > 0, (name, figures)
    for side in ("idle", "relay, idle"):  # every command sent got its answer from the responder
        details = document["details"][side]
        assert details["commands"] > 0 and details["states"] == {"succeeded": details["commands"]}
        assert details["http_errors"] == 0


@pytest.mark.timeout(180)
def test_quick_storm_connects_and_closes_the_storm_beside_steady_devices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["storm", "--quick", "--devices", "20", "--measure-s", "0.5", "--results-dir", str(tmp_path)])
    out = capsys.readouterr().out

    assert code == 0, out
    document = json.loads(next(tmp_path.glob("*-storm-quick.json")).read_text())
    assert document["error"] is None
    checks = document["checks"]
    assert checks["storm: every storm device connected"] and all(checks.values()), checks
    storm = document["details"]["storm"]
    assert storm["connected"] == storm["devices"] == 200 and storm["failed"] == 0
    assert storm["leave_s"] >= 0 and not storm["closes"] and not storm["errors"]
    assert storm["sessions_ended_s"] >= 0  # the gateway ended every leaving device's session
    for phase in ("quiet", "arrive", "leave"):
        run = document["details"]["runs"][phase]
        assert run["connected"] == run["devices"] == 20
        assert run["samples_acked"] > 0 and not run["errors"] and not run["closes"]
        commands = document["details"]["commands"][phase]
        assert commands["commands"] > 0 and commands["states"] == {"succeeded": commands["commands"]}
    assert "steady ack p99, arrive" in out and "command RTT p99, leave" in out
