"""bench.frontend's modes: each with or without gRPC's EventEngine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.frontend import MODES, base_mode, main, suffixes


def test_suffixes_name_the_same_mode() -> None:
    assert base_mode("refused+ee") == "refused" and suffixes("refused+ee") == {"ee"}
    assert base_mode("grpc-refuse+busy+batch") == "grpc-refuse"
    assert suffixes("grpc-refuse+busy+batch") == {"busy", "batch"}
    assert [base_mode(mode) for mode in MODES] == list(MODES) and not suffixes("ok")


def test_serve_refuses_an_unknown_mode() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--mode", "fast+ee"])
    assert exited.value.code == 2


def test_poisson_arrivals_measure_the_cost_of_calls_that_meet_an_idle_server(tmp_path: Path) -> None:
    # gRPC's own floor needs no model; 200 calls/s keeps one call in flight most of the time.
    main(["--modes", "grpc-echo", "--rounds", "1", "--duration", "1", "--rate", "200", "--out", str(tmp_path)])
    (run,) = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert 120 < run["calls_per_s"] < 300 and run["server_us_per_call"] > 0 and run["unexpected_statuses"] == 0
    assert "Poisson arrivals at 200 calls/s" in (tmp_path / "results.md").read_text()


def test_the_waiting_echo_reports_its_own_time_so_the_floor_is_what_lies_outside_it(tmp_path: Path) -> None:
    from bench.call_path import transport_floor
    from bench.frontend import ECHO_WAIT_SECONDS

    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(["a short text"]), encoding="utf-8")
    outside = transport_floor(30, texts, mode="grpc-echo-wait")
    # The handler's own wait (3 ms) is taken out: what is left is gRPC around it, well under the wait.
    assert 0 < outside < ECHO_WAIT_SECONDS * 1e3


@pytest.mark.timeout(120)
def test_refusals_are_measured_through_each_door(tiny_embed_dir: Path, tmp_path: Path) -> None:
    # Embed's refusals are tested end to end in tests/service; each mode here waits 8 s for its server.
    main(["--modes", "refused+v2,refused+http", "--rounds", "1", "--duration", "1", "--model",
          str(tiny_embed_dir), "--out", str(tmp_path)])
    runs = {run["mode"]: run for run in json.loads((tmp_path / "results.json").read_text())["runs"]}
    assert runs["refused+v2"]["error_kinds"].keys() == {"RESOURCE_EXHAUSTED"}
    assert runs["refused+http"]["error_kinds"].keys() == {"http-429"}
    for run in runs.values():
        assert run["calls_per_s"] > 50 and run["server_us_per_call"] > 0 and run["unexpected_statuses"] == 0


def test_the_doors_are_for_the_real_server_only() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--modes", "grpc-refuse+v2", "--rounds", "1"])
    assert exited.value.code == 2
