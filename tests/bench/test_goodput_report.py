"""bench.goodput's report: the overload table, with the event loop's share of the core beside the engine's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bench.goodput import baseline_peers, report, variant_peers
from bench.peers.catalog import PeerContext, launch, split_client_flags
from bench.threads import loop_cpu_seconds

pytest.importorskip("matplotlib", reason="the bench extra (matplotlib) is not installed")


def phase(offered: float, goodput: float, **extra: Any) -> dict[str, Any]:
    return {"offered_rps": offered, "goodput_rps": goodput, "p99_ms": 50.0, "p99_all_ms": None, "errors": 3,
            "rows_per_batch": 4.0, "error_kinds": {"DEADLINE_EXCEEDED": 1, "RESOURCE_EXHAUSTED": 2}, "late_ok": 0,
            "error_p99_ms": {"RESOURCE_EXHAUSTED": 3.0}, "server_cpu_cores": 0.95, "client_cpu_cores": 0.2, **extra}


def test_the_overload_table_shows_the_loops_share_where_the_server_has_one(tmp_path: Path) -> None:
    def run(peer: str, **cpu: Any) -> dict[str, Any]:
        return {"peer": peer, "round": 1, "peak_goodput": 200.0, "bound_rate": 150.0,
                "sweep": [phase(100, 100)], "overload": [{**phase(1000, 190, **cpu), "multiple": 5.0}]}

    summary = {"machine": {"date_utc": "2026-11-28 01:00", "commit": "abc", "cpu": "x", "cores": 2},
               "argv": [], "texts": "sts", "deadline_ms": 100.0, "triton_max_queue": 128, "server_cores": [0],
               "client_cores": [1], "runs": [run("millibatch", loop_cpu_cores=0.35, engine_cpu_cores=0.58,
                                                 mean_chars_sent=60.0, mean_chars_ok=45.0, server_stolen=0.042,
                                                 client_stolen=0.0, client_gc_max_ms=12.5),
                                             run("triton-text")]}  # Triton: neither share is known
    report(summary, tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert ("| OK length / sent | server CPU | loop CPU | engine CPU | client CPU | stolen, server / client cores "
            "| client GC, longest ms |") in table
    assert "| 0.75 | 0.95 | 0.35 | 0.58 | 0.20 | 0.042 / 0.000 | 12.5 |" in table
    # A run from before the load generator measured lengths, or bench.goodput read steal time.
    assert "| - | 0.95 | - | - | 0.20 | - / - | - |" in table


def test_text_held_counts_the_text_answered_against_the_peaks_phase(tmp_path: Path) -> None:
    # The peak (120/s) came where admission answered texts of 50 characters; at 1x, 100/s of 60-character
    # texts is 0.83 of the peak in calls but the same text per second.
    sweep = [phase(80, 80, mean_chars_ok=60.0, tag="sweep"), phase(300, 120, mean_chars_ok=50.0, tag="sweep"),
             phase(90, 90, mean_chars_ok=70.0, tag="bound")]  # a bisection phase never sets the peak
    overload = [{**phase(120, 100, mean_chars_ok=60.0), "multiple": 1.0},
                {**phase(600, 110, mean_chars_ok=48.0), "multiple": 5.0}]
    old = {**phase(600, 110), "multiple": 5.0}  # from before the load generator measured lengths
    runs = [{"peer": "millibatch", "round": 1, "peak_goodput": 120.0, "bound_rate": 90.0, "sweep": sweep,
             "overload": overload},
            {"peer": "triton-text", "round": 1, "peak_goodput": 120.0, "bound_rate": 90.0,
             "sweep": [phase(300, 120)], "overload": [old]}]
    summary = {"machine": {"date_utc": "2026-11-29 06:00", "commit": "abc", "cpu": "x", "cores": 2}, "argv": [],
               "texts": "long", "deadline_ms": 100.0, "triton_max_queue": 128, "server_cores": [0],
               "client_cores": [1], "runs": runs}
    report(summary, tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert "| held / peak | held / best seen | held in text |" in table
    assert "| millibatch | 1 | 120.0 | 90.0 | 0.83 | 0.83 | 0.88 |" in table  # 110 × 48 / (120 × 50)
    assert "| triton-text | 1 | 120.0 | 90.0 | 0.92 | 0.92 | - |" in table
    assert "| 100.0 | 0.83 | 1.00 | 50.0 |" in table and "| 110.0 | 0.92 | 0.88 | 50.0 |" in table
    assert "| 110.0 | 0.92 | - | 50.0 |" in table


def one_phase_at_5x(peer: str, overload: dict[str, Any]) -> dict[str, Any]:
    """A run's summary with one overload phase, at 5x the peak, for `peer`."""
    return {"machine": {"date_utc": "2026-11-28 01:00", "commit": "abc", "cpu": "x", "cores": 2},
            "argv": [], "texts": "sts", "deadline_ms": 100.0, "triton_max_queue": 128, "server_cores": [0],
            "client_cores": [1], "runs": [{"peer": peer, "round": 1, "peak_goodput": 200.0, "bound_rate": 150.0,
                                           "sweep": [phase(100, 100)], "overload": [{**overload, "multiple": 5.0}]}]}


