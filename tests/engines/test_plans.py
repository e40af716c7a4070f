"""The TensorRT plan manifest layout: parsing, round trip, and matching a plan to this GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from millibatch.engines.plans import MANIFEST_KEY, PlanSpec, load_plan_specs, pick_plan

ENTRY = {"file": "model.sm90.fp16.plan", "precision": "fp16", "tensorrt_version": "10.7.0",
         "compute_capability": [9, 0], "instances": 2, "max_rows": 32, "lengths": [16, 32, 64, 128]}


def test_entry_round_trips_and_describes_its_profiles() -> None:
    spec = PlanSpec.from_json(ENTRY)
    assert spec.to_json() == ENTRY
    assert spec.profile_count == 8
    assert spec.buckets.lengths == (16, 32, 64, 128) and spec.buckets.max_rows == 32


@pytest.mark.parametrize("broken", [
    {k: v for k, v in ENTRY.items() if k != "file"},
    {**ENTRY, "lengths": [64, 16]},
    {**ENTRY, "lengths": []},
    {**ENTRY, "compute_capability": [9]},
    {**ENTRY, "instances": 0},
])
def test_bad_entries_are_named(broken: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=MANIFEST_KEY):
        PlanSpec.from_json(broken)


def test_load_reads_the_manifest_key(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "m", MANIFEST_KEY: [ENTRY]}))
    assert load_plan_specs(tmp_path) == [PlanSpec.from_json(ENTRY)]
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "m"}))
    assert load_plan_specs(tmp_path) == []


def test_pick_plan_checks_gpu_version_instances_and_file(tmp_path: Path) -> None:
    spec = PlanSpec.from_json(ENTRY)
    plan, why = pick_plan([spec], "10.7.1", (9, 0), 2, tmp_path)
    assert plan is None and "missing" in why
    (tmp_path / spec.file).write_bytes(b"plan")
    assert pick_plan([spec], "10.7.1", (9, 0), 2, tmp_path)[0] == spec
    assert "sm_90" in pick_plan([spec], "10.7.0", (8, 6), 1, tmp_path)[1]
    assert "TensorRT 10.7.0" in pick_plan([spec], "10.8.0", (9, 0), 1, tmp_path)[1]
    assert "2 instances" in pick_plan([spec], "10.7.0", (9, 0), 3, tmp_path)[1]
    assert "up to 32 rows" in pick_plan([spec], "10.7.0", (9, 0), 1, tmp_path, max_rows=64)[1]
    assert "up to 128 tokens" in pick_plan([spec], "10.7.0", (9, 0), 1, tmp_path, max_length=256)[1]
    assert "lists no TensorRT plans" in pick_plan([], "10.7.0", (9, 0), 1, tmp_path)[1]
