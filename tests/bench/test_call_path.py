"""bench.call_path on the tiny model: served calls through gRPC's Embed, split into stages, and through
the OpenAI HTTP door, each interleaved with the bare engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.call_path import TEXT, BareEngine, builds, measure
from bench.processes import ROOT

pytest.importorskip("psutil", reason="the bench extra (psutil) is not installed")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("door", ["grpc", "http"])
def test_served_calls_through_each_door_beside_the_bare_engine(door: str, tiny_embed_dir: Path,
                                                               tmp_path: Path) -> None:
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps([TEXT]), encoding="utf-8")
    run = measure("default", [], tiny_embed_dir, BareEngine(tiny_embed_dir, threads=1), 40, texts, 0.0, 10, door)
    assert run["door"] == door
    assert run["bare_p50_ms"] > 0 and 0 < run["served_p50_ms"] <= run["served_p99_ms"]
    # Settled: the last 5 of each block of 10, served and bare.
    assert run["settle"] == 5 and run["settled_served_p50_ms"] > 0 and run["settled_bare_p50_ms"] > 0
    stages = run["stages_p50_ms"]
    if door == "grpc":
        assert all(value is not None and value >= 0 for value in stages.values()) and stages["engine"] > 0
    else:  # the HTTP door's answer carries no timing fields
        assert set(stages.values()) == {None}


def test_a_baseline_runs_every_variant_right_after_this_builds(tmp_path: Path) -> None:
    old = tmp_path / "7ae630e"
    off = ["--cpu-spinning", "off"]
    assert builds(["default=", "spin-off=--cpu-spinning off"], ["grpc", "http"], {"7ae630e": old}) == [
        ("default", [], "grpc", ROOT), ("default@7ae630e", [], "grpc", old),
        ("default@http", [], "http", ROOT), ("default@http@7ae630e", [], "http", old),
        ("spin-off", off, "grpc", ROOT), ("spin-off@7ae630e", off, "grpc", old),
        ("spin-off@http", off, "http", ROOT), ("spin-off@http@7ae630e", off, "http", old)]
    assert builds(["default="], ["grpc"], {}) == [("default", [], "grpc", ROOT)]
