"""bench.handler_path: the request path's own CPU per call, answered and refused, and a scheduling decision,
beside another build."""

from __future__ import annotations

import json
from pathlib import Path

from bench.handler_path import BACKLOGS, GROUPS, main


def test_answered_and_refused_calls_are_measured_on_this_build_and_a_baseline(tiny_embed_dir: Path,
                                                                             tmp_path: Path) -> None:
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps([f"sentence number {i} of the test" for i in range(40)]), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["--rounds", "2", "--calls", "40", "--model", str(tiny_embed_dir), "--texts", str(texts),
                 "--baseline", "HEAD", "--out", str(out)]) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["builds"] == ["this build", "HEAD"] and len(record["rounds"]) == 2
    for by_build in record["rounds"]:
        for result in by_build.values():
            # Every answered call came back OK and every refused one RESOURCE_EXHAUSTED (the child checks
            # both and fails otherwise); a refusal costs less than an answer.
            assert sorted(result["answered_us"]) == sorted(str(g) for g in GROUPS)
            assert 0 < result["refused_us"] < min(result["answered_us"].values())
            # A scheduling decision over more waiting rows takes longer.
            decisions = result["decision_us"]
            assert sorted(decisions) == sorted(str(b) for b in BACKLOGS)
            assert 0 < decisions[str(BACKLOGS[0])] < decisions[str(BACKLOGS[-1])]
    table = (out / "results.md").read_text()
    assert "| this build / HEAD |" in table and "round 2, HEAD" in table


def test_cold_calls_are_measured_after_the_caches_are_overwritten(tiny_embed_dir: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(["a short text", "another one"] * 10), encoding="utf-8")
    out = tmp_path / "cold"
    assert main(["--rounds", "1", "--calls", "16", "--cold", "--model", str(tiny_embed_dir), "--texts", str(texts),
                 "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["cold"] is True
    assert "8 MB written before each group" in (out / "results.md").read_text()
