"""bench.response_build: both ways timed for every shape asked, and the same bytes from both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.response_build import from_floats, from_wire, main


def test_both_ways_give_the_same_response() -> None:
    vectors = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    assert from_wire(vectors) == from_floats(vectors)


def test_every_shape_is_timed_both_ways_and_written_out(tmp_path: Path) -> None:
    out = tmp_path / "build"
    assert main(["--rounds", "2", "--shapes", "1x8", "3x16", "--number", "3", "--out", str(out)]) == 0
    record = json.loads((out / "results.json").read_text())
    assert [(s["rows"], s["dims"]) for s in record["shapes"]] == [(1, 8), (3, 16)]
    assert all(s["floats_us"] > 0 and s["wire_us"] > 0 for s in record["shapes"])
    assert "| 3 × 16 |" in (out / "results.md").read_text()


def test_cold_builds_are_timed_one_by_one(tmp_path: Path) -> None:
    out = tmp_path / "cold"
    assert main(["--cold", "--rounds", "1", "--shapes", "2x8", "--number", "3", "--out", str(out)]) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["cold"] is True and record["shapes"][0]["wire_us"] > 0
    assert "8 MB were written" in (out / "results.md").read_text()
