"""bench.admission_trace: the slack's course under load, read from a real server's metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.admission_trace import course, main

pytest.importorskip("psutil", reason="the bench extra (psutil) is not installed")


def test_the_course_counts_falls_time_cut_back_and_what_was_refused_and_shed_meanwhile() -> None:
    readings = [{"t": 0.0, "slack": 1.0, "refused": 5.0, "shed": 1.0},
                {"t": 0.1, "slack": 0.95, "refused": 5.0, "shed": 3.0},
                {"t": 0.2, "slack": 0.85, "refused": 9.0, "shed": 4.0},
                {"t": 0.3, "slack": 0.86, "refused": 12.0, "shed": 4.0},
                {"t": 0.4, "slack": 0.86, "refused": 12.0, "shed": 4.0}]
    found = course(readings)
    assert found["falls"] == 2 and found["slack_lowest"] == 0.85
    assert found["seconds_below"] == pytest.approx(0.3)  # three readings under 0.9
    assert found["slack_mean"] == pytest.approx(0.904)
    assert (found["refused"], found["shed"]) == (7.0, 3.0)


@pytest.mark.timeout(120)
def test_a_short_run_traces_the_slack_of_a_real_server(tiny_embed_dir: Path, stsb_path: Path, tmp_path: Path) -> None:
    main(["--rate", "50", "--duration", "2", "--model-dir", str(tiny_embed_dir), "--stsb", str(stsb_path), "--out",
          str(tmp_path)])
    (run,) = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert run["goodput_rps"] > 25 and run["label"] == "this"
    assert len(run["readings"]) >= 10  # every 100 ms through 2 s of load
    assert all(0.2 <= r["slack"] <= 1.0 and r["correction"] > 0 for r in run["readings"])
    assert run["server_stolen"] is None or 0.0 <= run["server_stolen"] <= 1.0
    assert "| this | 1 |" in (tmp_path / "results.md").read_text()
