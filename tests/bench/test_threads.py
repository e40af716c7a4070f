"""bench.threads: the server's CPU thread by thread, grouped by the names the server gives its threads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.threads import GROUPS, by_group, main, thread_group


def test_threads_are_grouped_by_their_os_names() -> None:
    assert thread_group(100, 100, "python") == "event loop"  # the main thread, whatever it is called
    assert thread_group(100, 101, "engine-0") == "engine" and thread_group(100, 102, "engine-12") == "engine"
    assert thread_group(100, 103, "engine-pool") == "engine-pool"
    assert thread_group(100, 104, "grpc-poller") == "grpc-poller"
    assert thread_group(100, 105, "event_engine") == "other"


def test_groups_add_up_their_threads_and_count_threads_started_meanwhile_from_zero() -> None:
    before = {1: ("engine", 10.0, 5, 1), 2: ("engine", 4.0, 0, 0)}
    after = {1: ("engine", 11.0, 25, 3), 2: ("engine", 4.5, 10, 0), 3: ("other", 0.2, 2, 2)}
    groups = by_group(before, after, 2.0)
    assert groups["engine"] == {"cores": 0.75, "voluntary_per_s": 15.0, "involuntary_per_s": 1.0}
    assert groups["other"]["cores"] == pytest.approx(0.1)


@pytest.mark.timeout(120)
def test_a_short_run_reports_where_the_servers_cpu_went(tiny_embed_dir: Path, stsb_path: Path,
                                                        tmp_path: Path) -> None:
    main(["--rate", "100", "--duration", "2", "--rounds", "1", "--model-dir", str(tiny_embed_dir), "--stsb",
          str(stsb_path), "--out", str(tmp_path)])
    (run,) = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert run["goodput_rps"] > 50
    groups = run["groups"]
    assert {"event loop", "engine", "grpc-poller"} <= set(groups) <= set(GROUPS)
    assert groups["event loop"]["cores"] > 0 and groups["event loop"]["voluntary_per_s"] > 0
    # Shares of the one core the server is pinned to.
    assert sum(group["cores"] for group in groups.values()) <= 1.05
    assert "| default |" in (tmp_path / "results.md").read_text()