def test_the_http_doors_refusals_and_timeouts_count_as_grpcs_do(tmp_path: Path) -> None:
    http = phase(1000, 190, errors=9, error_kinds={"http-429": 5, "http-504": 1, "timeout": 2, "http-500": 1},
                 error_p99_ms={"http-429": 2.5, "http-504": 99.0})
    report(one_phase_at_5x("millibatch-http", http), tmp_path)
    # shed: the 504 and the client's own timeouts; refused: the 429s, whose p99 is the refusal p99.
    assert "| 50.0 | 3 | 5 | 0 | 1 | 0 | 2.5 |" in (tmp_path / "results.md").read_text()


def test_calls_the_client_throttled_are_counted_apart_from_the_servers_refusals(tmp_path: Path) -> None:
    kinds = {"RESOURCE_EXHAUSTED": 2, "throttled": 6, "DEADLINE_EXCEEDED": 1}
    throttled = phase(1000, 190, errors=9, error_kinds=kinds,
                      error_p99_ms={"RESOURCE_EXHAUSTED": 4.0, "throttled": 0.1})
    report(one_phase_at_5x("millibatch-throttled", throttled), tmp_path)
    # shed 1, refused 2 (the server's, whose p99 is the refusal p99), throttled 6, no other errors.
    assert "| shed | refused | throttled | other errors |" in (tmp_path / "results.md").read_text()
    assert "| 50.0 | 1 | 2 | 6 | 0 | 0 | 4.0 |" in (tmp_path / "results.md").read_text()


def test_the_loop_is_the_main_thread_of_the_process() -> None:
    spent = loop_cpu_seconds(os.getpid())
    sum(range(10_000_000))  # this test runs on the main thread; /proc counts in ticks of 10 ms
    assert loop_cpu_seconds(os.getpid()) > spent


def test_baselines_run_each_millibatch_peer_asked_for() -> None:
    assert baseline_peers(["millibatch", "triton-text"], ["abc"]) == {"millibatch@abc": "abc"}
    assert baseline_peers(["triton-text"], ["abc"]) == {"millibatch@abc": "abc"}
    assert baseline_peers(["millibatch-throttled"], ["a"]) == {"millibatch-throttled@a": "a"}
    assert baseline_peers(["millibatch-v2", "millibatch-http"], ["a", "b"]) == {
        "millibatch-v2@a": "a", "millibatch-http@a": "a", "millibatch-v2@b": "b", "millibatch-http@b": "b"}


def test_a_variant_runs_as_the_peer_it_names(tmp_path: Path, tiny_embed_dir: Path) -> None:
    variants = variant_peers(["limit=--max-concurrent-calls 48",
                              "millibatch-throttled+normal=--grpc-poller-policy normal"])
    assert variants == {"millibatch+limit": ["--max-concurrent-calls", "48"],
                        "millibatch-throttled+normal": ["--grpc-poller-policy", "normal"]}
    ctx = PeerContext(tmp_path, 1, None, None)
    # The throttling client's variant is loaded by a throttling client too; a plain variant is not.
    for name in ("millibatch-throttled", "millibatch-throttled+normal"):
        assert launch(name, tmp_path, ctx, variants.get(name)).loadgen_flags[-2:] == ["--throttle", "2"]
    assert "--throttle" not in launch("millibatch+limit", tmp_path, ctx, variants["millibatch+limit"]).loadgen_flags
    # A door's variant is called through that door.
    door = launch("millibatch-http+x", tiny_embed_dir, ctx, ["--max-queue-rows", "4"])
    assert (door.name, door.protocol, door.loadgen_flags[0]) == ("millibatch-http+x", "openai", "--model")
    assert "--max-queue-rows" in door.command


def test_a_variants_flags_after_a_double_dash_go_to_the_load_generator(tmp_path: Path) -> None:
    (flags,) = variant_peers(["millibatch-throttled+k1.5=--max-queue-rows 4 -- --throttle 1.5"]).values()
    assert split_client_flags(flags) == (["--max-queue-rows", "4"], ["--throttle", "1.5"])
    assert split_client_flags(["--max-queue-rows", "4"]) == (["--max-queue-rows", "4"], [])
    # launch puts them after the peer's own load-generator flags (the last --throttle wins), none on the server.
    spec = launch("millibatch-throttled+k1.5", tmp_path, PeerContext(tmp_path, 1, None, None), flags)
    assert spec.loadgen_flags[-4:] == ["--throttle", "2", "--throttle", "1.5"]
    assert "--max-queue-rows" in spec.command and "--" not in spec.command and "1.5" not in spec.command
